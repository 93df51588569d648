"""RabbitMQ broker over rabbitmq-c (fastq._amqp), declaring and publishing exactly as Celery does.

URLs: `amqp://user:password@host:port/vhost` (`pyamqp://` and `librabbitmq://` are the same thing),
`amqps://` with `broker_use_ssl` (a dict: ca_certs, certfile, keyfile, cert_reqs), several URLs separated by
`;` for failover (tried in order on every reconnect). Settings: `broker_heartbeat` (120 s),
`broker_connection_timeout` (4 s), `broker_native_delayed_delivery_queue_type` (quorum).

Transport options (`broker_transport_options`):
    confirm_publish   True     publisher confirms: `delay()` returns once RabbitMQ has the task, as on Redis
    consumer_timeout  1800     RabbitMQ's consumer_timeout (s) on this node; the worker warns when a task time
                               limit exceeds it (the node would close the channel and requeue the task)

Declarations are Celery's (protocol.md D.1): per queue a durable direct exchange of the same name and a durable
queue with no arguments unless configured (`x-max-priority` from `task_queue_max_priority` / Queue
`max_priority`, `x-queue-type: quorum` from `task_default_queue_type` / `task_create_missing_queue_type`);
tasks go through the default exchange with routing key = queue name, persistent, with `expiration` from
`expires`.

Features: priorities (RabbitMQ's: higher first, with `x-max-priority`), publisher confirms, delayed messages
(ETA tasks are moved to Celery's native delayed-delivery chain `celery_delayed_27 … 0` instead of being held
unacked in worker memory, where `consumer_timeout` would kill them), fanout (the pidbox), dead letters (to the
queue's dead-letter exchange when it has one, else to the `fastq.deadletters` queue), beat's leader lease (an
exclusive queue, free the moment its holder's connection dies). Unacked deliveries of a
dead worker or a lost connection come back from the broker itself; no leases.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import unquote, urlsplit

from fastq import _amqp, _core
from fastq.brokers.amqp.link import CH_ADMIN, Endpoint, Link
from fastq.brokers.amqp.topology import (
    DELAYED_DELIVERY_EXCHANGE,
    DELAYED_LEVELS,
    MAX_DELAY,
    QueueSpec,
    Topology,
    broadcast_exchange,
    broadcast_queue_arguments,
    delayed_level,
    delayed_routing_key,
    undelayed_routing_key,
)
from fastq.brokers.amqp_properties import MARK as AMQP_MARK
from fastq.brokers.base import (
    Broker,
    BrokerFeatures,
    Consumer,
    DeadLetter,
    DeadLetterStore,
    Outgoing,
    Subscription,
)
from fastq.exceptions import AMQPChannelError, ImproperlyConfigured
from fastq.utils.text import mask_url

if TYPE_CHECKING:
    from fastq._core import Message
    from fastq.brokers.amqp.deadletters import AMQPDeadLetters
    from fastq.config import Settings

__all__ = ['AMQPBroker', 'parse_urls']

logger = logging.getLogger('fastq.brokers.amqp')
T = TypeVar('T')

DEFAULT_CONSUMER_TIMEOUT = 1800.0
PUBLISH_TIMEOUT = 30.0
SCHEMES = ('amqp', 'amqps', 'pyamqp', 'librabbitmq')
#: Celery's broker_login_method values fastq can log in with (py-amqp's default is AMQPLAIN).
LOGIN_METHODS = ('AMQPLAIN', 'PLAIN')


def parse_urls(url: str, conf: Settings) -> list[Endpoint]:
    """The endpoints of a (maybe `;`-separated) broker URL, with TLS options for amqps://."""
    method = str(conf.broker_login_method or 'AMQPLAIN').upper()
    if method not in LOGIN_METHODS:
        # Logging in with the URL's (or guest's) password instead would be another identity than configured.
        raise ImproperlyConfigured(
            f'broker_login_method {conf.broker_login_method!r}: fastq logs in to RabbitMQ with a user name and '
            f'password only ({" or ".join(LOGIN_METHODS)}, the same on RabbitMQ)'
        )
    out = []
    for part in (p.strip() for p in url.split(';')):
        if not part:
            continue
        parts = urlsplit(part)
        scheme = parts.scheme.split('+', 1)[0].lower()
        if scheme not in SCHEMES:
            raise ImproperlyConfigured(f'broker_url: {mask_url(part)!r} is not an AMQP URL')
        tls = scheme == 'amqps' or bool(conf.broker_use_ssl)
        ssl: dict[str, Any] | None = None
        if tls:
            ssl = dict(conf.broker_use_ssl) if isinstance(conf.broker_use_ssl, dict) else {}
            if 'cert_reqs' in ssl:
                ssl.setdefault('verify_peer', bool(ssl['cert_reqs']))
        path = parts.path[1:] if parts.path.startswith('/') else parts.path
        out.append(
            Endpoint(
                url=mask_url(part),
                host=parts.hostname or 'localhost',
                port=parts.port or (5671 if tls else 5672),
                vhost=unquote(path) or '/',
                user=unquote(parts.username) if parts.username else 'guest',
                password=unquote(parts.password) if parts.password else 'guest',
                heartbeat=int(conf.broker_heartbeat or 0),
                connect_timeout=float(conf.broker_connection_timeout or 4.0),
                ssl=ssl,
            )
        )
    if not out:
        raise ImproperlyConfigured(f'broker_url: {mask_url(url)!r} names no host')
    return out


