"""`-P asyncio`: real workers whose children run many tasks at once on an event loop.

Concurrency is shown by the tasks' own records (every start before any end), never by wall-clock thresholds.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any

import pytest

from fastq import states
from fastq.exceptions import TimeLimitExceeded, WorkerLostError
from tests.harness import lines, wait_until

pytestmark = pytest.mark.slow


def _events(path: Path, kind: str) -> dict[str, list[list[str]]]:
    """key -> the fields after `kind key` of each such line a task recorded (pid, and time where recorded)."""
    found: dict[str, list[list[str]]] = {}
    for line in lines(path):
        fields = line.split()
        if fields[0] == kind:
            found.setdefault(fields[1], []).append(fields[2:])
    return found


def _max_overlap(path: Path) -> int:
    """The most tasks that were running at one moment, from their recorded start and end times."""
    edges = [(float(f[-1]), 1) for runs in _events(path, 'start').values() for f in runs]
    edges += [(float(f[-1]), -1) for runs in _events(path, 'done').values() for f in runs]
    running = peak = 0
    for _, step in sorted(edges, key=lambda e: (e[0], e[1])):  # an end before a start at the same instant
        running += step
        peak = max(peak, running)
    return peak


def _started(path: Path, *keys: str) -> bool:
    starts = _events(path, 'start')
    return all(key in starts for key in keys)


def test_async_tasks_run_concurrently_in_one_process(tasks: Any, worker: Any, tmp_path: Path) -> None:
    out = tmp_path / 'runs.txt'
    w = worker('-P', 'asyncio', '-c', '50', '--processes', '1')
    assert '.> concurrency: 1 process x 50 tasks each (asyncio)' in w.log
    results = [tasks.asleep.delay(str(out), str(i), 1) for i in range(50)]
    assert [r.get(timeout=120) for r in results] == [str(i) for i in range(50)]
    starts = _events(out, 'start')
    assert sorted(starts, key=int) == [str(i) for i in range(50)]  # each ran once
    assert len({f[0] for runs in starts.values() for f in runs}) == 1  # in one process
    # Sequential runs would never overlap; 50 one-second sleeps sent together overlap almost entirely.
    assert _max_overlap(out) >= 25


def test_request_context_is_per_task(tasks: Any, worker: Any) -> None:
    """Each of many concurrent runs of one bound task sees its own request, before and after awaiting."""
    w = worker('-P', 'asyncio', '-c', '30', '--processes', '1')
    results = [tasks.aself.delay(0.5) for _ in range(30)]
    assert [r.get(timeout=60) for r in results] == [f'{r.id} {r.id}' for r in results]
    for r in results:  # and its log records carry its own task id
        w.wait_for(f'worker_tasks.aself[{r.id}]: aself {r.id}')


def test_sync_tasks_run_in_the_child_thread_pool(tasks: Any, worker: Any, tmp_path: Path) -> None:
    out = tmp_path / 'runs.txt'
    worker('-P', 'asyncio', '-c', '10', '--processes', '1')
    assert [tasks.add.delay(i, 1).get(timeout=30) for i in range(5)] == [1, 2, 3, 4, 5]
    results = [tasks.tsleep.delay(str(out), str(i), 1) for i in range(10)]
    assert sorted(r.get(timeout=60) for r in results) == sorted(str(i) for i in range(10))
    assert _max_overlap(out) >= 5


def test_soft_time_limit_raises_inside_the_coroutine(tasks: Any, worker: Any) -> None:
    worker('-P', 'asyncio', '--processes', '1')
    assert tasks.asoft.apply_async((30,), soft_time_limit=0.5).get(timeout=30) == 'soft limit caught'


def test_hard_time_limit_cancels_the_coroutine_only(tasks: Any, worker: Any, tmp_path: Path) -> None:
    """The coroutine over its limit is cancelled (it sees CancelledError) and fails with TimeLimitExceeded;
    the tasks running beside it in the same process go on undisturbed."""
    out = tmp_path / 'runs.txt'
    w = worker('-P', 'asyncio', '-c', '10', '--processes', '1')
    others = [tasks.asleep.delay(str(out), f'o{i}', 4) for i in range(3)]
    wait_until(lambda: _started(out, 'o0', 'o1', 'o2'), message='the other tasks started')
    limited = tasks.acancellable.apply_async((str(out), 'limited', 60), time_limit=1)
    with pytest.raises(TimeLimitExceeded):
        limited.get(timeout=60)
    assert limited.state == states.FAILURE
    assert 'Hard time limit (1' in w.log
    assert [r.get(timeout=60) for r in others] == ['o0', 'o1', 'o2']
    starts, cancelled = _events(out, 'start'), _events(out, 'cancelled')
    assert [len(starts[f'o{i}']) for i in range(3)] == [1, 1, 1]  # not run again: nothing was killed
    pids = {runs[0][0] for runs in starts.values()}
    assert len(pids) == 1 and cancelled['limited'][0][0] in pids
    assert 'Killing' not in w.log
    assert tasks.add.delay(3, 3).get(timeout=30) == 6


def test_coroutine_that_blocks_its_loop_gets_its_child_killed(tasks: Any, worker: Any, tmp_path: Path) -> None:
    """A coroutine over its limit that does not yield cannot be cancelled: the parent kills its process.
    That task fails with TimeLimitExceeded; the acks_late tasks that process held are requeued and succeed;
    an early-acked one is lost (WorkerLostError): it had started, and it was promised to run at most once."""
    out = tmp_path / 'runs.txt'
    w = worker('-P', 'asyncio', '-c', '10', '--processes', '1')
    others = [tasks.asleep_late.delay(str(out), f'o{i}', 4) for i in range(3)]
    early = tasks.asleep.delay(str(out), 'early', 30)
    wait_until(lambda: _started(out, 'o0', 'o1', 'o2', 'early'), message='the other tasks started')
    blocker = tasks.ablock.apply_async((str(out), 'blocker', 30), time_limit=1)
    with pytest.raises(TimeLimitExceeded):
        blocker.get(timeout=60)
    assert [r.get(timeout=60) for r in others] == ['o0', 'o1', 'o2']
    starts, dones = _events(out, 'start'), _events(out, 'done')
    assert len(starts['blocker']) == 1  # the task over its limit is not run again
    assert [len(starts[f'o{i}']) for i in range(3)] == [2, 2, 2]  # interrupted, then run again
    assert [len(dones[f'o{i}']) for i in range(3)] == [1, 1, 1]
    first, second = starts['o0'][0][0], starts['o0'][1][0]
    assert starts['blocker'][0][0] == first != second  # on a new child
    assert 'Killing ForkPoolWorker-1' in w.log and '3 (acks_late) will run again and 1 (acked early)' in w.log
    for r in others:
        assert r.state == states.SUCCESS
    with pytest.raises(WorkerLostError):
        early.get(timeout=60)
    assert len(starts['early']) == 1


def test_child_sigkill_loses_what_it_held_per_acks_late(tasks: Any, worker: Any, tmp_path: Path) -> None:
    """A child dies with four tasks in flight: all had started. acks_late tasks with reject_on_worker_lost
    run again; acks_late ones without it fail with WorkerLostError, as prefork's running task would."""
    out = tmp_path / 'runs.txt'
    w = worker('-P', 'asyncio', '-c', '10', '--processes', '1')
    again = [tasks.alate_requeue.delay(str(out), f'r{i}', 3) for i in range(2)]
    lost = [tasks.alate.delay(str(out), f'l{i}', 3) for i in range(2)]
    wait_until(lambda: _started(out, 'r0', 'r1', 'l0', 'l1'), message='all four started')
    child = int(_events(out, 'start')['r0'][0][0])
    os.kill(child, signal.SIGKILL)
    assert [r.get(timeout=60) for r in again] == ['r0', 'r1']
    for r in lost:
        with pytest.raises(WorkerLostError):
            r.get(timeout=60)
    starts = _events(out, 'start')
    assert [len(starts[k]) for k in ('r0', 'r1', 'l0', 'l1')] == [2, 2, 1, 1]
    assert 'exited with' in w.log or 'exited unexpectedly' in w.log
    assert tasks.add.delay(1, 2).get(timeout=30) == 3


