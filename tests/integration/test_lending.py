"""The broker's lead lent to an idle pool child (fastq.worker.lending): real Redis, real worker processes.

Every other worker test on Redis runs with lending on too; these drive the cases it must get right: a child
that dies holding the lead or a task it took, revocations, ETAs and other queues while the lead is lent, and
no reservation left behind.
"""

from __future__ import annotations

import os
import signal
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
import redis

from fastq import group, states
from fastq.exceptions import TaskRevokedError, WorkerLostError
from tests.harness import lines, wait_until

pytestmark = pytest.mark.slow


@pytest.fixture
def broker_kind() -> str:
    return 'redis'


def _pool(tasks: Any) -> dict[str, Any]:
    stats = tasks.app.control.inspect(timeout=5, limit=1).stats() or {}
    assert len(stats) == 1, stats
    pool: dict[str, Any] = next(iter(stats.values()))['pool']
    return pool


def _lent(tasks: Any) -> int:
    """Wait until the worker lends its lead (it does once idle, with task names it has seen): the holder's pid."""
    holder: list[int] = []

    def lent() -> bool:
        pool = _pool(tasks)
        if pool.get('lead-holder'):
            holder[:] = [pool['lead-holder']]
        return bool(holder)

    wait_until(lent, message='the lead lent to a child')
    return holder[0]


def _warm(tasks: Any, n: int = 20) -> None:
    """Round trips one at a time: the worker learns the task names and their runtimes."""
    for i in range(n):
        assert tasks.add.delay(i, 1).get(timeout=30) == i + 1


def _reservations(urls: dict[str, str]) -> tuple[int, int]:
    client = redis.Redis.from_url(urls['FASTQ_BROKER_URL'])
    try:
        return int(client.hlen('unacked')), int(client.zcard('unacked_index'))
    finally:
        client.close()


def test_idle_round_trips_are_run_by_the_child_holding_the_lead(tasks: Any, worker: Any, urls: dict[str, str]) -> None:
    worker()
    _warm(tasks)
    holder = _lent(tasks)
    pids = {tasks.pid.delay().get(timeout=30) for _ in range(5)}  # a new name: the parent runs the first
    _lent(tasks)
    pids |= {tasks.pid.delay().get(timeout=30) for _ in range(30)}
    assert [tasks.add.delay(i, i).get(timeout=30) for i in range(300)] == [i + i for i in range(300)]
    # (lent again once idle: on a loaded machine the parent may still hold it back for a moment)
    wait_until(lambda: _pool(tasks)['lead-holder'] in pids | {holder}, message='the lead lent to a child')
    loans = _pool(tasks)['lead-loans']
    assert [tasks.late_add.delay(i, 2).get(timeout=30) for i in range(50)] == [i + 2 for i in range(50)]
    wait_until(lambda: _reservations(urls) == (0, 0), message='every reservation acked')
    assert _pool(tasks)['lead-loans'] <= loans + 5  # not lent and taken back for every task


def test_log_says_received_before_succeeded_once_per_task(tasks: Any, worker: Any) -> None:
    # A short task the holder took is reported to the parent with its answer; the "received" line (Celery's
    # words, in that order) is then the child's, written before the task runs, and the parent writes none.
    w = worker()
    _warm(tasks)
    holder = _lent(tasks)
    ids = []
    for i in range(40):
        result = tasks.add.delay(i, i)
        assert result.get(timeout=30) == i + i
        ids.append(result.id)
    wait_until(lambda: all(f'[{task_id}] succeeded' in w.log for task_id in ids), message='every task logged')
    log = w.log.splitlines()
    by_child = 0
    for task_id in ids:
        received = [n for n, line in enumerate(log) if f'[{task_id}] received' in line]
        succeeded = [n for n, line in enumerate(log) if f'[{task_id}] succeeded' in line]
        assert len(received) == 1 and len(succeeded) == 1, (task_id, received, succeeded)
        assert received[0] < succeeded[0], log[received[0]]
        by_child += 'ForkPoolWorker' in log[received[0]]
    assert by_child, f'no task was taken by the child holding the lead (pid {holder})'


def test_a_burst_is_fetched_in_batches_and_every_task_runs_once(tasks: Any, worker: Any, tmp_path: Path) -> None:
    worker()
    _warm(tasks)
    _lent(tasks)
    out = tmp_path / 'ran.txt'
    outcome = group(tasks.record.s(str(out), f'k{i}') for i in range(500)).apply_async()
    assert sorted(outcome.get(timeout=60)) == sorted(f'k{i}' for i in range(500))
    assert sorted(line.split()[1] for line in lines(out)) == sorted(f'k{i}' for i in range(500))


def test_child_killed_while_holding_the_lead(tasks: Any, worker: Any, urls: dict[str, str]) -> None:
    w = worker()
    _warm(tasks)
    holder = _lent(tasks)
    os.kill(holder, signal.SIGKILL)
    wait_until(lambda: _pool(tasks).get('lead-holder') != holder, message='the lead back from the dead child')
    assert [tasks.add.delay(i, 3).get(timeout=30) for i in range(50)] == [i + 3 for i in range(50)]
    assert 'exited' in w.log
    wait_until(lambda: _reservations(urls) == (0, 0), message='every reservation acked')


