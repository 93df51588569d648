"""The prefork pool: tasks run in child processes, forked from a zygote, spoken to over `fastq._ipc` channels.

Each child has a channel (a socketpair carrying frames tagged with job ids) and an ordered list of the jobs
sent to it. A child runs its jobs in order, so the first unanswered job is the running one: its start time
(for the hard time limit) is when the previous answer arrived. Scheduling is fair (Celery's `-O fair`): a
job goes to a child with a free slot, one slot per child, so a long task never holds up queued short ones.

When a child dies, its running job is reported lost (the worker decides between WorkerLostError, a
requeue with `reject_on_worker_lost`, or TimeLimitExceeded when the pool killed it), and the jobs queued
behind it go back to the worker's ready queue untouched.
"""

from __future__ import annotations

import contextlib
import logging
import marshal
import os
import signal
import socket
import time
from collections import deque
from typing import TYPE_CHECKING, Any

from fastq import _ipc, signals
from fastq.worker.pool.base import Pool
from fastq.worker.pool.child import JOB, READY, RESULT, STOP, child_main
from fastq.worker.pool.zygote import Zygote
from fastq.worker.trace import Outcome

if TYPE_CHECKING:
    from fastq.worker.job import Job

logger = logging.getLogger('celery.worker.pool')

SLOTS_PER_CHILD = 1
SPAWN_TIMEOUT = 30.0


def human_status(status: int) -> str:
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        try:
            name = signal.Signals(sig).name
        except ValueError:
            name = str(sig)
        return f'signal {sig} ({name})'
    return f'exitcode {os.WEXITSTATUS(status)}'


class _Child:
    __slots__ = (
        'chan',
        'exit_status',
        'finalized',
        'index',
        'jobs',
        'killed_for',
        'pid',
        'ready',
        'retiring',
        'sent',
        'timer',
    )

    def __init__(self, index: int, pid: int, chan: _ipc.Channel) -> None:
        self.index = index
        self.pid = pid
        self.chan = chan
        self.jobs: deque[Job] = deque()
        self.sent = 0
        self.retiring = False  # no more jobs: reached max tasks, asked to stop, or announced its exit
        self.ready = False
        self.killed_for: str | None = None
        self.exit_status: int | None = None
        self.finalized = False
        self.timer: Any = None

    @property
    def name(self) -> str:
        return f'ForkPoolWorker-{self.index}'


