"""Consuming from RabbitMQ: basic.consume on a connection of the consumer's own, acks batched safely.

Deliveries are pushed by the broker (up to the `basic.qos` window); the connection's thread hands those of
each read on together, straight to the worker (`push_to`) or into a local buffer that `fetch` takes from.
Acks run in the connection's thread and are sent as one `multiple=True` ack only over a contiguous prefix of
settled delivery tags (a multiple ack would otherwise ack a task still running or waiting); acks past a gap
go one by one at once, so they never hold the broker's window.

Delivery tags restart at 1 on every connection, so a Delivery's tag is `generation << 40 | delivery_tag`:
settling a tag from a connection that is gone is a no-op (RabbitMQ already requeued it).
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from fastq import _amqp
from fastq.brokers.amqp import to_message  # the package imports this module only inside a function
from fastq.brokers.amqp.link import CH_CONSUME, Link
from fastq.brokers.amqp.topology import (
    DEAD_LETTER_QUEUE,
    MAX_DELAY,
    QueueSpec,
    broadcast_exchange,
    broadcast_queue_arguments,
    delayed_level,
    delayed_routing_key,
)
from fastq.brokers.base import Consumer, DeadLetter, Delivery, Outgoing, Subscription, Tag

if TYPE_CHECKING:
    from fastq._core import Message
    from fastq.brokers.amqp import AMQPBroker

logger = logging.getLogger('fastq.brokers.amqp')

GENERATION_SHIFT = 40
TAG_MASK = (1 << GENERATION_SHIFT) - 1
#: Header fastq adds to a message it moves to the dead-letter queue.
REASON_HEADER = 'x-fastq-dead-letter-reason'
QUEUE_HEADER = 'x-fastq-queue'
ID_HEADER = 'x-fastq-dead-letter-id'
#: A `prefetch` window of 0 means no limit (worker_prefetch_multiplier=0); basic.qos takes at most 65535.
MAX_PREFETCH = 65535


class AMQPConsumer(Consumer):
    def __init__(self, broker: AMQPBroker, specs: list[QueueSpec], owner: str) -> None:
        self.broker = broker
        self.specs = {spec.name: spec for spec in specs}
        self.queues = list(self.specs)
        self.owner = owner
        self.window = 0
        self.global_qos = not any(spec.quorum for spec in specs)  # Celery: global QoS on 3.x, not for quorum
        self._qos = -1
        self._cond = threading.Condition()
        self._ready: deque[Delivery] = deque()
        self._push: Callable[[list[Delivery]], None] | None = None  # set and called under _cond
        self._interrupted = False
        self._closed = False
        # Touched in the link's thread only:
        self._order: deque[int] = deque()  # delivery tags of this connection, in delivery order
        self._settled: set[int] = set()
        self._to_ack: set[int] = set()
        self._live: set[int] = set()  # delivered, not yet settled (settling twice closes the channel)
        self._held: dict[Tag, tuple[Message, str]] = {}
        self._read: list[Delivery] = []  # deliveries of the current read, handed on after it
        self._delayed_bound: set[str] = set()
        self._consumer_tags: dict[str, str] = {}
        self.link = Link(broker.endpoints, 'consume', confirms=False)
        self.link.on_connect.append(self._on_connect)
        self.link.on_deliver = self._on_deliver
        self.link.on_events_done = self._hand_on
        self.link.on_lost.append(self._on_lost)
        self.link.start(float(broker.conf.broker_connection_timeout or 4.0) * len(broker.endpoints) + 30.0)

    def prefetch(self, window: int) -> None:
        """The worker's prefetch window (concurrency x worker_prefetch_multiplier; 0 = unlimited)."""
        self.window = window
        self.link.call(self._set_qos)

    # --- the link's thread --------------------------------------------------------------------------------

    def _on_connect(self, conn: _amqp.Connection) -> None:
        self._read.clear()
        self._order.clear()
        self._settled.clear()
        self._to_ack.clear()
        self._live.clear()
        self._delayed_bound.clear()
        self._qos = -1
        # Celery: global QoS (per channel) on RabbitMQ 3.x; 4.x removed it, and quorum queues ignore it.
        major = str(conn.server_properties.get('version') or '3').split('.')[0]
        old_node = not major.isdigit() or int(major) < 4
        self.global_qos = old_node and not self.broker.topology.any_quorum(self.specs)  # detect_quorum_queues
        with self._cond:
            self._ready.clear()  # their tags are void now: RabbitMQ requeued them
        for spec in self.specs.values():
            self.broker.declare_spec(self.link, conn, spec)
        if self.broker.topology.any_quorum(self.specs):
            # Celery >= 5.5 clients send countdowns through the delayed chain once the app has any quorum
            # queue (to classic queues of its too, when not on a direct exchange): it must exist.
            self.broker.declare_delayed(self.link, conn)
            for spec in self.specs.values():
                self._bind_delayed(conn, spec)
        self.link.ensure_channel(conn, CH_CONSUME)
        self._consumer_tags.clear()  # a new connection: the old tags died with the old one
        self._set_qos(conn)
        for spec in self.specs.values():
            self._consume(conn, spec)

    def _consume(self, conn: _amqp.Connection, spec: QueueSpec) -> None:
        consumer_tag = f'{self.owner}.{spec.name}.{uuid.uuid4().hex[:8]}'
        self._consumer_tags[consumer_tag] = spec.name
        conn.consume(CH_CONSUME, spec.name, consumer_tag, False, spec.consumer_arguments)

    def set_queues(self, queues: Sequence[str]) -> None:
        specs = {name: self.broker.topology.spec(name) for name in queues}

        def apply(conn: _amqp.Connection) -> None:
            added = [spec for name, spec in specs.items() if name not in self.specs]
            self.specs, self.queues = specs, list(specs)
            for consumer_tag, name in list(self._consumer_tags.items()):
                if name not in specs:  # deliveries already received stay held and are settled as usual
                    conn.cancel(CH_CONSUME, consumer_tag)
                    del self._consumer_tags[consumer_tag]
            for spec in added:
                self.broker.declare_spec(self.link, conn, spec)
                if self.broker.topology.any_quorum(self.specs):
                    self.broker.declare_delayed(self.link, conn)
                    self._bind_delayed(conn, spec)
                self._consume(conn, spec)
            self._qos = -1
            self._set_qos(conn)

        if self.link.conn is None:  # the next connection consumes from these
            self.specs, self.queues = specs, list(specs)
            return
        self.link.call(apply)

    def _bind_delayed(self, conn: _amqp.Connection, spec: QueueSpec) -> None:
        if spec.name not in self._delayed_bound:
            self.broker.bind_delayed_spec(conn, spec)
            self._delayed_bound.add(spec.name)

    def _set_qos(self, conn: _amqp.Connection) -> None:
        count = self.window
        if not self.global_qos and len(self.specs) > 1:
            # Per-consumer limits (quorum queues): split the window so the channel's total stays the same.
            count = -(-count // len(self.specs))
        count = 0 if self.window == 0 else min(count, MAX_PREFETCH)
        if count != self._qos:
            conn.qos(CH_CONSUME, count, self.global_qos)
            self._qos = count
            if not self.global_qos:
                # A per-consumer basic.qos applies to the consumers started after it only (Celery's worker sets
                # it before consuming): start ours again, or they keep the old window (0: unlimited). What they
                # were delivered stays theirs to settle on this channel.
                for consumer_tag, name in list(self._consumer_tags.items()):
                    conn.cancel(CH_CONSUME, consumer_tag)
                    del self._consumer_tags[consumer_tag]
                    self._consume(conn, self.specs[name])

    def _on_deliver(self, event: tuple[Any, ...]) -> None:
        dtag: int = event[3]
        tag = (self.link.generation << GENERATION_SHIFT) | dtag
        queue = self._consumer_tags.get(event[2]) or event[6]
        self._order.append(dtag)
        try:
            message = to_message(event)
        except Exception as exc:
            delivery = Delivery(tag, queue, None, event[8], bool(event[4]), 0, error=str(exc))
        else:
            # The executor process decodes kombu's envelope (see worker/job.py): build it here, in C/Rust.
            props = event[7]
            raw = message.to_envelope(
                event[5], event[6], int(props.get('priority') or 0), int(props.get('delivery_mode') or 2), None,
                str(dtag),
            )  # fmt: skip
            # Quorum queues count earlier deliveries (x-delivery-count): task_max_redeliveries works there.
            earlier = message.headers.get('x-delivery-count')
            deliveries = earlier + 1 if isinstance(earlier, int) else 0
            delivery = Delivery(tag, queue, message, raw, bool(event[4]), deliveries)
            self._held[tag] = (message, queue)
        self._live.add(dtag)
        self._read.append(delivery)

    def _hand_on(self) -> None:
        """After each read: its deliveries to the worker, in one call (one wake-up of its loop), or to `fetch`."""
        if not self._read:
            return
        read, self._read = self._read, []
        with self._cond:
            if self._push is not None:
                try:
                    self._push(read)
                except Exception:  # unacked, they come back when the connection is renewed
                    logger.exception('Cannot hand on %d deliveries from %s', len(read), self.link.describe)
            else:
                self._ready.extend(read)
                self._cond.notify()

    def _on_lost(self) -> None:
        self._read.clear()
        self._held.clear()
        if self.on_connection_lost is not None and not self._closed:  # (not the worker closing it)
            self.on_connection_lost()

    def _current(self, tags: Sequence[Tag]) -> list[int]:
        generation = self.link.generation
        live = self._live
        out = []
        for tag in tags:
            self._held.pop(tag, None)
            if isinstance(tag, int) and tag >> GENERATION_SHIFT == generation:
                dtag = tag & TAG_MASK
                if dtag in live:
                    live.discard(dtag)
                    out.append(dtag)
        return out

    def _ack(self, conn: _amqp.Connection, dtags: list[int]) -> None:
        self._settled.update(dtags)
        self._to_ack.update(dtags)
        order, settled, to_ack = self._order, self._settled, self._to_ack
        top, count = 0, 0
        while order and order[0] in settled:
            dtag = order.popleft()
            settled.discard(dtag)
            if dtag in to_ack:
                to_ack.discard(dtag)
                top, count = dtag, count + 1
        if count:
            conn.ack(CH_CONSUME, top, count > 1)
        for dtag in sorted(to_ack):  # past a gap (a task still running): one by one, never `multiple`
            conn.ack(CH_CONSUME, dtag, False)
        to_ack.clear()

    def _reject(self, conn: _amqp.Connection, dtags: list[int], requeue: bool) -> None:
        for dtag in dtags:
            conn.reject(CH_CONSUME, dtag, requeue)
        self._settled.update(dtags)
        order, settled = self._order, self._settled
        while order and order[0] in settled:
            settled.discard(order.popleft())

    # --- the worker's threads -----------------------------------------------------------------------------

    def push_to(self, deliver: Callable[[list[Delivery]], None] | None) -> bool:
        # Pushed, a delivery reaches the worker's loop from the connection's thread directly, instead of
        # through the fetcher thread: one thread hand-off (a GIL turn and a wake-up) less per batch.
        with self._cond:
            self._push = deliver
            if deliver is not None and self._ready:
                ready = list(self._ready)
                self._ready.clear()
                deliver(ready)
        return True

    def fetch(self, limit: int, timeout: float) -> list[Delivery]:
        deadline = time.monotonic() + timeout
        with self._cond:
            while not self._ready and not self._interrupted and not self._closed:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._cond.wait(remaining)
            self._interrupted = False
            out: list[Delivery] = []
            while self._ready and len(out) < limit:
                out.append(self._ready.popleft())
            return out

    def wakeup(self) -> None:
        with self._cond:
            self._interrupted = True
            self._cond.notify_all()

    def _run(self, fn: Callable[[_amqp.Connection], None]) -> None:
        if self.link.conn is None:
            return  # the connection is gone: RabbitMQ requeued whatever these tags named
        self.link.call(fn)

    def ack(self, tags: Sequence[Tag]) -> None:
        if tags:
            self._run(lambda conn: self._ack(conn, self._current(tags)))

    def reject(self, tags: Sequence[Tag], requeue: bool) -> None:
        if tags:
            self._run(lambda conn: self._reject(conn, self._current(tags), requeue))

    def release(self, tags: Sequence[Tag]) -> None:
        self.reject(tags, True)

    def defer(self, tag: Tag, eta: float) -> None:
        """Republish to Celery's delayed-delivery chain (confirmed), then ack: the task waits in RabbitMQ, not
        unacked in this worker (where consumer_timeout would cut it off and a restart would redeliver it)."""
        held = self._held.get(tag)
        if held is None:
            raise NotImplementedError('no longer held')  # the dispatcher then keeps it in memory
        message, queue = held
        seconds = min(max(int(eta - time.time()), 1), MAX_DELAY)
        broker = self.broker
        broker.ensure_delayed()
        broker.bind_delayed(queue)
        properties = dict(message.properties)
        properties.pop('expiration', None)
        out = Outgoing(
            message, queue, delayed_level(27), delayed_routing_key(seconds, queue),
            int(properties.get('priority') or 0), 2,
        )  # fmt: skip
        broker.publish([out])
        self.ack([tag])

    def renew(self) -> None:
        return None

    def current(self, tag: Tag) -> bool:
        """Delivered on the connection that is up now (tags of a lost one were requeued by RabbitMQ)."""
        link = self.link
        return isinstance(tag, int) and link.conn is not None and tag >> GENERATION_SHIFT == link.generation

    def dead_letter(self, delivery: Delivery, reason: str) -> DeadLetter:
        spec = self.specs.get(delivery.queue)
        letter = DeadLetter.of(delivery, reason)
        if spec is not None and spec.dead_letter_exchange is not None:
            self.reject([delivery.tag], False)  # RabbitMQ moves it to the queue's dead-letter exchange
            return letter
        from fastq import _core

        message = delivery.message
        if message is None:
            message = _core.Message(delivery.raw, 'application/octet-stream', 'binary', {}, {})
        headers = dict(message.headers)
        headers.update({REASON_HEADER: reason, QUEUE_HEADER: delivery.queue, ID_HEADER: letter.id})
        copy = _core.Message(message.body, message.content_type, message.content_encoding, headers,
                             dict(message.properties))  # fmt: skip
        self.broker.dead_letter_store.declare()
        self.broker.publish([Outgoing(copy, DEAD_LETTER_QUEUE, '', DEAD_LETTER_QUEUE, 0, 2)])
        self.ack([delivery.tag])
        return letter

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self.wakeup()
        self.link.close()  # unacked deliveries go back to their queues with the connection


class AMQPSubscription(Subscription):
    """A broadcast subscription: an exclusive, auto-deleted queue bound to the exchange (the pidbox's fanout, or
    the `celeryev` topic exchange with `#`), declared with Celery's arguments so neither side gets a 406."""

    def __init__(self, broker: AMQPBroker, exchange: str) -> None:
        self.exchange = exchange
        self.conf = broker.conf
        kind, _ = broadcast_exchange(exchange, self.conf)
        # Celery's names and flags: an event receiver's queue is `<event_queue_prefix>.<uuid>`, durable and
        # exclusive as event_queue_durable/_exclusive say (control_queue_* for the pidbox).
        if kind == 'topic':
            prefix = self.conf.event_queue_prefix or 'celeryev'
            self.queue = f'{prefix}.{uuid.uuid4()}'
            self.durable, self.exclusive = bool(self.conf.event_queue_durable), bool(self.conf.event_queue_exclusive)
        else:
            self.queue = f'fastq.{uuid.uuid4().hex}.{exchange}'
            self.durable = bool(self.conf.control_queue_durable)
            self.exclusive = bool(self.conf.control_queue_exclusive)
        self._cond = threading.Condition()
        self._items: deque[tuple[str, bytes]] = deque()
        self.link = Link(broker.endpoints, 'fanout', confirms=False)
        self.link.on_connect.append(self._on_connect)
        self.link.on_deliver = self._on_deliver
        self.link.start(float(broker.conf.broker_connection_timeout or 4.0) * len(broker.endpoints) + 30.0)

    def _on_connect(self, conn: _amqp.Connection) -> None:
        self.link.ensure_channel(conn, CH_CONSUME)
        kind, durable = broadcast_exchange(self.exchange, self.conf)
        arguments = broadcast_queue_arguments(kind, self.conf)
        conn.exchange_declare(CH_CONSUME, self.exchange, kind, False, durable, False, {})
        conn.queue_declare(CH_CONSUME, self.queue, False, self.durable, self.exclusive, not self.durable, arguments)
        conn.queue_bind(CH_CONSUME, self.queue, self.exchange, '#' if kind == 'topic' else '', {})
        conn.consume(CH_CONSUME, self.queue, self.queue, True, {})

    def _on_deliver(self, event: tuple[Any, ...]) -> None:
        from fastq.brokers.amqp import _envelope_of

        envelope = _envelope_of(event[8], event[7], event[5], event[6])
        with self._cond:
            self._items.append((event[6] if event[6] != self.exchange else '', envelope))
            self._cond.notify()

    def get(self, timeout: float) -> list[tuple[str, bytes]]:
        deadline = time.monotonic() + timeout
        with self._cond:
            while not self._items:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return []
                self._cond.wait(remaining)
            out = list(self._items)
            self._items.clear()
            return out

    def close(self) -> None:
        self.link.close()
