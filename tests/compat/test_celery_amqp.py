"""fastq and the real `celery` package (py-amqp) on one RabbitMQ node, both ways: clients, workers, results
through Redis and through rpc://, priorities, Celery's delayed-delivery chain, and a shared queue."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from fastq.brokers.amqp.topology import DELAYED_LEVELS, delayed_level
from tests.compat.test_celery_redis import control_exchange_keeps_apps_apart
from tests.harness import lines, wait_until

pytestmark = pytest.mark.slow

COUNTDOWN = 5  # s: long enough to see the task waiting in the chain (levels 2 and 0), short enough to wait


@pytest.fixture
def url(amqp_url: str) -> str:
    return amqp_url


@pytest.fixture
def backend_url(request: pytest.FixtureRequest) -> str:
    """Results in Redis, or through rpc:// when a test is parametrized with 'rpc'."""
    kind = getattr(request, 'param', 'redis')
    return str(request.getfixturevalue('redis_url')) if kind == 'redis' else 'rpc://'


@pytest.mark.parametrize('backend_url', ['redis', 'rpc'], indirect=True)
def test_celery_client_fastq_worker(celery_client: Any, workers: Any) -> None:
    w = workers('fastq')
    result = celery_client.send_task('worker_tasks.add', (20, 22))
    assert result.get(timeout=30) == 42
    failed = celery_client.send_task('worker_tasks.fail', ('from celery',))
    with pytest.raises(ValueError, match='from celery'):
        failed.get(timeout=30)
    assert f'Task worker_tasks.add[{result.id}] received' in w.log


@pytest.mark.parametrize('backend_url', ['redis', 'rpc'], indirect=True)
def test_fastq_client_celery_worker(fastq_client: Any, workers: Any) -> None:
    w = workers('celery')
    result = fastq_client.add.delay(20, 22)
    assert result.get(timeout=30) == 42
    failed = fastq_client.fail.delay('from fastq')
    with pytest.raises(ValueError, match='from fastq'):
        failed.get(timeout=30)
    w.wait_for(f'Task worker_tasks.add[{result.id}] succeeded')


