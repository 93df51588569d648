"""The broker SPI: what fastq needs from a message broker, and nothing that emulates AMQP.

A broker stores messages in named queues and hands them to consumers under a *reservation*: a delivery is
invisible to other consumers until it is acked (gone), rejected (gone or back in the queue), deferred (parked
until a time), dead-lettered (moved aside), or until its holder stops renewing it (dead or hung worker), when
it becomes visible again. Every operation takes a batch, because the worker's throughput comes from batching.

Thread model: a `Broker` is shared by the threads of one process. A `Consumer` is used by two threads of a
worker: one blocks in `fetch`, the other acks, rejects, defers and renews; implementations make that safe.
After `os.fork()` neither may be used in the child: create new ones.
"""

from __future__ import annotations

import abc
import asyncio
import json
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from fastq import _core

if TYPE_CHECKING:
    from fastq._core import Message, TaskHead
    from fastq.config import Settings

__all__ = [
    'Broker',
    'BrokerFeatures',
    'Consumer',
    'DeadLetter',
    'DeadLetterStore',
    'Delivery',
    'Outgoing',
    'PublishStream',
    'Subscription',
    'Tag',
    'alike_outgoing',
]

Tag = int | str


@dataclass(frozen=True, slots=True)
class BrokerFeatures:
    """What a broker supports; the worker and client adapt to it, and tests check every claim."""

    priorities: bool = False  # delivers higher-priority messages first (within a queue)
    higher_priority_first: bool = True  # False on Redis: kombu serves priority 0 first there
    delayed: bool = False  # `Consumer.defer` parks a delivered ETA message in the broker until due
    delayed_publish: bool = False  # `Outgoing.eta` is honoured: an ETA message is not delivered before it
    leases: bool = False  # reservations expire unless renewed (`Consumer.renew`)
    dead_owner_detection: bool = False  # a dead consumer's reservations return without waiting for expiry
    delivery_count: bool = False  # `Delivery.deliveries` counts hand-outs (poison-message detection)
    fanout: bool = False  # `fanout_publish` / `subscribe`
    shared: bool = True  # reachable from other processes (False for the in-memory broker)


@dataclass(slots=True)
class Outgoing:
    """One message to publish, already routed to a queue.

    Sending builds the kombu envelope itself (for many messages at once, in Rust), so `message` may be None
    when `envelope` is given; brokers that store envelopes use `to_envelope()`.
    """

    message: Message | None
    queue: str
    exchange: str = ''  # '' is the default exchange: deliver to the queue named by routing_key
    routing_key: str = ''
    priority: int = 0
    delivery_mode: int = 2  # 2 persistent, 1 transient (events, replies)
    expiration: str | None = None  # per-message TTL in milliseconds, as a string (AMQP style)
    eta: float | None = None  # unix time before which the message must not be delivered
    envelope: bytes | None = None  # the kombu envelope, when already built

    def __post_init__(self) -> None:
        if not self.routing_key:
            self.routing_key = self.queue

    def to_envelope(self) -> bytes:
        """The kombu envelope of this message (built now, with a new delivery tag, unless given)."""
        if self.envelope is not None:
            return self.envelope
        if self.message is None:
            raise ValueError('an Outgoing needs a message or an envelope')
        return self.message.to_envelope(
            self.exchange, self.routing_key, self.priority, self.delivery_mode, self.expiration, str(uuid.uuid4())
        )


