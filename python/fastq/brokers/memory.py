"""In-process broker for unit tests and single-process experiments.

URL: `memory://` (anything after the scheme names a separate in-process namespace: `memory://a` and
`memory://b` do not share queues). Each app's broker object owns its state, so two apps in one test never
share messages by accident; a worker with the prefork pool works because only the parent talks to brokers.

Features: priorities (higher first), delayed messages, leases, delivery counts, fanout, claims and named leases
(beat's coordination, within this broker object). Not shared between processes, not durable.
"""

from __future__ import annotations

import heapq
import itertools
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from fastq import _core
from fastq.brokers.base import (
    Broker,
    BrokerFeatures,
    Consumer,
    DeadLetter,
    DeadLetterStore,
    Delivery,
    Outgoing,
    Subscription,
    Tag,
)

if TYPE_CHECKING:
    from fastq.config import Settings


@dataclass(slots=True)
class _Stored:
    tag: int
    queue: str
    payload: bytes
    priority: int
    not_before: float = 0.0
    owner: str | None = None
    lease_until: float = 0.0
    deliveries: int = 0


@dataclass
class _State:
    lock: threading.Condition = field(default_factory=lambda: threading.Condition(threading.Lock()))
    messages: dict[int, _Stored] = field(default_factory=dict)
    counter: itertools.count[int] = field(default_factory=lambda: itertools.count(1))
    fanout: list[tuple[int, str, str, bytes]] = field(default_factory=list)
    dead: dict[str, DeadLetter] = field(default_factory=dict)
    queues: set[str] = field(default_factory=set)
    claims: dict[str, float] = field(default_factory=dict)  # key -> expiry (unix time)
    leases: dict[str, tuple[str, float]] = field(default_factory=dict)  # name -> (holder, expiry)


class _MemoryDeadLetters(DeadLetterStore):
    def __init__(self, state: _State) -> None:
        self._s = state

    def add(self, letter: DeadLetter) -> None:
        with self._s.lock:
            self._s.dead[letter.id] = letter

    def list(self, limit: int = 100) -> list[DeadLetter]:
        with self._s.lock:
            return sorted(self._s.dead.values(), key=lambda d: -d.created)[:limit]

    def get(self, ident: str) -> DeadLetter | None:
        with self._s.lock:
            if ident in self._s.dead:
                return self._s.dead[ident]
            matches = [d for d in self._s.dead.values() if d.task_id == ident]
            return max(matches, key=lambda d: d.created) if matches else None

    def remove(self, ident: str) -> DeadLetter | None:
        letter = self.get(ident)
        if letter is not None:
            with self._s.lock:
                self._s.dead.pop(letter.id, None)
        return letter

    def purge(self) -> int:
        with self._s.lock:
            n = len(self._s.dead)
            self._s.dead.clear()
            return n

    def count(self) -> int:
        return len(self._s.dead)


class MemoryBroker(Broker):
    scheme = 'memory'
    features = BrokerFeatures(
        priorities=True,
        delayed=True,
        delayed_publish=True,
        leases=True,
        delivery_count=True,
        fanout=True,
        shared=False,
    )

    def __init__(self, url: str, conf: Settings) -> None:
        super().__init__(url, conf)
        self._state = _State()
        self._dead = _MemoryDeadLetters(self._state)

    def connect(self) -> None:
        return None

    def publish(self, batch: Sequence[Outgoing]) -> None:
        s = self._state
        with s.lock:
            for out in batch:
                tag = next(s.counter)
                payload = out.to_envelope()
                s.messages[tag] = _Stored(tag, out.queue, payload, out.priority, out.eta or 0.0)
                s.queues.add(out.queue)
            s.lock.notify_all()

    def _publish_raw(self, queue: str, payload: bytes) -> None:
        s = self._state
        with s.lock:
            tag = next(s.counter)
            s.messages[tag] = _Stored(tag, queue, payload, 0)
            s.lock.notify_all()

    def consumer(self, queues: Sequence[str], owner: str) -> Consumer:
        return _MemoryConsumer(self, list(queues), owner)

    def purge(self, queue: str) -> int:
        s = self._state
        with s.lock:
            doomed = [t for t, m in s.messages.items() if m.queue == queue and m.owner is None]
            for t in doomed:
                del s.messages[t]
            return len(doomed)

    def qsize(self, queue: str) -> int:
        with self._state.lock:
            return sum(1 for m in self._state.messages.values() if m.queue == queue and m.owner is None)

    def known_queues(self) -> list[str]:
        return sorted(self._state.queues)

    @property
    def dead_letters(self) -> DeadLetterStore:
        return self._dead

    def pop(self, queue: str, timeout: float) -> list[bytes]:
        s = self._state
        deadline = time.monotonic() + timeout
        with s.lock:
            while True:
                taken = [m for m in s.messages.values() if m.queue == queue and m.owner is None]
                if taken:
                    for m in taken:
                        del s.messages[m.tag]
                    return [m.payload for m in sorted(taken, key=lambda m: m.tag)]
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return []
                s.lock.wait(remaining)

    def fanout_publish(self, exchange: str, payload: bytes, routing_key: str = '') -> None:
        s = self._state
        with s.lock:
            s.fanout.append((next(s.counter), exchange, routing_key, payload))
            del s.fanout[:-1000]
            s.lock.notify_all()

    def subscribe(self, exchange: str) -> Subscription:
        return _MemorySubscription(self._state, exchange)

    def claim(self, key: str, ttl: float) -> bool:
        now = time.time()
        with self._state.lock:
            claims = self._state.claims
            if claims.get(key, 0.0) > now:
                return False
            if len(claims) > 1000:
                for stale in [k for k, until in claims.items() if until <= now]:
                    del claims[stale]
            claims[key] = now + ttl
            return True

    def lease(self, name: str, holder: str, ttl: float) -> bool:
        now = time.time()
        with self._state.lock:
            current = self._state.leases.get(name)
            if current is not None and current[0] != holder and current[1] > now:
                return False
            self._state.leases[name] = (holder, now + ttl)
            return True

    def release_lease(self, name: str, holder: str) -> None:
        with self._state.lock:
            current = self._state.leases.get(name)
            if current is not None and current[0] == holder:
                del self._state.leases[name]

    def lease_holder(self, name: str) -> str | None:
        with self._state.lock:
            current = self._state.leases.get(name)
            return current[0] if current is not None and current[1] > time.time() else None

    def close(self) -> None:
        return None


