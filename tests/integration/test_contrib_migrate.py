"""`fastq.contrib.migrate` (Celery's `celery.contrib.migrate`) on a real redis-server, with messages a real
Celery client sent: moving tasks to other queues by id, by name or by a predicate, and to another broker.

Where Celery 5.7 itself fails, checked here against it: its `move_by_taskmap` raises TypeError on every
protocol 2 message (it reads the task name from the body, a list), and its `move` to a bare `Queue('foo')`
publishes with an empty routing key, so the message leaves its queue and reaches none. fastq moves both.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from fastq import Fastq
from fastq.contrib import migrate
from fastq.routing import Queue

pytestmark = pytest.mark.slow

celery = pytest.importorskip('celery')


@pytest.fixture
def client(redis_url: str) -> Iterator[Any]:
    app = celery.Celery('sender', broker=redis_url, set_as_current=False)
    yield app
    app.close()


@pytest.fixture
def app(redis_url: str) -> Iterator[Fastq]:
    app = Fastq('mover', broker=redis_url)
    yield app
    app.close()


def _queue(url: str, name: str) -> list[tuple[str, str, Any, dict[str, Any]]]:
    """(task, id, args, delivery_info) of each message in a queue, next first."""
    entries = redis.Redis.from_url(url).lrange(name, 0, -1)[::-1]
    out = []
    for raw in entries:
        envelope = json.loads(raw)
        headers = envelope['headers']
        out.append((headers['task'], headers['id'], headers['argsrepr'], envelope['properties']['delivery_info']))
    return out


def _send(client: Any) -> list[str]:
    ids = [client.send_task('tasks.add', (i, i)).id for i in range(3)]
    return [*ids, client.send_task('tasks.mul', (2, 2)).id]


def test_move_task_by_id_moves_that_task_and_leaves_the_rest_in_order(client: Any, app: Fastq, redis_url: str) -> None:
    ids = _send(client)
    before = redis.Redis.from_url(redis_url).lrange('celery', 0, -1)
    moved = json.loads(before[-2])  # the second one sent
    state = migrate.move_task_by_id(ids[1], Queue('foo'), app=app)
    assert state.filtered == 1
    assert [entry[1] for entry in _queue(redis_url, 'celery')] == [ids[0], ids[2], ids[3]]
    [(task, task_id, argsrepr, info)] = _queue(redis_url, 'foo')
    assert (task, task_id, argsrepr, info['routing_key']) == ('tasks.add', ids[1], '(1, 1)', 'foo')
    [now] = redis.Redis.from_url(redis_url).lrange('foo', 0, -1)
    envelope = json.loads(now)
    assert (envelope['body'], envelope['headers']) == (moved['body'], moved['headers'])  # the message itself
    assert envelope['properties']['correlation_id'] == ids[1]


def test_move_by_taskmap_reads_protocol_2_names(client: Any, app: Fastq, redis_url: str) -> None:
    ids = _send(client)
    migrate.move_by_taskmap({'tasks.mul': Queue('slow')}, app=app)
    assert [entry[1] for entry in _queue(redis_url, 'slow')] == [ids[3]]
    assert [entry[1] for entry in _queue(redis_url, 'celery')] == ids[:3]


def test_move_by_a_predicate_with_a_callback_and_a_limit(
    client: Any, app: Fastq, redis_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    ids = _send(client)
    seen: list[tuple[int, Any, str]] = []

    def wanted(body: Any, message: Any) -> Any:
        args, kwargs, embed = body  # the protocol 2 body, decoded as a kombu consumer gets it
        assert message.properties['correlation_id'] == message.headers['id']
        return ('', 'hipri') if args[0] >= 1 else None

    def callback(state: migrate.State, body: Any, message: Any) -> None:
        seen.append((state.filtered, body[0], message.delivery_info['routing_key']))
        migrate.filter_status(state, body, message)

    state = migrate.move(wanted, app=app, callback=callback, limit=2)
    assert seen == [(1, [1, 1], 'celery'), (2, [2, 2], 'celery')]
    assert capsys.readouterr().out.splitlines() == [
        f'Moving task 1/4: tasks.add[{ids[1]}]',
        f'Moving task 2/4: tasks.add[{ids[2]}]',
    ]
    assert (state.filtered, state.count) == (2, 3)
    assert [entry[1] for entry in _queue(redis_url, 'hipri')] == ids[1:3]
    assert [entry[1] for entry in _queue(redis_url, 'celery')] == [ids[0], ids[3]]  # the limit: mul stays


def test_a_filter_that_takes_nothing_leaves_every_message_in_order(client: Any, app: Fastq, redis_url: str) -> None:
    ids = _send(client)
    seen: list[str] = []
    state = migrate.start_filter(app, None, lambda body, message: seen.append(message.headers['task']))
    assert seen == ['tasks.add'] * 3 + ['tasks.mul'] and state.count == 4
    assert [entry[1] for entry in _queue(redis_url, 'celery')] == ids
    migrate.start_filter(app, None, lambda body, message: message.ack(), tasks=['tasks.mul'])  # acks drop it
    assert [entry[1] for entry in _queue(redis_url, 'celery')] == ids[:3]


def test_migrate_tasks_to_another_broker_renaming_a_queue(
    client: Any, app: Fastq, redis_url: str, redis_server: Any
) -> None:
    from tests.servers import DatabasePool

    pool = redis_server._pool
    assert isinstance(pool, DatabasePool)
    dest = redis_server.url(pool.take())
    ids = _send(client)
    counts: list[str] = []
    state = migrate.migrate_tasks(
        app.connection(),
        dest,
        app=app,
        queues=['celery:elsewhere'],
        ack_messages=True,
        callback=lambda state, body, message: counts.append(repr(state)),
    )
    assert counts == ['1/4', '2/4', '3/4', '4/4'] and state.count == 4
    assert _queue(redis_url, 'celery') == []
    assert [(entry[1], entry[3]['routing_key']) for entry in _queue(dest, 'elsewhere')] == [
        (task_id, 'elsewhere') for task_id in ids
    ]


def test_migrate_tasks_with_a_migrate_function(client: Any, app: Fastq, redis_url: str, redis_server: Any) -> None:
    # Celery's `migrate=` hook: republish each message as it likes (here: everything to one queue)
    from tests.servers import DatabasePool

    pool = redis_server._pool
    assert isinstance(pool, DatabasePool)
    dest = redis_server.url(pool.take())
    ids = _send(client)

    def to_archive(producer: Any, body: Any, message: Any, queues: Any = None) -> None:
        migrate.republish(producer, message, exchange='', routing_key='archive')

    migrate.migrate_tasks(redis_url, dest, migrate=to_archive, app=app, tasks='tasks.add')
    assert [entry[1] for entry in _queue(dest, 'archive')] == ids[:3]
    assert [entry[1] for entry in _queue(redis_url, 'celery')] == ids  # without ack_messages: copied
