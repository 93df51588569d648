"""Remote control (`app.control`): broadcast commands to workers and collect their replies.

Celery's pidbox, on the wire as Celery sends it, so `celery inspect ping` reaches fastq workers and
`fastq inspect ping` reaches Celery workers: a command is a kombu envelope published to the fanout exchange
`celery.pidbox` (on Redis: PUBLISH /<db>.celery.pidbox), body `{method, arguments, destination, pattern,
matcher[, ticket, reply_to]}`, headers `{clock, expires}`. Workers answer `{<nodename>: <result>}` with
header `ticket` through the direct exchange `reply.celery.pidbox`, routed to the caller's queue
`<oid>.reply.celery.pidbox`. `celery` there is `control_exchange` (kombu's mailbox namespace): apps that set
it apart only reach each other's workers.
"""

from __future__ import annotations

import itertools
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from fastq import _core
from fastq.serialization import json_default, json_tag_hook

if TYPE_CHECKING:
    from fastq.app import Fastq

__all__ = [
    'Control',
    'Inspect',
    'PIDBOX_EXCHANGE',
    'REPLY_EXCHANGE',
    'decode_envelope',
    'encode_envelope',
    'pidbox_exchange',
    'reply_exchange',
]

PIDBOX_EXCHANGE = 'celery.pidbox'
REPLY_EXCHANGE = 'reply.celery.pidbox'


def pidbox_exchange(conf: Any) -> str:
    """The fanout exchange commands go out on: `<control_exchange>.pidbox` (kombu's `Mailbox.exchange`)."""
    return f'{conf.control_exchange or "celery"}.pidbox'


def reply_exchange(conf: Any) -> str:
    """The direct exchange replies come back through: `reply.<control_exchange>.pidbox`."""
    return f'reply.{pidbox_exchange(conf)}'


_clock = itertools.count(1)
_clock_lock = threading.Lock()


def tick() -> int:
    """This process's Lamport clock (carried in pidbox headers, as Celery does)."""
    with _clock_lock:
        return next(_clock)


def encode_envelope(body: Any, headers: dict[str, Any], exchange: str, routing_key: str, delivery_mode: int) -> bytes:
    """A kombu envelope with a JSON body: `body` encoded, or bytes taken as its JSON already."""
    payload = body if isinstance(body, bytes) else _core.json_dumps(body, json_default)
    message = _core.Message(payload, 'application/json', 'utf-8', headers, {})
    return message.to_envelope(exchange, routing_key, 0, delivery_mode, None, str(uuid.uuid4()))


def decode_envelope(raw: bytes) -> tuple[dict[str, Any], Any]:
    """(headers, body) of a pidbox envelope; ValueError if it is not one."""
    message = _core.Message.from_envelope(raw, None)
    return message.headers, _core.json_loads(message.body, json_tag_hook)


