"""What task code relies on beyond a plain call, through real workers on SQLite and on Redis.

Retries, revocations that survive a worker being offline, request context, states, Reject/Ignore, hooks,
rate limits (per worker and fleet-wide), routing, and signals fired in the worker and its children.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from fastq import Queue, states
from fastq.exceptions import MaxRetriesExceededError
from tests.harness import lines, wait_until

pytestmark = pytest.mark.slow


@pytest.fixture
def sem(tasks: Any) -> Any:
    import semantics_tasks

    return semantics_tasks


@pytest.fixture
def sworker(worker: Any) -> Any:
    """A worker that also loads semantics_tasks."""
    return lambda *args, **kw: worker('-I', 'semantics_tasks', *args, **kw)


def test_autoretry_with_backoff(sem: Any, sworker: Any, tmp_path: Path) -> None:
    sworker()
    out = tmp_path / 'tries.txt'
    assert sem.auto.delay(str(out), 2).get(timeout=60) == 2
    assert lines(out) == ['try 0', 'try 1', 'try 2']


def test_autoretry_gives_up_with_the_original_exception(sem: Any, sworker: Any, tmp_path: Path) -> None:
    sworker()
    result = sem.auto.delay(str(tmp_path / 'x.txt'), 10)
    with pytest.raises(sem.Flaky, match='attempt 3'):
        result.get(timeout=60)


def test_max_retries_exceeded(sem: Any, sworker: Any) -> None:
    sworker()
    with pytest.raises(KeyError, match='original'):
        sem.give_up.delay(True).get(timeout=60)
    with pytest.raises(MaxRetriesExceededError):
        sem.give_up.delay(False).get(timeout=60)


def test_retry_state_then_success(sem: Any, sworker: Any) -> None:
    sworker()
    result = sem.slow_retry.delay()
    wait_until(lambda: result.state == states.RETRY, message='RETRY state while waiting to retry')
    assert result.get(timeout=60) == 'second time'


def test_track_started(sem: Any, sworker: Any) -> None:
    sworker()
    result = sem.tracked.delay(1.5)
    wait_until(lambda: result.state == states.STARTED, message='STARTED state')
    assert result.get(timeout=60) == 'done'


def test_ignore_result(sem: Any, sworker: Any, tmp_path: Path) -> None:
    w = sworker()
    out = tmp_path / 'ran.txt'
    result = sem.forgetful.delay(str(out))
    wait_until(lambda: lines(out) == ['ran'], message='task ran')
    w.wait_for(f'[{result.id}] succeeded')
    assert result.state == states.PENDING  # nothing was stored


def test_update_state_progress(sem: Any, sworker: Any, tmp_path: Path) -> None:
    sworker()
    out = tmp_path / 'steps.txt'
    result = sem.progress.delay(3, str(out))
    wait_until(lambda: result.state == 'PROGRESS', message='custom state')
    assert result.info['total'] == 3 and 0 <= result.info['current'] < 3
    assert result.get(timeout=60) == 3


def test_reject_and_ignore(sem: Any, sworker: Any, tasks: Any) -> None:
    w = sworker()
    rejected = sem.rejecting.delay(False)
    wait_until(lambda: tasks.app.broker.dead_letters.get(rejected.id) is not None, message='rejected, kept aside')
    assert 'rejected by the task' in tasks.app.broker.dead_letters.get(rejected.id).reason
    ignored = sem.ignoring.delay()
    w.wait_for(f'[{ignored.id}] ignored')
    assert ignored.state == states.PENDING


def test_task_base_class_hooks(sem: Any, sworker: Any, tmp_path: Path) -> None:
    sworker()
    out = tmp_path / 'hooks.txt'
    assert sem.hooked.delay(str(out), False).get(timeout=60) == 'hooked ok'
    wait_until(lambda: len(lines(out)) == 2, message='success hooks ran')
    with pytest.raises(RuntimeError):
        sem.hooked.delay(str(out), True).get(timeout=60)
    # As in Celery, the state is stored before the hooks run: wait for them.
    wait_until(lambda: len(lines(out)) == 4, message='all hooks ran')
    assert lines(out) == [
        'on_success hooked ok',
        'after_return SUCCESS',
        'on_failure RuntimeError',
        'after_return FAILURE',
    ]


def test_revoke_survives_an_offline_worker(tasks: Any, worker: Any, tmp_path: Path) -> None:
    out = tmp_path / 'ran.txt'
    result = tasks.record.delay(str(out), 'x')
    result.revoke()  # no worker is running: Celery would lose this revocation
    w = worker()
    wait_until(lambda: result.state == states.REVOKED, timeout=60, message='REVOKED once a worker saw it')
    assert f'Discarding revoked task: worker_tasks.record[{result.id}]' in w.log
    assert not out.exists()


def _times(path: Path) -> list[float]:
    return sorted(float(line.split()[1]) for line in lines(path))


def test_rate_limit_per_worker_and_at_runtime(sem: Any, sworker: Any, tmp_path: Path) -> None:
    sworker()
    out = tmp_path / 'limited.txt'
    results = [sem.limited.delay(str(out), str(i)) for i in range(6)]
    [r.get(timeout=60) for r in results]
    gaps = [b - a for a, b in zip(_times(out), _times(out)[1:], strict=False)]
    assert min(gaps) >= 0.2  # 4/s: never two within 250 ms (lower bound only, whatever the machine's speed)
    replies = sem.app.control.rate_limit('semantics_tasks.limited', '1/s', reply=True, timeout=3)
    assert replies and list(replies[0].values())[0] == {'ok': 'new rate limit set successfully'}
    out.unlink()
    results = [sem.limited.delay(str(out), str(i)) for i in range(3)]
    [r.get(timeout=60) for r in results]
    gaps = [b - a for a, b in zip(_times(out), _times(out)[1:], strict=False)]
    assert min(gaps) >= 0.9


def test_fleet_wide_rate_limit_across_workers(sem: Any, sworker: Any, tmp_path: Path) -> None:
    # a prefetch window of 2 each, so that neither worker can reserve all 8 tasks
    sworker('-n', 'a@%h', '--prefetch-multiplier', '1')
    sworker('-n', 'b@%h', '--prefetch-multiplier', '1')
    out = tmp_path / 'fleet.txt'
    results = [sem.fleet_limited.delay(str(out), str(i)) for i in range(8)]
    [r.get(timeout=60) for r in results]
    times = _times(out)
    assert len({line.split()[2] for line in lines(out)}) >= 2  # both workers' children ran some
    # 4/s for the whole fleet, not per worker (8/s): 8 starts span at least 7 token intervals. A start may
    # lag its token on a loaded machine, which can only shorten one gap, so allow one interval for it.
    assert times[-1] - times[0] >= 6 * 0.25


def test_routing_globs_functions_and_queues(sem: Any, sworker: Any, tasks: Any, tmp_path: Path) -> None:
    w = sworker('-Q', 'special,by_function,celery')
    out = tmp_path / 'routed.txt'
    app = tasks.app

    def router(name: str, args: Any, kwargs: Any, options: Any, task: Any = None, **kw: Any) -> Any:
        return {'queue': 'by_function'} if len(args) > 1 and args[1] == 'fn' else None

    app.conf.task_routes = [router, {'semantics_tasks.rout*': {'queue': 'special'}}]
    app._router = None
    try:
        a = sem.routed.delay(str(out), 'glob')
        b = sem.routed.delay(str(out), 'fn')
        c = sem.routed.apply_async((str(out), 'explicit'), queue=Queue('celery'))
        assert {a.get(timeout=60), b.get(timeout=60), c.get(timeout=60)} == {'glob', 'fn', 'explicit'}
    finally:
        del app.conf['task_routes']
        app._router = None
    assert app.broker.qsize('special') == 0
    log = w.log
    assert re.search(rf'semantics_tasks.routed\[{a.id}\] received', log)


def test_signals_fire_in_worker_and_children(sem: Any, worker: Any, tmp_path: Path, tasks: Any) -> None:
    log = tmp_path / 'signals.txt'
    w = worker('-I', 'semantics_tasks', extra_env={'FASTQ_TEST_SIGNAL_LOG': str(log)})
    assert tasks.add.delay(1, 1).get(timeout=60) == 2
    with pytest.raises(ValueError):
        tasks.fail.delay('x').get(timeout=60)
    tasks.app.send_task('nobody.knows')
    wait_until(lambda: any(line.startswith('task_unknown') for line in lines(log)), message='task_unknown')
    w.stop()
    names = [line.split()[0] for line in lines(log)]
    for expected in (
        'celeryd_init', 'worker_init', 'worker_process_init', 'worker_ready', 'task_received', 'task_prerun',
        'task_success', 'task_failure', 'task_postrun', 'task_unknown', 'worker_shutdown',
    ):  # fmt: skip
        assert expected in names, (expected, names)
    # Celery sends the reception signals in the worker's main thread; fastq does too while they have receivers
    # (its fetcher receives in its own thread only when none are connected).
    threads = {line.split()[2] for line in lines(log) if line.split()[0] in ('task_received', 'task_unknown')}
    assert threads == {'MainThread'}, threads
    pids = {line.split()[0]: line.split()[1] for line in lines(log)}
    assert pids['worker_process_init'] != pids['worker_ready']  # children fire their own
    assert names.index('worker_init') < names.index('worker_ready') < names.index('worker_shutdown')