class PreforkPool(Pool):
    name = 'prefork'

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.children: dict[int, _Child] = {}  # by channel fd
        self._by_pid: dict[int, _Child] = {}
        self._exit_statuses: dict[int, int] = {}
        self._free_indexes: list[int] = []
        self._spawning = 0
        self._dying: dict[int, _Child] = {}  # closed channel, waiting for the fork server's exit status
        self._stopping = False
        self.zygote: Zygote | None = None

    # --- lifecycle ----------------------------------------------------------------------------------------

    def start(self) -> None:
        app, accept = self.app, self.accept
        max_tasks, max_memory = self.max_tasks_per_child, self.max_memory_per_child

        def main(sock: socket.socket, index: int) -> int:
            return child_main(app, sock, index, accept, max_tasks, max_memory)

        self.zygote = Zygote(main)
        self.loop.add_reader(self.zygote.fileno(), self._on_zygote)
        self._free_indexes = list(range(self.concurrency, 0, -1))
        for _ in range(self.concurrency):
            self._spawn()
        deadline = time.monotonic() + SPAWN_TIMEOUT
        while self._spawning and time.monotonic() < deadline:
            for event in self.zygote.wait_spawned(deadline - time.monotonic()):
                self._handle_zygote_event(event)
        if self._spawning:
            raise RuntimeError(f'pool children did not start within {SPAWN_TIMEOUT}s')

    def _spawn(self) -> None:
        assert self.zygote is not None
        index = self._free_indexes.pop() if self._free_indexes else len(self.children) + self._spawning + 1
        signals.worker_before_create_process.send(sender=self)
        self._spawning += 1
        self.zygote.request_spawn(index)

    def _on_zygote(self) -> None:
        assert self.zygote is not None
        try:
            events = self.zygote.read_events()
        except EOFError:
            self.loop.remove(self.zygote.fileno())
            if not self._stopping:
                logger.critical('The pool fork server exited; no more child processes can be started')
            return
        for event in events:
            self._handle_zygote_event(event)

    def _handle_zygote_event(self, event: tuple[str, int, int, int | None]) -> None:
        kind, a, b, fd = event
        if kind == 'spawned':
            self._spawning -= 1
            assert fd is not None
            child = _Child(a, b, _ipc.Channel(fd))
            if self._stopping:
                child.retiring = True
                with contextlib.suppress(OSError):
                    child.chan.send(0, STOP, b'')
            self.children[child.chan.fileno()] = child
            self._by_pid[child.pid] = child
            self.loop.add_reader(child.chan.fileno(), lambda c=child: self._on_readable(c))  # type: ignore[misc]
        else:
            pid, status = a, b
            gone = self._by_pid.get(pid)
            if gone is None:
                return
            gone.exit_status = status
            if pid in self._dying:
                self._finalize(gone)

    def _log_exit(self, pid: int, status: int, child: _Child | None) -> None:
        expected = child is not None and (child.retiring or child.killed_for is not None)
        if os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0 and (expected or self._stopping):
            return
        name = child.name if child else 'ForkPoolWorker'
        log = logger.info if (expected or self._stopping) else logger.error
        log('Process %r pid:%r exited with %r', name, pid, human_status(status))

    # --- dispatch -----------------------------------------------------------------------------------------

    def _available(self) -> list[_Child]:
        return [c for c in self.children.values() if not c.retiring and len(c.jobs) < SLOTS_PER_CHILD]

    def free_slots(self) -> int:
        return sum(SLOTS_PER_CHILD - len(c.jobs) for c in self._available())

    def submit(self, job: Job) -> None:
        child = min(self._available(), key=lambda c: (len(c.jobs), c.sent))
        if not child.jobs:
            job.started = time.monotonic()
        job.pid = child.pid
        child.jobs.append(job)
        child.sent += 1
        if self.max_tasks_per_child and child.sent >= self.max_tasks_per_child:
            child.retiring = True
        try:
            child.chan.send(job.id, JOB, job.payload())
        except (BrokenPipeError, ValueError):
            return  # the EOF handler will requeue it
        if child.chan.pending_output:
            self._want_write(child)

    def _want_write(self, child: _Child) -> None:
        fd = child.chan.fileno()

        def reader() -> None:
            self._on_readable(child)

        def writer() -> None:
            try:
                if child.chan.flush():
                    self.loop.set_writer(fd, None, reader)
            except BrokenPipeError:
                self.loop.set_writer(fd, None, reader)

        self.loop.set_writer(fd, writer, reader)

    def active(self) -> list[Job]:
        return [job for c in self.children.values() for job in c.jobs]

    # --- results ------------------------------------------------------------------------------------------

    def _on_readable(self, child: _Child) -> None:
        try:
            frames = child.chan.recv()
        except (EOFError, ValueError, OSError):
            frames = None
        for job_id, kind, payload in frames or ():
            if kind == RESULT:
                self._on_result(child, job_id, payload)
            elif kind == READY:
                child.ready = True
        if frames is None:
            self._on_child_gone(child)

    def _on_result(self, child: _Child, job_id: int, payload: bytes) -> None:
        *wire, exiting = marshal.loads(payload)
        if not child.jobs or child.jobs[0].id != job_id:
            logger.error('%s answered job %d out of order; ignoring it', child.name, job_id)
            return
        job = child.jobs.popleft()
        if exiting:
            child.retiring = True  # what it still holds never started: requeued when it is gone
        elif child.jobs:
            child.jobs[0].started = time.monotonic()
        self.on_result(job, Outcome.from_wire(tuple(wire)))

    def _on_child_gone(self, child: _Child) -> None:
        """Its channel closed: wait (briefly) for the fork server's exit status, so the reason is exact."""
        fd = child.chan.fileno()
        self.loop.remove(fd)
        self.children.pop(fd, None)
        child.chan.close()
        self._dying[child.pid] = child
        if child.exit_status is not None:
            self._finalize(child)
        else:
            child.timer = self.loop.call_later(2.0, lambda: self._finalize(child))

    def _finalize(self, child: _Child) -> None:
        if child.finalized:
            return
        child.finalized = True
        if child.timer is not None:
            child.timer.cancel()
        self._dying.pop(child.pid, None)
        jobs = list(child.jobs)
        child.jobs.clear()
        if jobs:
            running = jobs[0]
            if running.started is not None and child.killed_for is None:
                status = human_status(child.exit_status) if child.exit_status is not None else 'unknown status'
                reason = f'Worker exited prematurely: {status}.'
                self.on_lost(running, reason)
                jobs = jobs[1:]
            elif child.killed_for is not None:
                self.on_lost(running, child.killed_for)
                jobs = jobs[1:]
            if jobs:
                self.on_requeue(jobs)
        if child.exit_status is not None:
            self._log_exit(child.pid, child.exit_status, child)
        elif child.killed_for is None and not child.retiring and not self._stopping:
            logger.error('Process %r pid:%r exited unexpectedly', child.name, child.pid)
        self._by_pid.pop(child.pid, None)
        self._free_indexes.append(child.index)
        if not self._stopping:
            self._spawn()

    # --- limits -------------------------------------------------------------------------------------------

    def supports_hard_time_limit(self) -> bool:
        return True

    def check_time_limits(self, now: float) -> None:
        for child in list(self.children.values()):
            if not child.jobs or child.killed_for is not None:
                continue
            job = child.jobs[0]
            if job.started is None or not job.time_limit:
                continue
            if now - job.started > job.time_limit:
                logger.error('Hard time limit (%ss) exceeded for %s[%s]', job.time_limit, job.name, job.request.id)
                child.killed_for = f'time-limit:{job.time_limit}'
                with contextlib.suppress(ProcessLookupError):
                    os.kill(child.pid, signal.SIGKILL)

    def kill_job(self, job: Job, reason: str, sig: int = signal.SIGTERM) -> bool:
        """Kill the child running `job` (revoke with terminate); its queued jobs are requeued."""
        for child in self.children.values():
            if child.jobs and child.jobs[0] is job:
                child.killed_for = reason
                with contextlib.suppress(ProcessLookupError):
                    os.kill(child.pid, sig)
                return True
        return False

    # --- shutdown -----------------------------------------------------------------------------------------

    def stop(self) -> None:
        self._stopping = True
        for child in self.children.values():
            child.retiring = True
            with contextlib.suppress(BrokenPipeError, ValueError):
                child.chan.send(0, STOP, b'')
                if child.chan.pending_output:
                    self._want_write(child)

    def idle(self) -> bool:
        return not self.children and not self._spawning and not self._dying

    def terminate(self) -> list[Job]:
        self._stopping = True
        held: list[Job] = []
        for child in list(self.children.values()):
            held.extend(child.jobs)
            child.jobs.clear()
            child.killed_for = 'terminated'
            with contextlib.suppress(ProcessLookupError):
                os.kill(child.pid, signal.SIGKILL)
            self.loop.remove(child.chan.fileno())
            child.chan.close()
        self.children.clear()
        self.close()
        return held

    def close(self) -> None:
        if self.zygote is not None:
            self.loop.remove(self.zygote.fileno())
            self.zygote.close()
            self.zygote = None

    def info(self) -> dict[str, object]:
        return {
            'max-concurrency': self.concurrency,
            'processes': sorted(c.pid for c in self.children.values()),
            'max-tasks-per-child': self.max_tasks_per_child or 'N/A',
            'put-guarded-by-semaphore': False,
            'timeouts': [],
            'writes': {},
            'implementation': 'fastq.worker.pool.prefork:PreforkPool',
        }