class Delivery:
    """A message handed to a consumer under a reservation.

    `message` is None when the stored payload could not be parsed; `error` then says why and `raw` holds the
    payload as stored, so the worker can dead-letter it verbatim.

    A broker that stores kombu envelopes may hand over only the envelope's `head` (`fastq._core.task_head`:
    the headers the worker's parent acts on, the whole document checked) instead of a decoded `message`;
    `message` is then decoded from `raw` the first time it is read, which most deliveries never are (the
    pool child decodes the envelope it is given).
    """

    __slots__ = ('_message', 'deliveries', 'error', 'head', 'queue', 'raw', 'received', 'redelivered', 'tag')

    def __init__(
        self,
        tag: Tag,
        queue: str,
        message: Message | None,
        raw: bytes = b'',
        redelivered: bool = False,
        deliveries: int = 0,  # hand-outs of this message including this one; 0 when the broker does not count
        error: str | None = None,
        received: float | None = None,
        head: TaskHead | None = None,
    ) -> None:
        self.tag = tag
        self.queue = queue
        self._message = message
        self.raw = raw
        self.redelivered = redelivered
        self.deliveries = deliveries
        self.error = error
        self.received = time.time() if received is None else received
        self.head = head

    @property
    def message(self) -> Message | None:
        message = self._message
        if message is None and self.head is not None:
            # the head vouched for the whole envelope, so this decodes
            message = self._message = _core.Message.from_envelope(self.raw, None)
        return message

    @message.setter
    def message(self, value: Message | None) -> None:
        self._message, self.head = value, None

    def __repr__(self) -> str:
        return f'Delivery(tag={self.tag!r}, queue={self.queue!r}, task_id={self.task_id!r}, error={self.error!r})'

    @property
    def task_id(self) -> str | None:
        if self.head is not None:
            value = self.head.fields[0]
        else:
            value = self.message.headers.get('id') if self.message is not None else None
        return value if isinstance(value, str) else None

    @property
    def task_name(self) -> str | None:
        if self.head is not None:
            value = self.head.fields[1]
        else:
            value = self.message.headers.get('task') if self.message is not None else None
        return value if isinstance(value, str) else None


@dataclass(slots=True)
class DeadLetter:
    """A message moved aside because it cannot or should not run: it is kept, never retried by itself."""

    id: str
    queue: str
    reason: str
    payload: bytes  # the kombu envelope (or the raw stored bytes when they did not parse)
    created: float
    task_id: str | None = None
    task_name: str | None = None
    deliveries: int = 0

    @classmethod
    def of(cls, delivery: Delivery, reason: str) -> DeadLetter:
        """A new dead letter for a reserved message, kept as it was stored."""
        return cls(
            id=uuid.uuid4().hex,
            queue=delivery.queue,
            reason=reason,
            payload=delivery.raw,
            created=time.time(),
            task_id=delivery.task_id,
            task_name=delivery.task_name,
            deliveries=delivery.deliveries,
        )

    def to_json(self) -> str:
        """The record a store keeps where it has no columns of its own (Redis's hash, an SQS queue): the
        payload's bytes carried through JSON as text, undecodable ones included."""
        return json.dumps(
            {
                'id': self.id,
                'queue': self.queue,
                'reason': self.reason,
                'task_id': self.task_id,
                'task_name': self.task_name,
                'deliveries': self.deliveries,
                'created': self.created,
                'payload': self.payload.decode('utf-8', 'surrogateescape'),
            }
        )

    @classmethod
    def from_json(cls, raw: str | bytes) -> DeadLetter:
        """The letter `to_json` wrote."""
        d = json.loads(raw)
        return cls(
            id=d['id'],
            queue=d['queue'],
            reason=d['reason'],
            payload=d['payload'].encode('utf-8', 'surrogateescape'),
            created=d['created'],
            task_id=d.get('task_id'),
            task_name=d.get('task_name'),
            deliveries=d.get('deliveries', 0),
        )


class DeadLetterStore(abc.ABC):
    """Where dead letters live on a broker; `fastq deadletter` reads and requeues them."""

    @abc.abstractmethod
    def add(self, letter: DeadLetter) -> None:
        """Store a dead letter (its id is already set)."""

    @abc.abstractmethod
    def list(self, limit: int = 100) -> list[DeadLetter]:
        """Newest first."""

    @abc.abstractmethod
    def get(self, ident: str) -> DeadLetter | None:
        """By dead-letter id, or by task id (the newest letter of that task)."""

    @abc.abstractmethod
    def remove(self, ident: str) -> DeadLetter | None:
        """Delete and return one letter (by id or task id)."""

    @abc.abstractmethod
    def purge(self) -> int:
        """Delete all; returns how many there were."""

    @abc.abstractmethod
    def count(self) -> int: ...


