"""The pool SPI the worker loop drives.

The loop calls `submit` only when `can_take(job)` (by default: `free_slots() > 0`), then `commit()` once per pass, and learns what happened through the callbacks it
passes in: `on_result(job, outcome)` for every job that ran (in the loop's thread), `on_lost(job, reason)`
for a job whose executor died while running it, `on_requeue(jobs)` for jobs that were handed to an executor
but never started (they go back to the loop's ready queue: never failed, never lost).
"""

from __future__ import annotations

import abc
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from fastq.app import Fastq
    from fastq.worker.job import Job
    from fastq.worker.loop import Loop
    from fastq.worker.trace import Outcome

ResultCallback = Callable[['Job', 'Outcome'], None]
LostCallback = Callable[['Job', str], None]
RequeueCallback = Callable[[list['Job']], None]
SuccessesCallback = Callable[[list['Job'], list[float], list[str]], None]


class Pool(abc.ABC):
    name: str
    #: Tasks run in the loop's own passes (solo): then no other thread may run a pass (`Loop.run_borrowed`),
    #: or a task would run in that thread.
    runs_tasks_in_loop = False
    #: Set by the worker: takes plain successes (SUCCESS, nothing else to report) in a batch, as `on_result`
    #: would take each with `Outcome(SUCCESS, runtime, retval_repr)`; pools that learn of several at once
    #: (prefork's SUCCEEDED frames) use it, saving a call chain and an Outcome per task in the loop's thread.
    on_successes: SuccessesCallback | None = None

    def __init__(
        self,
        app: Fastq,
        concurrency: int,
        loop: Loop,
        accept: frozenset[str],
        on_result: ResultCallback,
        on_lost: LostCallback,
        on_requeue: RequeueCallback,
        max_tasks_per_child: int | None = None,
        max_memory_per_child: int | None = None,
    ) -> None:
        self.app = app
        self.concurrency = concurrency
        self.loop = loop
        self.accept = accept
        self.on_result = on_result
        self.on_lost = on_lost
        self.on_requeue = on_requeue
        self.max_tasks_per_child = max_tasks_per_child
        self.max_memory_per_child = max_memory_per_child

    @abc.abstractmethod
    def start(self) -> None:
        """Start executors; returns when they can accept jobs."""

    @abc.abstractmethod
    def free_slots(self) -> int: ...

    @abc.abstractmethod
    def submit(self, job: Job) -> None: ...

    def can_take(self, job: Job) -> bool:
        """Whether `submit(job)` may be called now. Pools that choose an executor per job (prefork) override
        this; `submit` then uses the executor chosen here."""
        return self.free_slots() > 0

    def commit(self) -> None:
        """End of a dispatch pass: send what `submit` buffered (one write per executor, not one per job)."""
        return None

    def withdraw(self, job: Job) -> bool:
        """Take back `job`, submitted but not yet begun, if it still waits inside the pool (True: it will not
        run). A revoke calls it, so a job revoked in that gap is discarded as revoked, not run; pools that start
        a job the moment it is submitted have no such gap."""
        return False

    @abc.abstractmethod
    def active(self) -> list[Job]:
        """Jobs handed to executors and not finished (running or queued inside the executor)."""

    def check_time_limits(self, now: float) -> None:
        """Enforce hard time limits (monotonic `now`); pools that cannot kill a task do nothing."""
        return None

    def supports_hard_time_limit(self) -> bool:
        return False

    @abc.abstractmethod
    def stop(self) -> None:
        """Stop accepting; finish what executors hold (warm shutdown). `idle()` says when done."""

    @abc.abstractmethod
    def idle(self) -> bool: ...

    @abc.abstractmethod
    def terminate(self) -> list[Job]:
        """Stop now: kill executors; returns the jobs they held, unsettled."""

    def info(self) -> dict[str, object]:
        """The `pool` part of `inspect stats` (Celery's `_get_info`: the class as `module:Class`)."""
        return {
            'max-concurrency': self.concurrency,
            'implementation': f'{type(self).__module__}:{type(self).__qualname__}',
        }