class _MemorySubscription(Subscription):
    def __init__(self, state: _State, exchange: str) -> None:
        self._s = state
        self._exchange = exchange
        with state.lock:
            self._seen = state.fanout[-1][0] if state.fanout else 0

    def get(self, timeout: float) -> list[tuple[str, bytes]]:
        deadline = time.monotonic() + timeout
        with self._s.lock:
            while True:
                new = [f for f in self._s.fanout if f[0] > self._seen]
                if new:
                    self._seen = new[-1][0]
                    return [(rk, p) for _, ex, rk, p in new if ex == self._exchange]
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return []
                self._s.lock.wait(remaining)

    def close(self) -> None:
        return None


class _MemoryConsumer(Consumer):
    def __init__(self, broker: MemoryBroker, queues: list[str], owner: str) -> None:
        self.broker = broker
        self.queues = queues
        self.owner = owner
        self._s = broker._state
        self._woken = False

    def _ready(self, now: float, limit: int) -> list[_Stored]:
        queues = set(self.queues)
        candidates = []
        for m in self._s.messages.values():
            if m.queue not in queues or m.not_before > now:
                continue
            if m.owner is not None and m.lease_until > now:
                continue
            candidates.append((-m.priority, m.tag, m))
        return [m for _, _, m in heapq.nsmallest(limit, candidates)]

    def fetch(self, limit: int, timeout: float) -> list[Delivery]:
        deadline = time.monotonic() + timeout
        with self._s.lock:
            while True:
                now = time.time()
                ready = self._ready(now, limit)
                if ready:
                    break
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self._woken:
                    self._woken = False
                    return []
                nearest = min(
                    (
                        (m.not_before if m.not_before > now else m.lease_until) - now
                        for m in self._s.messages.values()
                        if m.not_before > now or (m.owner is not None and m.lease_until > now)
                    ),
                    default=remaining,
                )
                self._s.lock.wait(min(remaining, max(nearest, 0.001)))
            out = []
            for m in ready:
                m.owner = self.owner
                m.lease_until = now + self.broker.visibility_timeout
                m.deliveries += 1
                out.append(self._delivery(m))
            return out

    def _delivery(self, m: _Stored) -> Delivery:
        try:
            message = _core.Message.from_envelope(m.payload, None)
        except ValueError as exc:
            return Delivery(m.tag, m.queue, None, m.payload, m.deliveries > 1, m.deliveries, error=str(exc))
        return Delivery(m.tag, m.queue, message, m.payload, m.deliveries > 1, m.deliveries)

    def wakeup(self) -> None:
        with self._s.lock:
            self._woken = True
            self._s.lock.notify_all()

    def _mine(self, tag: Tag) -> _Stored | None:
        m = self._s.messages.get(tag) if isinstance(tag, int) else None
        return m if m is not None and m.owner == self.owner else None

    def ack(self, tags: Sequence[Tag]) -> None:
        with self._s.lock:
            for tag in tags:
                if self._mine(tag) is not None:
                    del self._s.messages[tag]  # type: ignore[arg-type]

    def reject(self, tags: Sequence[Tag], requeue: bool) -> None:
        with self._s.lock:
            for tag in tags:
                m = self._mine(tag)
                if m is None:
                    continue
                if requeue:
                    m.owner = None
                    m.lease_until = 0.0
                else:
                    del self._s.messages[m.tag]
            self._s.lock.notify_all()

    def release(self, tags: Sequence[Tag]) -> None:
        with self._s.lock:
            for tag in tags:
                m = self._mine(tag)
                if m is not None:
                    m.owner = None
                    m.lease_until = 0.0
                    m.deliveries = max(0, m.deliveries - 1)
            self._s.lock.notify_all()

    def defer(self, tag: Tag, eta: float) -> None:
        with self._s.lock:
            m = self._mine(tag)
            if m is not None:
                m.owner = None
                m.lease_until = 0.0
                m.not_before = eta
                m.deliveries = max(0, m.deliveries - 1)  # parking is not a failed delivery
            self._s.lock.notify_all()

    def renew(self) -> None:
        until = time.time() + self.broker.visibility_timeout
        with self._s.lock:
            for m in self._s.messages.values():
                if m.owner == self.owner:
                    m.lease_until = until

    def dead_letter(self, delivery: Delivery, reason: str) -> DeadLetter:
        letter = DeadLetter.of(delivery, reason)
        with self._s.lock:
            if isinstance(delivery.tag, int):
                self._s.messages.pop(delivery.tag, None)
            self._s.dead[letter.id] = letter
        return letter

    def close(self) -> None:
        with self._s.lock:
            for m in self._s.messages.values():
                if m.owner == self.owner:
                    m.owner = None
                    m.lease_until = 0.0
                    m.deliveries = max(0, m.deliveries - 1)
            self._s.lock.notify_all()