def to_amqp(out: Outgoing) -> tuple[str, str, bytes, dict[str, Any]]:
    """(exchange, routing_key, body, properties) of an outgoing message (its envelope parsed if need be)."""
    message = out.message if out.message is not None else _core.Message.from_envelope(out.to_envelope(), None)
    props = message.properties
    properties: dict[str, Any] = {
        'content_type': message.content_type,
        'content_encoding': message.content_encoding,
        'headers': message.headers,
        'delivery_mode': out.delivery_mode,
    }
    # (0 too, as kombu's producer sends it: a Celery worker's request.delivery_info['priority'] reads 0, not None)
    properties['priority'] = out.priority or 0
    for key in ('correlation_id', 'reply_to'):
        value = props.get(key)
        if value:
            properties[key] = value
    expiration = out.expiration or props.get('expiration')
    if expiration is not None:
        properties['expiration'] = str(expiration)
    return out.exchange, out.routing_key, message.body, properties


def to_message(event: tuple[Any, ...]) -> Message:
    """A delivered AMQP message as fastq's Message, with kombu's delivery_info.

    Its properties are the delivery's (correlation_id, reply_to, priority, delivery_mode, expiration,
    message_id, ...) but the headers and content type/encoding, which the Message holds apart: the pool child
    reads them from the envelope it is given (see amqp_properties).
    """
    _, _, consumer_tag, delivery_tag, redelivered, exchange, routing_key, props, body = event
    if exchange == DELAYED_DELIVERY_EXCHANGE or routing_key[:2] in ('0.', '1.'):
        routing_key = undelayed_routing_key(routing_key)  # came through the delayed chain
    info = {'exchange': exchange, 'routing_key': routing_key, 'redelivered': redelivered}
    if delivery_tag:  # (a consumer's delivery: py-amqp's delivery_info, as a task_received receiver reads it)
        info = {'consumer_tag': consumer_tag, 'delivery_tag': delivery_tag, **info}
    properties: dict[str, Any] = props.copy()
    content_type = properties.pop('content_type', None)
    content_encoding = properties.pop('content_encoding', None)
    headers = properties.pop('headers', None)
    properties['delivery_info'] = info
    # Marked as RabbitMQ's, so a task's request.properties read as Celery's do there (amqp_properties).
    properties[AMQP_MARK] = 1 if 'priority' in properties else 0
    return _core.Message(body, content_type or '', content_encoding or '', headers or {}, properties)


