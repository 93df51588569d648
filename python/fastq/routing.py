"""Exchanges, queues and routes, under the names Celery users import from kombu and configure in settings.

`task_routes` accepts what Celery's does: a dict (exact names, glob patterns like `'feed.*'`, compiled
regexes), a router function `(name, args, kwargs, options, task=None, **kw) -> dict | str | None`, a Celery 3
router (an object with `route_for_task(task, args, kwargs)`; by dotted path, its class), a dotted path to a
function, or a list of these (the first that answers wins). A route is `{'queue': ...}` (plus optional
routing_key/exchange/priority) or a queue name string.
"""

from __future__ import annotations

import copy
import fnmatch
import re
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from fastq.exceptions import ImproperlyConfigured, QueueNotFound
from fastq.utils.imports import symbol_by_name

if TYPE_CHECKING:
    from fastq.config import Settings

__all__ = [
    'Broadcast',
    'Exchange',
    'Queue',
    'Router',
    'default_queue',
    'direct_queue',
    'exchange_types',
    'topic_pattern',
    'worker_direct',
]


@dataclass(eq=True)
class Exchange:
    """kombu's Exchange: a name and a type (direct, topic, fanout, headers)."""

    name: str = ''
    type: str = 'direct'
    durable: bool = True
    auto_delete: bool = False
    delivery_mode: int | None = None
    arguments: dict[str, Any] | None = None

    def __hash__(self) -> int:
        return hash((self.name, self.type))


