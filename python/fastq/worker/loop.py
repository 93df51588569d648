"""The worker parent's event loop: one thread at a time runs it and owns all task state; others post to it.

Sources of events: file descriptors (pool channels, the zygote's control socket) watched with a selector;
an inbox that other threads (the fetcher, pool threads, signal handlers) append to, followed by one byte on a
wake pipe; and timers. Everything runs in the loop's thread, so task state needs no locks of its own.

One exception, for the task path's latency: a thread with work for the loop while the loop sleeps in select
may run it itself (`run_borrowed`) instead of posting it, saving the loop's wake-up (a pipe write, a
thread switch, often a halted vCPU to wake: 70-80 µs of a sequential round trip here). The `_owner` lock
keeps that exclusive: the loop's thread holds it at all times except inside select, so a borrowing thread
gets it only while the loop is asleep, and the loop's thread, waking, waits for it to finish.
"""

from __future__ import annotations

import contextlib
import functools
import heapq
import itertools
import os
import selectors
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

Callback = Callable[[], None]


class Timer:
    __slots__ = ('callback', 'cancelled', 'when')

    def __init__(self, when: float, callback: Callback) -> None:
        self.when = when
        self.callback = callback
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class Loop:
    def __init__(self) -> None:
        self.selector = selectors.DefaultSelector()
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self.selector.register(self._wake_r, selectors.EVENT_READ, self._drain_wake)
        self._inbox: deque[Callback] = deque()
        self._timers: list[tuple[float, int, Timer]] = []
        self._seq = itertools.count()
        self._idle: list[Callback] = []
        self._wake_pending = False
        self.running = False
        self.thread: threading.Thread | None = None  # the one running it (`run_until`)
        # Held whenever loop work runs (see the module docstring). Taken here, by the thread that makes the
        # loop: until it first waits in select, nobody may borrow it.
        self._owner = threading.Lock()
        self._owner.acquire()

    # --- from any thread ----------------------------------------------------------------------------------

    def call_soon_threadsafe(self, callback: Callback) -> None:
        """Run `callback` in the loop's thread as soon as possible (safe from any thread and signal handlers)."""
        self._inbox.append(callback)
        self.wake()

    def wake(self) -> None:
        # One byte per wake-up, not per call: a busy fetcher posts many times between two loop passes, and
        # each write (and the read it causes) is a system call in the loop's critical path.
        if self._wake_pending:
            return
        self._wake_pending = True
        with contextlib.suppress(BlockingIOError, OSError):
            os.write(self._wake_w, b'\0')

    def run_borrowed(self, callback: Callback) -> bool:
        """Run `callback`, then the idle callbacks, in this thread, as a pass of the loop would, if the loop is
        asleep in select and nothing is posted before it; False, with nothing run, otherwise (post it then).

        An exception is re-raised in the loop's thread, as if the loop had run the callback.
        """
        if self._inbox or not self._owner.acquire(blocking=False):
            return False
        try:
            if self._inbox:  # posted meanwhile: it runs first, in the loop's thread
                return False
            earliest = self._timers[0][0] if self._timers else None
            try:
                callback()
                for idle in self._idle:
                    idle()
            except BaseException as exc:
                self.call_soon_threadsafe(functools.partial(_reraise, exc))
                return True
            if self._timers and (earliest is None or self._timers[0][0] < earliest):
                self.wake()  # the loop sleeps with a timeout computed before this timer existed
            return True
        finally:
            self._owner.release()

    # --- from the loop's thread ---------------------------------------------------------------------------

    def call_later(self, delay: float, callback: Callback) -> Timer:
        return self.call_at(time.monotonic() + delay, callback)

    def call_at(self, when: float, callback: Callback) -> Timer:
        timer = Timer(when, callback)
        heapq.heappush(self._timers, (when, next(self._seq), timer))
        return timer

    def call_repeatedly(self, interval: float, callback: Callback) -> Timer:
        """Call every `interval` seconds until the returned timer is cancelled."""
        handle = Timer(0.0, callback)

        def tick() -> None:
            if handle.cancelled:
                return
            callback()
            self.call_later(interval, tick)

        self.call_later(interval, tick)
        return handle

    def on_idle(self, callback: Callback) -> None:
        """Run after each pass over events (dispatching and flushing batches go here)."""
        self._idle.append(callback)

    def add_reader(self, fd: int, callback: Callback) -> None:
        self.selector.register(fd, selectors.EVENT_READ, callback)

    def set_writer(self, fd: int, callback: Callback | None, reader: Callback) -> None:
        """Watch `fd` for writability too (callback given) or again only for reading (None)."""
        events = selectors.EVENT_READ | (selectors.EVENT_WRITE if callback else 0)
        self.selector.modify(fd, events, (reader, callback))

    def remove(self, fd: int) -> None:
        with contextlib.suppress(KeyError, ValueError):
            self.selector.unregister(fd)

    def _drain_wake(self) -> None:
        with contextlib.suppress(BlockingIOError, OSError):
            while os.read(self._wake_r, 4096):
                pass
        # After reading, not before: a byte written between the two would be read here with the flag left
        # set, and every later wake would be skipped. A wake skipped because the flag is still set is not
        # lost: its callback is already in the inbox, which this pass runs after this handler.
        self._wake_pending = False

    def run_once(self, max_wait: float = 1.0) -> None:
        timeout = max_wait
        if self._inbox:
            timeout = 0.0
        elif self._timers:
            timeout = max(0.0, min(timeout, self._timers[0][0] - time.monotonic()))
        self._owner.release()
        try:
            events = self.selector.select(timeout)
        finally:
            self._owner.acquire()
        for key, mask in events:
            data: Any = key.data
            if isinstance(data, tuple):
                reader, writer = data
                if mask & selectors.EVENT_WRITE and writer is not None:
                    writer()
                if mask & selectors.EVENT_READ:
                    reader()
            else:
                data()
        while self._inbox:
            self._inbox.popleft()()
        now = time.monotonic()
        while self._timers and self._timers[0][0] <= now:
            _, _, timer = heapq.heappop(self._timers)
            if not timer.cancelled:
                timer.callback()
        for callback in self._idle:
            callback()

    def run_until(self, done: Callable[[], bool], max_wait: float = 1.0) -> None:
        self.thread = threading.current_thread()
        self.running = True
        try:
            while not done():
                self.run_once(max_wait)
        finally:
            self.running = False

    def close(self) -> None:
        self.selector.close()
        for fd in (self._wake_r, self._wake_w):
            with contextlib.suppress(OSError):
                os.close(fd)


def _reraise(exc: BaseException) -> None:
    raise exc