class AMQPBroker(Broker):
    scheme = 'amqp'
    features = BrokerFeatures(
        priorities=True,
        higher_priority_first=True,
        delayed=True,
        delayed_publish=False,
        leases=False,
        dead_owner_detection=True,  # RabbitMQ requeues a dead connection's deliveries (and drops its leases)
        delivery_count=False,
        fanout=True,
        shared=True,
    )

    def __init__(self, url: str, conf: Settings) -> None:
        super().__init__(url, conf)
        options = self.transport_options
        self.endpoints = parse_urls(url, conf)
        self.confirm_publish = bool(options.get('confirm_publish', True))
        self.consumer_timeout = float(options.get('consumer_timeout', DEFAULT_CONSUMER_TIMEOUT))
        self.topology = Topology(conf)
        self.link = Link(self.endpoints, 'publish', confirms=self.confirm_publish)
        self.link.on_connect.append(self._on_connect)
        self._declared: set[str] = set()
        self._delayed_declared = False
        self._delayed_bound: set[str] = set()
        self._lock = threading.Lock()
        self._leases: dict[str, str] = {}  # lease name -> holder, held through this process's connection
        self._claims: dict[str, float] = {}
        from fastq.brokers.amqp.deadletters import AMQPDeadLetters

        self._dead = AMQPDeadLetters(self)

    def describe(self) -> str:
        return mask_url(self.url)

    def _on_connect(self, conn: _amqp.Connection) -> None:
        self._declared.clear()  # redeclare on the new connection (the node may have restarted)
        self._delayed_declared = False
        self._delayed_bound.clear()
        self._leases.clear()  # exclusive queues die with their connection: leases must be taken again

    def connect(self) -> None:
        self.link.start(float(self.conf.broker_connection_timeout or 4.0) * len(self.endpoints) + 1.0)

    # --- declarations (run in a link's I/O thread) --------------------------------------------------------

    def declare_spec(self, link: Link, conn: _amqp.Connection, spec: QueueSpec) -> None:
        link.ensure_channel(conn, CH_ADMIN)
        bindings = spec.all_bindings
        for binding in bindings:  # (exchanges first, the queue, then its bindings: kombu's order)
            if binding.exchange:
                conn.exchange_declare(
                    CH_ADMIN, binding.exchange, binding.exchange_type, False, binding.exchange_durable,
                    binding.exchange_auto_delete, binding.exchange_arguments,
                )  # fmt: skip
        conn.queue_declare(CH_ADMIN, spec.name, False, spec.durable, spec.exclusive, spec.auto_delete, spec.arguments)
        for binding in bindings:
            conn.queue_bind(CH_ADMIN, spec.name, binding.exchange, binding.routing_key, binding.arguments)

    def declare(self, queues: Sequence[str]) -> None:
        """Declare queues (and their exchanges and bindings) as Celery does, once per connection."""
        new = [q for q in queues if q not in self._declared]
        if not new:
            return
        specs = [self.topology.spec(q) for q in new]

        def run(conn: _amqp.Connection) -> None:
            for spec in specs:
                self.declare_spec(self.link, conn, spec)

        self.link.call(run)
        self._declared.update(new)

    def bind_consumed(self, queue: str, exchange: str, exchange_type: str, routing_key: str) -> None:
        """`add_consumer` with an exchange: the exchange declared (of that type) and the queue bound to it with
        `routing_key`, as Celery's consumer declares the queue it adds."""
        import dataclasses

        spec = dataclasses.replace(
            self.topology.spec(queue), exchange=exchange, exchange_type=exchange_type, routing_key=routing_key
        )
        self.link.call(lambda conn: self.declare_spec(self.link, conn, spec))

    def declare_delayed(self, link: Link, conn: _amqp.Connection) -> None:
        """Celery's native delayed-delivery chain (kombu.transport.native_delayed_delivery), argument for
        argument, so Celery workers and clients redeclare it without a 406."""
        link.ensure_channel(conn, CH_ADMIN)
        kind = self.conf.broker_native_delayed_delivery_queue_type or 'quorum'
        routing_key = '1.#'
        for level in range(DELAYED_LEVELS - 1, -1, -1):
            name = delayed_level(level)
            conn.exchange_declare(CH_ADMIN, name, 'topic', False, True, False, {})
            arguments: dict[str, Any] = {
                'x-queue-type': kind,
                'x-overflow': 'reject-publish',
                'x-message-ttl': 2**level * 1000,
                'x-dead-letter-exchange': delayed_level(level - 1) if level > 0 else DELAYED_DELIVERY_EXCHANGE,
            }
            if kind == 'quorum':
                arguments['x-dead-letter-strategy'] = 'at-least-once'
            conn.queue_declare(CH_ADMIN, name, False, True, False, False, arguments)
            conn.queue_bind(CH_ADMIN, name, name, routing_key, {})
            routing_key = '*.' + routing_key
        routing_key = '0.#'
        for level in range(DELAYED_LEVELS - 1, 0, -1):
            conn.exchange_bind(CH_ADMIN, delayed_level(level - 1), delayed_level(level), routing_key)
            routing_key = '*.' + routing_key
        conn.exchange_declare(CH_ADMIN, DELAYED_DELIVERY_EXCHANGE, 'topic', False, True, False, {})
        conn.exchange_bind(CH_ADMIN, DELAYED_DELIVERY_EXCHANGE, delayed_level(0), routing_key)

    def ensure_delayed(self) -> None:
        if self._delayed_declared:
            return
        self.link.call(lambda conn: self.declare_delayed(self.link, conn), timeout=120.0)
        self._delayed_declared = True

    # --- publishing ---------------------------------------------------------------------------------------

    def publish(self, batch: Sequence[Outgoing]) -> None:
        """Publish and, with confirms (the default), return only once RabbitMQ has every message.

        Queues are declared on first use, as Celery's producers do, so a task sent before any worker started
        is kept rather than dropped by the default exchange.
        """
        if not batch:
            return
        self.declare(sorted({out.queue for out in batch if self._for_its_queue(out)}))
        self.link.publish([self._routed(out) for out in batch], PUBLISH_TIMEOUT)

    def _for_its_queue(self, out: Outgoing) -> bool:
        """Whether `out` is meant for its one queue: sent to it by name, or, without `task_queues`, the default
        queue's message through the default exchange (fastq.routing.default_queue). Such a queue is declared
        before the publish (Celery's producer declares the queue it routes to), and a countdown for it may
        take the delayed chain, which ends at the queue itself."""
        if not out.exchange:
            return True
        return not self.topology.queues and out.queue == self.conf.task_default_queue

    def _routed(self, out: Outgoing) -> tuple[str, str, bytes, dict[str, Any]]:
        """A countdown/ETA task for a quorum queue goes into Celery's delayed-delivery chain, as Celery >= 5.5
        clients send it, so whichever worker consumes the queue gets it when due and holds nothing meanwhile.
        Other queues get it at once (a Celery worker there expects that); fastq workers park it on receipt."""
        if out.eta is None or not self._for_its_queue(out):
            return to_amqp(out)
        seconds = int(out.eta - time.time())
        if seconds < 1 or not self.topology.spec(out.queue).quorum:
            return to_amqp(out)
        self.ensure_delayed()
        self.bind_delayed(out.queue)
        _, _, body, properties = to_amqp(out)
        properties.pop('expiration', None)  # a TTL would drop it in the chain; workers check `expires` themselves
        return (
            delayed_level(DELAYED_LEVELS - 1),
            delayed_routing_key(min(seconds, MAX_DELAY), out.queue),
            body,
            properties,
        )

    def bind_delayed(self, queue: str) -> None:
        """Bind `queue` to the chain's last exchange, once per connection (see `bind_delayed_spec`)."""
        if queue in self._delayed_bound:
            return
        spec = self.topology.spec(queue)
        self._admin(lambda conn: self.bind_delayed_spec(conn, spec))
        self._delayed_bound.add(queue)

    @staticmethod
    def bind_delayed_spec(conn: _amqp.Connection, spec: QueueSpec) -> None:
        """The queue bound to the chain's last exchange with `#.<queue>` (fastq's countdowns, any exchange), and
        its non-direct exchanges as kombu binds them (`celery_delayed_delivery` -> exchange -> queue with
        `#.<routing key>`), where Celery clients' countdowns arrive. Its exchanges are declared already."""
        conn.queue_bind(CH_ADMIN, spec.name, DELAYED_DELIVERY_EXCHANGE, f'#.{spec.name}', {})
        for exchange, key in spec.delayed_routes:
            conn.exchange_bind(CH_ADMIN, exchange, DELAYED_DELIVERY_EXCHANGE, key)
            conn.queue_bind(CH_ADMIN, spec.name, exchange, key, {})

    def publish_unrouted(self, batch: Sequence[Outgoing]) -> None:
        """Publish without declaring anything (replies: their queue is the caller's, declared its own way)."""
        self.link.publish([to_amqp(out) for out in batch], PUBLISH_TIMEOUT)

    def _publish_raw(self, queue: str, payload: bytes) -> None:
        message = _core.Message.from_envelope(payload, None)
        self.publish([Outgoing(message, queue)])

    # --- consuming ----------------------------------------------------------------------------------------

    def consumer(self, queues: Sequence[str], owner: str) -> Consumer:
        from fastq.brokers.amqp.consumer import AMQPConsumer

        self._warn_consumer_timeout()
        return AMQPConsumer(self, [self.topology.spec(q) for q in queues], owner)

    def check_tasks(self, tasks: Iterable[Any], time_limits: tuple[Any, Any] = (None, None)) -> None:
        """Warn about each task whose own time limit exceeds consumer_timeout, and about the worker's own
        (`--time-limit`; the app-wide settings are warned about when consuming starts): such a task, run with
        acks_late, or holding prefetched tasks back that long, gets its channel closed by the node."""
        for task in tasks:
            for attr in ('time_limit', 'soft_time_limit'):
                self._warn_over_consumer_timeout(f'Task {task.name}: {attr}', getattr(task, attr, None))
        for option, setting, limit in zip(
            ('--time-limit', '--soft-time-limit'), ('task_time_limit', 'task_soft_time_limit'), time_limits, strict=True
        ):
            if limit != getattr(self.conf, setting):  # (not the setting's own, warned about already)
                self._warn_over_consumer_timeout(option, limit)

    def _warn_consumer_timeout(self) -> None:
        for name in ('task_time_limit', 'task_soft_time_limit'):
            self._warn_over_consumer_timeout(name, getattr(self.conf, name))

    def _warn_over_consumer_timeout(self, what: str, limit: Any) -> None:
        if limit and float(limit) > self.consumer_timeout:
            logger.warning(
                '%s (%ss) exceeds RabbitMQ consumer_timeout (%ss, transport option consumer_timeout): the node '
                'closes the channel of a consumer holding an unacknowledged task that long, and the task runs '
                'again elsewhere. Raise consumer_timeout on the node (and in the option).',
                what,
                limit,
                self.consumer_timeout,
            )

    # --- queues -------------------------------------------------------------------------------------------

    def _admin(self, fn: Callable[[_amqp.Connection], T]) -> T:
        def run(conn: _amqp.Connection) -> T:
            self.link.ensure_channel(conn, CH_ADMIN)
            return fn(conn)

        return self.link.call(run)

    def purge(self, queue: str) -> int:
        try:
            return int(self._admin(lambda conn: conn.queue_purge(CH_ADMIN, queue)))
        except AMQPChannelError as exc:
            if exc.reply_code == 404:
                return 0
            raise

    def qsize(self, queue: str) -> int:
        try:
            return int(self._admin(lambda conn: conn.queue_declare(CH_ADMIN, queue, True, False, False, False, {}))[1])
        except AMQPChannelError as exc:
            if exc.reply_code == 404:
                return 0
            raise

    def known_queues(self) -> list[str]:
        names = set(self._declared) | set(self.topology.queues) | {self.conf.task_default_queue}
        return sorted(names)

    def delete_queue(self, queue: str) -> None:
        self._admin(lambda conn: conn.queue_delete(CH_ADMIN, queue))
        self._declared.discard(queue)

    @property
    def dead_letters(self) -> DeadLetterStore:
        return self._dead

    @property
    def dead_letter_store(self) -> AMQPDeadLetters:
        return self._dead

    def requeue_dead_letter(self, ident: str) -> DeadLetter | None:
        return self._dead.requeue(ident)

    def get(self, queue: str) -> tuple[Any, ...] | None:
        """basic.get with no ack (used for reply queues and the dead-letter queue)."""
        return self._admin(lambda conn: conn.get(CH_ADMIN, queue, True))

    # --- remote control -----------------------------------------------------------------------------------

    def bind(self, exchange: str, routing_key: str, queue: str) -> None:
        """Declare a pidbox reply queue bound to its direct exchange (kombu.pidbox's arguments)."""

        def run(conn: _amqp.Connection) -> None:
            conn.exchange_declare(CH_ADMIN, exchange, 'direct', False, False, False, {})
            conn.queue_declare(
                CH_ADMIN, queue, False, False, False, True, broadcast_queue_arguments('fanout', self.conf)
            )
            conn.queue_bind(CH_ADMIN, queue, exchange, routing_key, {})

        self._admin(run)

    def unbind(self, exchange: str, routing_key: str, queue: str) -> None:
        return None  # the reply queue expires by itself 10 s after its last use (x-expires)

    def pop(self, queue: str, timeout: float) -> list[bytes]:
        deadline = time.monotonic() + timeout
        out: list[bytes] = []
        while True:
            got = self.get(queue)
            while got is not None:
                out.append(_envelope_of(got[6], got[5], got[2], got[3]))
                got = self.get(queue)
            if out or time.monotonic() >= deadline:
                return out
            time.sleep(min(0.02, max(deadline - time.monotonic(), 0)))

    def fanout_publish(self, exchange: str, payload: bytes, routing_key: str = '') -> None:
        message = _core.Message.from_envelope(payload, None)

        kind, durable = broadcast_exchange(exchange, self.conf)

        def declare(conn: _amqp.Connection) -> None:
            conn.exchange_declare(CH_ADMIN, exchange, kind, False, durable, False, {})

        self._admin(declare)
        self.link.publish([to_amqp(Outgoing(message, '', exchange, routing_key or exchange, 0, 1))], PUBLISH_TIMEOUT)

    def subscribe(self, exchange: str) -> Subscription:
        from fastq.brokers.amqp.consumer import AMQPSubscription

        return AMQPSubscription(self, exchange)

    # --- coordination (beat) -------------------------------------------------------------------------------

    def lease(self, name: str, holder: str, ttl: float) -> bool:
        """A lease is an exclusive queue `fastq.lease.<name>` on this process's connection: RabbitMQ lets one
        connection at a time declare it (405 RESOURCE_LOCKED for the others) and deletes it when that
        connection dies, so a dead beat's lease is free at once and `ttl` needs no extending."""
        with self._lock:
            current = self._leases.get(name)
            if current is not None:
                return current == holder
            queue = f'fastq.lease.{name}'
            try:
                self._admin(lambda conn: conn.queue_declare(CH_ADMIN, queue, False, False, True, False, {}))
            except AMQPChannelError as exc:
                if exc.reply_code == 405:
                    return False
                raise
            self._leases[name] = holder
            return True

    def release_lease(self, name: str, holder: str) -> None:
        with self._lock:
            if self._leases.get(name) != holder:
                return
            del self._leases[name]
            self._admin(lambda conn: conn.queue_delete(CH_ADMIN, f'fastq.lease.{name}'))

    def lease_holder(self, name: str) -> str | None:
        with self._lock:
            if name in self._leases:
                return self._leases[name]
        try:
            self._admin(lambda conn: conn.queue_declare(CH_ADMIN, f'fastq.lease.{name}', True, False, True, False, {}))
        except AMQPChannelError as exc:
            if exc.reply_code == 405:
                return 'another connection'
            if exc.reply_code == 404:
                return None
            raise
        return None

    def claim(self, key: str, ttl: float) -> bool:
        """In this process only: on RabbitMQ the beat lease (an exclusive queue, see `lease`) already lets a
        single beat send, and RabbitMQ has no atomic create-if-absent with expiry to share claims with."""
        now = time.time()
        with self._lock:
            if self._claims.get(key, 0.0) > now:
                return False
            if len(self._claims) > 1000:
                for stale in [k for k, until in self._claims.items() if until <= now]:
                    del self._claims[stale]
            self._claims[key] = now + ttl
            return True

    def close(self) -> None:
        self.link.close()


def _envelope_of(body: bytes, props: dict[str, Any], exchange: str, routing_key: str) -> bytes:
    event = ('', 0, '', 0, False, exchange, routing_key, props, body)
    message = to_message(event)
    return message.to_envelope(
        exchange, routing_key, int(props.get('priority') or 0), int(props.get('delivery_mode') or 2), None,
        str(uuid.uuid4()),
    )  # fmt: skip
