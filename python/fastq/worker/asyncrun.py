"""Running `async def` tasks to completion on a long-lived per-thread event loop.

Reusing one loop per thread (instead of `asyncio.run` per task) keeps connection pools and other loop-bound
resources of async libraries alive between tasks. This makes an `async def` task correct in every pool, one
at a time per thread; the asyncio pool (`pool/aio.py`) runs many at once, awaiting them on its own loop.
"""

from __future__ import annotations

import asyncio
import inspect
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
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        pass
    else:  # e.g. an async task calling another directly: `await other.run(...)` is what it means
        if inspect.iscoroutine(awaitable):
            awaitable.close()  # never awaited: close it, so no "never awaited" warning follows
        raise RuntimeError(
            'an async task cannot be run synchronously from inside a running event loop; await task.run(...) instead'
        )
    loop = _loop()

    async def wrap() -> Any:
        return await awaitable

    return loop.run_until_complete(wrap())  # type: ignore[no-any-return]