class Control:
    """`app.control`: broadcast, ping, revoke, shutdown, inspect."""

    def __init__(self, app: Fastq) -> None:
        from fastq.exceptions import ImproperlyConfigured

        if app.conf.control_queue_durable and app.conf.control_queue_exclusive:
            raise ImproperlyConfigured(
                'control_queue_durable and control_queue_exclusive cannot both be True '
                '(exclusive queues are automatically deleted and cannot be durable).'
            )
        self.app = app

    def broadcast(
        self,
        command: str,
        arguments: dict[str, Any] | None = None,
        destination: Sequence[str] | None = None,
        connection: Any = None,
        reply: bool = False,
        timeout: float | None = 1.0,
        limit: int | None = None,
        callback: Callable[[dict[str, Any]], Any] | None = None,
        channel: Any = None,
        pattern: str | None = None,
        matcher: str | None = None,
        **extra: Any,
    ) -> list[dict[str, Any]] | None:
        """Send `command` to every worker (or `destination`); with `reply`, return the replies received
        within `timeout` seconds (or once `limit` replies came)."""
        if destination is not None and not isinstance(destination, list | tuple):
            raise ValueError(f'destination must be a list/tuple not {type(destination)}')
        if limit is None and destination:
            limit = len(destination)  # as Celery: every addressed node answered, no need to wait out the timeout
        broker = self.app.broker
        if not broker.features.fanout:
            from fastq.exceptions import ImproperlyConfigured

            raise ImproperlyConfigured(
                f'{broker.describe()} has no fanout: remote control (inspect, control, revoke) cannot reach '
                'workers on it, as with Celery on SQS'
            )
        broker.connect()
        body: dict[str, Any] = {
            'method': command,
            'arguments': dict(arguments or {}, **extra),
            'destination': list(destination) if destination else None,
            'pattern': pattern,
            'matcher': matcher,
        }
        oid = self.app.thread_oid
        exchange, replies_exchange = pidbox_exchange(self.app.conf), reply_exchange(self.app.conf)
        reply_queue = f'{oid}.{replies_exchange}'
        ticket = None
        if reply:
            ticket = str(uuid.uuid4())
            body['ticket'] = ticket
            body['reply_to'] = {'exchange': replies_exchange, 'routing_key': oid}
            broker.bind(replies_exchange, oid, reply_queue)
        if timeout is None:  # (as Celery's: `GroupResult.revoke()` passes None)
            timeout = 1.0
        headers = {'clock': tick(), 'expires': time.time() + timeout}
        broker.fanout_publish(exchange, encode_envelope(body, headers, exchange, '', 2))
        if not reply:
            return None
        try:
            return self._collect(reply_queue, ticket, timeout, limit, callback)
        finally:
            unbind = getattr(broker, 'unbind', None)
            if unbind is not None:
                unbind(replies_exchange, oid, reply_queue)

    def _collect(
        self,
        queue: str,
        ticket: str | None,
        timeout: float,
        limit: int | None,
        callback: Callable[[dict[str, Any]], Any] | None,
    ) -> list[dict[str, Any]]:
        broker = self.app.broker
        replies: list[dict[str, Any]] = []
        deadline = time.monotonic() + timeout
        while limit is None or len(replies) < limit:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            for raw in broker.pop(queue, remaining):
                try:
                    headers, body = decode_envelope(raw)
                except ValueError:
                    continue
                if headers.get('ticket') != ticket or not isinstance(body, dict):
                    continue
                replies.append(body)
                if callback is not None:
                    callback(body)
        return replies

    def ping(self, destination: Sequence[str] | None = None, timeout: float = 1.0, **kwargs: Any) -> list[Any]:
        return self.broadcast('ping', reply=True, destination=destination, timeout=timeout, **kwargs) or []

    def revoke(
        self,
        task_id: str | Sequence[str],
        destination: Sequence[str] | None = None,
        terminate: bool = False,
        signal: str = 'SIGTERM',
        **kwargs: Any,
    ) -> list[dict[str, Any]] | None:
        """Tell workers not to run `task_id` (and, with `terminate`, to kill it if it is running).

        Beyond Celery: the ids are also kept in the broker for `worker_revoke_expires` seconds, so a worker
        that is offline now, or restarts, still discards the task when it arrives.
        """
        ids = [task_id] if isinstance(task_id, str) else list(task_id)
        self.app.broker.revoke(ids, float(self.app.conf.worker_revoke_expires))
        return self.broadcast(
            'revoke',
            destination=destination,
            arguments={'task_id': task_id, 'terminate': terminate, 'signal': signal},
            **kwargs,
        )

    def revoke_by_stamped_headers(
        self,
        headers: dict[str, Any] | Sequence[str],
        destination: Sequence[str] | None = None,
        terminate: bool = False,
        signal: str = 'SIGTERM',
        **kwargs: Any,
    ) -> list[dict[str, Any]] | None:
        """Tell workers not to run tasks stamped with these values (`{'mtask_id': [id1, id2]}`; see
        `Signature.stamp`), and with `terminate` to kill the running ones. Held in each worker's memory, as
        Celery's (a worker that starts later does not know of them)."""
        return self.broadcast(
            'revoke_by_stamped_headers',
            destination=destination,
            arguments={'headers': headers, 'terminate': terminate, 'signal': signal},
            **kwargs,
        )

    def terminate(
        self, task_id: str, destination: Sequence[str] | None = None, signal: str = 'SIGTERM', **kwargs: Any
    ) -> Any:
        return self.revoke(task_id, destination=destination, terminate=True, signal=signal, **kwargs)

    def rate_limit(
        self,
        task_name: str,
        rate_limit: str | int | float | None,
        destination: Sequence[str] | None = None,
        **kwargs: Any,
    ) -> list[dict[str, Any]] | None:
        """Change a task's per-worker rate limit on running workers (`'10/m'`; 0 or None removes it)."""
        return self.broadcast(
            'rate_limit',
            destination=destination,
            arguments={'task_name': task_name, 'rate_limit': rate_limit},
            **kwargs,
        )

    def time_limit(
        self,
        task_name: str,
        soft: float | None = None,
        hard: float | None = None,
        destination: Sequence[str] | None = None,
        **kwargs: Any,
    ) -> list[dict[str, Any]] | None:
        """Change a task's soft and hard time limits on running workers (for runs that start later)."""
        return self.broadcast(
            'time_limit', destination=destination, arguments={'task_name': task_name, 'soft': soft, 'hard': hard},
            **kwargs,
        )  # fmt: skip

    def add_consumer(
        self,
        queue: str,
        exchange: str | None = None,
        exchange_type: str = 'direct',
        routing_key: str | None = None,
        options: dict[str, Any] | None = None,
        destination: Sequence[str] | None = None,
        **kwargs: Any,
    ) -> list[dict[str, Any]] | None:
        """Tell workers to start consuming from `queue`."""
        arguments = {'queue': queue, 'exchange': exchange, 'exchange_type': exchange_type, 'routing_key': routing_key}
        return self.broadcast('add_consumer', destination=destination, arguments={**arguments, **(options or {})},
                              **kwargs)  # fmt: skip

    def cancel_consumer(
        self, queue: str, destination: Sequence[str] | None = None, **kwargs: Any
    ) -> list[dict[str, Any]] | None:
        """Tell workers to stop consuming from `queue`."""
        return self.broadcast('cancel_consumer', destination=destination, arguments={'queue': queue}, **kwargs)

    def pool_grow(self, n: int = 1, destination: Sequence[str] | None = None, **kwargs: Any) -> Any:
        return self.broadcast('pool_grow', destination=destination, arguments={'n': n}, **kwargs)

    def pool_shrink(self, n: int = 1, destination: Sequence[str] | None = None, **kwargs: Any) -> Any:
        return self.broadcast('pool_shrink', destination=destination, arguments={'n': n}, **kwargs)

    def pool_restart(
        self, modules: Sequence[str] | None = None, reload: bool = False, destination: Sequence[str] | None = None,
        **kwargs: Any,
    ) -> Any:  # fmt: skip
        return self.broadcast('pool_restart', destination=destination,
                              arguments={'modules': list(modules or ()), 'reload': reload}, **kwargs)  # fmt: skip

    def autoscale(self, max: int, min: int, destination: Sequence[str] | None = None, **kwargs: Any) -> Any:
        return self.broadcast('autoscale', destination=destination, arguments={'max': max, 'min': min}, **kwargs)

    def heartbeat(self, destination: Sequence[str] | None = None, **kwargs: Any) -> list[dict[str, Any]] | None:
        return self.broadcast('heartbeat', destination=destination, **kwargs)

    def enable_events(self, destination: Sequence[str] | None = None, **kwargs: Any) -> list[dict[str, Any]] | None:
        return self.broadcast('enable_events', destination=destination, **kwargs)

    def disable_events(self, destination: Sequence[str] | None = None, **kwargs: Any) -> list[dict[str, Any]] | None:
        return self.broadcast('disable_events', destination=destination, **kwargs)

    def known_queues(self) -> list[str]:
        """The app's known task queues, sorted: those the broker has seen plus those a worker would consume
        by default (configured or default queues may not exist on the broker yet). The caller connects."""
        return sorted(set(self.app.broker.known_queues()) | set(self.app.router.worker_queues(None)))

    def purge(self, connection: Any = None) -> int:
        """Erase every waiting message from the app's task queues (`task_queues`, else the default queue), as
        Celery's does: not the other queues the broker knows, which may be other apps' or other workers'; the
        number erased."""
        broker = self.app.broker
        broker.connect()
        return sum(broker.purge(queue) for queue in self.app.router.worker_queues(None))

    discard_all = purge  # Celery's older name, which its FAQ still shows

    def shutdown(self, destination: Sequence[str] | None = None, **kwargs: Any) -> list[dict[str, Any]] | None:
        """Warm shutdown of workers."""
        return self.broadcast('shutdown', destination=destination, **kwargs)

    def inspect(
        self,
        destination: Sequence[str] | None = None,
        timeout: float = 1.0,
        callback: Callable[[dict[str, Any]], Any] | None = None,
        limit: int | None = None,
        pattern: str | None = None,
        matcher: str | None = None,
    ) -> Inspect:
        return Inspect(self, destination, timeout, callback, limit, pattern, matcher)


