"""Remote control basics on every broker with fanout: ping, revoke, shutdown (and the CLI words and codes)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from fastq import states
from tests.harness import lines, wait_until

from .test_cli import fastq

pytestmark = pytest.mark.slow


def test_ping_api_and_cli(tasks: Any, worker: Any, tmp_path: Path, urls: dict[str, str]) -> None:
    w = worker('-n', 'w1@%h')
    hostname = [word for word in w.log.split() if word.startswith('w1@')][0]
    replies = tasks.app.control.ping(timeout=2)
    assert {hostname: {'ok': 'pong'}} in replies
    assert tasks.app.control.inspect(destination=[hostname], timeout=2).ping() == {hostname: {'ok': 'pong'}}
    assert tasks.app.control.inspect(destination=['nobody@nowhere'], timeout=0.5).ping() is None
    assert tasks.app.control.inspect(timeout=2).ping(destination=[hostname]) == {hostname: {'ok': 'pong'}}
    proc = fastq(tmp_path, urls, '-A', 'worker_tasks', 'inspect', 'ping', '-d', hostname, '-t', '2')
    assert proc.stdout.splitlines()[:2] == [f'->  {hostname}: OK', '        pong']
    assert proc.stdout.rstrip().endswith('1 node online.')
    missing = fastq(tmp_path, urls, '-A', 'worker_tasks', 'inspect', 'ping', '-d', 'x@y', '-t', '0.5', check=False)
    assert missing.returncode == 69 and 'No nodes replied within time constraint' in missing.stderr
    status = fastq(tmp_path, urls, '-A', 'worker_tasks', 'status', '-t', '2')
    assert status.stdout.splitlines() == [f'->  {hostname}: OK', '', '1 node online.']  # no body, as Celery's
    # a command whose handler returns nothing still answers, with None, as kombu's pidbox does
    assert tasks.app.control.heartbeat(destination=[hostname], reply=True, timeout=2) == [{hostname: None}]
    hello = tasks.app.control.inspect(destination=[hostname], timeout=2).hello('other@host')
    assert set(hello[hostname]) == {'revoked', 'clock'}
    # a command the worker does not know: kombu's pidbox answers the KeyError its lookup raised
    unknown = tasks.app.control.broadcast('no_such_command', destination=[hostname], reply=True, timeout=2)
    assert unknown == [{hostname: {'error': "KeyError('no_such_command')"}}]


def test_revoke_before_it_runs(tasks: Any, worker: Any, tmp_path: Path) -> None:
    worker()
    out = tmp_path / 'ran.txt'
    result = tasks.record.apply_async((str(out), 'x'), countdown=2)
    replies = tasks.app.control.revoke(result.id, reply=True, timeout=2)
    assert replies and list(replies[0].values())[0]['ok'] == f"tasks {{'{result.id}'}} flagged as revoked"
    wait_until(lambda: result.state == states.REVOKED, timeout=30, message='REVOKED')
    time.sleep(2.5)
    assert not out.exists()


def test_revoking_a_parked_task_stores_revoked_at_once(tasks: Any, worker: Any, tmp_path: Path) -> None:
    """Celery 5.7 stores REVOKED as the revoke arrives for a task waiting for its ETA, not when the ETA comes."""
    worker()
    result = tasks.add.apply_async((1, 2), countdown=3600)
    scheduled = tasks.app.control.inspect(timeout=1).scheduled
    wait_until(lambda: any((scheduled() or {}).values()), message='parked')
    tasks.app.control.revoke(result.id, reply=True, timeout=2)
    wait_until(lambda: result.state == states.REVOKED, timeout=10, message='REVOKED before the ETA')


def test_revoking_a_task_still_in_its_queue_stores_revoked_at_once(tasks: Any, worker: Any) -> None:
    """Celery 5.7's workers mark REVOKED as the revoke arrives even for an id they hold nothing of (a task in a
    queue no worker consumes yet); a revoked task that already has a result keeps it."""
    worker()
    done = tasks.add.delay(2, 2)
    assert done.get(timeout=30) == 4
    waiting = tasks.add.apply_async((1, 1), queue='nobody-consumes-this')
    tasks.app.control.revoke([waiting.id, done.id], reply=True, timeout=2)
    wait_until(lambda: waiting.state == states.REVOKED, timeout=10, message='REVOKED while still in its queue')
    assert done.state == states.SUCCESS and done.result == 4


def test_terminate_running_task(tasks: Any, worker: Any, tmp_path: Path) -> None:
    worker()
    out = tmp_path / 'slow.txt'
    result = tasks.sleeper.delay(str(out), 'long', 60)
    wait_until(lambda: any(line.startswith('start long') for line in lines(out)), message='started')
    tasks.app.control.terminate(result.id)
    wait_until(lambda: result.state == states.REVOKED, timeout=30, message='REVOKED after terminate')
    assert tasks.add.delay(1, 1).get(timeout=30) == 2


def test_terminate_reads_the_signal_as_celery(tasks: Any, worker: Any, tmp_path: Path) -> None:
    """A name in capitals with or without SIG, or a number; a lower-case name is refused in Celery's words
    (the id stays revoked), and the log names the signal by its number, as Celery's 'Terminating id (9)'. The
    child killed on purpose is not logged as an error ('Process ... exited with ...': billiard's
    terminate_job marks it a controlled termination)."""
    w = worker('-n', 'term@%h', '-c', '1')
    node = next(word for word in w.log.split() if word.startswith('term@'))
    out = tmp_path / 'slow.txt'
    control = tasks.app.control
    first = tasks.sleeper.delay(str(out), 'first', 60)
    wait_until(lambda: any(line.startswith('start first') for line in lines(out)), message='started')
    assert control.revoke(first.id, terminate=True, signal='kill', reply=True, timeout=3, destination=[node]) == [
        {node: {'error': "TypeError('signal name must be uppercase string.')"}}
    ]
    assert control.revoke(first.id, terminate=True, signal='SIGNOPE', reply=True, timeout=3, destination=[node]) == [
        {node: {'error': "AttributeError(\"module 'signal' has no attribute 'SIGNOPE'\")"}}
    ]
    assert first.id in control.inspect(timeout=3, destination=[node]).revoked()[node]
    assert control.revoke(first.id, terminate=True, signal='KILL', reply=True, timeout=3, destination=[node]) == [
        {node: {'ok': f'terminate: {first.id}'}}
    ]
    wait_until(lambda: first.state == states.REVOKED, timeout=30, message='REVOKED after terminate')
    assert f'Terminating {first.id} (9)' in w.log
    second = tasks.sleeper.delay(str(out), 'second', 60)
    wait_until(lambda: any(line.startswith('start second') for line in lines(out)), message='started')
    control.revoke(second.id, terminate=True, signal=15, reply=True, timeout=3, destination=[node])
    wait_until(lambda: second.state == states.REVOKED, timeout=30, message='REVOKED after terminate')
    assert f'Terminating {second.id} (15)' in w.log
    third = tasks.sleeper.s(str(out), 'third', 60).stamp(batch='t-1').apply_async()
    wait_until(lambda: any(line.startswith('start third') for line in lines(out)), message='started')
    assert control.revoke_by_stamped_headers(
        {'batch': 't-1'}, terminate=True, reply=True, timeout=3, destination=[node]
    ) == [{node: {'ok': "headers {'batch': {'t-1'}} revoked"}}]
    wait_until(lambda: third.state == states.REVOKED, timeout=30, message='REVOKED after terminate')
    assert f'Terminating {third.id}' not in w.log  # (Celery's stamped revoke kills without a word)
    assert tasks.add.delay(1, 1).get(timeout=30) == 2  # (in the child that replaced the killed one)
    assert 'exited with' not in w.log
    assert control.revoke_by_stamped_headers(
        {'k': 'v'}, terminate=True, signal='term', reply=True, timeout=3, destination=[node]
    ) == [{node: {'error': "TypeError('signal name must be uppercase string.')"}}]


def test_remote_shutdown(tasks: Any, worker: Any) -> None:
    w = worker()
    tasks.app.control.shutdown()
    assert w.proc.wait(30) == 0
    assert 'Got shutdown from remote' in w.log
    assert 'Warm shutdown' not in w.log  # (Celery's shutdown command stops the worker without that line)
