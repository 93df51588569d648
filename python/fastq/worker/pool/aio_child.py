"""An asyncio pool child: one event loop (uvloop when installed) running up to N jobs at once.

Jobs arrive over the same channel as a prefork child's, and each job starts as soon as it is read, as an
asyncio task: an `async def` task is awaited on the loop, a sync task runs in the child's thread pool. Answers
carry their job id and go back as jobs end, in any order; those ending in one loop iteration share one write.

Time limits of an `async def` task, enforced here (the parent keeps a backstop, see `aio.py`):

- soft: the task is cancelled, and at the `await` where the cancellation lands, the coroutine sees
  `SoftTimeLimitExceeded` instead of `CancelledError`. It may catch it and go on, as under prefork.
- hard: the task is cancelled; the coroutine sees `CancelledError` (so `finally` blocks and `async with`
  exits run), and the job fails with `TimeLimitExceeded` whether the coroutine then raises or returns.

A sync task in a thread cannot be interrupted: its soft limit is not delivered (warned once), and at its hard
limit the parent kills this process.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import marshal
import multiprocessing
import os
import resource
import signal
import socket
import time
from collections.abc import Awaitable, Generator
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

from fastq import _ipc, _state, signals
from fastq.exceptions import SoftTimeLimitExceeded, TimeLimitExceeded
from fastq.utils.log import MP_LOGGER, process_logfile
from fastq.utils.platforms import install_rdb_handler
from fastq.worker.job import Prepared, prepare_payload, run_prepared, run_prepared_async
from fastq.worker.pool.child import CANCEL, EX_RECYCLE, JOB, JOB_SHORT, READY, RESULT, STOP
from fastq.worker.trace import Outcome

if TYPE_CHECKING:
    from fastq.app import Fastq

logger = logging.getLogger('fastq.worker.pool')
limit_logger = logging.getLogger('celery.worker.pool')

#: Outcome state of a job cancelled at the parent's request (revoke with terminate): the parent settles it.
CANCELLED = 'CANCELLED'

# Messages of the cancellations this module makes (what `CancelledError.args` holds, for whoever looks).
SOFT_LIMIT = 'fastq: soft time limit'
HARD_LIMIT = 'fastq: hard time limit'
TERMINATED = 'fastq: terminated'


def new_event_loop() -> tuple[asyncio.AbstractEventLoop, str]:
    """A new loop and its kind: uvloop's when it is installed, else asyncio's default. No policy is set."""
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop(), 'asyncio'
    return uvloop.new_event_loop(), 'uvloop'


def is_async_task(task: Any) -> bool:
    """Whether a task's body is an `async def` (awaited on the loop) rather than sync (run in a thread)."""
    return bool(getattr(task, '_is_async', False)) or inspect.iscoroutinefunction(task.run)


class Limits:
    """The time limits of one async job: timers that cancel its asyncio task, and `guard`, which wraps the
    task's awaitable so that those cancellations reach the code as the exceptions described above."""

    __slots__ = ('hard_fired', 'label', 'soft_pending', 'time_limit')

    def __init__(self, time_limit: float | None, label: str) -> None:
        self.time_limit = time_limit
        self.label = label
        self.soft_pending = False
        self.hard_fired = False

    def start(self, loop: asyncio.AbstractEventLoop, task: asyncio.Task[Any], soft: float | None) -> list[Any]:
        timers = []
        if soft:
            timers.append(loop.call_later(soft, self.fire_soft, task))
        if self.time_limit:
            timers.append(loop.call_later(self.time_limit, self.fire_hard, task))
        return timers

    def fire_soft(self, task: asyncio.Task[Any]) -> None:
        if not self.hard_fired and not task.done():
            self.soft_pending = True
            task.cancel(SOFT_LIMIT)

    def fire_hard(self, task: asyncio.Task[Any]) -> None:
        if task.done():
            return
        limit_logger.error('Hard time limit (%ss) exceeded for %s: cancelling it', self.time_limit, self.label)
        self.hard_fired = True
        self.soft_pending = False
        task.cancel(HARD_LIMIT)

    def guard(self, awaitable: Awaitable[Any]) -> Awaitable[Any]:
        return _Guarded(self, awaitable.__await__())