def test_revoke_terminate_cancels_one_coroutine(tasks: Any, worker: Any, tmp_path: Path) -> None:
    out = tmp_path / 'runs.txt'
    worker('-P', 'asyncio', '-c', '10', '--processes', '1')
    other = tasks.asleep.delay(str(out), 'other', 3)
    doomed = tasks.acancellable.delay(str(out), 'doomed', 60)
    wait_until(lambda: _started(out, 'other', 'doomed'), message='both started')
    doomed.revoke(terminate=True)
    wait_until(lambda: doomed.state == states.REVOKED, message='revoked')
    assert 'doomed' in _events(out, 'cancelled')
    assert other.get(timeout=60) == 'other'
    assert len(_events(out, 'start')['other']) == 1


def test_max_tasks_per_child_recycles_without_losing_work(tasks: Any, worker: Any, tmp_path: Path) -> None:
    out = tmp_path / 'runs.txt'
    worker('-P', 'asyncio', '-c', '5', '--processes', '1', '--max-tasks-per-child', '4')
    results = [tasks.asleep.delay(str(out), str(i), 0.2) for i in range(20)]
    assert sorted(r.get(timeout=120) for r in results) == sorted(str(i) for i in range(20))
    starts = _events(out, 'start')
    assert all(len(runs) == 1 for runs in starts.values())  # none ran twice
    assert len({runs[0][0] for runs in starts.values()}) >= 5  # four tasks per child


def test_warm_shutdown_finishes_tasks_in_flight(tasks: Any, worker: Any, tmp_path: Path) -> None:
    out = tmp_path / 'runs.txt'
    w = worker('-P', 'asyncio', '-c', '10', '--processes', '1')
    results = [tasks.asleep.delay(str(out), str(i), 1) for i in range(5)]
    wait_until(lambda: _started(out, *(str(i) for i in range(5))), message='all started')
    assert w.stop() == 0
    assert [r.get(timeout=10) for r in results] == [str(i) for i in range(5)]