@pytest.mark.parametrize('direction', ['celery->fastq', 'fastq->celery'])
def test_priorities_both_ways(
    celery_client: Any,
    fastq_client: Any,
    workers: Any,
    tmp_path: Path,
    direction: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """RabbitMQ serves higher priorities first once the queue has x-max-priority (both sides declare 10)."""
    env = {'FASTQ_TASK_QUEUE_MAX_PRIORITY': '10', 'CELERY_QUEUE_MAX_PRIORITY': '10'}
    celery_client.conf.task_queue_max_priority = 10
    monkeypatch.setitem(fastq_client.app.conf, 'task_queue_max_priority', 10)
    out = tmp_path / 'order.txt'
    if direction == 'celery->fastq':
        results = [celery_client.send_task('worker_tasks.record', (str(out), f'p{p}'), priority=p) for p in (0, 5, 9)]
    else:
        results = [fastq_client.record.apply_async((str(out), f'p{p}'), priority=p) for p in (0, 5, 9)]
    workers('fastq' if direction == 'celery->fastq' else 'celery', '-c', '1', extra_env=env)
    for r in results:
        r.get(timeout=30)
    assert [line.split()[1] for line in lines(out)] == ['p9', 'p5', 'p0']


def test_celery_countdown_through_the_delayed_chain_to_fastq(celery_client: Any, workers: Any) -> None:
    """Celery >= 5.5 with quorum queues (and a topic exchange) sends countdowns to celery_delayed_27; the fastq
    worker declared and bound that chain, so the task arrives when due."""
    env = {'FASTQ_TASK_DEFAULT_QUEUE_TYPE': 'quorum', 'FASTQ_TASK_DEFAULT_EXCHANGE_TYPE': 'topic'}
    workers('fastq', extra_env=env)
    celery_client.conf.update(task_default_queue_type='quorum', task_default_exchange_type='topic')
    sent = time.time()
    result = celery_client.send_task('worker_tasks.when_run', countdown=2)
    assert result.get(timeout=30) >= sent + 1.5


def _parked(broker: Any) -> bool:
    """Whether a message waits in Celery's delayed-delivery chain (celery_delayed_27 ... 0) right now."""
    return any(broker.qsize(delayed_level(level)) for level in range(DELAYED_LEVELS))


@pytest.mark.parametrize('exchange_type', ['direct', 'topic'])
def test_fastq_countdown_to_a_quorum_queue_runs_once_on_a_celery_worker(
    fastq_client: Any, workers: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, exchange_type: str
) -> None:
    """A fastq client sends a countdown for a quorum queue through Celery's delayed chain (with either exchange
    type: it binds the queue to celery_delayed_delivery itself; Celery's own clients do so only with a topic
    exchange). The Celery worker declared the same chain without a 406 and gets the task when due, once: with
    a topic exchange the queue is bound twice (by fastq directly, by Celery through its exchange), and RabbitMQ
    still routes one copy."""
    env = {'CELERY_DEFAULT_QUEUE_TYPE': 'quorum', 'CELERY_DEFAULT_EXCHANGE_TYPE': exchange_type}
    monkeypatch.setitem(fastq_client.app.conf, 'task_default_queue_type', 'quorum')
    monkeypatch.setitem(fastq_client.app.conf, 'task_default_exchange_type', exchange_type)
    w = workers('celery', extra_env=env)
    out = tmp_path / 'ran.txt'
    broker = fastq_client.app.broker
    sent = time.time()
    result = fastq_client.record.apply_async((str(out), 'eta'), countdown=COUNTDOWN)
    wait_until(lambda: _parked(broker), timeout=COUNTDOWN, message='the task waiting in celery_delayed_*')
    assert result.get(timeout=COUNTDOWN + 60) == 'eta'
    # Sent after it: by the time this one is done, a second copy (routed with the first) would have arrived.
    assert fastq_client.record.delay(str(out), 'after').get(timeout=30) == 'after'
    assert w.log.count(f'Task worker_tasks.record[{result.id}] received') == 1
    ran = [line.split() for line in lines(out)]
    assert [line[1] for line in ran] == ['eta', 'after']
    assert float(ran[0][3]) >= sent + COUNTDOWN  # not before its ETA
    assert not _parked(broker) and broker.qsize('celery') == 0


def test_fastq_chain_with_countdowns_on_a_celery_worker(
    fastq_client: Any, workers: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A fastq chain on a quorum queue (topic exchange, so Celery uses the delayed chain too): the first step
    through the chain by fastq's client, the second by the Celery worker that ran the first, each when due."""
    env = {'CELERY_DEFAULT_QUEUE_TYPE': 'quorum', 'CELERY_DEFAULT_EXCHANGE_TYPE': 'topic'}
    monkeypatch.setitem(fastq_client.app.conf, 'task_default_queue_type', 'quorum')
    monkeypatch.setitem(fastq_client.app.conf, 'task_default_exchange_type', 'topic')
    workers('celery', extra_env=env)
    broker = fastq_client.app.broker
    t = fastq_client
    sent = time.time()
    result = (t.add.s(1, 1) | t.add.s(2).set(countdown=COUNTDOWN)).apply_async(countdown=COUNTDOWN)
    wait_until(lambda: _parked(broker), timeout=COUNTDOWN, message='the first step waiting in celery_delayed_*')
    assert result.parent.get(timeout=COUNTDOWN + 60) == 2
    first_done = result.parent.date_done.timestamp()
    assert first_done >= sent + COUNTDOWN
    wait_until(lambda: _parked(broker), timeout=COUNTDOWN, message='the second step waiting in celery_delayed_*')
    assert result.get(timeout=COUNTDOWN + 60) == 4
    # Celery sends the next step just before it stores the first one's result: allow for that, no more.
    assert result.date_done.timestamp() >= first_done + COUNTDOWN - 1
    assert not _parked(broker) and broker.qsize('celery') == 0


def test_mixed_fleet_shares_the_queue(celery_client: Any, workers: Any, tmp_path: Path) -> None:
    out = tmp_path / 'ran.txt'
    workers('fastq', '-n', 'fastq1@%h')
    workers('celery', '-n', 'celery1@%h')
    results = [celery_client.send_task('worker_tasks.record', (str(out), str(i))) for i in range(200)]
    assert sorted(int(r.get(timeout=120)) for r in results) == list(range(200))
    ran = lines(out)
    assert sorted(int(line.split()[1]) for line in ran) == list(range(200))  # each once
    by_celery = [line for line in ran if line.split()[2] == 'celery']
    assert by_celery and len(by_celery) < 200  # both sides did work


def test_celery_inspect_ping_reaches_fastq(celery_client: Any, workers: Any) -> None:
    w = workers('fastq', '-n', 'f1@%h')
    hostname = [word for word in w.log.split() if word.startswith('f1@')][0]
    assert celery_client.control.inspect(destination=[hostname], timeout=3).ping() == {hostname: {'ok': 'pong'}}


def test_control_exchange_keeps_apps_apart(celery_client: Any, fastq_client: Any, workers: Any, url: str) -> None:
    control_exchange_keeps_apps_apart(celery_client, fastq_client, workers, url)


def test_request_properties_read_as_on_a_celery_worker(celery_client: Any, workers: Any) -> None:
    """On RabbitMQ Celery's `self.request.properties` are py-amqp's (content_type, content_encoding,
    application_headers, delivery_mode, priority, correlation_id, reply_to, expiration), with no
    delivery_info, body_encoding or delivery_tag: fastq's read as kombu's Redis envelope."""
    seen = {}
    for kind in ('celery', 'fastq'):
        w = workers(kind, '-n', f'{kind}1@%h')
        sent = [
            celery_client.send_task('worker_tasks.request_as_sent', priority=3, headers={'custom': 'v'}, expires=60),
            celery_client.send_task('worker_tasks.request_as_sent', correlation_id=None),  # sent with no priority
        ]
        seen[kind] = [_without_ids(r.get(timeout=30)['properties'], r.id) for r in sent]
        w.stop(30)
    assert seen['fastq'] == seen['celery']
    first = seen['fastq'][0]
    assert list(first) == [
        'content_type', 'content_encoding', 'application_headers', 'delivery_mode', 'priority', 'correlation_id',
        'reply_to', 'expiration',
    ]  # fmt: skip
    assert first['application_headers']['custom'] == 'v' and first['priority'] == 3


def _without_ids(properties: dict[str, Any], task_id: str) -> dict[str, Any]:
    """The properties with what differs from one sending to the next (ids, times) replaced."""
    headers = dict(properties.get('application_headers') or {})
    for key in ('id', 'root_id', 'expires', 'origin'):
        if headers.get(key) is not None:
            headers[key] = key.upper()
    out = {key: ('ID' if value == task_id else value) for key, value in properties.items()}
    out['application_headers'] = headers
    return out