class Subscription(abc.ABC):
    """A fanout subscription: sees what is published to its exchange after it was created."""

    @abc.abstractmethod
    def get(self, timeout: float) -> list[tuple[str, bytes]]:
        """Wait up to `timeout` seconds for messages; returns `(routing_key, payload)` pairs (maybe none)."""

    @abc.abstractmethod
    def close(self) -> None: ...


class Consumer(abc.ABC):
    """Reserves messages from some queues for one worker (the *owner*)."""

    queues: list[str]
    owner: str
    #: Called (from any thread) when a lost connection took back what it had delivered and not yet settled
    #: (RabbitMQ requeues it): running acks_late tasks can no longer be acked and will run again. Brokers
    #: whose reservations outlive a connection (Redis's unacked hash, SQLite) never call it.
    on_connection_lost: Callable[[], None] | None = None

    @abc.abstractmethod
    def fetch(self, limit: int, timeout: float) -> list[Delivery]:
        """Wait up to `timeout` seconds until messages are ready, then reserve and return up to `limit`.

        Returns an empty list on timeout or after `wakeup`. Never returns a message whose ETA (as stored by
        `Outgoing.eta` or `defer`) is in the future.
        """

    def prefetch(self, window: int) -> None:
        """The most deliveries the worker holds at once (0: no limit). Brokers that push messages (AMQP's
        basic.qos) size their window from it; brokers the worker pulls from ignore it."""
        return None

    def push_to(self, deliver: Callable[[list[Delivery]], None] | None) -> bool:
        """Hand deliveries to `deliver` as the broker pushes them, from the consumer's own thread, instead of
        waiting for `fetch` (what is ready already goes first); True if this consumer can. The broker's
        window (`prefetch`) bounds what arrives. `None` stops it: when it returns, no call is in progress and
        none follows, and deliveries wait for `fetch` again."""
        return False

    def carry_acks(
        self,
        take: Callable[[], list[Tag]] | None,
        settled: Callable[[list[Tag], bool], None] | None,
        handover: Callable[[], None] | None = None,
    ) -> bool:
        """Send waiting acks with the fetches, in the same write, instead of in a round trip of their own;
        True if this consumer can. Before a fetch, `fetch`'s thread calls `take()` for the acks waiting (it
        may return none), sends them, and reports `settled(tags, sent)`: False means they were not
        (the connection failed) and must be acked another way. Before it blocks waiting for messages, it
        calls `handover()`: acks waiting then are not going to ride with a fetch soon. `None` stops it."""
        return False

    def before_wait(self, brief: bool) -> None:
        """Called by the fetching thread before it waits outside `fetch` (for the window, or a moment before
        the next fetch: `brief`): a consumer that defers writes to ride with the next fetch sends what must
        not wait."""
        return None

    def lend_lead(self) -> list[Delivery] | None:
        """Stop waiting on the first queue so a pool child can wait there instead (fastq.worker.lending): None
        if this consumer cannot lend its wait; else what it reserved meanwhile (delivered as usual, and the
        wait is then not lent). Called from `fetch`'s thread, between fetches."""
        return None

    def unlend(self) -> None:
        """Wait on the first queue again (any thread; `fetch` resumes it)."""
        return None

    def lead_spec(self) -> Any:
        """What a pool child needs to wait in this consumer's place (the broker's `child_lead` takes it)."""
        raise NotImplementedError

    def taken(self, keys: list[str], raw: list[Any]) -> list[Delivery]:
        """The deliveries a pool child reserved while it waited in this consumer's place, now held here."""
        raise NotImplementedError

    def recover_taken(self, tag: str) -> Delivery | None:
        """A delivery a pool child reserved in this consumer's place and died before reporting (`taken`): now
        held here, or None if it is no longer reserved."""
        return None

    def forget(self, tags: Sequence[Tag]) -> None:
        """These reservations were acked by someone else (a pool child, `taken`): no longer held here."""
        return None

    def set_queues(self, queues: Sequence[str]) -> None:
        """Consume from these queues from the next fetch on (`add_consumer` / `cancel_consumer`); called from
        any thread. What is already reserved from a queue left is kept and settled as usual."""
        raise NotImplementedError(f'{type(self).__name__} cannot change its queues while running')

    @abc.abstractmethod
    def wakeup(self) -> None:
        """Make a `fetch` blocked in another thread return now (used at shutdown and when the window frees)."""

    @abc.abstractmethod
    def ack(self, tags: Sequence[Tag]) -> None:
        """Remove these reserved messages for good."""

    @abc.abstractmethod
    def reject(self, tags: Sequence[Tag], requeue: bool) -> None:
        """Release these reservations: back to their queue when `requeue`, else removed."""

    @abc.abstractmethod
    def release(self, tags: Sequence[Tag]) -> None:
        """Hand back reservations whose tasks never started (shutdown, a pool that could not run them).

        Unlike `reject(requeue=True)` this does not count as a delivery attempt.
        """

    @abc.abstractmethod
    def defer(self, tag: Tag, eta: float) -> None:
        """Release a reservation and keep the message out of reach until `eta` (unix time).

        Brokers without `features.delayed` raise NotImplementedError; the worker then holds it itself.
        """

    def parked(self, limit: int) -> list[Message] | None:
        """The messages waiting in the broker for their ETA that this consumer answers for (`inspect
        scheduled`), at most `limit`: no message under two consumers at once, so no task is listed twice.
        Called from the worker's remote-control thread.

        None when the broker cannot read them back (RabbitMQ's delayed chain): the worker then lists the tasks
        it deferred itself, from memory (`fastq.worker.parked`).
        """
        return None

    @abc.abstractmethod
    def renew(self) -> None:
        """Extend every reservation this consumer holds by the visibility timeout (a no-op without leases)."""

    def current(self, tag: Tag) -> bool:
        """Whether the delivery `tag` is still this consumer's. False once the broker has taken it back by
        itself (RabbitMQ requeues a lost connection's unacked deliveries and delivers them again): the worker
        then drops a job it has not started yet instead of running it a second time, as Celery does."""
        return True

    @abc.abstractmethod
    def dead_letter(self, delivery: Delivery, reason: str) -> DeadLetter:
        """Move a reserved message (or one already acked) to the dead-letter store, in one step."""

    @abc.abstractmethod
    def close(self) -> None:
        """Stop consuming; reservations still held go back to their queues."""


