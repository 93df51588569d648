"""Events from real workers: heartbeats always, task events with -E or after `enable_events`, in Celery's
format (fields per type, `task.multi` batches), received by `app.events.Receiver` and folded by `State`."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from fastq.events import EventReceiver, State
from tests.harness import wait_until

pytestmark = pytest.mark.slow

COMMON = {'hostname', 'utcoffset', 'pid', 'clock', 'timestamp', 'type'}


def collect(receiver: EventReceiver, done: Callable[[list[dict[str, Any]]], bool], timeout: float = 30) -> list[Any]:
    events: list[dict[str, Any]] = []
    deadline = time.monotonic() + timeout
    while not done(events):
        remaining = deadline - time.monotonic()
        assert remaining > 0, f'events seen: {[(e["type"], e.get("uuid")) for e in events]}'
        # (no wakeup: its heartbeat, freq 5, would be taken for the worker's own)
        events.extend(receiver.itercapture(timeout=min(remaining, 0.5), wakeup=False))
    return events


def of(events: list[dict[str, Any]], uuid: str) -> dict[str, dict[str, Any]]:
    return {e['type']: e for e in events if e.get('uuid') == uuid}


def test_task_and_worker_events(tasks: Any, worker: Any) -> None:
    receiver = tasks.app.events.Receiver()
    receiver.consume()  # subscribed before the worker starts: its worker-online is seen
    try:
        w = worker('-E', '-n', 'ev1@%h', '--heartbeat-interval', '0.5')
        ok = tasks.add.delay(2, 3)
        bad = tasks.fail.delay('boom')
        assert ok.get(timeout=30) == 5

        def done(events: list[dict[str, Any]]) -> bool:
            return (
                'task-succeeded' in of(events, ok.id)
                and 'task-failed' in of(events, bad.id)
                and (sum(e['type'] == 'worker-heartbeat' for e in events) >= 2)
            )

        events = collect(receiver, done)
    finally:
        receiver.close()
    hostname = next(e['hostname'] for e in events if e['type'] == 'worker-online')
    assert hostname.startswith('ev1@')
    for event in events:
        assert COMMON <= set(event), event
    beat = next(e for e in events if e['type'] == 'worker-heartbeat')
    assert beat['freq'] == 0.5 and beat['sw_ident'] == 'fastq' and len(beat['loadavg']) == 3
    assert {'active', 'processed', 'sw_ver', 'sw_sys'} <= set(beat)
    good = of(events, ok.id)
    assert ['task-received', 'task-started', 'task-succeeded'] == [t for t in good]
    received = good['task-received']
    assert received['name'] == 'worker_tasks.add' and received['args'] == '(2, 3)' and received['kwargs'] == '{}'
    assert received['root_id'] == ok.id and received['retries'] == 0
    assert {'parent_id', 'eta', 'expires'} <= set(received)
    assert good['task-started']['pid'] == w.pid  # the worker's, as Celery's
    assert good['task-succeeded']['result'] == '5' and good['task-succeeded']['runtime'] >= 0
    failed = of(events, bad.id)['task-failed']
    assert 'boom' in failed['exception'] and 'Traceback' in failed['traceback']
    assert len({e['clock'] for e in events if e['hostname'] == hostname}) == len(
        [e for e in events if e['hostname'] == hostname]
    )  # a clock tick each

    state = State()
    for event in events:
        state.event(event)
    assert state.tasks[ok.id].state == 'SUCCESS' and state.tasks[ok.id].result == '5'
    assert state.tasks[bad.id].state == 'FAILURE' and state.tasks[ok.id].worker.hostname == hostname
    assert [worker.hostname for worker in state.alive_workers()] == [hostname]


def test_a_rejected_task_fails_and_a_revoked_one_goes_by_its_shadow_name(tasks: Any, worker: Any) -> None:
    """Celery 5.7 sends `task-failed` (with the traceback), then `task-rejected`, for Reject(requeue=False), and
    names a discarded task by its shadow name."""
    receiver = tasks.app.events.Receiver()
    receiver.consume()
    try:
        w = worker('-E')
        rejected = tasks.rejects.delay('no')
        assert tasks.app.control.revoke('revoked-id', reply=True, timeout=5)  # (the worker has it before the task)
        revoked = tasks.add.apply_async((1, 2), task_id='revoked-id', shadow='shadowy.name')
        events = collect(receiver, lambda ev: 'task-rejected' in of(ev, rejected.id))
    finally:
        receiver.close()
    mine = of(events, rejected.id)
    assert [t for t in mine if t in ('task-failed', 'task-rejected')] == ['task-failed', 'task-rejected']
    failed = mine['task-failed']
    assert failed['exception'] == 'reject requeue=False: no' and 'Traceback' in failed['traceback']
    w.wait_for(f'Discarding revoked task: shadowy.name[{revoked.id}]')


def test_retried_and_terminated_tasks_events_say_what_celerys_say(tasks: Any, worker: Any, tmp_path: Path) -> None:
    # Celery's Request: task-retried's exception is the reason's repr (not the Retry's "Retry in 0s: ..."),
    # and task-revoked for a terminated task carries the signal's number
    from tests.harness import lines

    receiver = tasks.app.events.Receiver()
    receiver.consume()
    try:
        worker('-E', '-c', '2')
        retried = tasks.own_backend.delay('retry', 0)
        out = tmp_path / 'sleep.txt'
        killed = tasks.sleeper.delay(str(out), 'long', 60)
        wait_until(lambda: any(line.startswith('start long') for line in lines(out)), message='started')
        tasks.app.control.revoke(killed.id, terminate=True, signal='SIGKILL')
        events = collect(
            receiver, lambda ev: 'task-revoked' in of(ev, killed.id) and 'task-succeeded' in of(ev, retried.id)
        )
    finally:
        receiver.close()
    assert of(events, retried.id)['task-retried']['exception'] == "ValueError('again')"
    revoked = of(events, killed.id)['task-revoked']
    assert (revoked['terminated'], revoked['signum'], revoked['expired']) == (True, signal.SIGKILL, False)


def test_enable_and_disable_events_remotely(tasks: Any, worker: Any) -> None:
    w = worker('-n', 'ev2@%h')
    hostname = next(word for word in w.log.split() if word.startswith('ev2@'))
    with tasks.app.events.Receiver() as receiver:
        quiet = tasks.add.delay(1, 1)
        assert quiet.get(timeout=30) == 2
        reply = tasks.app.control.broadcast('enable_events', reply=True, timeout=5, limit=1, destination=[hostname])
        assert reply == [{hostname: {'ok': 'task events enabled'}}]
        loud = tasks.add.delay(2, 2)
        events = collect(receiver, lambda evs: 'task-succeeded' in of(evs, loud.id))
        assert 'task-received' not in of(events, quiet.id)  # its answer may reach the parent after enabling
        again = tasks.app.control.broadcast('enable_events', reply=True, timeout=5, limit=1, destination=[hostname])
        assert again == [{hostname: {'ok': 'task events already enabled'}}]
        off = tasks.app.control.broadcast('disable_events', reply=True, timeout=5, limit=1, destination=[hostname])
        assert off == [{hostname: {'ok': 'task events disabled'}}]
        hushed = tasks.add.delay(3, 3)
        assert hushed.get(timeout=30) == 6
        tasks.app.control.broadcast('heartbeat', destination=[hostname])
        events = collect(receiver, lambda evs: any(e.get('freq') == 5 for e in evs))
        assert not of(events, hushed.id)


def test_events_command_dump_and_live_view(tasks: Any, worker: Any, tmp_path: Path, urls: dict[str, str]) -> None:
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parent), **urls)
    env.pop('PYTEST_CURRENT_TEST', None)
    base = [sys.executable, '-m', 'fastq', '-A', 'worker_tasks', 'events']
    logs = {name: tmp_path / f'{name}.out' for name in ('dump', 'view')}
    procs = {}
    for name, extra in (('dump', ['--dump']), ('view', ['--freq', '0.3', '--max-time', '60'])):
        with open(logs[name], 'wb') as log:
            procs[name] = subprocess.Popen([*base, *extra], cwd=tmp_path, env=env, stdout=log, stderr=log)
    try:
        wait_until(lambda: '-> evdump: starting capture...' in logs['dump'].read_text(), message='dump started')
        wait_until(lambda: 'fastq events:' in logs['view'].read_text(), message='view started')
        worker('-E', '-n', 'ev3@%h')
        result = tasks.add.delay(4, 5)
        assert result.get(timeout=30) == 9

        line = re.escape(f'task succeeded: worker_tasks.add({result.id}) args=(4, 5) kwargs={{}} clock=')

        def dumped() -> bool:
            return re.search(
                line + r'\d+, local_received=[\d.]+, pid=\d+, result=9, runtime=[\d.e-]+, utcoffset=',
                logs['dump'].read_text(),
            )

        wait_until(dumped, message='the dump shows the task')
        text = logs['dump'].read_text()
        assert re.search(
            r'ev3@\S+ \[\d{4}-\d\d-\d\d [\d:.]+\+00:00\] started: active=0, clock=\d+, freq=2.0, loadavg=', text
        ), text
        assert f'task received: worker_tasks.add({result.id}) args=(4, 5) kwargs={{}} clock=' in text
        wait_until(lambda: f'{result.id}  worker_tasks.add' in logs['view'].read_text(), message='the view shows it')

        def shown() -> bool:  # (a frame drawn between the task's events shows it STARTED: wait for a later one)
            view = logs['view'].read_text()
            return 'Workers: 1 online, 0 offline' in view and 'SUCCESS' in view

        wait_until(shown, message='the view shows the worker and the task succeeded')
    finally:
        for proc in procs.values():
            proc.send_signal(signal.SIGINT)
            proc.wait(30)


CAMERA = """
import json
from fastq.events.snapshot import Polaroid


