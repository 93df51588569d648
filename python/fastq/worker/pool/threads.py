"""The threads pool: tasks run in threads of the worker process (I/O-bound tasks; no hard time limits)."""

from __future__ import annotations

import os
import queue
import threading
from typing import TYPE_CHECKING, Any

from fastq.worker.job import run_payload
from fastq.worker.pool.base import Pool

if TYPE_CHECKING:
    from fastq.worker.job import Job
    from fastq.worker.trace import Outcome


class ThreadPool(Pool):
    name = 'threads'

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._queue: queue.SimpleQueue[Job | None] = queue.SimpleQueue()
        self._threads: list[threading.Thread] = []
        self._active: dict[int, Job] = {}
        self._alive = 0

    def start(self) -> None:
        for i in range(self.concurrency):
            thread = threading.Thread(target=self._work, name=f'ThreadPoolExecutor-0_{i}', daemon=True)
            thread.start()
            self._threads.append(thread)
            self._alive += 1

    def _work(self) -> None:
        try:
            while True:
                job = self._queue.get()
                if job is None:
                    return
                try:
                    outcome = run_payload(self.app, job.payload(), self.accept)
                except BaseException as exc:  # never lose the answer for a job
                    from fastq.worker.trace import Outcome

                    outcome = Outcome('FAILURE', 0.0, exc_repr=repr(exc))
                self.loop.call_soon_threadsafe(lambda j=job, o=outcome: self._done(j, o))  # type: ignore[misc]
        finally:
            self.loop.call_soon_threadsafe(self._thread_exited)

    def _thread_exited(self) -> None:
        self._alive -= 1

    def _done(self, job: Job, outcome: Outcome) -> None:
        self._active.pop(job.id, None)
        self.on_result(job, outcome)

    def free_slots(self) -> int:
        return max(0, self.concurrency - len(self._active))

    def submit(self, job: Job) -> None:
        import time

        job.started = time.monotonic()
        job.pid = os.getpid()  # (`inspect active`'s worker_pid: Celery's thread pool reports its own process)
        self._active[job.id] = job
        self._queue.put(job)

    def active(self) -> list[Job]:
        return list(self._active.values())

    def info(self) -> dict[str, object]:
        return {**super().info(), 'threads': self._alive}  # (Celery's: its executor's threads)

    def stop(self) -> None:
        for _ in self._threads:
            self._queue.put(None)

    def idle(self) -> bool:
        return not self._active and self._alive == 0

    def terminate(self) -> list[Job]:
        # Threads cannot be killed; hand back what has not started and abandon the rest.
        held = list(self._active.values())
        self._active.clear()
        self.stop()
        return held
