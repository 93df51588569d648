"""In-process result backend for tests and eager use (`memory://`, also Celery's `cache+memory://`).

Per app instance; `get()` waits on a condition variable, so it wakes the moment a result is stored.
"""

from __future__ import annotations

import threading
import time
from typing import TYPE_CHECKING

from fastq.backends.base import Backend

if TYPE_CHECKING:
    from fastq.app import Fastq


class MemoryBackend(Backend):
    polling = False
    persistent = False

    def __init__(self, app: Fastq, url: str | None = None) -> None:
        super().__init__(app, url)
        self._data: dict[str, tuple[bytes, float | None]] = {}
        self._cond = threading.Condition()
        self._generation = 0

    def _set(self, task_id: str, payload: bytes, state: str, expires: float | None) -> None:
        with self._cond:
            self._data[task_id] = (payload, time.time() + expires if expires else None)
            self._generation += 1
            self._cond.notify_all()

    def _get(self, task_id: str) -> bytes | None:
        entry = self._data.get(task_id)
        if entry is None:
            return None
        payload, until = entry
        if until is not None and until < time.time():
            self._data.pop(task_id, None)
            return None
        return payload

    def _delete(self, task_id: str) -> None:
        with self._cond:
            self._data.pop(task_id, None)

    def _change_marker(self) -> int:
        return self._generation

    def _wait_for_change_since(self, marker: int, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._generation == marker:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return
                self._cond.wait(remaining)

    def cleanup(self) -> None:
        now = time.time()
        with self._cond:
            for task_id in [k for k, (_, until) in self._data.items() if until is not None and until < now]:
                del self._data[task_id]