class FileCam(Polaroid):
    clear_after = True  # each shot sees what happened since the last one

    def on_shutter(self, state):
        if not state.event_count:
            return
        with open('shots.jsonl', 'a') as f:
            tasks = {uuid: [task.name, task.state] for uuid, task in state.tasks.items()}
            workers = sorted(state.workers)
            f.write(json.dumps({'events': state.event_count, 'tasks': tasks, 'workers': workers}) + '\\n')
"""


@pytest.mark.parametrize('broker_kind', ['redis'])
def test_events_camera_detached(tasks: Any, worker: Any, tmp_path: Path, urls: dict[str, str]) -> None:
    """`celery events --camera=... --frequency=... --detach --pidfile --logfile`, Celery's snapshot recorder: a
    Polaroid subclass sees the tasks and workers at each shot, emptied after each (clear_after), and a
    SIGTERM (to the pid in the pidfile) stops it with the pidfile removed."""
    (tmp_path / 'cam.py').write_text(CAMERA)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(Path(__file__).resolve().parent), str(tmp_path)]), **urls)
    env.pop('PYTEST_CURRENT_TEST', None)
    pidfile, logfile, shots = tmp_path / 'cam.pid', tmp_path / 'cam.log', tmp_path / 'shots.jsonl'
    command = [sys.executable, '-m', 'fastq', '-A', 'worker_tasks', 'events', '--camera', 'cam.FileCam']
    command += ['--frequency', '0.2', '--detach', '--pidfile', str(pidfile), '--logfile', str(logfile)]
    done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    wait_until(pidfile.exists, message='the camera wrote its pidfile')
    pid = int(pidfile.read_text())
    try:
        worker('-E', '-n', 'cam1@%h')
        result = tasks.add.delay(20, 22)
        assert result.get(timeout=30) == 42

        def seen() -> bool:
            if not shots.exists():
                return False
            return any(
                json.loads(line)['tasks'].get(result.id) == ['worker_tasks.add', 'SUCCESS']
                for line in shots.read_text().splitlines()
            )

        wait_until(seen, message='a shot with the finished task')
        lines = [json.loads(line) for line in shots.read_text().splitlines()]
        assert any(any(w.startswith('cam1@') for w in shot['workers']) for shot in lines)
        # cleared after each shot: the finished task is in one shot only
        assert sum(result.id in shot['tasks'] and shot['tasks'][result.id][1] == 'SUCCESS' for shot in lines) == 1
    finally:
        os.kill(pid, signal.SIGTERM)
    wait_until(lambda: not pidfile.exists(), message='the camera stopped and removed its pidfile')


@pytest.mark.parametrize('broker_kind', ['redis'])
def test_a_task_sends_custom_events(tasks: Any, worker: Any) -> None:
    # Task.send_event: custom event types reach receivers (and Flower), -E or not
    receiver = tasks.app.events.Receiver()
    receiver.consume()
    try:
        worker('-n', 'custom@%h')
        result = tasks.announce.delay(2)
        assert result.get(timeout=30) == 2
        events = collect(receiver, lambda events: any(e['type'] == 'task-progress' for e in events))
    finally:
        receiver.close()
    event = next(e for e in events if e['type'] == 'task-progress')
    assert event['uuid'] == result.id and event['current'] == 2 and event['total'] == 3
    assert event['hostname'].startswith('custom@')


@pytest.mark.parametrize('broker_kind', ['redis'])
def test_the_monitoring_guides_real_time_example(tasks: Any, worker: Any) -> None:
    # "Real-time processing" (Monitoring and Management Guide), as written there, on app.connection()
    app = tasks.app
    state = app.events.State()
    failed: list[str] = []

    def announce_failed_tasks(event: dict[str, Any]) -> None:
        state.event(event)
        task = state.tasks.get(event['uuid'])
        failed.append('TASK FAILED: %s[%s] %s' % (task.name, task.uuid, task.info()))  # noqa: UP031 (the guide's)

    worker('-E', '-n', 'mon@%h')
    with app.connection() as connection:
        assert connection.as_uri().startswith('redis://') and connection.ensure_connection(max_retries=1)
        recv = app.events.Receiver(connection, handlers={'task-failed': announce_failed_tasks, '*': state.event})
        result = tasks.fail.delay('boom')
        deadline = time.monotonic() + 30
        while not failed and time.monotonic() < deadline:
            recv.capture(limit=None, timeout=0.5, wakeup=True)
    assert failed and failed[0].startswith(f'TASK FAILED: worker_tasks.fail[{result.id}]')
    assert "'exception':" in failed[0]
    # the Calling guide's connection handling: a pooled connection and producer passed to apply_async
    with app.pool.acquire(block=True) as conn, app.producer_or_acquire() as producer:
        sent = [tasks.add.apply_async((i, i), connection=conn, producer=producer) for i in range(3)]
    assert [r.get(timeout=30) for r in sent] == [0, 2, 4]
