"""The dashboard's view of the fleet, folded from Celery-format events (no server needed)."""

from __future__ import annotations

import time
from pathlib import Path

from fastq import Fastq
from fastq.control import encode_envelope
from fastq.dashboard.feed import Feed, events_in
from fastq.dashboard.state import DashboardState


def ev(kind: str, **fields: object) -> dict[str, object]:
    return {'type': kind, 'hostname': 'w1@host', 'timestamp': time.time(), 'clock': 1, 'pid': 42,
            'utcoffset': 0, **fields}  # fmt: skip


def test_task_lifecycle_rates_and_failures() -> None:
    state = DashboardState(window=60)
    now = time.time()
    state.event(ev('task-sent', uuid='a', name='proj.add', queue='celery', timestamp=now - 0.5))
    state.event(ev('task-received', uuid='a', name='proj.add', args='(1, 2)', kwargs='{}', timestamp=now - 0.4))
    state.event(ev('task-started', uuid='a', timestamp=now - 0.3))
    state.event(ev('task-succeeded', uuid='a', result='3', runtime=0.01, timestamp=now - 0.2))
    state.event(ev('task-received', uuid='b', name='proj.boom', args='()', kwargs='{}', timestamp=now))
    state.event(ev('task-failed', uuid='b', exception="ValueError('x')", traceback='Traceback ...', timestamp=now))
    snap = state.snapshot(now=now)
    tasks = {t['uuid']: t for t in snap['tasks']}
    assert tasks['a']['state'] == 'SUCCESS' and tasks['a']['result'] == '3' and tasks['a']['worker'] == 'w1@host'
    assert tasks['a']['queue'] == 'celery'
    assert tasks['b']['state'] == 'FAILURE'
    assert [f['uuid'] for f in snap['failures']] == ['b']
    assert snap['failures'][0]['traceback'] == 'Traceback ...'
    assert snap['rates']['succeeded_per_s'] == 1 / 60 and snap['rates']['failed_per_s'] == 1 / 60
    assert {t['name'] for t in snap['rates']['by_task']} == {'proj.add', 'proj.boom'}
    assert len(snap['rates']['series']) == 60
    [queue] = snap['queues']
    assert queue['name'] == 'celery' and abs(queue['wait_p50'] - 0.2) < 1e-6  # sent -> started


def test_a_late_event_does_not_move_a_task_backwards() -> None:
    state = DashboardState()
    state.event(ev('task-succeeded', uuid='a', result='1', runtime=0.1))
    state.event(ev('task-started', uuid='a'))
    state.event(ev('task-received', uuid='a', name='proj.add'))
    [task] = state.snapshot()['tasks']
    assert task['state'] == 'SUCCESS' and task['name'] == 'proj.add'


def test_workers_online_by_heartbeat_and_offline_event() -> None:
    state = DashboardState()
    now = time.time()
    state.event(ev('worker-heartbeat', freq=2.0, active=1, processed=10, loadavg=[0.5, 0.4, 0.3], timestamp=now,
                   sw_ident='py-celery', sw_ver='5.7.0'))  # fmt: skip
    state.event(ev('worker-online', hostname='w2@host', freq=2.0, timestamp=now - 10))
    workers = {w['hostname']: w for w in state.snapshot(now=now)['workers']}
    assert workers['w1@host']['online'] and workers['w1@host']['processed'] == 10
    assert workers['w1@host']['software'] == 'py-celery 5.7.0'
    assert not workers['w2@host']['online']  # two heartbeats missed
    state.event(ev('worker-offline', timestamp=now))
    assert not {w['hostname']: w for w in state.snapshot(now=now)['workers']}['w1@host']['online']


def test_recent_tasks_are_bounded() -> None:
    state = DashboardState(max_tasks=10)
    for i in range(25):
        state.event(ev('task-received', uuid=str(i), name='t'))
    snap = state.snapshot(tasks=100)
    assert [t['uuid'] for t in snap['tasks']] == [str(i) for i in range(24, 14, -1)]


def test_events_in_reads_single_events_and_task_multi_batches() -> None:
    one = encode_envelope(ev('worker-heartbeat'), {'hostname': 'w1@host'}, 'celeryev', 'worker.heartbeat', 1)
    many = encode_envelope([ev('task-received', uuid='a'), ev('task-started', uuid='a')], {}, 'celeryev',
                           'task.multi', 1)  # fmt: skip
    assert [e['type'] for e in events_in(one)] == ['worker-heartbeat']
    assert [e['type'] for e in events_in(many)] == ['task-received', 'task-started']
    assert events_in(b'not an envelope') == []


def test_feed_reads_events_and_queue_depths_from_the_broker(tmp_path: Path) -> None:
    app = Fastq('dash', broker=f'sqlite:///{tmp_path}/b.sqlite3', backend=f'sqlite:///{tmp_path}/r.sqlite3')
    try:

        @app.task
        def noop() -> None:
            pass

        noop.delay()
        noop.delay()
        state = DashboardState()
        feed = Feed(app, state, depth_interval=0.1)
        feed.start()
        try:
            app.broker.fanout_publish(
                'celeryev',
                encode_envelope([ev('task-received', uuid='x', name='dash.noop')], {}, 'celeryev', 'task.multi', 1),
                'task.multi',
            )
            deadline = time.monotonic() + 10
            snap = state.snapshot()
            while time.monotonic() < deadline:
                snap = state.snapshot()
                if snap['tasks'] and any(q['depth'] == 2 for q in snap['queues']):
                    break
                time.sleep(0.05)
            assert [t['uuid'] for t in snap['tasks']] == ['x']
            assert {'name': 'celery', 'depth': 2, 'wait_p50': None} in snap['queues']
        finally:
            feed.stop()
    finally:
        app.close()