@dataclass(eq=True)
class Queue:
    """kombu's Queue: where a worker consumes from; exchange and routing key matter on AMQP brokers."""

    name: str = ''
    exchange: Exchange | str | Any | None = None  # (Any: kombu's Exchange, made fastq's)
    routing_key: str | None = None
    durable: bool = True
    exclusive: bool = False
    auto_delete: bool = False
    queue_arguments: dict[str, Any] | None = None
    max_priority: int | None = None
    consumer_arguments: dict[str, Any] | None = None
    no_ack: bool = False
    bindings: Sequence[Any] = field(default_factory=tuple)
    #: Another name the queue goes by in routes and `-Q`/`-X` (a `Broadcast` queue's exchange name).
    alias: str | None = None
    #: Whether the exchange and routing key were given, or filled in here: in `task_queues`, Celery fills
    #: them from the task_default_* settings instead (see `Router._configured_queues`).
    exchange_given: bool = field(default=True, init=False, repr=False, compare=False)
    routing_key_given: bool = field(default=True, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        self.exchange_given = self.exchange is not None
        self.routing_key_given = self.routing_key is not None
        self.exchange = Exchange(self.name) if self.exchange is None else as_exchange(self.exchange)
        if self.routing_key is None:
            self.routing_key = self.name

    def __hash__(self) -> int:
        return hash(self.name)

    @classmethod
    def from_dict(cls, name: str, **options: Any) -> Queue:
        """A queue given in `task_queues` as a name and a dict of options, read as kombu's `Queue.from_dict`
        reads it (through Celery's `Queues.add_compat`): `exchange`, `exchange_type`, `routing_key` or
        `binding_key` (else the queue's name), `durable`/`auto_delete` for both the queue and its exchange
        unless `queue_*`/`exchange_*` say otherwise, `exchange_arguments`, `queue_arguments`, ..."""

        def either(specific: str, general: str, default: bool) -> bool:
            value = options.get(specific)
            if value is None:
                value = options.get(general)
            return default if value is None else bool(value)

        exchange = options.get('exchange')
        if exchange is not None and not isinstance(exchange, str):
            exchange = as_exchange(exchange)
        elif exchange:
            exchange = Exchange(
                exchange,
                str(options.get('exchange_type') or 'direct'),
                either('exchange_durable', 'durable', True),
                either('exchange_auto_delete', 'auto_delete', False),
                options.get('delivery_mode'),
                options.get('exchange_arguments'),
            )
        else:
            exchange = None  # the default exchange (see `Router._configured_queues`)
        return cls(
            name,
            exchange,
            options.get('binding_key') or options.get('routing_key') or name,
            either('queue_durable', 'durable', True),
            bool(options.get('exclusive', False)),
            either('queue_auto_delete', 'auto_delete', False),
            options.get('queue_arguments'),
            options.get('max_priority'),
            options.get('consumer_arguments'),
            bool(options.get('no_ack', False)),
            tuple(options.get('bindings') or ()),
            options.get('alias'),
        )


class Broadcast(Queue):
    """kombu's `Broadcast` (`from kombu.common import Broadcast` works too): a queue of this process's own
    (`bcast.<uuid>`, auto-deleted) bound to the fanout exchange `name`, which routes and `-Q` know by that
    name. Every worker consuming it gets a copy of each message sent to the exchange::

        task_queues = (Broadcast('broadcast_tasks'),)
        task_routes = {'tasks.reload_cache': {'queue': 'broadcast_tasks', 'exchange': 'broadcast_tasks'}}
    """

    def __init__(
        self,
        name: str | None = None,
        queue: str | None = None,
        unique: bool = False,
        auto_delete: bool = True,
        exchange: Exchange | str | Any | None = None,
        alias: str | None = None,
        **kwargs: Any,
    ) -> None:
        if unique:
            queue = f'{queue or "bcast"}.{uuid.uuid4()}'
        else:
            queue = queue or f'bcast.{uuid.uuid4()}'
        super().__init__(
            queue,
            exchange if exchange is not None else Exchange(name or '', 'fanout'),
            auto_delete=auto_delete,
            alias=alias or name,
            **kwargs,
        )


def topic_pattern(routing_key: str) -> str:
    """The regular expression kombu's virtual topic exchange matches routing keys with (and stores with a
    Redis binding): `*` one word, `#` any characters (so `feed.#` matches `feed.x.y`, not `feed`)."""
    escaped = ''.join(c if c.isalnum() or c in '.#*' else ('\\000' if c == '\000' else '\\' + c) for c in routing_key)
    words = escaped.split('.')
    return '^{}$'.format(r'\.'.join(_TOPIC_WILDCARDS.get(word, word) for word in words))


_TOPIC_WILDCARDS = {'*': r'[^\.]+', '#': r'.*?'}


def as_exchange(exchange: Any) -> Exchange:
    """fastq's Exchange for kombu's (or anything with its attributes), as Celery's documentation writes them:
    `from kombu import Exchange, Queue` works in settings too."""
    if isinstance(exchange, Exchange):
        return exchange
    if isinstance(exchange, str):
        return Exchange(exchange)
    return Exchange(
        str(getattr(exchange, 'name', '') or ''),
        str(getattr(exchange, 'type', None) or 'direct'),
        bool(getattr(exchange, 'durable', True)),
        bool(getattr(exchange, 'auto_delete', False)),
        getattr(exchange, 'delivery_mode', None),
        dict(getattr(exchange, 'arguments', None) or {}) or None,
    )


def as_queue(queue: Any) -> Queue:
    """fastq's Queue for kombu's (see `as_exchange`)."""
    if isinstance(queue, Queue):
        return queue
    exchange = getattr(queue, 'exchange', None)
    if type(queue).__name__ == 'Broadcast' and getattr(queue, 'queue', None):  # (kombu.common.Broadcast)
        return Broadcast(
            getattr(queue, 'alias', None),
            str(queue.name),
            auto_delete=bool(getattr(queue, 'auto_delete', True)),
            exchange=as_exchange(exchange) if exchange is not None else None,
            durable=bool(getattr(queue, 'durable', True)),
            queue_arguments=getattr(queue, 'queue_arguments', None),
        )
    return Queue(
        str(queue.name),
        as_exchange(exchange) if exchange is not None and getattr(exchange, 'name', exchange) != '' else None,
        getattr(queue, 'routing_key', None) or None,
        bool(getattr(queue, 'durable', True)),
        bool(getattr(queue, 'exclusive', False)),
        bool(getattr(queue, 'auto_delete', False)),
        getattr(queue, 'queue_arguments', None),
        getattr(queue, 'max_priority', None),
        getattr(queue, 'consumer_arguments', None),
        bool(getattr(queue, 'no_ack', False)),
        tuple(getattr(queue, 'bindings', None) or ()),
        getattr(queue, 'alias', None) or None,
    )


#: `worker_direct`: each worker's own queue, `<nodename>.dq2`, bound to this exchange with its node name.
WORKER_DIRECT_EXCHANGE = 'C.dq2'
WORKER_DIRECT_SUFFIX = '.dq2'


def default_queue(conf: Any) -> Queue:
    """The default queue when `task_queues` is not set, as Celery's `app.amqp.queues` makes it: on the default
    exchange (task_default_exchange, else the queue's name, of task_default_exchange_type), bound with
    task_default_routing_key (else its name), quorum if task_default_queue_type says so."""
    name = str(conf.task_default_queue)
    return Queue(
        name,
        Exchange(str(conf.task_default_exchange or name), str(conf.task_default_exchange_type or 'direct')),
        str(conf.task_default_routing_key or name),
        queue_arguments={'x-queue-type': 'quorum'} if conf.task_default_queue_type == 'quorum' else None,
    )


def worker_direct(hostname: str | Queue) -> Queue:
    """The queue that is a direct route to the worker `hostname` (`w1@example.com`): Celery's."""
    if isinstance(hostname, Queue):
        return hostname
    return Queue(f'{hostname}{WORKER_DIRECT_SUFFIX}', Exchange(WORKER_DIRECT_EXCHANGE), hostname)


def direct_queue(name: str) -> Queue | None:
    """The `worker_direct` queue of this name (`w1@example.com.dq2`), or None for any other."""
    if name.endswith(WORKER_DIRECT_SUFFIX) and '@' in name:
        return worker_direct(name[: -len(WORKER_DIRECT_SUFFIX)])
    return None


def exchange_types(queues: Mapping[str, Queue], conf: Any) -> dict[str, str]:
    """The type of each exchange `queues` (`Router.queues`) are bound to, and the default exchange's, for
    brokers that route messages sent to an exchange themselves (Redis)."""
    default = str(conf.task_default_exchange or conf.task_default_queue)
    out = {default: str(conf.task_default_exchange_type or 'direct')}
    for queue in queues.values():
        for exchange in (queue.exchange, *(getattr(b, 'exchange', None) for b in queue.bindings or ())):
            if exchange is not None and exchange != '':
                ex = as_exchange(exchange)
                if ex.name:
                    out[ex.name] = ex.type
    return out


def _is_queue(value: Any) -> bool:
    return isinstance(value, Queue) or (not isinstance(value, str | Mapping) and hasattr(value, 'routing_key'))


RouterFn = Callable[..., Any]

#: Celery's worker's words (celery.worker.worker) for a `-Q` queue that is not defined.
SELECT_UNKNOWN_QUEUE = (
    "Trying to select queue subset of {0!r}, but queue {1} isn't\n"
    'defined in the `task_queues` setting.\n\n'
    'If you want to automatically declare unknown queues you can\n'
    'enable the `task_create_missing_queues` setting.'
)


def _map_router(routes: Mapping[Any, Any] | Sequence[tuple[Any, Any]]) -> RouterFn:
    exact: dict[str, Any] = {}
    patterns: list[tuple[re.Pattern[str], Any]] = []
    pairs = routes.items() if isinstance(routes, Mapping) else routes
    for key, route in pairs:
        if isinstance(key, re.Pattern):
            patterns.append((key, route))
        elif isinstance(key, str) and '*' in key:  # (Celery's test: 'tasks.a?' or 'tasks.[ab]' is a name)
            patterns.append((re.compile(fnmatch.translate(key)), route))
        else:
            exact[key] = route

    def lookup(name: str, *args: Any, **kwargs: Any) -> Any:
        if name in exact:
            return exact[name]
        for pattern, value in patterns:
            if pattern.match(name):
                return value
        return None

    return lookup


class _MapRouter:
    """A `task_routes` dict (or list of `(pattern, route)` pairs, tried in order) as a router: its answer
    depends on the task name alone."""

    def __init__(self, routes: Mapping[Any, Any] | Sequence[tuple[Any, Any]]) -> None:
        self.lookup = _map_router(routes)

    def __call__(self, name: str, *args: Any, **kwargs: Any) -> Any:
        return self.lookup(name)


class _OldRouter:
    """A router object of Celery 3's (`route_for_task(task, args=None, kwargs=None)`), which Celery 5 still
    asks: called with the task name, the arguments and the keyword arguments only."""

    def __init__(self, router: Any) -> None:
        self.router = router

    def __call__(self, name: str, args: Any = (), kwargs: Any = None, *rest: Any, **options: Any) -> Any:
        return self.router.route_for_task(name, args, kwargs)


def prepare_routers(routes: Any) -> list[RouterFn]:
    if routes is None:
        return []
    if not isinstance(routes, list | tuple):
        routes = [routes]
    out: list[RouterFn] = []
    for item in routes:
        if isinstance(item, str):
            item = symbol_by_name(item)
            if isinstance(item, type) and hasattr(item, 'route_for_task'):
                item = item()  # a router class of Celery 3's, named by its path: instantiated, as Celery does
        if hasattr(item, 'route_for_task'):  # (Celery 3's router: `route_for_task(task, args, kwargs)`)
            out.append(_OldRouter(item))
        elif isinstance(item, Mapping):
            out.append(_MapRouter(item))
        elif isinstance(item, list | tuple) and all(isinstance(p, list | tuple) and len(p) == 2 for p in item):
            out.append(_MapRouter([tuple(p) for p in item]))  # Celery's ordered form: [(pattern, route), ...]
        elif callable(item):
            fn: RouterFn = item
            out.append(fn)
        else:
            raise TypeError(
                f'task_routes: a route must be a dict, a list of (pattern, route) pairs, a function or a dotted '
                f'path, got {item!r}'
            )
    return out


class Router:
    """Decides the queue of a message: explicit `queue=` > the task's `queue` > task_routes > default queue."""

    def __init__(self, conf: Settings) -> None:
        self.conf = conf
        self.routers = prepare_routers(conf.task_routes)
        self.queues = self._configured_queues(conf.task_queues, conf)
        #: Queues by their other name (a `Broadcast` queue by its exchange's), which routes and `-Q` use.
        self.aliases = {q.alias: q for q in self.queues.values() if q.alias}
        self.create_missing = bool(conf.task_create_missing_queues)
        #: Whether a route depends on the task name alone (no router function that sees the arguments), so
        #: a route once resolved can be reused (see `sending.plan_for`).
        self.static = all(isinstance(router, _MapRouter) for router in self.routers)

    @staticmethod
    def _configured_queues(queues: Any, conf: Any) -> dict[str, Queue]:
        """`task_queues` as Celery's `app.amqp.queues` reads it: a queue given without an exchange is on the
        default one (`task_default_exchange`, else `task_default_queue`, of `task_default_exchange_type`);
        without a routing key, bound with `task_default_routing_key`, else `task_default_queue` (a queue
        given as a name and a dict of options: its own name). So the bindings declared on the broker are the
        ones a Celery worker declares, and a Celery client's messages routed through them arrive."""
        if not queues:
            return {}
        if isinstance(queues, Mapping):
            pairs = [
                (as_queue(spec), True) if _is_queue(spec) else (Queue.from_dict(name, **dict(spec or {})), False)
                for name, spec in queues.items()
            ]
        else:
            pairs = [(as_queue(q), True) for q in queues]
        exchange = Exchange(
            str(conf.task_default_exchange or conf.task_default_queue), str(conf.task_default_exchange_type or 'direct')
        )
        for queue, is_object in pairs:
            if not queue.exchange_given:
                queue.exchange = exchange
            if not queue.routing_key_given and is_object:
                queue.routing_key = str(conf.task_default_routing_key or conf.task_default_queue)
        return {queue.name: queue for queue, _ in pairs}

    def _lookup(self, route: Any, name: str, args: Any, kwargs: Any, options: Mapping[str, Any], task: Any) -> Any:
        for router in self.routers:
            try:
                answer = router(name, args, kwargs, options, task=task)
            except TypeError:
                answer = router(name, args, kwargs, options)
            if answer is not None:  # (an empty answer, `{}`, still stops the search: Celery's)
                return answer
        return route

    def route(
        self, options: Mapping[str, Any], name: str, args: Any = (), kwargs: Any = None, task: Any = None
    ) -> dict[str, Any]:
        """`options` with `queue` resolved to a name, and the exchange and routing key to publish with, as
        Celery's `send_task_message` settles them: a queue on a direct exchange is published to by name
        (the default exchange, `''`) unless both an exchange and a routing key were given; a topic or fanout
        queue through its exchange, with the routing key given or its own."""
        out = dict(options)
        # The routes are asked even when a queue was given, as Celery asks them: what they say fills in what
        # the call's options leave out (a route's routing_key or priority with `apply_async(queue=...)`).
        answer = None
        if self.routers:
            asked = dict(options)
            given = asked.get('queue')
            if given and isinstance(given, str):  # (a router sees the queue as Celery's do: its Queue object)
                asked['queue'] = self.queue(given)
            answer = self._lookup(None, name, args, kwargs or {}, asked, task)
        if isinstance(answer, str):
            answer = {'queue': answer}
        if answer:
            for key, value in dict(answer).items():
                if out.get(key) is None:
                    out[key] = value
        queue = out.get('queue')
        if _is_queue(queue):
            qobj = as_queue(queue)
        else:
            queue = str(queue or self.conf.task_default_queue)  # (None or a route's '': the default queue)
            qobj = self.queue(queue)
            if not self.queues and queue == self.conf.task_default_queue:
                qobj = default_queue(self.conf)  # (on the default exchange: Celery publishes through it)
            if not self.create_missing and not self.defined(queue) and not direct_queue(queue):
                raise QueueNotFound(f'Queue {queue!r} missing from task_queues')
        out['queue'] = qobj.name
        exchange = out.get('exchange')
        if exchange is not None and not isinstance(exchange, str):
            exchange = as_exchange(exchange).name
        routing_key = out.get('routing_key')
        own = as_exchange(qobj.exchange)
        # (Celery's `exchange_type` option decides this alone; otherwise the queue's exchange's type does)
        kind = out.pop('exchange_type', None) or own.type
        if (not exchange or not routing_key) and kind == 'direct':
            exchange, routing_key = '', qobj.name
        elif not exchange:
            exchange = own.name or self.conf.task_default_exchange or self.conf.task_default_queue
            routing_key = routing_key or qobj.routing_key or self.conf.task_default_routing_key or qobj.name
        out['exchange'] = exchange
        out['routing_key'] = routing_key or qobj.name
        return out

    def queue(self, name: str) -> Queue:
        """The queue a route or `-Q` names, as Celery's `app.amqp.queues[name]` finds it: by alias first (a
        `Broadcast` queue by its exchange's name), then by name, else a queue of that name on the direct
        exchange of the same name (`task_create_missing_queues`)."""
        return self.aliases.get(name) or self.queues.get(name) or direct_queue(name) or Queue(name)

    def declared(self, name: str) -> Queue:
        """The queue `name` as Celery's `app.amqp.queues[name]` has it (what `inspect active_queues` shows): a
        configured one as `task_queues` gives it (by alias too); with no `task_queues`, the default queue on
        the default exchange (task_default_exchange, of task_default_exchange_type) bound with
        task_default_routing_key; any other on a direct exchange of its name (or of
        task_create_missing_queue_exchange_type), quorum if task_create_missing_queue_type says so; and
        task_queue_max_priority as each one's x-max-priority unless its arguments have one."""
        conf = self.conf
        queue = self.aliases.get(name) or self.queues.get(name) or direct_queue(name)
        if queue is None and name == conf.task_default_queue and not self.queues:
            queue = default_queue(conf)
        elif queue is None:
            kind = conf.task_create_missing_queue_type
            exchange = Exchange(name, str(conf.task_create_missing_queue_exchange_type or 'direct'))
            queue = Queue(name, exchange, name, queue_arguments={'x-queue-type': kind} if kind == 'quorum' else None)
        max_priority = conf.task_queue_max_priority
        if max_priority is not None and 'x-max-priority' not in (queue.queue_arguments or {}):
            queue = copy.copy(queue)
            queue.queue_arguments = {**(queue.queue_arguments or {}), 'x-max-priority': max_priority}
        return queue

    def defined(self, name: str) -> bool:
        """Whether `name` is a queue Celery's `app.amqp.queues` has without `task_create_missing_queues`:
        one of `task_queues` (or an alias), else, with no `task_queues`, the default queue alone."""
        if self.queues:
            return name in self.queues or name in self.aliases
        return bool(name == self.conf.task_default_queue)

    def queue_name(self, name: str) -> str:
        """The name of the queue `name` stands for (itself unless it is an alias)."""
        alias = self.aliases.get(name)
        return name if alias is None else alias.name

    def worker_queues(self, names: Sequence[str] | None) -> list[str]:
        """The queues a worker consumes: `-Q` names (an alias standing for its queue), else every configured
        queue, else the default one. Without `task_create_missing_queues`, a name `-Q` gives that is not
        defined is refused as Celery's worker refuses it (ImproperlyConfigured, in its words)."""
        if names:
            if not self.create_missing:
                for name in names:
                    if not self.defined(name) and not direct_queue(name):
                        raise ImproperlyConfigured(SELECT_UNKNOWN_QUEUE.format(list(names), repr(name)))
            return list(dict.fromkeys(self.queue_name(name) for name in names))
        if self.queues:
            return list(self.queues)
        return [self.conf.task_default_queue]
