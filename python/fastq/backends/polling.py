"""`get()` for result backends that cannot tell a reader that a result was written (memcached, files, SQL
databases): read until the task is ready, as Celery's `wait_for` does.

Celery reads every `interval` (0.5 s by default). fastq reads sooner at first, 5 ms after the first look and
twice as long each time up to `interval`, so a short task's `get()` returns in milliseconds, while a long wait
costs no more reads than Celery's.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

from fastq import states
from fastq.backends.base import Backend
from fastq.exceptions import TimeoutError

__all__ = ['FIRST_POLL', 'PollingBackend']

#: The first pause of a polling `get()`, doubled after each look up to its `interval`.
FIRST_POLL = 0.005


class PollingBackend(Backend):
    """A backend with no way to hear of a write: `get()` reads until the task is ready (see the module)."""

    polling = True

    def wait_for(
        self,
        task_id: str,
        timeout: float | None = None,
        interval: float = 0.5,
        on_interval: Callable[[], Any] | None = None,
        sent_at: float | None = None,
        on_message: Callable[[dict[str, Any]], Any] | None = None,
    ) -> dict[str, Any]:
        deadline = None if timeout is None else time.monotonic() + timeout
        delay = FIRST_POLL
        while True:
            meta = self.get_task_meta(task_id)
            if meta['status'] in states.READY_STATES:
                return meta
            if on_interval is not None:
                on_interval()
            time.sleep(_pause(delay, deadline, time.monotonic()))
            delay = min(delay * 2, max(interval, FIRST_POLL))

    async def await_for(
        self, task_id: str, timeout: float | None = None, interval: float = 0.5, sent_at: float | None = None
    ) -> dict[str, Any]:
        """`wait_for` on the event loop: each read through `aget_task_meta`, the pauses on the loop."""
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        delay = FIRST_POLL
        while True:
            meta = await self.aget_task_meta(task_id)
            if meta['status'] in states.READY_STATES:
                return meta
            await asyncio.sleep(_pause(delay, deadline, loop.time()))
            delay = min(delay * 2, max(interval, FIRST_POLL))


def _pause(delay: float, deadline: float | None, now: float) -> float:
    """How long to sleep before the next look; a TimeoutError once the deadline has passed."""
    if deadline is None:
        return delay
    remaining = deadline - now
    if remaining <= 0:
        raise TimeoutError('The operation timed out.')
    return min(delay, remaining)
