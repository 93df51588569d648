"""What Celery's key-value result backends share, for fastq's memcached and filesystem backends: the key names
(Celery's `BaseKeyValueStoreBackend` prefixes) and `get()` by polling, as Celery's `wait_for` does.

Celery reads a key-value store every `interval` (0.5 s by default). fastq reads sooner at first, 5 ms after
the first look and twice as long each time up to `interval`, so a short task's `get()` returns in milliseconds,
while a long wait costs no more reads than Celery's.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

from fastq import states
from fastq.backends.base import Backend
from fastq.exceptions import TimeoutError

__all__ = ['CHORD_KEYPREFIX', 'FIRST_POLL', 'GROUP_KEYPREFIX', 'TASK_KEYPREFIX', 'KeyNames', 'PollingBackend']

#: A task's meta document.
TASK_KEYPREFIX = 'celery-task-meta-'
#: A saved GroupResult: `{"result": GroupResult.as_tuple()}`.
GROUP_KEYPREFIX = 'celery-taskset-meta-'
#: A chord's counter (memcached: INCR once per header task); the filesystem's `cleanup` also knows the prefix.
CHORD_KEYPREFIX = 'chord-unlock-'
#: The first pause of a polling `get()`, doubled after each look up to its `interval`.
FIRST_POLL = 0.005

_PREFIX_ENDINGS = ':_-.'


class KeyNames:
    """Celery's key names with `result_backend_transport_options['global_keyprefix']` applied (Celery adds a
    `_` unless the prefix ends in one of `:_-.`)."""

    def __init__(self, global_keyprefix: str | None = None) -> None:
        prefix = global_keyprefix or ''
        if prefix and prefix[-1] not in _PREFIX_ENDINGS:
            prefix += '_'
        self.task_prefix = f'{prefix}{TASK_KEYPREFIX}'
        self.group_prefix = f'{prefix}{GROUP_KEYPREFIX}'
        self.chord_prefix = f'{prefix}{CHORD_KEYPREFIX}'

    @staticmethod
    def _join(prefix: str, what: str, id: str) -> str:
        if not id:
            raise ValueError(f'{what} must not be empty. Got {id!r} instead.')
        return f'{prefix}{id}'

    def task(self, task_id: str) -> str:
        return self._join(self.task_prefix, 'task_id', task_id)

    def group(self, group_id: str) -> str:
        return self._join(self.group_prefix, 'group_id', group_id)

    def chord(self, group_id: str) -> str:
        return self._join(self.chord_prefix, 'group_id', group_id)


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
        """`wait_for` on the event loop: each read in the default executor, the pauses on the loop."""
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        delay = FIRST_POLL
        while True:
            meta = await loop.run_in_executor(None, self.get_task_meta, task_id)
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
