"""A value per running asyncio event loop: the asyncio client's connections.

Connections made by asyncio streams belong to the loop that made them, so an app used from several loops
(one per thread, or a fresh `asyncio.run` per test) needs one set per loop. `LoopLocal` makes the value on
first use in a loop and closes it when that loop shuts down: `asyncio.run` (and uvicorn, and most test
runners) finalize the async generators started in the loop before closing it, and a value's closer is one
such generator. A loop closed without that step leaves its connections to the garbage collector.
"""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import AsyncGenerator, Awaitable, Callable
from typing import Generic, TypeVar

__all__ = ['LoopLocal']

T = TypeVar('T')


class LoopLocal(Generic[T]):
    """`await local.get()` gives the running loop's value, made by `factory` on first use there."""

    def __init__(self, factory: Callable[[], T], close: Callable[[T], Awaitable[None]]) -> None:
        self._factory = factory
        self._close = close
        # Loop -> (value, its closer); the closer is kept alive here (the loop holds it only weakly).
        self._values: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, tuple[T, AsyncGenerator[None, None]]] = (
            weakref.WeakKeyDictionary()
        )

    async def get(self) -> T:
        loop = asyncio.get_running_loop()
        entry = self._values.get(loop)
        if entry is not None:
            return entry[0]
        value = self._factory()
        closer = self._closer(value)
        self._values[loop] = (value, closer)
        await closer.__anext__()  # started, so the loop's shutdown_asyncgens() finalizes it
        return value

    def peek(self) -> T | None:
        """The running loop's value if it has one (None outside a loop)."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return None
        entry = self._values.get(loop)
        return None if entry is None else entry[0]

    async def aclose(self) -> None:
        """Close the running loop's value now (the next `get` makes a new one)."""
        entry = self._values.get(asyncio.get_running_loop())
        if entry is not None:
            await entry[1].aclose()

    async def _closer(self, value: T) -> AsyncGenerator[None, None]:
        try:
            yield
        finally:
            loop = asyncio.get_running_loop()
            entry = self._values.get(loop)
            if entry is not None and entry[0] is value:
                del self._values[loop]
            await self._close(value)
