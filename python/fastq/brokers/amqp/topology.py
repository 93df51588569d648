"""What fastq declares on RabbitMQ, argument for argument as Celery 5.7 declares it (a peer that redeclares a
queue with other arguments gets 406 PRECONDITION_FAILED, and so would we). Names and arguments live here only.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from fastq.routing import Exchange, Queue, Router, as_exchange, default_queue, direct_queue

if TYPE_CHECKING:
    from fastq.config import Settings

#: Where malformed messages go when their queue has no dead-letter exchange (durable classic queue).
DEAD_LETTER_QUEUE = 'fastq.deadletters'
#: Celery >= 5.5's native delayed delivery (kombu.transport.native_delayed_delivery): 28 levels of topic
#: exchanges and queues, level n holding a message 2**n seconds, then dead-lettering it to the next level, and
#: level 0 to DELAYED_DELIVERY_EXCHANGE, where queues are bound with `#.<routing key>`.
DELAYED_LEVELS = 28
DELAYED_DELIVERY_EXCHANGE = 'celery_delayed_delivery'
MAX_DELAY = 2**DELAYED_LEVELS - 1
#: kombu.pidbox with Celery's control_* defaults: exchanges not durable; queues exclusive, auto-deleted, gone
#: 10 s after their last consumer, messages dropped after 300 s.
PIDBOX_QUEUE_ARGUMENTS = {'x-expires': 10000, 'x-message-ttl': 300000}
#: Broadcast exchanges as Celery declares them (type, durable): the pidbox (kombu.pidbox) and the event stream
#: (celery.events: a durable topic exchange on AMQP). Others default to a transient fanout.
BROADCAST_EXCHANGES = {'celery.pidbox': ('fanout', False), 'celeryev': ('topic', True)}
#: What fastq's subscribers keep: events are live data (Celery's event_queue_ttl / event_queue_expires).
EVENT_QUEUE_ARGUMENTS = {'x-expires': 60000, 'x-message-ttl': 5000}


def broadcast_exchange(name: str, conf: Any = None) -> tuple[str, bool]:
    """(type, durable) of a broadcast exchange: the event exchange (`event_exchange`, a durable topic) and
    the pidbox (`<control_exchange>.pidbox`, a transient fanout) by the app's names, else by Celery's."""
    if conf is not None:
        if name == conf.event_exchange:
            return 'topic', True
        if name == f'{conf.control_exchange}.pidbox':
            return 'fanout', False
    return BROADCAST_EXCHANGES.get(name, ('fanout', False))


def broadcast_queue_arguments(kind: str, conf: Any = None) -> dict[str, Any]:
    """The arguments of a subscriber's queue: `event_queue_ttl`/`event_queue_expires` for events (a topic
    exchange), `control_queue_ttl`/`control_queue_expires` for the pidbox (Celery's defaults without conf)."""
    if conf is None:
        return dict(EVENT_QUEUE_ARGUMENTS if kind == 'topic' else PIDBOX_QUEUE_ARGUMENTS)
    if kind == 'topic':
        ttl, expires = conf.event_queue_ttl, conf.event_queue_expires
    else:
        ttl, expires = conf.control_queue_ttl, conf.control_queue_expires
    out: dict[str, Any] = {}
    if expires:
        out['x-expires'] = int(float(expires) * 1000)
    if ttl:
        out['x-message-ttl'] = int(float(ttl) * 1000)
    return out


def delayed_level(level: int) -> str:
    return f'celery_delayed_{level}'


_DELAY_PREFIX = re.compile(r'^(?:[01]\.){' + str(DELAYED_LEVELS) + '}')


def undelayed_routing_key(routing_key: str) -> str:
    """The routing key a message had before it went through the delayed chain (retries go back there)."""
    return _DELAY_PREFIX.sub('', routing_key, count=1)


def delayed_routing_key(seconds: int, routing_key: str) -> str:
    """Celery's routing key for a delay: the 28 binary digits of `seconds`, dot-separated, then the key (any
    earlier delay prefix removed, as kombu does, so retried tasks do not grow it)."""
    return '.'.join(f'{seconds:0{DELAYED_LEVELS}b}') + '.' + undelayed_routing_key(routing_key)


@dataclass(frozen=True, slots=True)
class BindingSpec:
    """One of a queue's kombu `bindings` (`Queue(name, bindings=[binding(exchange, routing_key), ...])`)."""

    exchange: str
    exchange_type: str = 'direct'
    exchange_durable: bool = True
    exchange_auto_delete: bool = False
    exchange_arguments: dict[str, Any] = field(default_factory=dict)
    routing_key: str = ''
    arguments: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class QueueSpec:
    """One queue's declaration (and its exchange's), resolved from Celery's settings."""

    name: str
    durable: bool = True
    exclusive: bool = False
    auto_delete: bool = False
    arguments: dict[str, Any] = field(default_factory=dict)
    exchange: str = ''
    exchange_type: str = 'direct'
    exchange_durable: bool = True
    exchange_auto_delete: bool = False
    exchange_arguments: dict[str, Any] = field(default_factory=dict)
    routing_key: str = ''
    consumer_arguments: dict[str, Any] = field(default_factory=dict)
    bindings: tuple[BindingSpec, ...] = ()

    @property
    def all_bindings(self) -> tuple[BindingSpec, ...]:
        """Its exchange's binding (when it has an exchange) first, then its kombu `bindings`: each one's
        exchange declared and the queue bound to it, as kombu declares a queue."""
        if not self.exchange:
            return self.bindings
        own = BindingSpec(
            self.exchange,
            self.exchange_type,
            self.exchange_durable,
            self.exchange_auto_delete,
            self.exchange_arguments,
            self.routing_key,
        )
        return (own, *self.bindings)

    @property
    def delayed_routes(self) -> list[tuple[str, str]]:
        """(exchange, binding key) pairs kombu's `bind_queue_to_native_delayed_delivery_exchange` binds between
        `celery_delayed_delivery`, the queue's exchange and the queue: for each of its bindings (its exchange's,
        or its `bindings`) on an exchange that is not direct, the key `#.<routing key>` (kept if it starts
        with `#`). Celery clients send countdowns through the chain with the queue's routing key, not its name."""
        return [
            (b.exchange, b.routing_key if b.routing_key.startswith('#') else f'#.{b.routing_key}')
            for b in self.all_bindings
            if b.exchange and b.exchange_type != 'direct'
        ]

    @property
    def quorum(self) -> bool:
        return self.arguments.get('x-queue-type') == 'quorum'

    @property
    def dead_letter_exchange(self) -> str | None:
        value = self.arguments.get('x-dead-letter-exchange')
        return value if isinstance(value, str) else None


class Topology:
    """Queue declarations from task_queues, task_default_queue(_type), task_create_missing_queue_type, and
    task_queue_max_priority, as celery.app.amqp.Queues builds them."""

    def __init__(self, conf: Settings) -> None:
        self.conf = conf
        self.queues: dict[str, Queue] = Router._configured_queues(conf.task_queues, conf)

    def spec(self, name: str) -> QueueSpec:
        conf = self.conf
        queue = self.queues.get(name) or direct_queue(name)
        arguments: dict[str, Any] = {}
        if queue is None and not self.queues and name == conf.task_default_queue:
            queue = default_queue(conf)  # (on the default exchange, bound with the default routing key)
            arguments.update(queue.queue_arguments or {})
        elif queue is None:
            kind = conf.task_default_queue_type if name == conf.task_default_queue else None
            kind = kind or conf.task_create_missing_queue_type
            if kind == 'quorum':
                arguments['x-queue-type'] = 'quorum'
            exchange_type = conf.task_create_missing_queue_exchange_type or conf.task_default_exchange_type
            if name == conf.task_default_queue:
                exchange_type = conf.task_default_exchange_type or 'direct'
            queue = Queue(name, Exchange(name, exchange_type or 'direct'), name)
        else:
            arguments.update(queue.queue_arguments or {})
        max_priority = queue.max_priority if queue.max_priority is not None else conf.task_queue_max_priority
        if max_priority is not None and 'x-max-priority' not in arguments and not _is_quorum(arguments):
            arguments['x-max-priority'] = int(max_priority)
        exchange = queue.exchange if isinstance(queue.exchange, Exchange) else Exchange(str(queue.exchange or ''))
        bindings = tuple(_binding_spec(b) for b in queue.bindings or ())
        if bindings:
            exchange = Exchange('')  # kombu's Queue drops its own exchange when given bindings
        return QueueSpec(
            name=name,
            durable=queue.durable,
            exclusive=queue.exclusive,
            auto_delete=queue.auto_delete,
            arguments=arguments,
            exchange=exchange.name,
            exchange_type=exchange.type,
            exchange_durable=exchange.durable,
            exchange_auto_delete=exchange.auto_delete,
            exchange_arguments=dict(exchange.arguments or {}),
            routing_key=queue.routing_key or name,
            consumer_arguments=dict(queue.consumer_arguments or {}),
            bindings=bindings,
        )

    def any_quorum(self, names: Iterable[str] = ()) -> bool:
        """Celery's `detect_quorum_queues`: whether any of the app's queues (`task_queues`, else the default
        queue, and those consumed) is a quorum queue."""
        configured = list(self.queues) or [str(self.conf.task_default_queue)]
        return any(self.spec(name).quorum for name in {*configured, *names})


def _binding_spec(value: Any) -> BindingSpec:
    exchange = getattr(value, 'exchange', None)
    ex = Exchange('') if exchange is None else as_exchange(exchange)  # (kombu's Exchange != '' is False)
    return BindingSpec(
        exchange=ex.name,
        exchange_type=ex.type,
        exchange_durable=ex.durable,
        exchange_auto_delete=ex.auto_delete,
        exchange_arguments=dict(ex.arguments or {}),
        routing_key=str(getattr(value, 'routing_key', '') or ''),
        arguments=dict(getattr(value, 'arguments', None) or {}),
    )


def _is_quorum(arguments: dict[str, Any]) -> bool:
    return arguments.get('x-queue-type') == 'quorum'
