"""The asyncio pool's logic without processes: time-limit guards, the async trace, and the parent's slots and
bookkeeping (fake children). Real workers are in tests/integration/test_asyncio_pool.py."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import pytest

from fastq import Fastq, states
from fastq._state import get_current_task
from fastq.exceptions import SoftTimeLimitExceeded, TimeLimitExceeded
from fastq.worker.job import Job
from fastq.worker.pool import aio, create_pool
from fastq.worker.pool.aio_child import CANCELLED, Limits, is_async_task, new_event_loop
from fastq.worker.pool.child import CANCEL, JOB, STOP
from fastq.worker.pool.prefork import _Child
from fastq.worker.trace import Outcome, execute_async

# --- time-limit guards ------------------------------------------------------------------------------------


def _run_limited(coro_fn: Any, time_limit: float | None = None, soft: float | None = None) -> Any:
    """Run `coro_fn()` as an asyncio pool child would, with these limits; returns its value or exception."""

    async def job() -> Any:
        limits = Limits(time_limit, 'job')
        task = asyncio.current_task()
        assert task is not None
        timers = limits.start(asyncio.get_running_loop(), task, soft)
        try:
            return await limits.guard(coro_fn())
        except BaseException as exc:
            return exc
        finally:
            for timer in timers:
                timer.cancel()
            assert task.cancelling() == (1 if limits.hard_fired else 0)

    return asyncio.run(job())


def test_guard_passes_values_and_exceptions_through() -> None:
    async def value() -> int:
        await asyncio.sleep(0)
        return 7

    async def raises() -> None:
        await asyncio.sleep(0)
        raise KeyError('k')

    assert _run_limited(value, time_limit=30, soft=20) == 7
    assert isinstance(_run_limited(raises, time_limit=30), KeyError)


def test_soft_limit_is_raised_at_the_await_and_can_be_caught() -> None:
    seen: list[str] = []

    async def body() -> str:
        try:
            await asyncio.sleep(30)
        except SoftTimeLimitExceeded:
            seen.append('soft')
            await asyncio.sleep(0)  # the task is not being cancelled any more: awaiting works
            return 'caught'
        return 'finished'

    assert _run_limited(body, soft=0.05) == 'caught'
    assert seen == ['soft']


def test_soft_limit_uncaught_fails_the_task() -> None:
    async def body() -> None:
        await asyncio.sleep(30)

    assert isinstance(_run_limited(body, soft=0.05, time_limit=30), SoftTimeLimitExceeded)


def test_hard_limit_cancels_and_fails_with_time_limit_exceeded() -> None:
    seen: list[str] = []

    async def body() -> None:
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            seen.append('cancelled')  # the coroutine sees a plain cancellation, so cleanups run
            raise

    exc = _run_limited(body, time_limit=0.05)
    assert isinstance(exc, TimeLimitExceeded) and exc.args == (0.05,)
    assert seen == ['cancelled']


def test_hard_limit_swallowed_still_fails() -> None:
    async def body() -> str:
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            await asyncio.sleep(0)
        return 'pretended to finish'

    assert isinstance(_run_limited(body, time_limit=0.05), TimeLimitExceeded)


def test_guard_leaves_other_cancellations_alone() -> None:
    async def main() -> Any:
        async def body() -> None:
            await asyncio.sleep(30)

        task = asyncio.ensure_future(Limits(30, 'job').guard(body()))
        await asyncio.sleep(0)
        task.cancel('terminated')
        try:
            await task
        except BaseException as exc:
            return exc
        return None

    assert isinstance(asyncio.run(main()), asyncio.CancelledError)


def test_new_event_loop_prefers_uvloop(monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip('uvloop')
    loop, kind = new_event_loop()
    loop.close()
    assert kind == 'uvloop'
    monkeypatch.setitem(__import__('sys').modules, 'uvloop', None)  # not installed
    loop, kind = new_event_loop()
    assert kind == 'asyncio' and isinstance(loop, asyncio.AbstractEventLoop)
    loop.close()
    assert isinstance(asyncio.get_event_loop_policy(), asyncio.DefaultEventLoopPolicy)  # no policy was set


# --- the async trace --------------------------------------------------------------------------------------


@pytest.fixture
def app() -> Iterator[Fastq]:
    app = Fastq('aio', broker='memory://', backend='memory://', set_as_current=False)
    yield app
    app.close()


def _request(task_id: str, name: str) -> dict[str, Any]:
    return {
        'id': task_id,
        'task': name,
        'retries': 0,
        'callbacks': None,
        'errbacks': None,
        'delivery_info': {'routing_key': 'celery'},
        'root_id': task_id,
        'parent_id': None,
        'hostname': 'test@host',
        'ignore_result': False,
        'headers': None,
    }


def test_concurrent_runs_each_see_their_own_request(app: Fastq) -> None:
    @app.task(bind=True)
    async def whoami(self: Any, delay: float) -> list[Any]:
        seen = [self.request.id, get_current_task() is self]
        await asyncio.sleep(delay)
        return [*seen, self.request.id]

    async def main() -> list[Outcome]:
        runs = [execute_async(whoami, [0.01 * (5 - i)], {}, _request(f'id-{i}', whoami.name)) for i in range(5)]
        return await asyncio.gather(*runs)

    outcomes = asyncio.run(main())
    assert [o.retval for o in outcomes] == [[f'id-{i}', True, f'id-{i}'] for i in range(5)]
    assert [app.AsyncResult(f'id-{i}').get(timeout=1) for i in range(5)] == [o.retval for o in outcomes]
    assert get_current_task() is None


def test_time_limit_failure_is_stored_and_not_retried(app: Fastq) -> None:
    failures: list[str] = []

    class Base(app.Task):  # type: ignore[name-defined,misc]
        def on_failure(self, exc: Any, task_id: str, args: Any, kwargs: Any, einfo: Any) -> None:
            failures.append(type(exc).__name__)

    @app.task(base=Base, autoretry_for=(Exception,), max_retries=5)
    async def slow() -> None:
        await asyncio.sleep(30)

    async def main() -> Outcome:
        limits = Limits(0.05, 'slow')
        task = asyncio.current_task()
        assert task is not None
        timers = limits.start(asyncio.get_running_loop(), task, None)
        try:
            return await execute_async(slow, [], {}, _request('tl', slow.name), limits.guard)
        finally:
            for timer in timers:
                timer.cancel()

    outcome = asyncio.run(main())
    assert outcome.state == states.FAILURE and outcome.exc_repr.startswith('TimeLimitExceeded')
    assert failures == ['TimeLimitExceeded']
    with pytest.raises(TimeLimitExceeded):
        app.AsyncResult('tl').get(timeout=1)


def test_cancelled_from_outside_propagates_without_bookkeeping(app: Fastq) -> None:
    @app.task
    async def forever() -> None:
        await asyncio.sleep(30)

    async def main() -> Any:
        task = asyncio.ensure_future(execute_async(forever, [], {}, _request('c', forever.name)))
        await asyncio.sleep(0.01)
        task.cancel('terminated')
        return (await asyncio.gather(task, return_exceptions=True))[0]

    assert isinstance(asyncio.run(main()), asyncio.CancelledError)
    assert app.AsyncResult('c').state == states.PENDING  # the parent stores REVOKED, not the child


def test_cancelled_error_raised_by_the_task_is_a_failure(app: Fastq) -> None:
    @app.task
    async def raises() -> None:
        raise asyncio.CancelledError('inside')

    outcome = asyncio.run(execute_async(raises, [], {}, _request('r', raises.name)))
    assert outcome.state == states.FAILURE


def test_is_async_task(app: Fastq) -> None:
    @app.task
    async def a() -> None: ...

    @app.task
    def s() -> None: ...

    class ClassBased(app.Task):  # type: ignore[name-defined,misc]
        name = 'aio.class_based'

        async def run(self) -> None: ...

    assert is_async_task(a) and not is_async_task(s) and is_async_task(ClassBased())


# --- the parent: slots, answers out of order, children lost or killed -------------------------------------


class _Chan:
    def __init__(self) -> None:
        self.sent: list[tuple[int, int, bytes]] = []
        self.pending_output = 0

    def send(self, job_id: int, kind: int, payload: bytes) -> None:
        self.sent.append((job_id, kind, payload))

    def send_many(self, frames: list[tuple[int, int, bytes]]) -> None:
        self.sent.extend(frames)

    def fileno(self) -> int:
        return -1


class _Pool:
    """An AsyncioPool with fake children, recording what it tells the worker."""

    def __init__(self, app: Fastq, slots: int, children: int, **kwargs: Any) -> None:
        self.results: list[tuple[str, str]] = []
        self.lost: list[tuple[str, str]] = []
        self.requeued: list[str] = []
        pool = create_pool(
            'asyncio',
            app=app,
            concurrency=slots,
            processes=children,
            loop=None,
            accept=frozenset({'application/json'}),
            on_result=lambda job, outcome: self.results.append((job.request.id, outcome.state)),
            on_lost=lambda job, reason: self.lost.append((job.request.id, reason)),
            on_requeue=lambda jobs: self.requeued.extend(job.request.id for job in jobs),
            **kwargs,
        )
        assert isinstance(pool, aio.AsyncioPool)
        self.pool = pool
        for pid in range(1, children + 1):
            child = _Child(pid, 1000 + pid, _Chan())  # type: ignore[arg-type]
            child.ready = True  # (up: it sent READY)
            pool.children[pid] = child
            pool._by_pid[child.pid] = child

    def child(self, pid: int) -> Any:
        return self.pool._by_pid[1000 + pid]

    def send(self, job: Job) -> int:
        assert self.pool.can_take(job)
        self.pool.submit(job)
        self.pool.commit()
        assert job.pid is not None
        return job.pid - 1000

    def answer(self, pid: int, job: Job, state: str = states.SUCCESS, exiting: bool = False) -> None:
        import marshal

        self.pool._on_result(self.child(pid), job.id, marshal.dumps((state, 0.1, '', '', False, None, exiting)))


_ids = iter(range(1, 1_000_000))


def _job(name: str, time_limit: float | None = None, acks_late: bool = True) -> Job:
    job_id = next(_ids)
    request = SimpleNamespace(task=name, id=f't{job_id}', display_name=name)
    delivery = SimpleNamespace(raw=b'{}', queue='celery', redelivered=False, tag=job_id)
    return Job(job_id, delivery, request, acks_late, False, time_limit, None, 'h', 0.0)  # type: ignore[arg-type]


@pytest.fixture
def names(app: Fastq) -> SimpleNamespace:
    @app.task
    async def coro() -> None: ...

    @app.task
    def sync() -> None: ...

    return SimpleNamespace(coro=coro.name, sync=sync.name)


def test_slots_fill_the_least_loaded_child(app: Fastq, names: SimpleNamespace) -> None:
    p = _Pool(app, slots=2, children=2)
    assert p.pool.free_slots() == 4
    placed = [p.send(_job(names.coro)) for _ in range(4)]
    assert sorted(placed) == [1, 1, 2, 2] and placed[:2] in ([1, 2], [2, 1])
    assert p.pool.free_slots() == 0 and not p.pool.can_take(_job(names.coro))
    assert all(kind == JOB for child in (1, 2) for _, kind, _ in p.child(child).chan.sent)


def test_a_child_not_up_yet_gets_no_job(app: Fastq, names: SimpleNamespace) -> None:
    """As prefork's: a child still in its worker_process_init receivers gets nothing (`worker_proc_alive_timeout`
    may yet kill it, which would lose what it held)."""
    p = _Pool(app, slots=2, children=2)
    p.child(1).ready = False
    assert [p.send(_job(names.coro)) for _ in range(2)] == [2, 2]
    assert not p.pool.can_take(_job(names.coro))


def test_answers_out_of_order_are_matched_by_id(app: Fastq, names: SimpleNamespace) -> None:
    p = _Pool(app, slots=3, children=1)
    jobs = [_job(names.coro) for _ in range(3)]
    for job in jobs:
        p.send(job)
    assert all(job.started is not None for job in jobs)  # every job sent is started at once
    p.answer(1, jobs[2])
    p.answer(1, jobs[0], states.FAILURE)
    assert p.results == [(jobs[2].request.id, states.SUCCESS), (jobs[0].request.id, states.FAILURE)]
    assert list(p.child(1).jobs) == [jobs[1]] and p.pool.free_slots() == 2
    p.answer(1, jobs[0])  # answered twice, or not ours: ignored
    assert len(p.results) == 2


def test_a_child_that_dies_loses_everything_it_held(app: Fastq, names: SimpleNamespace) -> None:
    p = _Pool(app, slots=3, children=1)
    jobs = [_job(names.coro) for _ in range(3)]
    for job in jobs:
        p.send(job)
    child = p.child(1)
    child.exit_status = signal.SIGKILL  # a wait status: killed by SIGKILL
    p.pool._orphaned(child, list(child.jobs))
    assert [job_id for job_id, _ in p.lost] == [job.request.id for job in jobs] and not p.requeued
    assert all('Worker exited prematurely: signal 9 (SIGKILL)' in reason for _, reason in p.lost)


def test_overdue_coroutine_kills_its_child_and_requeues_the_rest(
    app: Fastq, names: SimpleNamespace, monkeypatch: pytest.MonkeyPatch
) -> None:
    killed: list[int] = []
    monkeypatch.setattr(os, 'kill', lambda pid, sig: killed.append(pid))
    p = _Pool(app, slots=4, children=1)
    limited, other, sync = _job(names.coro, time_limit=1), _job(names.coro), _job(names.sync, time_limit=5)
    early = _job(names.coro, acks_late=False)
    for job in (limited, other, sync, early):
        p.send(job)
    assert limited.started is not None and sync.started is not None
    p.pool.check_time_limits(limited.started + 1.5)  # past the limit, within the grace: the child cancels it
    assert not killed
    p.pool.check_time_limits(limited.started + 1 + aio.CANCEL_GRACE + 0.1)
    assert killed == [1001]
    p.pool.check_time_limits(limited.started + 10)  # killed once
    child = p.child(1)
    p.pool._orphaned(child, list(child.jobs))
    assert p.lost[0] == (limited.request.id, 'time-limit:1')
    assert p.requeued == [other.request.id, sync.request.id]  # acks_late: at least once
    assert [job_id for job_id, _ in p.lost[1:]] == [early.request.id]  # acked early: at most once


def test_sync_task_has_no_grace(app: Fastq, names: SimpleNamespace, monkeypatch: pytest.MonkeyPatch) -> None:
    killed: list[int] = []
    monkeypatch.setattr(os, 'kill', lambda pid, sig: killed.append(pid))
    p = _Pool(app, slots=2, children=1)
    job = _job(names.sync, time_limit=1)
    p.send(job)
    assert job.started is not None
    p.pool.check_time_limits(job.started + 1.1)  # a thread cannot be cancelled: no grace to wait for
    assert killed == [1001]


def test_terminate_cancels_a_coroutine(app: Fastq, names: SimpleNamespace) -> None:
    p = _Pool(app, slots=2, children=1)
    job, other = _job(names.coro), _job(names.coro)
    p.send(job)
    p.send(other)
    assert p.pool.kill_job(job, 'revoked')
    assert p.child(1).chan.sent[-1] == (job.id, CANCEL, b'')
    p.answer(1, job, CANCELLED)
    assert p.lost == [(job.request.id, 'revoked')] and not p.results


def test_recycling_sends_stop_after_the_last_job(app: Fastq, names: SimpleNamespace) -> None:
    p = _Pool(app, slots=5, children=1, max_tasks_per_child=2)
    first, second = _job(names.coro), _job(names.coro)
    p.send(first)
    p.send(second)
    assert [kind for _, kind, _ in p.child(1).chan.sent] == [JOB, JOB, STOP]
    assert p.pool.free_slots() == 0 and not p.pool.can_take(_job(names.coro))


def test_memory_limit_reported_by_the_child_stops_it(app: Fastq, names: SimpleNamespace) -> None:
    p = _Pool(app, slots=5, children=1)
    first, second = _job(names.coro), _job(names.coro)
    p.send(first)
    p.send(second)
    p.answer(1, first, exiting=True)
    assert p.child(1).retiring and p.child(1).chan.sent[-1][1] == STOP
    p.answer(1, second)  # what it held is still answered
    assert len(p.results) == 2


def test_an_async_task_called_directly_inside_a_loop_says_what_to_do(app: Fastq) -> None:
    @app.task
    async def inner() -> int:
        return 1

    async def outer() -> int:
        with pytest.raises(RuntimeError, match=r'await task\.run'):
            inner()
        return await inner.run()  # type: ignore[no-any-return]

    assert asyncio.run(outer()) == 1


# --- the worker's view: what -c and --processes mean ------------------------------------------------------


def test_c_counts_tasks_per_child_and_processes_count_children(app: Fastq) -> None:
    from fastq.worker.worker import WorkController

    w = WorkController(app, pool='asyncio', processes=3, concurrency=20, prefetch_multiplier=2, quiet=True)
    assert (w.processes, w.concurrency, w.window) == (3, 20, 3 * 20 * 2)
    assert w._describe_concurrency() == '3 processes x 20 tasks each (asyncio)'
    app.conf.worker_concurrency = None
    w = WorkController(app, pool='asyncio', processes=1, quiet=True)
    assert (w.processes, w.concurrency) == (1, aio.DEFAULT_COROUTINES)
    assert w._describe_concurrency() == f'1 process x {aio.DEFAULT_COROUTINES} tasks each (asyncio)'


def test_processes_setting_is_validated(app: Fastq) -> None:
    from fastq.exceptions import ImproperlyConfigured

    bad = Fastq('bad', broker='memory://', backend='memory://', set_as_current=False)
    bad.conf.worker_asyncio_processes = 0
    with pytest.raises(ImproperlyConfigured, match='worker_asyncio_processes: must be positive'):
        bad.finalize()
    bad.close()


def test_processes_with_another_pool_is_ignored_with_a_warning(app: Fastq, caplog: pytest.LogCaptureFixture) -> None:
    from fastq.worker.worker import WorkController

    w = WorkController(app, pool='prefork', processes=3, concurrency=2, quiet=True)
    assert (w.processes, w.concurrency, w.window) == (2, 2, 8)
    assert 'applies to -P asyncio only' in caplog.text
