"""Reserving from Redis lists in kombu's layout: one atomic script per batch, and waiting inside Redis.

Fetching is one Lua call that pops up to the free window and records every message in `unacked` /
`unacked_index`, so a message is always somewhere a restore sweep can find it. A script cannot block, so
while the queues are empty the fetching thread has a `BLMOVE key key RIGHT RIGHT` outstanding on each list key
(one connection per key; it returns as soon as the list has an element and leaves the list as it was) and
waits in select() on their sockets: the first reply starts the next fetch. There is no polling and no thread
hand-off: an idle worker starts a published task within a round trip.
"""

from __future__ import annotations

import logging
import os
import select
import threading
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import redis.exceptions

from fastq import _core
from fastq.brokers.base import Consumer, DeadLetter, Delivery, Tag
from fastq.brokers.redis.layout import DELIVERIES_HEADER
from fastq.utils.rediswire import Link

if TYPE_CHECKING:
    from fastq.brokers.redis import RedisBroker

logger = logging.getLogger('fastq.brokers.redis')

WAIT_TIMEOUT = 2  # seconds one BLMOVE blocks in Redis before it answers nil (and is sent again)


class _Watch:
    """A connection with a BLMOVE on one list key, possibly still outstanding."""

    __slots__ = ('key', 'link', 'pending')

    def __init__(self, consumer: RedisConsumer, key: str) -> None:
        self.key = key
        self.link = Link(consumer.broker.client)
        self.pending = False

    def arm(self) -> None:
        if not self.pending:
            self.link.send(('BLMOVE', self.key, self.key, 'RIGHT', 'RIGHT', WAIT_TIMEOUT))
            self.pending = True

    def hit(self) -> bool:
        """Whether the BLMOVE answered with an element (the list filled); False for nil or nothing yet."""
        replies = self.link.replies()
        if replies:
            self.pending = False
        for reply in replies:
            if isinstance(reply, redis.exceptions.RedisError):
                raise reply
        return any(reply is not None for reply in replies)