def alike_outgoing(
    queue: str, exchange: str, routing_key: str, priority: int, delivery_mode: int, envelopes: list[bytes]
) -> list[Outgoing]:
    """Messages routed alike, given as their envelopes (no expiration, no ETA): a group of one task."""
    return [Outgoing(None, queue, exchange, routing_key, priority, delivery_mode, None, None, e) for e in envelopes]


class PublishStream(abc.ABC):
    """One batch published in parts, with `publish`'s contract for the whole: when `finish` returns True,
    the broker has every message `add`ed; when it returns False, or anything raises, or `abort` is called,
    it has none of them (the caller then publishes the whole batch again with its retry policy, or not at
    all). Used by one thread, once."""

    @abc.abstractmethod
    def add(self, part: Sequence[Outgoing]) -> None:
        """Send the next messages of the batch (not yet visible to consumers); never raises a connection
        error: a lost connection makes `finish` return False."""

    def add_envelopes(
        self, queue: str, exchange: str, routing_key: str, priority: int, delivery_mode: int, envelopes: list[bytes]
    ) -> None:
        """`add` for messages alike but for their envelopes (a group of one task): a broker that can write
        them without an `Outgoing` apiece does so."""
        self.add(alike_outgoing(queue, exchange, routing_key, priority, delivery_mode, envelopes))

    @abc.abstractmethod
    def finish(self) -> bool:
        """Make every message added visible at once: True when the broker has them all."""

    @abc.abstractmethod
    def abort(self) -> None:
        """Drop what was added (nothing of it is ever delivered)."""


