"""Exchanges, queues and routes, under the names Celery users import from kombu and configure in settings.

`task_routes` accepts what Celery's does: a dict (exact names, glob patterns like `'feed.*'`, compiled
regexes), a router function `(name, args, kwargs, options, task=None, **kw) -> dict | str | None`, a dotted
path to one, or a list of these (the first that answers wins). A route is `{'queue': ...}` (plus optional
routing_key/exchange/priority) or a queue name string.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from fastq.exceptions import QueueNotFound
from fastq.utils.imports import symbol_by_name

if TYPE_CHECKING:
    from fastq.config import Settings

__all__ = ['Exchange', 'Queue', 'Router']


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
    exchange: Exchange | str | None = None
    routing_key: str | None = None
    durable: bool = True
    exclusive: bool = False
    auto_delete: bool = False
    queue_arguments: dict[str, Any] | None = None
    max_priority: int | None = None
    consumer_arguments: dict[str, Any] | None = None
    no_ack: bool = False
    bindings: Sequence[Any] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        if isinstance(self.exchange, str):
            self.exchange = Exchange(self.exchange)
        if self.exchange is None:
            self.exchange = Exchange(self.name)
        if self.routing_key is None:
            self.routing_key = self.name

    def __hash__(self) -> int:
        return hash(self.name)


RouterFn = Callable[..., Any]


def _map_router(routes: Mapping[Any, Any]) -> RouterFn:
    exact: dict[str, Any] = {}
    patterns: list[tuple[re.Pattern[str], Any]] = []
    for key, route in routes.items():
        if isinstance(key, re.Pattern):
            patterns.append((key, route))
        elif isinstance(key, str) and any(c in key for c in '*?['):
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
    """A `task_routes` dict as a router: its answer depends on the task name alone."""

    def __init__(self, routes: Mapping[Any, Any]) -> None:
        self.lookup = _map_router(routes)

    def __call__(self, name: str, *args: Any, **kwargs: Any) -> Any:
        return self.lookup(name)


def prepare_routers(routes: Any) -> list[RouterFn]:
    if routes is None:
        return []
    if not isinstance(routes, list | tuple):
        routes = [routes]
    out: list[RouterFn] = []
    for item in routes:
        if isinstance(item, str):
            item = symbol_by_name(item)
        if isinstance(item, Mapping):
            out.append(_MapRouter(item))
        elif callable(item):
            fn: RouterFn = item
            out.append(fn)
        else:
            raise TypeError(f'task_routes: a route must be a dict, a function or a dotted path, got {item!r}')
    return out


class Router:
    """Decides the queue of a message: explicit `queue=` > the task's `queue` > task_routes > default queue."""

    def __init__(self, conf: Settings) -> None:
        self.conf = conf
        self.routers = prepare_routers(conf.task_routes)
        self.queues = self._configured_queues(conf.task_queues)
        self.create_missing = bool(conf.task_create_missing_queues)
        #: Whether a route depends on the task name alone (no router function that sees the arguments), so
        #: a route once resolved can be reused (see `sending.plan_for`).
        self.static = all(isinstance(router, _MapRouter) for router in self.routers)

    @staticmethod
    def _configured_queues(queues: Any) -> dict[str, Queue]:
        if not queues:
            return {}
        if isinstance(queues, Mapping):
            out = {}
            for name, spec in queues.items():
                out[name] = spec if isinstance(spec, Queue) else Queue(name, **dict(spec or {}))
            return out
        return {q.name: q for q in queues}

    def _lookup(self, route: Any, name: str, args: Any, kwargs: Any, options: Mapping[str, Any], task: Any) -> Any:
        for router in self.routers:
            try:
                answer = router(name, args, kwargs, options, task=task)
            except TypeError:
                answer = router(name, args, kwargs, options)
            if answer:
                return answer
        return route

    def route(
        self, options: Mapping[str, Any], name: str, args: Any = (), kwargs: Any = None, task: Any = None
    ) -> dict[str, Any]:
        """`options` with `queue` resolved to a name and routing_key/exchange filled in."""
        out = dict(options)
        queue = out.get('queue')
        if queue is None:
            answer = self._lookup(None, name, args, kwargs or {}, options, task)
            if isinstance(answer, str):
                answer = {'queue': answer}
            if answer:
                for key, value in dict(answer).items():
                    out.setdefault(key, value)
                queue = out.get('queue')
        if queue is None:
            queue = self.conf.task_default_queue
        if isinstance(queue, Queue):
            qobj = queue
        else:
            qobj = self.queues.get(queue) or Queue(queue)
            if queue not in self.queues and self.queues and not self.create_missing:
                raise QueueNotFound(f'Queue {queue!r} missing from task_queues')
        out['queue'] = qobj.name
        out.setdefault('routing_key', qobj.routing_key)
        exchange = qobj.exchange
        out.setdefault('exchange', exchange.name if isinstance(exchange, Exchange) else exchange)
        return out

    def worker_queues(self, names: Sequence[str] | None) -> list[str]:
        """The queues a worker consumes: `-Q` names, else every configured queue, else the default one."""
        if names:
            return list(dict.fromkeys(names))
        if self.queues:
            return list(self.queues)
        return [self.conf.task_default_queue]