class _Guarded(Generator[Any, Any, Any]):
    """Drives a task's awaitable on behalf of the asyncio task awaiting it (`await` delegates `send` and
    `throw` here), and turns the cancellations `Limits` made into the exceptions the task should see."""

    def __init__(self, limits: Limits, inner: Generator[Any, Any, Any]) -> None:
        self._limits = limits
        self._inner = inner

    def __await__(self) -> Generator[Any, Any, Any]:
        return self

    def send(self, value: Any) -> Any:
        return self._step(self._inner.send, value)

    def throw(self, typ: Any, val: Any = None, tb: Any = None) -> Any:
        exc = val if isinstance(val, BaseException) else typ if isinstance(typ, BaseException) else typ()
        limits = self._limits
        if isinstance(exc, asyncio.CancelledError) and limits.soft_pending:
            limits.soft_pending = False
            task = asyncio.current_task()
            if task is not None:
                task.uncancel()  # handled: the task is not being cancelled any more
            exc = SoftTimeLimitExceeded()
        return self._step(self._inner.throw, exc)

    def close(self) -> None:
        self._inner.close()

    def _step(self, step: Any, arg: Any) -> Any:
        try:
            return step(arg)
        except (StopIteration, asyncio.CancelledError):
            if self._limits.hard_fired:  # finished after its hard limit, however it finished
                raise TimeLimitExceeded(self._limits.time_limit) from None
            raise


class Runner:
    """The child's state: jobs running (by id), answers waiting for this loop iteration's write."""

    def __init__(
        self,
        app: Fastq,
        chan: _ipc.Channel,
        loop: asyncio.AbstractEventLoop,
        accept: frozenset[str],
        slots: int,
        max_tasks: int | None,
        max_memory_kib: int | None,
    ) -> None:
        self.app = app
        self.chan = chan
        self.loop = loop
        self.accept = accept
        self.max_tasks = max_tasks
        self.max_memory_kib = max_memory_kib
        self.executor = ThreadPoolExecutor(max_workers=slots, thread_name_prefix='fastq-sync')
        self.running: dict[int, asyncio.Task[None]] = {}
        self.sync_jobs: set[int] = set()
        self.outbox: list[tuple[int, int, bytes]] = []
        self.flush_scheduled = False
        self.writing = False
        self.finished = 0
        self.exiting = False  # told the parent it will stop taking jobs (max tasks or memory reached)
        self.stopping = False  # the parent sent STOP: no job follows
        self.done: asyncio.Future[int] = loop.create_future()
        self._warned_soft = False

    # --- from the parent ----------------------------------------------------------------------------------

    def on_readable(self) -> None:
        try:
            frames = self.chan.recv()
        except (EOFError, ValueError, OSError):
            self._finish(0)  # the parent is gone: nobody is left to answer (the fork server kills us soon)
            return
        for job_id, kind, payload in frames:
            if kind == JOB or kind == JOB_SHORT:
                self.running[job_id] = self.loop.create_task(self._job(job_id, payload))
            elif kind == CANCEL:
                self._cancel(job_id)
            elif kind == STOP:
                self.stopping = True
        self._maybe_done()

    def _cancel(self, job_id: int) -> None:
        task = self.running.get(job_id)
        if task is not None and job_id not in self.sync_jobs:  # a thread cannot be cancelled: the parent kills
            task.cancel(TERMINATED)

    # --- running ------------------------------------------------------------------------------------------

    async def _job(self, job_id: int, payload: bytes) -> None:
        started = time.monotonic()
        try:
            prepared = prepare_payload(self.app, payload, self.accept)
            if isinstance(prepared, Outcome):
                outcome = prepared
            elif is_async_task(prepared.task):
                outcome = await self._run_async(prepared)
            else:
                outcome = await self._run_sync(job_id, prepared)
        except asyncio.CancelledError:
            outcome = Outcome(CANCELLED, time.monotonic() - started)
        except Exception as exc:  # never leave a job unanswered
            logger.exception('Job %d failed outside its task: %r', job_id, exc)
            outcome = Outcome('FAILURE', time.monotonic() - started, exc_repr=repr(exc))
        self._answer(job_id, outcome)

    async def _run_async(self, job: Prepared) -> Outcome:
        label = f'{job.task.name}[{job.request.get("id")}]'
        limits = Limits(job.time_limit, label)
        task = asyncio.current_task()
        assert task is not None
        timers = limits.start(self.loop, task, job.soft_time_limit)
        try:
            return await run_prepared_async(self.app, job, limits.guard)
        finally:
            for timer in timers:
                timer.cancel()

    async def _run_sync(self, job_id: int, job: Prepared) -> Outcome:
        if job.soft_time_limit and not self._warned_soft:
            self._warned_soft = True
            logger.warning(
                'Task %s has a soft time limit, which -P asyncio cannot deliver to a sync task (it runs in a '
                'thread); its hard time limit still applies',
                job.task.name,
            )
        self.sync_jobs.add(job_id)
        try:
            return await self.loop.run_in_executor(self.executor, run_prepared, self.app, job)
        finally:
            self.sync_jobs.discard(job_id)

    # --- answers ------------------------------------------------------------------------------------------

    def _answer(self, job_id: int, outcome: Outcome) -> None:
        self.running.pop(job_id, None)
        self.finished += 1
        exiting = False
        if not self.exiting:
            over_memory = bool(self.max_memory_kib and _rss_kib() > self.max_memory_kib)
            if over_memory:
                logging.getLogger(MP_LOGGER).warning(
                    'child process exiting after exceeding memory limit (%sKiB / %sKiB)',
                    _rss_kib(),
                    self.max_memory_kib,
                )
            exiting = self.exiting = over_memory or bool(self.max_tasks and self.finished >= self.max_tasks)
        self.outbox.append((job_id, RESULT, marshal.dumps((*outcome.to_wire(), exiting))))
        if not self.flush_scheduled:
            self.flush_scheduled = True
            self.loop.call_soon(self._flush)

    def _flush(self) -> None:
        self.flush_scheduled = False
        frames, self.outbox = self.outbox, []
        try:
            if frames:
                self.chan.send_many(frames)
            if self.chan.pending_output and not self.writing:
                self.writing = True
                self.loop.add_writer(self.chan.fileno(), self._on_writable)
        except (BrokenPipeError, ValueError, OSError):
            self._finish(0)
            return
        self._maybe_done()

    def _on_writable(self) -> None:
        try:
            flushed = self.chan.flush()
        except (BrokenPipeError, ValueError, OSError):
            flushed = True
        if flushed:
            self.writing = False
            self.loop.remove_writer(self.chan.fileno())
            self._maybe_done()

    def _maybe_done(self) -> None:
        if self.stopping and not self.running and not self.outbox and not self.writing:
            self._finish(EX_RECYCLE if self.exiting else 0)

    def _finish(self, code: int) -> None:
        if not self.done.done():
            self.done.set_result(code)


