"""Reserving from Redis lists in kombu's layout: one atomic script per batch, and waiting inside Redis.

Fetching is one Lua call that pops up to the free window and records every message in `unacked` /
`unacked_index`, so a message is always somewhere a restore sweep can find it. A script cannot block, so
while the queues are empty one thread per list key waits in `BLMOVE key key RIGHT RIGHT` (it returns as soon
as the list has an element and leaves the list as it was); the first to return wakes the fetch. There is no
polling: an idle worker starts a published task within a round trip.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
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

WAIT_TIMEOUT = 2  # seconds one BLMOVE blocks before the waiter checks whether it should stop


class _Waiter(threading.Thread):
    """Blocks on one list key while the consumer is idle; wakes the consumer when the list is not empty."""

    def __init__(self, consumer: RedisConsumer, key: str) -> None:
        super().__init__(name=f'fastq-redis-wait:{key!r}', daemon=True)
        self.consumer = consumer
        self.key = key
        # hiredis only: the wake-up is on the path of every task that finds the worker idle
        self.link = Link(consumer.broker.client)
        self.client_id: int | None = None

    def unblock(self, via: Any) -> None:
        """End a BLMOVE in progress now (CLIENT UNBLOCK from another connection), e.g. at close."""
        if self.client_id is not None:
            try:
                via.client_unblock(self.client_id)
            except Exception as exc:
                logger.debug('could not unblock waiter on %r: %s', self.key, exc)

    def run(self) -> None:
        consumer = self.consumer
        backoff = 0.0
        while not consumer.is_closed():
            if not consumer._armed.wait(1.0) or consumer.is_closed():
                continue
            try:
                if self.client_id is None:
                    self.client_id = int(self.link.call('CLIENT', 'ID'))
                hit = self.link.call('BLMOVE', self.key, self.key, 'RIGHT', 'RIGHT', WAIT_TIMEOUT)
                backoff = 0.0
            except Exception as exc:
                self.client_id = None  # a new connection has a new id
                if consumer.is_closed():
                    return
                backoff = min(max(backoff * 2, 0.1), 5.0)
                logger.debug('waiting on %r failed (%s); again in %.1fs', self.key, exc, backoff)
                consumer._ready.set()  # let the fetch loop see (and report) the connection problem
                time.sleep(backoff)
                continue
            if hit is not None:
                consumer._ready.set()
        self.link.close()


class RedisConsumer(Consumer):
    def __init__(self, broker: RedisBroker, queues: list[str], owner: str) -> None:
        self.broker = broker
        self.layout = broker.layout
        self.queues = queues
        self.owner = owner
        self.client = broker.client
        ordered = sorted(queues) if broker.queue_order_strategy == 'sorted' else list(queues)
        self._keys = self.layout.consume_keys(ordered)
        self._key_queue = dict(self._keys)
        self._rotation = 0
        self._held: set[Tag] = set()
        self._held_lock = threading.Lock()
        self._armed = threading.Event()
        self._ready = threading.Event()
        self._interrupted = False
        self._drained = False
        self._closed = False
        # The hot path's own connections (fetches come from the fetcher thread, acks from the settler's).
        self._fetch_link = Link(broker.client)
        self._ack_link = Link(broker.client)
        self._waiters = [_Waiter(self, key) for key, _ in self._keys]
        for waiter in self._waiters:
            waiter.start()

    def is_closed(self) -> bool:
        return self._closed

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
        # The last fetch got less than it asked for, so the lists were empty a moment ago: wait for a waiter
        # to see one fill instead of running the script once more for nothing (it returns at once if one
        # filled meanwhile). Saves a script call per task on a worker that keeps up with its queues.
        skip = self._drained and limit > 0
        while True:
            self._ready.clear()
            got = self._reserve(limit) if limit > 0 and not skip else []
            skip = False
            if got or self._closed:
                self._armed.clear()
                self._drained = len(got) < limit
                return got
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return []
            self._armed.set()
            woken = self._ready.wait(remaining)
            self._armed.clear()
            if not woken or self._interrupted:
                self._interrupted = False
                return []

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
        self._ready.set()

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
        letter = DeadLetter(
            id=uuid.uuid4().hex,
            queue=delivery.queue,
            reason=reason,
            payload=delivery.raw,
            created=time.time(),
            task_id=delivery.task_id,
            task_name=delivery.task_name,
            deliveries=delivery.deliveries,
        )
        self.broker.dead_letter_store.add(letter, remove_tag=str(delivery.tag))
        self._forget([delivery.tag])
        return letter

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._ready.set()
        self._armed.set()
        with self._held_lock:
            held, self._held = list(self._held), set()
        if held:
            try:
                self.broker.restore(held, leftmost=False, count_delivery=False)
            except Exception as exc:  # the sweep will bring them back after the visibility timeout
                logger.warning('Could not hand back %d reservation(s) at close: %s', len(held), exc)
        for waiter in self._waiters:
            waiter.unblock(self.client)
        for waiter in self._waiters:
            waiter.join(WAIT_TIMEOUT + 1.0)
        self._fetch_link.close()
        self._ack_link.close()


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
