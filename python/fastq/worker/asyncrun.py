"""Running `async def` tasks to completion on a long-lived per-thread event loop.

Reusing one loop per thread (instead of `asyncio.run` per task) keeps connection pools and other loop-bound
resources of async libraries alive between tasks. The asyncio pool that runs many at once comes later; this
makes an `async def` task correct in every pool today.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable
from typing import Any, TypeVar

T = TypeVar('T')
_local = threading.local()


def _loop() -> asyncio.AbstractEventLoop:
    loop: asyncio.AbstractEventLoop | None = getattr(_local, 'loop', None)
    if loop is None or loop.is_closed():
        loop = asyncio.new_event_loop()
        _local.loop = loop
    return loop


def run_coroutine(awaitable: Awaitable[T]) -> T:
    loop = _loop()
    if loop.is_running():
        raise RuntimeError('an async task cannot be run synchronously from inside a running event loop')

    async def wrap() -> Any:
        return await awaitable

    return loop.run_until_complete(wrap())  # type: ignore[no-any-return]
