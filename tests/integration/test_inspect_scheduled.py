"""`inspect scheduled` against real workers: countdown tasks listed as a Celery worker lists them.

A Celery worker holds every ETA task it received until the ETA, so `inspect scheduled` shows each once, under
the node holding it. fastq holds only those due within a second and leaves the rest in the broker (Redis: the
`unacked` record; SQLite: a row not due yet; RabbitMQ: Celery's delayed-delivery chain), so these tests check
that a task waiting there is listed all the same: once, under one node, until it is revoked, across a restart
where the broker can say which tasks wait.
"""

from __future__ import annotations

import time
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from tests.harness import wait_until

from .test_cli import fastq

pytestmark = pytest.mark.slow


@pytest.fixture
def urls(urls: dict[str, str], broker_kind: str, request: pytest.FixtureRequest) -> dict[str, str]:
    """The integration URLs, and RabbitMQ (results in Redis) for tests parametrized with 'amqp'."""
    if broker_kind == 'amqp':
        return {'FASTQ_BROKER_URL': request.getfixturevalue('amqp_url'), 'FASTQ_RESULT_BACKEND': 'rpc://'}
    return urls


def _node(w: Any, prefix: str) -> str:
    return next(word for word in w.log.split() if word.startswith(prefix))


def _listing(tasks: Any, nodes: list[str]) -> dict[str, list[str]]:
    """Task ids each node lists as scheduled."""
    replies = tasks.app.control.inspect(destination=nodes, timeout=3).scheduled() or {}
    return {node: [entry['request']['id'] for entry in replies.get(node, [])] for node in nodes}


@pytest.mark.parametrize('broker_kind', ['sqlite', 'redis', 'amqp'], indirect=True)
def test_countdown_task_listed_until_revoked(
    tasks: Any, worker: Any, tmp_path: Path, urls: dict[str, str], broker_kind: str
) -> None:
    w = worker('-n', 'sched@%h')
    node = _node(w, 'sched@')
    sent = time.time()
    first = tasks.add.apply_async((2, 2), countdown=60)  # the Celery guide's example
    later = tasks.add.apply_async((3,), {'y': 4}, countdown=120)
    wait_until(lambda: _listing(tasks, [node])[node] == [first.id, later.id], message='both listed, earliest first')

    entries = tasks.app.control.inspect(destination=[node], timeout=3).scheduled()[node]
    assert set(entries[0]) == {'eta', 'priority', 'request'}  # Celery's keys, and its Request.info()
    assert abs(datetime.fromisoformat(entries[0]['eta']).timestamp() - (sent + 60)) < 10
    request = entries[0]['request']
    delivery_info = request.pop('delivery_info')
    assert request == {
        'id': first.id,
        'name': 'worker_tasks.add',
        'args': [2, 2],
        'kwargs': {},
        'type': 'worker_tasks.add',
        'hostname': node,
        'time_start': None,
        'acknowledged': False,
        'worker_pid': None,
    }
    assert delivery_info['routing_key'] == 'celery' and delivery_info['redelivered'] is False
    assert entries[1]['request']['args'] == [3] and entries[1]['request']['kwargs'] == {'y': 4}
    # query_task finds it there too, as Celery's answers for a task in its timer
    found = tasks.app.control.inspect(destination=[node], timeout=3).query_task(later.id)[node]
    assert found[later.id][0] == 'scheduled' and found[later.id][1]['id'] == later.id

    # the command line prints it as Celery's does: one `* {...}` line per task
    proc = fastq(tmp_path, urls, '-A', 'worker_tasks', 'inspect', 'scheduled', '-d', node, '-t', '3')
    out = proc.stdout.splitlines()
    assert out[0] == f'->  {node}: OK'
    assert out[1].startswith("    * {'eta': '") and f"'id': '{first.id}'" in out[1] and later.id in out[2]

    # revoked: no longer listed (fastq drops revoked tasks it holds in memory at once too)
    assert tasks.app.control.revoke(first.id, destination=[node], reply=True, timeout=3)
    assert _listing(tasks, [node])[node] == [later.id]


@pytest.mark.parametrize('broker_kind', ['sqlite', 'redis'], indirect=True)
def test_listed_once_across_workers_and_after_a_restart(tasks: Any, worker: Any, broker_kind: str) -> None:
    a = worker('-n', 'parker@%h')
    parker = _node(a, 'parker@')
    result = tasks.add.apply_async((1, 1), countdown=3600)
    wait_until(lambda: result.id in _listing(tasks, [parker])[parker], message='listed by the first worker')
    b = worker('-n', 'bystander@%h')
    bystander = _node(b, 'bystander@')

    def listed_by() -> list[str]:
        listing = _listing(tasks, [parker, bystander])
        return [node for node, ids in listing.items() for task_id in ids if task_id == result.id]

    assert listed_by() == [parker]  # once, not under every worker that could reach it
    a.stop()
    a = worker('-n', 'parker@%h')  # the same node again: the task still waits in the broker
    # Redis: listed by the node that parked it; SQLite: by the one worker answering for its queue
    expected = [[parker]] if broker_kind == 'redis' else [[parker], [bystander]]
    wait_until(lambda: listed_by() in expected, message='listed once after the restart')