@pytest.mark.parametrize('warm_seconds', [0, 0.02], ids=['known-short', 'not-short'])
def test_child_killed_running_a_task_it_took_loses_it_once(
    tasks: Any, worker: Any, tmp_path: Path, urls: dict[str, str], warm_seconds: float
) -> None:
    # A task of a name known to run short is reported to the parent with its answer, acked by the child; if
    # the child dies first the parent finds it in the memory they share. Any other is reported before it
    # starts and acked by the parent. Either way it is lost once, and no reservation is left (it would run
    # again after the visibility timeout).
    out = tmp_path / 'naps.txt'
    w = worker()
    for i in range(10):
        tasks.napper.delay(str(out), f'warm{i}', warm_seconds).get(timeout=30)
    _lent(tasks)
    victim = tasks.napper.delay(str(out), 'victim', 30)
    wait_until(lambda: any(line.startswith('start victim') for line in lines(out)), message='the task started')
    pid = int(next(line for line in lines(out) if line.startswith('start victim')).split()[2])
    os.kill(pid, signal.SIGKILL)
    with pytest.raises(WorkerLostError):
        victim.get(timeout=30)
    assert tasks.add.delay(1, 2).get(timeout=30) == 3
    wait_until(lambda: _reservations(urls) == (0, 0), message='the lost task acked')
    time.sleep(0.5)
    assert sum(1 for line in lines(out) if line.startswith('start victim')) == 1
    assert 'WorkerLostError' in w.log


def test_revoked_task_is_not_run_by_the_child(tasks: Any, worker: Any) -> None:
    worker()
    _warm(tasks)
    _lent(tasks)
    task_id = str(uuid.uuid4())
    tasks.app.control.revoke(task_id)
    wait_until(
        lambda: task_id in sum((tasks.app.control.inspect(timeout=5, limit=1).revoked() or {}).values(), []),
        message='the worker knows the revoked id',
    )
    result = tasks.add.apply_async((1, 1), task_id=task_id)
    with pytest.raises(TaskRevokedError):
        result.get(timeout=30)
    assert result.state == states.REVOKED
    assert tasks.add.delay(2, 2).get(timeout=30) == 4


def test_eta_task_taken_by_the_child_waits_for_its_eta(tasks: Any, worker: Any) -> None:
    worker()
    _warm(tasks)
    _lent(tasks)
    sent = time.time()
    ran_at = tasks.when_run.apply_async(countdown=1.5).get(timeout=30)
    assert ran_at >= sent + 1.5
    assert tasks.add.delay(2, 2).get(timeout=30) == 4


def test_other_queue_served_while_the_lead_is_lent(tasks: Any, worker: Any) -> None:
    worker('-Q', 'celery,other')
    _warm(tasks)
    _lent(tasks)
    assert tasks.add.apply_async((5, 5), queue='other').get(timeout=30) == 10
    assert [tasks.add.apply_async((i, 0), queue='other').get(timeout=30) for i in range(20)] == list(range(20))
    assert tasks.add.delay(1, 1).get(timeout=30) == 2


def test_long_task_taken_by_the_child_does_not_hold_up_others(tasks: Any, worker: Any) -> None:
    worker()
    _warm(tasks)
    _lent(tasks)
    slow = tasks.long.delay(5)  # a name never run: the parent takes the lead back at once
    assert [tasks.add.delay(i, 1).get(timeout=4) for i in range(10)] == [i + 1 for i in range(10)]
    assert not slow.ready()
    assert slow.get(timeout=30) == 5


def test_warm_shutdown_while_lent_hands_everything_back(tasks: Any, worker: Any, urls: dict[str, str]) -> None:
    w = worker()
    _warm(tasks)
    _lent(tasks)
    w.stop(30)
    assert _reservations(urls) == (0, 0)
    results = [tasks.add.delay(i, i) for i in range(10)]
    worker()
    assert [r.get(timeout=30) for r in results] == [i + i for i in range(10)]


def test_prefetch_multiplier_one_holds_one_task_with_the_lead_lent(tasks: Any, worker: Any, tmp_path: Path) -> None:
    # The FAQ's "disable prefetching": acks_late with a window of one. While the lead is lent the fetcher must
    # neither reserve beside the child nor, once the lead is back, fetch with a limit read before the child
    # took its task: either way a second task was reserved while the first ran (two "received", one running).
    w = worker('-c', '1', '--prefetch-multiplier', '1')
    out = str(tmp_path / 'ran.txt')
    assert tasks.slow_record.delay(out, 'warm', 0).get(timeout=30) == 'warm'  # the name is now lendable
    _lent(tasks)
    results = [tasks.slow_record.delay(out, f'k{i}', 0.3) for i in range(6)]
    assert [r.get(timeout=30) for r in results] == [f'k{i}' for i in range(6)]
    held = most = 0
    for line in w.log.splitlines():
        if 'worker_tasks.slow_record[' in line:
            held += line.endswith('] received') - (' succeeded in ' in line)
            most = max(most, held)
    assert most == 1, w.log
