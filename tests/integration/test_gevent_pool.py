"""`-P gevent`: real workers whose tasks run in greenlets, the command line monkey-patching first.

Concurrency is shown by the tasks' own records (every start before any end), never by wall-clock thresholds.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from fastq import states
from fastq.exceptions import TimeLimitExceeded
from tests.harness import lines, wait_until

pytest.importorskip('gevent')
pytestmark = pytest.mark.slow


def test_tasks_run_in_greenlets_at_once(tasks: Any, worker: Any, tmp_path: Path) -> None:
    w = worker('-P', 'gevent', '-c', '20')
    assert 'concurrency: 20 (gevent)' in w.log
    out = tmp_path / 'ran.txt'
    results = [tasks.sleeper.delay(str(out), f'k{i}', 2) for i in range(20)]
    assert sorted(r.get(timeout=60) for r in results) == sorted(f'k{i}' for i in range(20))
    kinds = [line.split()[0] for line in lines(out)]
    assert kinds == ['start'] * 20 + ['done'] * 20  # all twenty slept at once, in one process
    # pool_grow / pool_shrink change how many greenlets run at once, as Celery's gevent pool
    assert tasks.app.control.pool_grow(5, reply=True, timeout=5, limit=1)[0]
    wait_until(lambda: _max_concurrency(tasks) == 25, 30, 'grown to 25')
    tasks.app.control.pool_shrink(10, reply=True, timeout=5, limit=1)
    wait_until(lambda: _max_concurrency(tasks) == 15, 30, 'shrunk to 15')


def _max_concurrency(tasks: Any) -> int | None:
    stats = tasks.app.control.inspect(timeout=2, limit=1).stats() or {}
    return next((s['pool']['max-concurrency'] for s in stats.values()), None)


def test_time_limits_and_terminate(tasks: Any, worker: Any) -> None:
    """A soft limit raises inside the greenlet (the task catches it); a hard one kills the greenlet and fails
    the task with TimeLimitExceeded; revoke(terminate=True) kills one; the worker goes on throughout."""
    w = worker('-P', 'gevent', '-c', '10')
    assert tasks.soft.apply_async((30,), soft_time_limit=1).get(timeout=60) == 'soft limit caught'
    hard = tasks.long.apply_async((60,), time_limit=1)
    with pytest.raises(TimeLimitExceeded):
        hard.get(timeout=60)
    w.wait_for('Hard time limit (1s) exceeded for worker_tasks.long')
    victim = tasks.long.delay(60)
    w.wait_for(f'Task worker_tasks.long[{victim.id}] received')
    wait_until(lambda: any(j['id'] == victim.id for j in _active(tasks)), 30, 'the task started')
    # worker_pid: as Celery's gevent pool, the id of the greenlet running it (fastq's gave None)
    assert all(isinstance(j['worker_pid'], int) for j in _active(tasks) if j['id'] == victim.id)
    victim.revoke(terminate=True)
    wait_until(lambda: victim.state == states.REVOKED, 30, 'revoked')
    assert tasks.add.delay(2, 3).get(timeout=30) == 5


def _active(tasks: Any) -> list[dict[str, Any]]:
    replies = tasks.app.control.inspect(timeout=2, limit=1).active() or {}
    return [job for jobs in replies.values() for job in jobs]


def test_the_pool_needs_the_command_lines_patching(tasks: Any, worker: Any, tmp_path: Path) -> None:
    """`worker_pool = 'gevent'` in settings, without -P on the command line: the process was not patched
    early enough, so the worker refuses to start, saying what to do, rather than stall."""
    w = worker(wait=False, extra_env={'FASTQ_WORKER_POOL': 'gevent'})
    wait_until(lambda: w.proc is not None and w.proc.poll() is not None, 60, 'the worker exited')
    assert w.proc.returncode != 0
    assert 'fastq worker -P gevent' in w.log


@pytest.mark.parametrize('broker_kind', ['redis'])
def test_refused_on_rabbitmq(worker: Any, amqp_url: str) -> None:
    """fastq's AMQP client waits inside rabbitmq-c, where gevent cannot switch greenlets: refused at start,
    naming the pools that work there, rather than a worker that hangs."""
    w = worker('-P', 'gevent', wait=False, extra_env={'FASTQ_BROKER_URL': amqp_url})
    wait_until(lambda: w.proc is not None and w.proc.poll() is not None, 60, 'the worker exited')
    assert w.proc.returncode != 0 and 'not on RabbitMQ' in w.log and '-P threads' in w.log
