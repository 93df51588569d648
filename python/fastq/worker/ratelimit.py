"""Task rate limits: per worker as in Celery (`rate_limit='10/m'`), and optionally across the whole fleet.

A rate-limited task waits in the worker (it is already reserved) until its token bucket has a token: Celery's
bucket of capacity one, refilled at the task's rate, so `'10/s'` means one task every 100 ms per worker.
`global_rate_limit` (fastq's own task attribute, also settable through `task_annotations`) adds a limit kept
in the broker, shared by every worker of the fleet: GCRA, one atomic broker call per task.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from fastq.utils.time import parse_rate

if TYPE_CHECKING:
    from fastq.brokers.base import Broker
    from fastq.worker.job import Job
    from fastq.worker.loop import Loop, Timer

logger = logging.getLogger('celery.worker.consumer')


class TokenBucket:
    """Capacity-one token bucket (Celery's): a token every 1/rate seconds, no bursts."""

    def __init__(self, rate: float) -> None:
        self.rate = rate
        self._next = 0.0

    def take(self, now: float) -> float:
        """0.0 and consume the token if one is there, else the seconds until the next one."""
        if now >= self._next:
            self._next = max(now, self._next) + 1.0 / self.rate
            return 0.0
        return self._next - now


class RateLimiter:
    def __init__(self, loop: Loop, broker: Broker, release: Callable[[Job], None], enabled: bool = True) -> None:
        self.loop = loop
        self.broker = broker
        self.release = release
        self.enabled = enabled
        self.local: dict[str, TokenBucket] = {}
        self.fleet: dict[str, float] = {}
        self.waiting: dict[str, deque[Job]] = {}
        self.timers: dict[str, Timer] = {}

    def configure(self, name: str, rate_limit: Any, global_rate_limit: Any = None) -> None:
        """(Re)set the limits of a task; called when a task is first seen and by `control rate_limit`."""
        rate = parse_rate(rate_limit)
        if rate > 0:
            bucket = self.local.get(name)
            if bucket is None or bucket.rate != rate:
                self.local[name] = TokenBucket(rate)
        else:
            self.local.pop(name, None)
        fleet_rate = parse_rate(global_rate_limit)
        if fleet_rate > 0:
            self.fleet[name] = fleet_rate
        else:
            self.fleet.pop(name, None)
        self._pump(name)

    def limited(self, name: str) -> bool:
        return self.enabled and (name in self.local or name in self.fleet)

    def admit(self, job: Job) -> None:
        """Queue a rate-limited job; it is released to the dispatcher when its tokens are available."""
        name = job.request.task
        self.waiting.setdefault(name, deque()).append(job)
        self._pump(name)

    def _pump(self, name: str) -> None:
        queue = self.waiting.get(name)
        timer = self.timers.pop(name, None)
        if timer is not None:
            timer.cancel()
        while queue:
            wait = self._wait(name)
            if wait > 0:
                self.timers[name] = self.loop.call_later(wait, lambda: self._pump(name))
                return
            self.release(queue.popleft())
        self.waiting.pop(name, None)

    def _wait(self, name: str) -> float:
        now = time.monotonic()
        bucket = self.local.get(name)
        if bucket is not None:
            wait = bucket.take(now)
            if wait > 0:
                return wait
        rate = self.fleet.get(name)
        if rate is not None:
            try:
                return self.broker.acquire_rate(f'task:{name}', rate)
            except Exception as exc:  # the broker is down: keep the local limit, do not stop the worker
                logger.warning('Fleet-wide rate limit of %s unavailable (%s); retrying', name, exc)
                return 1.0
        return 0.0

    def held(self) -> list[Job]:
        return [job for queue in self.waiting.values() for job in queue]

    def clear(self) -> list[Job]:
        jobs = self.held()
        self.waiting.clear()
        for timer in self.timers.values():
            timer.cancel()
        self.timers.clear()
        return jobs