def _rss_kib() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def aio_child_main(
    app: Fastq,
    sock: socket.socket,
    index: int,
    accept: frozenset[str],
    max_tasks: int | None,
    max_memory_kib: int | None,
    slots: int,
    number: int | None = None,
) -> int:
    """Main function of an asyncio pool child; returns the exit code."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole group; the parent decides
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    multiprocessing.current_process().name = f'ForkPoolWorker-{number or index}'
    install_rdb_handler()  # CELERY_RDBSIG: SIGUSR2 opens a debugger session where this child is
    process_logfile(index)  # `--logfile=%n%I.log`: a file of its own
    chan = _ipc.Channel(sock.detach())
    loop, kind = new_event_loop()
    asyncio.set_event_loop(loop)  # for code that asks for the current loop; the loop policy is left alone
    logger.debug('asyncio pool child %d runs %d jobs at once on %s', index, slots, kind)
    runner = Runner(app, chan, loop, accept, slots, max_tasks, max_memory_kib)
    exitcode = 0
    try:
        signals.worker_process_init.send(sender=_state.worker_hostname)
        chan.send(0, READY, str(os.getpid()).encode())
        chan.flush_blocking()
        loop.add_reader(chan.fileno(), runner.on_readable)
        exitcode = loop.run_until_complete(runner.done)
    finally:
        signals.worker_process_shutdown.send(sender=_state.worker_hostname, pid=os.getpid(), exitcode=exitcode)
        loop.remove_reader(chan.fileno())
        runner.executor.shutdown(wait=not runner.running, cancel_futures=True)
        if not runner.running:  # jobs still running only when the parent is gone: exit without waiting
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()
        asyncio.set_event_loop(None)
        chan.close()
    return exitcode
