"""The asyncio pool (`-P asyncio`): `async def` tasks run concurrently on an event loop in child processes.

`-P asyncio -c N --processes P` runs P child processes (`worker_asyncio_processes`, default: the CPU count),
each an event loop (uvloop when installed) holding up to N jobs at once (`worker_concurrency`, default
`DEFAULT_COROUTINES`). `-c` counts jobs in flight per child, as it counts green threads for Celery's gevent and
eventlet pools; the worker runs up to P x N tasks at once and prefetches P x N x `worker_prefetch_multiplier`.
Sync tasks run in each child's thread pool (up to N threads), so they fit in the same slots.

This is the prefork pool with one difference in kind: a child starts every job it is sent at once, and
answers in any order (matched by job id). The fork server, channels, respawning and exit handling are
prefork's. Jobs go to the child with the fewest in flight, and only while it has a free slot.

Time limits: the child cancels a coroutine at its hard limit (it fails with TimeLimitExceeded, see
`aio_child.py`). If it has not answered `CANCEL_GRACE` seconds later (it blocks the loop, or swallows the
cancellation), the parent kills the child: that job is lost with its time-limit reason, and the child's
other jobs are requeued (they run again; they are never failed). A sync task in a thread cannot be cancelled,
so its child is killed at its hard limit. A child that dies by itself loses every job it held: all had
started, and each follows `acks_late`/`reject_on_worker_lost` as prefork's running job does. Recycling
(`max_tasks_per_child`, `max_memory_per_child`) sends the child STOP: it takes no more jobs, finishes
those it holds, and exits.
"""

from __future__ import annotations

import contextlib
import logging
import marshal
import os
import signal
import socket
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from fastq.worker.pool.aio_child import CANCELLED, aio_child_main, is_async_task
from fastq.worker.pool.child import CANCEL, JOB, STOP
from fastq.worker.pool.prefork import PreforkPool, _Child
from fastq.worker.trace import Outcome

if TYPE_CHECKING:
    from fastq.worker.job import Job

logger = logging.getLogger('celery.worker.pool')

#: Jobs in flight per child when `-c` is not given: async tasks wait on I/O, so one process keeps many
#: going; a bound still caps the memory and connections a burst of tasks can take.
DEFAULT_COROUTINES = 100
#: Seconds a cancelled coroutine has to finish before the parent kills its process.
CANCEL_GRACE = 2.0