class Broker(abc.ABC):
    """A connection to one broker, shared by the threads of a process."""

    scheme: ClassVar[str]
    features: ClassVar[BrokerFeatures]

    def __init__(self, url: str, conf: Settings) -> None:
        self.url = url
        self.conf = conf
        options: dict[str, Any] = dict(conf.broker_transport_options or {})
        self.transport_options = options
        self.visibility_timeout = float(options.get('visibility_timeout', 300.0))

    @property
    def lease_renew_interval(self) -> float:
        """How often a worker renews the reservations it holds (well within the visibility timeout)."""
        return max(self.visibility_timeout / 3, 0.5)

    @abc.abstractmethod
    def connect(self) -> None:
        """Check the broker is reachable (and set it up), raising `BrokerConnectionError` naming the masked URL."""

    @abc.abstractmethod
    def publish(self, batch: Sequence[Outgoing]) -> None:
        """Store messages; when this returns without error, the broker has every one of them."""

    def publish_stream(self) -> PublishStream | None:
        """A way to publish one large batch while the rest of it is still being built, or None (the default:
        the batch is built whole, then `publish`ed).

        What it saves is the broker's time: it takes in the first parts of a batch on its own core while the
        client builds the next, instead of starting when the client is done.
        """
        return None

    async def apublish(self, batch: Sequence[Outgoing]) -> None:
        """`publish` for the asyncio client, same contract.

        This default runs `publish` in the loop's default executor (a worker thread, so the loop is never
        blocked): right for brokers whose publish is a local write (SQLite, memory). Networked brokers
        override it with a native asyncio implementation.
        """
        await asyncio.get_running_loop().run_in_executor(None, self.publish, batch)

    def child_lead(self, spec: Any) -> Any:
        """A pool child's wait in a consumer's place (`Consumer.lead_spec`), for brokers whose consumers lend it."""
        raise NotImplementedError(f'{type(self).__name__} cannot wait from a pool child')

    @abc.abstractmethod
    def consumer(self, queues: Sequence[str], owner: str) -> Consumer:
        """A consumer reserving from `queues` (earlier queues are not favoured) on behalf of `owner`."""

    @abc.abstractmethod
    def purge(self, queue: str) -> int:
        """Delete every ready message of a queue; returns how many."""

    @abc.abstractmethod
    def qsize(self, queue: str) -> int:
        """Messages waiting in a queue (ready or delayed, not reserved)."""

    @abc.abstractmethod
    def known_queues(self) -> list[str]:
        """Queues that have held messages (for `fastq purge` without -Q)."""

    @property
    @abc.abstractmethod
    def dead_letters(self) -> DeadLetterStore: ...

    def requeue_dead_letter(self, ident: str) -> DeadLetter | None:
        """Put a dead letter back in its queue (as a fresh delivery) and remove it from the store."""
        letter = self.dead_letters.get(ident)
        if letter is None:
            return None
        self._publish_raw(letter.queue, letter.payload)
        self.dead_letters.remove(letter.id)
        return letter

    @abc.abstractmethod
    def _publish_raw(self, queue: str, payload: bytes) -> None:
        """Store an envelope as it is (dead-letter requeue)."""

    # --- revocations: kept in the broker so a worker that was offline or restarts still honours them ---

    def revoke(self, task_ids: Sequence[str], ttl: float) -> None:
        """Remember `task_ids` as revoked for `ttl` seconds (in-process only unless a broker overrides)."""
        store = self.__dict__.setdefault('_revoked', {})
        until = time.time() + ttl
        for task_id in task_ids:
            store[task_id] = until

    def revoked(self) -> set[str]:
        """Task ids revoked and not yet expired."""
        now = time.time()
        store: dict[str, float] = self.__dict__.get('_revoked', {})
        return {task_id for task_id, until in store.items() if until > now}

    def acquire_rate(self, key: str, rate: float) -> float:
        """Fleet-wide rate limiting: 0.0 when one unit at `rate` per second is granted now, else the seconds
        to wait before asking again (GCRA; in-process only unless a broker overrides)."""
        with self.__dict__.setdefault('_rate_lock', threading.Lock()):
            rates: dict[str, float] = self.__dict__.setdefault('_rates', {})
            now = time.time()
            tat = max(rates.get(key, 0.0), now)
            if tat > now:
                return tat - now
            rates[key] = tat + 1.0 / rate
            return 0.0

    def bind(self, exchange: str, routing_key: str, queue: str) -> None:
        """Route messages published to `exchange` with `routing_key` to `queue` (brokers that route)."""
        return None

    def bind_consumed(self, queue: str, exchange: str, exchange_type: str, routing_key: str) -> None:
        """Bind a task queue a worker was told to consume (`add_consumer` with an exchange) as Celery's
        consumer declares it; a no-op where the broker keeps no bindings of its own."""
        return None

    @abc.abstractmethod
    def pop(self, queue: str, timeout: float) -> list[bytes]:
        """Take (no reservation, no ack) what waits in `queue`, blocking up to `timeout` for the first.

        For short-lived reply queues (remote control), where a lost reply only means a node did not answer.
        """

    def fanout_publish(self, exchange: str, payload: bytes, routing_key: str = '') -> None:
        raise NotImplementedError(f'{type(self).__name__} has no fanout')

    def fanout_publish_many(self, exchange: str, messages: Sequence[tuple[bytes, str]]) -> None:
        """Publish (payload, routing key) pairs to a fanout exchange, in order; brokers that can do it in one
        round trip do (a worker's event sender flushes several `task.multi` batches at a time)."""
        for payload, routing_key in messages:
            self.fanout_publish(exchange, payload, routing_key)

    def subscribe(self, exchange: str) -> Subscription:
        raise NotImplementedError(f'{type(self).__name__} has no fanout')

    @abc.abstractmethod
    def close(self) -> None: ...

    async def aclose(self) -> None:
        """Close what `apublish` opened in the running event loop (a no-op unless a broker opens anything)."""
        return None

    # --- coordination between processes (beat's leader lock and run claims) -------------------------------

    def claim(self, key: str, ttl: float) -> bool:
        """Record `key` for `ttl` seconds unless it is already recorded: True for the first caller only.

        Atomic across every process sharing the broker, so two callers never both get True for a key while it
        lives. Beat claims `<entry>@<scheduled time>` before sending a periodic task, so even two schedulers
        running at once (split brain) send each run once.
        """
        raise NotImplementedError(f'{type(self).__name__} cannot claim keys')

    def lease(self, name: str, holder: str, ttl: float) -> bool:
        """Take the lease `name` for `holder`, or extend it if `holder` has it, for `ttl` seconds from now.

        True when `holder` holds it afterwards; False while another holder's lease runs (it is free again once
        its holder stops extending it, or, on brokers with `dead_owner_detection`, once that process is gone).
        """
        raise NotImplementedError(f'{type(self).__name__} has no leases')

    def release_lease(self, name: str, holder: str) -> None:
        """Give the lease `name` up if `holder` holds it (a no-op otherwise), so another can take it at once."""
        raise NotImplementedError(f'{type(self).__name__} has no leases')

    def lease_holder(self, name: str) -> str | None:
        """Who holds the lease `name` now (None when it is free), for logs and tests."""
        raise NotImplementedError(f'{type(self).__name__} has no leases')

    def maintenance(self) -> None:
        """Periodic housekeeping a worker runs in the background (about once a second)."""
        return None

    def check_tasks(self, tasks: Iterable[Any], time_limits: tuple[Any, Any] = (None, None)) -> None:
        """A worker about to consume shows the broker the tasks it runs and its own `(time_limit,
        soft_time_limit)` (the command line's, else the settings'), for warnings about those this broker
        cannot honour (RabbitMQ: a time limit beyond the node's consumer_timeout)."""
        return None

    def describe(self) -> str:
        """The URL with its password masked, for banners and errors."""
        from fastq.utils.text import mask_url

        return mask_url(self.url)

    def __repr__(self) -> str:
        return f'<{type(self).__name__} {self.describe()}>'
