"""A waiting thread's own connection: subscribe, read and wait for one result with no other thread involved.

The shared listener (`listener.py`) serves any number of waiters with one pub/sub connection, but each wait
crosses threads three times (subscribe, confirmation, message), and on a small machine those hand-offs cost
more than the Redis round trips. A thread that waits often (a sequential `delay().get()` loop, a web
request) gets a connection of its own instead, speaking RESP3, where a subscribed connection can still run
commands. One write sends `SUBSCRIBE key` and `GET key`; Redis runs them in that order, so a result stored
before the subscription is in the GET reply and one stored after is published to us: no window, no second
round trip, and the thread reads its own socket. The channel of a result that came is left (`UNSUBSCRIBE`)
in the next wait's write rather than at the end of this one: a write less per wait, and one Redis wake-up less,
on the way from a result to the caller's next `delay()`.

Replies on the connection are told apart by shape: pushes (messages, subscription confirmations) are lists,
a GET reply is bytes or nil. GETs still in flight when a wait ends (a periodic re-read) are answered during
the next wait; `_pending` remembers which key each one was for, so a stale reply is never taken for the
current task's. Redis before 6.0 has no RESP3: the backend then uses the listener for good.
"""

from __future__ import annotations

import select
import time
from collections import deque
from collections.abc import Callable
from typing import Any

import redis
import redis.exceptions

from fastq.utils.rediswire import Link

__all__ = ['InlineWait', 'Unsupported']


class Unsupported(Exception):
    """The server cannot do this (no RESP3)."""


class InlineWait:
    """One thread's RESP3 connection for waiting on results, one task at a time."""

    def __init__(self, client: redis.Redis) -> None:
        self.link = Link(client)
        self._ready = False
        self._pending: deque[bytes] = deque()  # the key of each GET sent and not yet answered, in order
        self._left: bytes | None = None  # the channel of the last wait, still subscribed until the next one

    def close(self) -> None:
        self.link.close()

    def _hello(self) -> None:
        reply = self.link.execute([('HELLO', '3')])[0]
        if isinstance(reply, redis.exceptions.ResponseError):
            raise Unsupported(str(reply))
        self._ready = True
        self._pending.clear()
        self._left = None

    def wait(
        self,
        key: bytes,
        decode: Callable[[bytes], dict[str, Any]],
        is_ready: Callable[[dict[str, Any]], bool],
        deadline: float | None,
        recheck: float,
        on_interval: Callable[[], Any] | None,
    ) -> dict[str, Any] | None:
        """The task's ready meta, or None when `deadline` passed first.

        Raises redis-py's connection errors (the caller falls back to the listener) and `Unsupported`.
        """
        link = self.link
        if not self._ready or link.fileno() < 0:
            self._hello()
        left, self._left = self._left, None
        leave = [('UNSUBSCRIBE', left)] if left is not None and left != key else []
        link.send_all([*leave, ('SUBSCRIBE', key), ('GET', key)])
        self._pending.append(key)
        ready = False
        try:
            next_check = time.monotonic() + recheck
            while True:
                for reply in link.replies():
                    meta = self._take(reply, key, decode)
                    if meta is not None and is_ready(meta):
                        ready = True
                        return meta
                now = time.monotonic()
                if deadline is not None and now >= deadline:
                    return None
                if now >= next_check:  # a quiet spell: read the key, in case a message went missing
                    link.send_all([('GET', key)])
                    self._pending.append(key)
                    next_check = now + recheck
                    if on_interval is not None:
                        on_interval()
                    continue
                wait = next_check - now if deadline is None else min(next_check, deadline) - now
                select.select([link.fileno()], [], [], max(0.0, wait))
        finally:
            if ready and link.fileno() >= 0:
                # A ready result is final: nothing more is published on its channel. Left in the next wait's
                # write (a message that comes meanwhile is skipped then, `_take`).
                self._left = key
            elif link.fileno() >= 0:  # a timeout or an error: nothing is left subscribed behind the caller
                try:
                    link.send_all([('UNSUBSCRIBE', key)])  # its confirmation is read (and skipped) next time
                except redis.exceptions.ConnectionError:
                    self._ready = False

    def _take(self, reply: Any, key: bytes, decode: Callable[[bytes], dict[str, Any]]) -> dict[str, Any] | None:
        if isinstance(reply, list):  # a push
            if len(reply) == 3 and reply[0] == b'message' and reply[1] == key:
                return decode(reply[2])
            return None  # a confirmation, or a message for a channel left since
        if isinstance(reply, redis.exceptions.ResponseError):
            self._pending.popleft()
            raise reply
        asked = self._pending.popleft() if self._pending else None
        if asked != key or reply is None:
            return None  # an earlier wait's read, or nothing stored yet
        return decode(reply)