class AsyncioPool(PreforkPool):
    name = 'asyncio'
    tracks_progress = False  # its children run jobs concurrently and say what they start in their answers

    def __init__(self, processes: int | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.processes = processes or os.cpu_count() or 1
        self._inflight: dict[int, Job] = {}  # by job id, in every child
        self._deadlines: dict[int, float] = {}  # job id -> when the parent kills its child (monotonic)
        self._cancelled: dict[int, str] = {}  # job id -> why the parent asked its child to cancel it
        self._doomed: dict[int, str] = {}  # job id -> why the parent killed its child
        self._async: dict[str, bool] = {}  # task name -> whether it is an `async def`

    def _child_main(self) -> Callable[[socket.socket, int, int], int]:
        app, accept, slots = self.app, self.accept, self.concurrency
        max_tasks, max_memory = self.max_tasks_per_child, self.max_memory_per_child

        def main(sock: socket.socket, index: int, number: int) -> int:
            return aio_child_main(app, sock, index, accept, max_tasks, max_memory, slots, number)

        return main

    def _is_async(self, job: Job) -> bool:
        name = job.request.task
        known = self._async.get(name)
        if known is None:
            task = self.app.tasks.get(name)
            known = self._async[name] = task is not None and is_async_task(task)
        return known

    # --- dispatch -----------------------------------------------------------------------------------------

    def free_slots(self) -> int:
        return sum(max(0, self.concurrency - len(c.jobs)) for c in self.children.values() if not c.retiring)

    def can_take(self, job: Job) -> bool:
        best: _Child | None = None
        for child in self.children.values():
            if child.retiring or len(child.jobs) >= self.concurrency or not child.ready:  # (ready: prefork's)
                continue
            if best is None or len(child.jobs) < len(best.jobs):
                best = child
        self._chosen = best
        return best is not None

    def submit(self, job: Job) -> None:
        child = self._chosen
        if child is None or child.retiring or len(child.jobs) >= self.concurrency:
            if not self.can_take(job) or self._chosen is None:
                raise RuntimeError('no pool child can take a job now')
            child = self._chosen
        self._chosen = None
        job.started = now = time.monotonic()  # a child starts every job as soon as it reads it
        job.pid = child.pid
        child.jobs.append(job)
        self._inflight[job.id] = job
        if job.time_limit:
            self._deadlines[job.id] = now + job.time_limit + (CANCEL_GRACE if self._is_async(job) else 0.0)
        child.sent += 1
        if not child.outbox:
            self._dirty.append(child)
        child.outbox.append((job.id, JOB, job.payload()))
        if self.max_tasks_per_child and child.sent >= self.max_tasks_per_child:
            child.retiring = True
            child.outbox.append((0, STOP, b''))  # after its last job: it finishes what it holds, then exits

    # --- results ------------------------------------------------------------------------------------------

    def _on_result(self, child: _Child, job_id: int, payload: bytes) -> None:
        *wire, exiting = marshal.loads(payload)
        job = self._inflight.get(job_id)
        if job is None or job.pid != child.pid:
            logger.error('%s answered job %d, which it does not hold; ignoring it', child.name, job_id)
            return
        self._forget(job)
        child.jobs.remove(job)
        if exiting and not child.retiring:  # over its memory limit: no more jobs; it exits when it is done
            child.retiring = True
            self._send_stop(child)
        outcome = Outcome.from_wire(tuple(wire))
        reason = self._cancelled.pop(job_id, None)
        if outcome.state == CANCELLED:
            self.on_lost(job, reason or 'revoked')
        else:
            self.on_result(job, outcome)

    def _forget(self, job: Job) -> None:
        self._inflight.pop(job.id, None)
        self._deadlines.pop(job.id, None)

    def _send_stop(self, child: _Child) -> None:
        with contextlib.suppress(BrokenPipeError, ValueError):
            child.chan.send(0, STOP, b'')
            if child.chan.pending_output:
                self._want_write(child)

    def _orphaned(self, child: _Child, jobs: list[Job]) -> None:
        """A child is gone with jobs in flight. All had started: if it died by itself, every one is lost; if
        the pool killed it for some of them, those are lost for that reason and the others are requeued, as
        long as they are acks_late (at least once). An early-acked job was promised to run at most once: it
        had started, so it is reported lost (WorkerLostError), never run a second time."""
        for job in jobs:
            self._forget(job)
            self._cancelled.pop(job.id, None)
        if child.killed_for is None:
            for job in jobs:
                self.on_lost(job, self._exit_reason(child, job))
            return
        requeue = []
        for job in jobs:
            why = self._doomed.pop(job.id, None)
            if why is not None:
                self.on_lost(job, why)
            elif job.acks_late:
                requeue.append(job)
            else:
                self.on_lost(job, f'{self._exit_reason(child, job)} (killed for a neighbour: {child.killed_for})')
        if requeue:
            self.on_requeue(requeue)

    # --- limits -------------------------------------------------------------------------------------------

    def check_time_limits(self, now: float) -> None:
        if not self._deadlines:
            return
        overdue: dict[int, list[Job]] = {}
        for job_id, deadline in self._deadlines.items():
            job = self._inflight.get(job_id)
            if job is not None and now > deadline and job.pid is not None:
                overdue.setdefault(job.pid, []).append(job)
        for pid, jobs in overdue.items():
            child = self._by_pid.get(pid)
            if child is None or child.killed_for is not None or child.finalized:
                continue
            doomed = [(job, self._cancelled.get(job.id) or f'time-limit:{job.time_limit}') for job in jobs]
            for job, reason in doomed:
                if reason.startswith('time-limit:'):
                    logger.error(
                        'Hard time limit (%ss) exceeded for %s[%s], and the task did not stop when cancelled '
                        '(a sync task cannot be)',
                        job.time_limit,
                        job.name,
                        job.request.id,
                    )
            self._kill(child, doomed)

    def _kill(self, child: _Child, doomed: list[tuple[Job, str]]) -> None:
        for job, reason in doomed:
            self._doomed[job.id] = reason
        child.killed_for = doomed[0][1]
        doomed_ids = {job.id for job, _ in doomed}
        others = [job for job in child.jobs if job.id not in doomed_ids]
        again = sum(1 for job in others if job.acks_late)
        logger.error(
            'Killing %s (pid %d) for %s; of its %d other task(s) in flight, %d (acks_late) will run again '
            'and %d (acked early) are lost',
            child.name,
            child.pid,
            ', '.join(f'{job.name}[{job.request.id}]' for job, _ in doomed),
            len(others),
            again,
            len(others) - again,
        )
        with contextlib.suppress(ProcessLookupError):
            os.kill(child.pid, signal.SIGKILL)

    def kill_job(self, job: Job, reason: str, sig: int = signal.SIGTERM) -> bool:
        """Terminate `job` (revoke with terminate). A coroutine is cancelled (any `sig`: a signal cannot
        reach one coroutine) and its process killed only if it has not stopped `CANCEL_GRACE` seconds later;
        a sync task's process is killed now. Either way the child's other jobs are requeued, not failed."""
        child = self._by_pid.get(job.pid) if job.pid is not None else None
        if job.id not in self._inflight or child is None or child.killed_for is not None:
            return False
        if not self._is_async(job):
            self._kill(child, [(job, reason)])
            return True
        self._cancelled[job.id] = reason
        deadline = time.monotonic() + CANCEL_GRACE
        self._deadlines[job.id] = min(self._deadlines.get(job.id, deadline), deadline)
        with contextlib.suppress(BrokenPipeError, ValueError):
            child.chan.send(job.id, CANCEL, b'')
            if child.chan.pending_output:
                self._want_write(child)
        return True

    def info(self) -> dict[str, object]:
        info = super().info()
        info.update(
            {
                'max-concurrency': self.processes * self.concurrency,
                'coroutines-per-process': self.concurrency,
                'implementation': 'fastq.worker.pool.aio:AsyncioPool',
            }
        )
        return info
