"""What `inspect scheduled` reads for tasks parked in the broker: the worker's bounded record, for brokers that
cannot list parked tasks back, and the Redis index of what each node parked (fastq.worker.parked)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest

from fastq import Fastq, protocol
from fastq.brokers.base import Outgoing
from fastq.worker import parked
from fastq.worker.dispatcher import RevokedSet
from fastq.worker.parked import Parked, ParkedTasks


def _record(task_id: str, eta: float, body: bytes = b'[[1], {}, {}]') -> Parked:
    return Parked(eta, task_id, 't.add', 0, '', 'celery', False, body, 'application/json', None)


def test_the_oldest_are_dropped_beyond_the_entry_cap(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(parked, 'LIMIT', 3)
    tasks, eta = ParkedTasks(), time.time() + 60
    for i in range(5):
        tasks.add(_record(f'id{i}', eta))
    tasks.add(_record('id2', eta))  # parked again (SQS, every 12 hours): now the newest
    assert list(tasks.entries) == ['id3', 'id4', 'id2']


def test_the_oldest_are_dropped_beyond_the_body_budget(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(parked, 'MAX_BODY_BYTES', 250)
    tasks, eta = ParkedTasks(), time.time() + 60
    for i in range(4):
        tasks.add(_record(f'id{i}', eta, b'x' * 100))
    assert list(tasks.entries) == ['id2', 'id3'] and tasks.body_bytes == 200


def test_passed_etas_and_revoked_tasks_are_dropped_as_listed() -> None:
    tasks, now = ParkedTasks(), time.time()
    tasks.add(_record('due', now - 1))
    tasks.add(_record('revoked', now + 60))
    tasks.add(_record('waiting', now + 120))
    revoked = RevokedSet()
    revoked.add('revoked')
    assert [r.id for r in tasks.live(now, revoked)] == ['waiting']
    assert list(tasks.entries) == ['waiting'] and tasks.body_bytes == len(_record('x', 0).body)


def test_passed_etas_are_swept_as_more_tasks_are_parked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(parked, 'PRUNE_EVERY', 0.0)
    tasks, now = ParkedTasks(), time.time()
    tasks.add(_record('due', now - 1))
    tasks.add(_record('waiting', now + 60))
    assert list(tasks.entries) == ['waiting']


def test_an_entry_in_celerys_shape() -> None:
    eta = datetime(2030, 6, 7, 9, 7, 52, tzinfo=UTC).timestamp()
    item = parked.entry(_record('abc', eta, b'[[2, 2], {"z": 1}, {}]'), 'w@h', frozenset({'application/json'}))
    assert item == {
        'eta': '2030-06-07T09:07:52+00:00',
        'priority': 0,
        'request': {
            'id': 'abc', 'name': 't.add', 'args': [2, 2], 'kwargs': {'z': 1}, 'type': 't.add', 'hostname': 'w@h',
            'time_start': None, 'acknowledged': False, 'worker_pid': None,
            'delivery_info': {'exchange': '', 'routing_key': 'celery', 'priority': 0, 'redelivered': False},
        },
    }  # fmt: skip


# --- Redis: the index the park script keeps per node ---------------------------------------------------------


@pytest.fixture
def redis_app(redis_url: str) -> Iterator[Fastq]:
    app = Fastq('t', broker=redis_url, backend='memory://', set_as_current=False)
    yield app
    app.close()


def _park(app: Fastq, node: str, task_id: str, eta: float) -> Any:
    broker = app.broker
    eta_header = datetime.fromtimestamp(eta, tz=UTC).isoformat()
    message = protocol.build_task_message(
        task_id=task_id, name='t.add', args=(1, 2), kwargs={}, embed={}, serializer='json', compression=None,
        eta=eta_header, expires=None, reply_to='r', origin='gen1@host',
    )  # fmt: skip
    broker.publish([Outgoing(message, 'celery')])
    consumer = broker.consumer(['celery'], owner=node)
    (d,) = consumer.fetch(1, 5.0)
    consumer.defer(d.tag, eta)
    consumer.close()
    return d.tag


def test_redis_lists_what_a_node_parked_until_its_record_goes(redis_app: Fastq) -> None:
    broker: Any = redis_app.broker
    broker.connect()
    now = time.time()
    later = _park(redis_app, 'a@h', 'later', now + 120)
    _park(redis_app, 'a@h', 'sooner', now + 60)
    _park(redis_app, 'b@h', 'elsewhere', now + 60)
    key = broker.layout.parked('a@h')
    assert [m.headers['id'] for m in broker.parked('a@h', 10)] == ['sooner', 'later']
    assert [m.headers['id'] for m in broker.parked('a@h', 1)] == ['sooner']
    assert now + 120 < broker.client.ttl(key) + time.time() < now + 200  # the key outlives its last ETA only
    broker.client.hdel(broker.layout.unacked, later)  # acked or purged meanwhile
    assert [m.headers['id'] for m in broker.parked('a@h', 10)] == ['sooner']
    assert broker.client.zcard(key) == 1
    broker.client.zadd(key, {'passed': now - 1})  # an ETA that passed is trimmed as the index is read
    broker.parked('a@h', 10)
    assert broker.client.zscore(key, 'passed') is None
