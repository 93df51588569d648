"""The solo pool: tasks run one at a time in the worker's own loop (debugging, or one task per process)."""

from __future__ import annotations

import os
import time
from collections import deque
from typing import TYPE_CHECKING, Any

from fastq import _state, signals
from fastq.worker.job import run_payload
from fastq.worker.pool.base import Pool
from fastq.worker.trace import Killed

if TYPE_CHECKING:
    from fastq.worker.job import Job


class SoloPool(Pool):
    name = 'solo'
    runs_tasks_in_loop = True

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._pending: deque[Job] = deque()
        self._running: Job | None = None
        self._stopped = False

    def start(self) -> None:
        # Tasks run in this process, which Celery's solo pool announces as a pool process (sender: node name).
        signals.worker_process_init.send(sender=_state.worker_hostname)
        self.loop.on_idle(self._run_pending)

    def free_slots(self) -> int:
        return 0 if (self._pending or self._running or self._stopped) else 1

    def submit(self, job: Job) -> None:
        self._pending.append(job)
        self.loop.wake()  # run it on the loop's next pass, after this pass has sent its early acks

    def _run_pending(self) -> None:
        while self._pending:
            job = self._pending.popleft()
            self._running = job
            try:
                job.started = time.monotonic()
                job.pid = os.getpid()  # (`inspect active`'s worker_pid, as Celery's solo pool: the worker's own)
                outcome = run_payload(self.app, job.payload(), self.accept)
            except Killed:
                return  # stopped by `interrupt`: a cold shutdown, which already handed the job back
            finally:
                self._running = None
            self.on_result(job, outcome)

    def busy(self) -> bool:
        """Whether a task is running now (in the loop's thread, so a signal handler there interrupted it)."""
        return self._running is not None

    def interrupt(self) -> None:
        """Called from a signal handler in the loop's thread while a task runs (a cold shutdown, after
        `terminate` handed its job back): stop the task where it is, as Celery's solo worker stops when its
        cold-shutdown handler raises in the running task's frame; nothing else could, the loop being inside it."""
        if self._running is not None:
            raise Killed('terminated')

    def withdraw(self, job: Job) -> bool:
        # A submitted job waits for the loop's next pass; a revoke read in that pass came before it ran (Celery's
        # solo pool runs a task as it takes it, so the revoke finds it unstarted: 'Discarding revoked task')
        if job in self._pending:
            self._pending.remove(job)
            return True
        return False

    def active(self) -> list[Job]:
        return [self._running] if self._running else list(self._pending)

    def stop(self) -> None:
        self._stopped = True

    def idle(self) -> bool:
        return not self._pending and self._running is None

    def terminate(self) -> list[Job]:
        # (the running job too: only a signal handler interrupting it can call this while it runs: `interrupt`)
        held = ([self._running] if self._running is not None else []) + list(self._pending)
        self._pending.clear()
        self._stopped = True
        return held

    def info(self) -> dict[str, object]:
        # Celery's solo pool: one task at a time, in the worker's own process, whatever -c says
        return {**super().info(), 'max-concurrency': 1, 'processes': [os.getpid()], 'max-tasks-per-child': None,
                'put-guarded-by-semaphore': True, 'timeouts': ()}  # fmt: skip