class RedisConsumer(Consumer):
    def __init__(self, broker: RedisBroker, queues: list[str], owner: str) -> None:
        self.broker = broker
        self.layout = broker.layout
        self.queues = queues
        self.owner = owner
        self.client = broker.client
        self._use_queues(queues)
        self._new_queues: list[str] | None = None  # set by set_queues, applied by the fetching thread
        self._rotation = 0
        self._held: set[Tag] = set()
        self._held_lock = threading.Lock()
        self._interrupted = False
        self._drained = False
        self._closed = False
        # The hot path's own connections (fetches come from the fetcher thread, acks from the settler's).
        self._fetch_link = Link(broker.client)
        self._ack_link = Link(broker.client)
        self._watches = [_Watch(self, key) for key, _ in self._keys]
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._backoff = 0.0

    def is_closed(self) -> bool:
        return self._closed

    def _use_queues(self, queues: list[str]) -> None:
        self.queues = queues
        ordered = sorted(queues) if self.broker.queue_order_strategy == 'sorted' else list(queues)
        self._keys = self.layout.consume_keys(ordered)
        self._key_queue = dict(self._keys)

    def set_queues(self, queues: Sequence[str]) -> None:
        self.broker.declare(queues)
        self._new_queues = list(queues)
        self.wakeup()

    def _apply_new_queues(self) -> None:
        """In the fetching thread, which alone touches the watches: swap the keys and their BLMOVEs."""
        queues, self._new_queues = self._new_queues, None
        if queues is None:
            return
        self._use_queues(queues)
        for watch in self._watches:
            watch.link.close()  # drops its BLMOVE with the connection
        self._watches = [_Watch(self, key) for key, _ in self._keys]
        self._drained = False

    # --- fetching -----------------------------------------------------------------------------------------

    def _ordered_keys(self) -> list[str]:
        """Keys in serving order: step-major; queues rotated round-robin between fetches (kombu's default)."""
        keys = [key for key, _ in self._keys]
        strategy = self.broker.queue_order_strategy
        if strategy == 'round_robin' and len(self.queues) > 1:
            n = len(self.queues)
            self._rotation = (self._rotation + 1) % n
            steps = len(keys) // n
            rotated = []
            for s in range(steps):
                row = keys[s * n : (s + 1) * n]
                rotated.extend(row[self._rotation :] + row[: self._rotation])
            return rotated
        return keys

    def fetch(self, limit: int, timeout: float) -> list[Delivery]:
        deadline = time.monotonic() + timeout
        # The last fetch got less than it asked for, so the lists were empty a moment ago: wait for a BLMOVE
        # to see one fill instead of running the script once more for nothing (it answers at once if one
        # filled meanwhile). Saves a script call per task on a worker that keeps up with its queues.
        if self._new_queues is not None:
            self._apply_new_queues()
        skip = self._drained and limit > 0
        while True:
            got = self._reserve(limit) if limit > 0 and not skip else []
            skip = False
            if got or self._closed:
                self._drained = len(got) < limit
                return got
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not self._wait(remaining):
                return []

    def _wait(self, timeout: float) -> bool:
        """Until a list may have filled (True), or `timeout` / `wakeup` (False)."""
        deadline = time.monotonic() + timeout
        while not self._closed:
            try:
                for watch in self._watches:
                    watch.arm()
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                fds = [watch.link.fileno() for watch in self._watches]
                readable, _, _ = select.select([self._wake_r, *fds], [], [], remaining)
                if self._wake_r in readable:
                    self._drain_wake()
                    if self._interrupted:
                        self._interrupted = False
                        return False
                hit = False
                for watch, fd in zip(self._watches, fds, strict=True):
                    if fd in readable:
                        hit = watch.hit() or hit
            except redis.exceptions.RedisError as exc:
                for watch in self._watches:
                    watch.pending = watch.pending and watch.link.fileno() >= 0
                # Let the fetch see (and report, with backoff) the problem, after a pause here so a broker
                # that is down is not hammered from this loop.
                self._backoff = min(max(self._backoff * 2, 0.1), 5.0)
                logger.debug('waiting on the queues failed (%s); fetching in %.1fs', exc, self._backoff)
                self._sleep(min(self._backoff, max(deadline - time.monotonic(), 0.0)))
                return True
            self._backoff = 0.0
            if hit:
                return True
        return False

    def _sleep(self, seconds: float) -> None:
        if seconds > 0:
            readable, _, _ = select.select([self._wake_r], [], [], seconds)
            if readable:
                self._drain_wake()

    def _drain_wake(self) -> None:
        try:
            while os.read(self._wake_r, 4096):
                pass
        except BlockingIOError:
            pass

    def _reserve(self, limit: int) -> list[Delivery]:
        keys = self._ordered_keys()
        raw = self._fetch_link.evalsha(
            self.broker.scripts.fetch_script, [self.layout.unacked, self.layout.unacked_index, *keys],
            [limit, repr(time.time())],
        )  # fmt: skip
        out: list[Delivery] = []
        for i in range(0, len(raw), 3):
            key = keys[int(raw[i]) - 1]
            tag = _text(raw[i + 1])
            out.append(self._delivery(tag, self._key_queue.get(key, key), bytes(raw[i + 2])))
        if out:
            with self._held_lock:
                self._held.update(d.tag for d in out)
        return out

    @staticmethod
    def _delivery(tag: str, queue: str, payload: bytes) -> Delivery:
        try:
            message = _core.Message.from_envelope(payload, None)
        except ValueError as exc:
            return Delivery(tag, queue, None, payload, False, 1, error=str(exc))
        headers = message.headers
        earlier = headers.get(DELIVERIES_HEADER)
        deliveries = max(earlier if isinstance(earlier, int) else 0, 0) + 1
        redelivered = bool(headers.get('redelivered')) or deliveries > 1
        return Delivery(tag, queue, message, payload, redelivered, deliveries)

    def wakeup(self) -> None:
        self._interrupted = True
        try:
            os.write(self._wake_w, b'!')
        except (BlockingIOError, OSError):  # already signalled, or closed
            pass

    # --- settling -----------------------------------------------------------------------------------------

    def _forget(self, tags: Sequence[Tag]) -> None:
        with self._held_lock:
            self._held.difference_update(tags)

    def ack(self, tags: Sequence[Tag]) -> None:
        if not tags:
            return
        layout = self.layout
        commands: list[Any] = [('MULTI',)]
        for i in range(0, len(tags), 500):
            chunk = [str(t) for t in tags[i : i + 500]]
            commands.append(('HDEL', layout.unacked, *chunk))
            commands.append(('ZREM', layout.unacked_index, *chunk))
        commands.append(('EXEC',))
        for reply in self._ack_link.execute(commands):
            if isinstance(reply, redis.exceptions.ResponseError):
                raise reply
        self._forget(tags)

    def reject(self, tags: Sequence[Tag], requeue: bool) -> None:
        if requeue:
            self.broker.restore(tags, leftmost=True, count_delivery=True)
            self._forget(tags)
        else:
            self.ack(tags)

    def release(self, tags: Sequence[Tag]) -> None:
        self.broker.restore(tags, leftmost=False, count_delivery=False)
        self._forget(tags)

    def defer(self, tag: Tag, eta: float) -> None:
        self.broker.park(str(tag), eta)
        self._forget([tag])

    def renew(self) -> None:
        """Move our reservations' scores to now, so no sweep (fastq's or kombu's) restores a running task."""
        with self._held_lock:
            tags = list(self._held)
        if not tags:
            return
        now = time.time()
        with self.client.pipeline(transaction=False) as pipe:
            for i in range(0, len(tags), 500):
                pipe.zadd(self.layout.unacked_index, {str(t): now for t in tags[i : i + 500]}, xx=True)
            pipe.execute()

    def dead_letter(self, delivery: Delivery, reason: str) -> DeadLetter:
        letter = DeadLetter.of(delivery, reason)
        self.broker.dead_letter_store.add(letter, remove_tag=str(delivery.tag))
        self._forget([delivery.tag])
        return letter

    def __del__(self) -> None:
        for fd in (getattr(self, '_wake_r', -1), getattr(self, '_wake_w', -1)):
            if fd >= 0:
                try:
                    os.close(fd)
                except OSError:
                    pass

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self.wakeup()
        with self._held_lock:
            held, self._held = list(self._held), set()
        if held:
            try:
                self.broker.restore(held, leftmost=False, count_delivery=False)
            except Exception as exc:  # the sweep will bring them back after the visibility timeout
                logger.warning('Could not hand back %d reservation(s) at close: %s', len(held), exc)
        for watch in self._watches:  # a BLMOVE still blocked in Redis ends with its connection
            watch.link.close()
        self._fetch_link.close()
        self._ack_link.close()
        # The pipe stays open: a fetch in another thread may still be about to select on it (closed with us).


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