class Inspect:
    """`app.control.inspect()`: inspect commands; each returns `{nodename: reply}` or None if none replied."""

    def __init__(
        self,
        control: Control,
        destination: Sequence[str] | None,
        timeout: float,
        callback: Callable[[dict[str, Any]], Any] | None,
        limit: int | None,
        pattern: str | None,
        matcher: str | None,
    ) -> None:
        self.control = control
        self.destination = destination
        self.timeout = timeout
        self.callback = callback
        self.limit = limit
        self.pattern = pattern
        self.matcher = matcher

    def _request(self, command: str, **arguments: Any) -> dict[str, Any] | None:
        replies = self.control.broadcast(
            command,
            arguments=arguments,
            destination=self.destination,
            reply=True,
            timeout=self.timeout,
            limit=self.limit,
            callback=self.callback,
            pattern=self.pattern,
            matcher=self.matcher,
        )
        merged: dict[str, Any] = {}
        dupes: set[str] = set()
        for reply in replies or ():
            dupes.update(name for name in reply if name in merged)
            merged.update(reply)
        if dupes:  # (one of them would be hidden: Celery's warning)
            import warnings

            from fastq.exceptions import DuplicateNodenameWarning

            names = 'name' if len(dupes) == 1 else 'names'
            warnings.warn(
                DuplicateNodenameWarning(
                    f'Received multiple replies from node {names}: {", ".join(sorted(dupes))}.\n'
                    'Please make sure you give each node a unique nodename using\nthe celery worker `-n` option.'
                ),
                stacklevel=3,
            )
        return merged or None

    def ping(self, destination: Sequence[str] | None = None) -> dict[str, Any] | None:
        """`inspect().ping(destination=[...])`, as Celery's documents it; as Celery's, a destination given here
        becomes this Inspect's, for the calls after it too."""
        if destination:
            self.destination = destination
        return self._request('ping')

    def clock(self) -> dict[str, Any] | None:
        return self._request('clock')

    def active(self, safe: bool | None = None) -> dict[str, Any] | None:
        return self._request('active', safe=safe)

    def reserved(self, safe: bool | None = None) -> dict[str, Any] | None:
        return self._request('reserved')

    def scheduled(self, safe: bool | None = None) -> dict[str, Any] | None:
        return self._request('scheduled')

    def revoked(self) -> dict[str, Any] | None:
        return self._request('revoked')

    def hello(self, from_node: str, revoked: Any = None) -> dict[str, Any] | None:
        """What workers answer a node starting up (Celery's mingle): their clock and revoked ids."""
        return self._request('hello', from_node=from_node, revoked=revoked)

    def registered(self, *taskinfoitems: str) -> dict[str, Any] | None:
        return self._request('registered', taskinfoitems=list(taskinfoitems) or None)

    registered_tasks = registered

    def stats(self) -> dict[str, Any] | None:
        return self._request('stats')

    def active_queues(self) -> dict[str, Any] | None:
        return self._request('active_queues')

    def conf(self, with_defaults: bool = False) -> dict[str, Any] | None:
        return self._request('conf', with_defaults=with_defaults)

    def query_task(self, *ids: str) -> dict[str, Any] | None:
        # Celery accepts query_task('a', 'b') and query_task(['a', 'b'])
        flat = [i for item in ids for i in ([item] if isinstance(item, str) else item)]
        return self._request('query_task', ids=flat)

    def report(self) -> dict[str, Any] | None:
        return self._request('report')

    def memsample(self) -> dict[str, Any] | None:
        """Each worker's resident memory now (kept for `memdump`)."""
        return self._request('memsample')

    def memdump(self, samples: int = 10) -> dict[str, Any] | None:
        """The samples `memsample` took, and the resident memory after a garbage collection."""
        return self._request('memdump', samples=samples)

    def objgraph(self, type: str = 'Request', n: int = 200, max_depth: int = 10) -> dict[str, Any] | None:
        """A graph of the objects of `type` alive in the worker (needs the objgraph package there)."""
        return self._request('objgraph', num=n, max_depth=max_depth, type=type)
