"""Redis broker in kombu's key layout: Celery clients and workers share queues and unacked work with fastq.

URLs: `redis://[[user]:password@]host[:port][/db]`, `rediss://` (TLS, `broker_use_ssl`),
`redis+socket:///path.sock`, `sentinel://host:port[;sentinel://...]` with transport option `master_name`.

Transport options (`broker_transport_options`), kombu's names and defaults:
    visibility_timeout      3600   seconds before an unacked reservation is restored to its queue
    priority_steps          [0, 3, 6, 9]; sep '\\x06\\x16'
    queue_order_strategy    round_robin | sorted | priority
    global_keyprefix        ''     prepended to every key and channel
    deadletter_queue        None   where a message to an exchange with no matching binding goes (else dropped)
    fanout_prefix           True   channels '/<db>.<exchange>'; fanout_patterns True adds '/<routing_key>'
    socket_timeout, socket_connect_timeout, socket_keepalive, health_check_interval, max_connections

Features: priorities (Redis semantics, kombu's: lower number served first, 10 levels in 4 steps), delayed
messages (parked in `unacked_index` at eta - visibility_timeout, which any kombu or fastq sweep restores on
time; indexed per parking node, for its `inspect scheduled`), leases (live workers rescore their
reservations, so long tasks are never handed out twice), delivery counts (a header fastq adds on restore),
fanout over PUB/SUB, dead letters (fastq's own keys), claims and named leases for beat (SET NX PX, and a
script that extends a lease only for its holder).

Exchanges, as kombu's virtual ones: a message sent to one goes to the queues bound to it (`_kombu.binding.*`),
matched by the exchange's type from the settings (`task_queues`, task_default_exchange_type): direct by key,
topic by the pattern kombu stores with each topic binding, fanout to all. A message sent to a fanout exchange
(a `Broadcast` queue's) is pushed to each bound queue's list, a copy with a delivery tag of its own, and a
consumer deletes its auto-delete broadcast queues when it closes (kombu sends these over PUB/SUB instead, so
a Celery worker on Redis does not see them: kombu's own client does not reach it either).

Not shared with kombu: the restore sweep runs in every fastq worker about once a second (kombu's runs every
~100 s), and restores each message with one atomic script, so concurrent sweepers never duplicate one.
"""

from __future__ import annotations

import logging
import re
import threading
import time
import uuid
import warnings
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from fastq import _core
from fastq.brokers.base import (
    Broker,
    BrokerFeatures,
    Consumer,
    DeadLetterStore,
    Outgoing,
    PublishStream,
    Subscription,
    Tag,
)
from fastq.brokers.redis.connection import CONNECTION_ERRORS, Commands, client_for, database_of, pack
from fastq.brokers.redis.deadletters import RedisDeadLetters
from fastq.brokers.redis.layout import DEFAULT_PRIORITY_STEPS, DEFAULT_SEP, DELIVERIES_HEADER, Layout
from fastq.brokers.redis.scripts import Scripts
from fastq.exceptions import BrokerConnectionError, ImproperlyConfigured, OperationalError, UndeliverableWarning
from fastq.routing import Queue, Router, as_exchange, default_queue, direct_queue, exchange_types, topic_pattern
from fastq.utils.aioredis import AsyncRedis, params_of
from fastq.utils.loops import LoopLocal

if TYPE_CHECKING:
    import redis

    from fastq.config import Settings
    from fastq.utils.rediswire import Link

__all__ = ['RedisBroker']

#: kombu's words (kombu/transport/virtual/base.py) for a message no queue is bound to take.
UNDELIVERABLE_FMT = (
    'Message could not be delivered: No queues bound to exchange {exchange!r} using binding key {routing_key!r}.\n'
)

logger = logging.getLogger('fastq.brokers.redis')

DEFAULT_VISIBILITY_TIMEOUT = 3600.0
RESTORE_BATCH = 200
LPUSH_CHUNK = 1000  # values per LPUSH when publishing a batch (keeps each command a few hundred kB)
MAX_RENEW_INTERVAL = 60.0  # renew at least this often: a Celery worker with a short visibility timeout wins


class RedisBroker(Broker):
    scheme = 'redis'
    # ETA messages are published to their queue, as Celery does (a Celery worker would otherwise not see
    # them on time); fastq workers park them on receipt (`defer`).
    features = BrokerFeatures(
        priorities=True,
        higher_priority_first=False,
        delayed=True,
        delayed_publish=False,
        leases=True,
        delivery_count=True,
        fanout=True,
        shared=True,
    )

    def __init__(self, url: str, conf: Settings) -> None:
        super().__init__(url, conf)
        options = self.transport_options
        self.visibility_timeout = float(options.get('visibility_timeout', DEFAULT_VISIBILITY_TIMEOUT))
        self.queue_order_strategy = options.get('queue_order_strategy', 'round_robin')
        if self.queue_order_strategy not in ('round_robin', 'sorted', 'priority'):
            raise ImproperlyConfigured(
                'broker_transport_options: queue_order_strategy must be round_robin, sorted or priority, '
                f'got {self.queue_order_strategy!r}'
            )
        fanout_prefix = options.get('fanout_prefix', True)
        self.layout = Layout(
            prefix=options.get('global_keyprefix', '') or '',
            sep=options.get('sep', DEFAULT_SEP),
            priority_steps=tuple(options.get('priority_steps', DEFAULT_PRIORITY_STEPS)),
            db=database_of(url),
            fanout_prefix=fanout_prefix if isinstance(fanout_prefix, str) else ('/{db}.' if fanout_prefix else ''),
            fanout_patterns=bool(options.get('fanout_patterns', True)),
        )
        self.client: redis.Redis = client_for(url, conf, options)
        self.commands = Commands(self.client)
        self._async_clients: LoopLocal[AsyncRedis | None] = LoopLocal(self._new_async_client, _close_async_client)
        self._queue_keys: dict[tuple[str, int], str] = {}
        self.scripts = Scripts(self.client)
        self._dead = RedisDeadLetters(self.client, self.layout)
        self._declared: set[str] = set()
        self._configured: dict[str, Queue] | None = None  # task_queues, for their bindings (`_declare_commands`)
        self._types: dict[str, str] | None = None  # their exchanges' types (`exchange_type`)
        self._lock = threading.Lock()

    def _new_async_client(self) -> AsyncRedis | None:
        params = params_of(self.client.connection_pool)
        return None if params is None else AsyncRedis(params)

    @property
    def lease_renew_interval(self) -> float:
        return min(self.visibility_timeout / 4, MAX_RENEW_INTERVAL)

    def new_client(self, single_connection: bool = False) -> redis.Redis:
        """A client with a pool of its own (blocking waits must not hold connections others need)."""
        client = client_for(self.url, self.conf, self.transport_options)
        if single_connection:
            client = client.client()  # type: ignore[no-untyped-call]  # one pinned connection: a stable CLIENT ID
        return client

    def connect(self) -> None:
        try:
            self.client.ping()
        except Exception as exc:
            raise BrokerConnectionError(f'{self.describe()}: {exc}') from exc

    # --- publishing ---------------------------------------------------------------------------------------

    def publish(self, batch: Sequence[Outgoing]) -> None:
        """LPUSH every message to its list, in one round trip (with the first use of a queue's bindings).

        Messages for the same list go in one LPUSH of many values (in order, so they are served in order);
        several such commands are wrapped in MULTI/EXEC, so a batch is stored whole or not at all.
        """
        if not batch:
            return
        if len(batch) == 1 and not batch[0].exchange and batch[0].queue in self._declared:
            out = batch[0]  # the common case (one delay()), without the batch's bookkeeping
            try:
                self.commands.execute([('LPUSH', self._queue_key(out.routing_key, out.priority), out.to_envelope())])
            except CONNECTION_ERRORS as exc:
                raise BrokerConnectionError(f'{self.describe()}: {exc}') from exc
            return
        commands, undeclared = self._publish_commands(batch)
        if not commands:  # (only messages for a fanout exchange without queues: nobody to deliver to)
            return
        try:
            replies = self.commands.execute(commands)
        except CONNECTION_ERRORS as exc:
            raise BrokerConnectionError(f'{self.describe()}: {exc}') from exc
        self._published(commands, replies, undeclared)

    async def apublish(self, batch: Sequence[Outgoing]) -> None:
        """As `publish`, on this event loop's redis.asyncio connections (Sentinel: in the default executor)."""
        if not batch:
            return
        client = await self._async_clients.get()
        if client is None:
            await super().apublish(batch)
            return
        commands, undeclared = self._publish_commands(batch)
        if not commands:
            return
        try:
            replies = await client.execute(commands)
        except CONNECTION_ERRORS as exc:
            raise BrokerConnectionError(f'{self.describe()}: {exc}') from exc
        self._published(commands, replies, undeclared)

    def publish_stream(self) -> PublishStream:
        return _Stream(self)

    def _publish_commands(
        self, batch: Sequence[Outgoing], transaction: bool = True
    ) -> tuple[list[tuple[Any, ...]], list[str]]:
        """The commands that publish `batch`, and the queues they declare (see `publish`); wrapped in
        MULTI/EXEC when there are several, unless `transaction` is False (the caller wraps them)."""
        pushes: dict[str, list[bytes]] = {}
        keys = self._queue_keys
        for out in batch:
            payload = out.envelope if out.envelope is not None else out.to_envelope()
            targets: Sequence[tuple[str, bytes]]
            if not out.exchange:  # the default exchange: its routing key names the queue (most messages)
                key = keys.get((out.routing_key, out.priority)) or self._queue_key(out.routing_key, out.priority)
                targets = ((key, payload),)
            elif self.exchange_type(out.exchange) == 'fanout':
                targets = [
                    (self._queue_key(queue, out.priority), _fanout_copy(payload, queue)) for queue in self._route(out)
                ]
            else:
                targets = [(self._queue_key(queue, out.priority), payload) for queue in self._route(out)]
            for key, value in targets:
                values = pushes.get(key)
                if values is None:
                    pushes[key] = [value]
                else:
                    values.append(value)
        undeclared = sorted({out.queue for out in batch if not out.exchange and out.queue not in self._declared})
        return self._push_commands(pushes, undeclared, transaction), undeclared

    def _push_commands(
        self, pushes: dict[str, list[bytes]], undeclared: list[str], transaction: bool = True
    ) -> list[tuple[Any, ...]]:
        """LPUSHes of `pushes` (values by list key, a few hundred kB a command), in MULTI/EXEC when there are
        several (unless `transaction` is False), after declaring the `undeclared` queues."""
        commands: list[tuple[Any, ...]] = []
        for key, values in pushes.items():
            for start in range(0, len(values), LPUSH_CHUNK):
                commands.append(('LPUSH', key, *values[start : start + LPUSH_CHUNK]))
        if len(commands) > 1 and transaction:
            commands = [('MULTI',), *commands, ('EXEC',)]
        # As Celery's producers declare a queue before first use; in the same round trip.
        return [*self._declare_commands(undeclared), *commands]

    def _published(self, commands: list[tuple[Any, ...]], replies: list[Any], undeclared: list[str]) -> None:
        if commands[-1][0] == 'EXEC':
            failed = [r for r in replies[-1] or () if isinstance(r, Exception)]
            if replies[-1] is None or failed:
                raise OperationalError(f'{self.describe()}: publishing failed: {failed or "transaction aborted"}')
        self._declared.update(undeclared)

    def _queue_key(self, queue: str, priority: int) -> str:
        keys = self._queue_keys
        key = keys.get((queue, priority))
        if key is None:
            key = keys[queue, priority] = self.layout.queue_key(queue, priority)
        return key

    def _route(self, out: Outgoing) -> list[str]:
        """Queues for a message: its queue for the default exchange, else the exchange's bindings (kombu); a
        fanout exchange without bindings has nobody listening (kombu's PUB/SUB).

        With no binding matching, as kombu's `_lookup`: the queue it was routed to is declared first (Celery's
        producer declares it before publishing), so a `task_queues` entry bound to this exchange gets it;
        failing that, it goes to the `deadletter_queue` transport option with an UndeliverableWarning, and
        without one it is dropped, as a Celery client's message is (not put in the routed queue, where a
        worker would run a task the sender's exchange and key said no queue takes).
        """
        if not out.exchange:
            return [out.routing_key or out.queue]
        queues = self.lookup(out.exchange, out.routing_key)
        if queues or self.exchange_type(out.exchange) == 'fanout':
            return queues
        if out.queue and out.queue not in self._declared:
            self.declare([out.queue])
            queues = self.lookup(out.exchange, out.routing_key)
            if queues:
                return queues
        deadletter = self.transport_options.get('deadletter_queue')
        if not deadletter:
            return []
        text = UNDELIVERABLE_FMT.format(exchange=out.exchange, routing_key=out.routing_key)
        warnings.warn(UndeliverableWarning(text), stacklevel=2)
        return [deadletter]

    def exchange_type(self, exchange: str) -> str | None:
        """The type of `exchange` as the settings declare it (`task_queues`, task_default_exchange_type), None
        for one they do not mention (kombu's Redis transport knows only what its process declared, too)."""
        types = self._types
        if types is None:
            types = self._types = exchange_types(self._configured_queues(), self.conf)
        return types.get(exchange)

    def _configured_queues(self) -> dict[str, Queue]:
        configured = self._configured
        if configured is None:
            configured = self._configured = Router._configured_queues(self.conf.task_queues, self.conf)
        return configured

    def lookup(self, exchange: str, routing_key: str) -> list[str]:
        """The queues bound to `exchange` that a message with `routing_key` goes to, as kombu's virtual
        exchanges match: fanout all of them, topic by the binding's pattern (kombu stores one with each
        topic binding), direct by equal keys. Of an exchange the settings do not mention: a binding with a
        pattern is a topic one, and one without is matched as a direct key or an AMQP topic pattern."""
        if not exchange:
            return [routing_key]
        kind = self.exchange_type(exchange)
        members = self.client.smembers(self.layout.binding_key(exchange))
        queues: list[str] = []
        for member in members:
            rk, pattern, queue = self.layout.parse_binding(_text(member))
            if kind == 'fanout':
                matched = True
            elif kind == 'topic' or (kind is None and pattern):
                matched = _pattern(pattern or topic_pattern(rk)).match(routing_key) is not None
            elif kind is None:
                matched = rk == routing_key or _topic_match(rk, routing_key)
            else:
                matched = rk == routing_key
            if matched and queue and queue not in queues:
                queues.append(queue)
        return sorted(queues)

    def declare(self, queues: Sequence[str]) -> None:
        """Bind queues to the direct exchange of the same name, as Celery declares them."""
        new = [q for q in queues if q not in self._declared]
        if not new:
            return
        try:
            self.commands.execute(self._declare_commands(new))
        except CONNECTION_ERRORS as exc:
            raise BrokerConnectionError(f'{self.describe()}: {exc}') from exc
        self._declared.update(new)

    def _declare_commands(self, queues: Sequence[str]) -> list[tuple[Any, ...]]:
        """Each queue bound to the direct exchange of its name, and where `task_queues` says, to its exchange
        with its routing key and its extra bindings (kombu's `_kombu.binding.<exchange>` sets), so a message
        sent to an exchange reaches the queues bound to it (`lookup`), as with kombu's Redis transport."""
        layout = self.layout
        commands: list[tuple[Any, ...]] = []
        for q in queues:
            for exchange_name, member in self._bindings(q):
                commands.append(('SADD', layout.binding_key(exchange_name), member))
                commands.append(('SADD', f'{layout.prefix}_kombu.binding_permanent.{exchange_name}', member))
        return commands

    def _bindings(self, q: str) -> list[tuple[str, str]]:
        """(exchange, binding set member) of each binding of queue `q`, as kombu writes them: a topic
        exchange's with the pattern its routing key stands for (which kombu matches keys with)."""
        bindings = set()
        configured = self._configured_queues()
        queue = configured.get(q) or direct_queue(q)
        if queue is None and not configured and q == self.conf.task_default_queue:
            queue = default_queue(self.conf)  # (bound to the default exchange too, as a Celery worker binds it)
        if queue is None or not (queue.auto_delete and as_exchange(queue.exchange).type == 'fanout'):
            bindings.add((q, q, ''))  # (not for a broadcast queue: it is only ever reached through its exchange)
        if queue is not None:
            exchange = as_exchange(queue.exchange)
            if exchange.name:
                bindings.add((exchange.name, queue.routing_key or q, exchange.type))
            for extra in queue.bindings or ():
                bound = as_exchange(getattr(extra, 'exchange', ''))
                if bound.name:
                    bindings.add((bound.name, getattr(extra, 'routing_key', None) or '', bound.type))
        layout = self.layout
        return [
            (name, layout.binding_member(rk, q, topic_pattern(rk) if kind == 'topic' else ''))
            for name, rk, kind in sorted(bindings)
        ]

    def delete_auto_queues(self, queues: Sequence[str]) -> None:
        """Delete the auto-delete queues of fanout exchanges (`Broadcast` queues) among `queues`, their
        bindings and messages, as kombu's Redis channel does when it closes: a consumer's own broadcast queue
        must not go on collecting copies once it is gone."""
        configured = self._configured_queues()
        layout = self.layout
        commands: list[tuple[Any, ...]] = []
        for q in queues:
            queue = configured.get(q)
            if queue is None or not queue.auto_delete or as_exchange(queue.exchange).type != 'fanout':
                continue
            for exchange_name, member in self._bindings(q):
                commands.append(('SREM', layout.binding_key(exchange_name), member))
                commands.append(('SREM', f'{layout.prefix}_kombu.binding_permanent.{exchange_name}', member))
            commands.append(('DEL', *layout.step_keys(q)))
            self._declared.discard(q)
        if commands:
            try:
                self.commands.execute(commands)
            except CONNECTION_ERRORS as exc:
                logger.warning('Could not delete the broadcast queue(s) %s: %s', ', '.join(queues), exc)

    def publish_unrouted(self, batch: Sequence[Outgoing]) -> None:
        """Push each message onto its queue's list without declaring anything: `rpc://` replies, whose reply
        queue is the caller's (kombu's Redis transport puts what the default exchange gets on the list named
        by the routing key, declared or not)."""
        try:
            with self.client.pipeline(transaction=False) as pipe:
                for out in batch:
                    pipe.lpush(self._queue_key(out.queue, out.priority), out.to_envelope())
                pipe.execute()
        except CONNECTION_ERRORS as exc:
            raise BrokerConnectionError(f'{self.describe()}: {exc}') from exc

    def _publish_raw(self, queue: str, payload: bytes) -> None:
        try:
            priority = _core.Message.from_envelope(payload, None).properties.get('priority') or 0
        except ValueError:
            priority = 0
        self.client.lpush(self.layout.queue_key(queue, priority), payload)

    # --- consuming ----------------------------------------------------------------------------------------

    def consumer(self, queues: Sequence[str], owner: str) -> Consumer:
        from fastq.brokers.redis.consumer import RedisConsumer

        self.declare(queues)
        return RedisConsumer(self, list(queues), owner)

    def child_lead(self, spec: dict[str, Any]) -> Any:
        """The lead's wait for a pool child the worker lends it to (`RedisConsumer.lead_spec`)."""
        from fastq.brokers.redis.childlead import ChildLead

        return ChildLead(self, spec)

    def restore(self, tags: Sequence[Tag], leftmost: bool, count_delivery: bool) -> int:
        """Put reserved messages back on their queues (RPUSH: served next; LPUSH with `leftmost`: last).

        `count_delivery` marks a delivery that ended without an ack (the envelope's delivery counter and
        kombu's redelivered flags); handing back a message that never started does not count.
        """
        layout = self.layout
        restored = 0
        for tag in tags:
            raw = self.client.hget(layout.unacked, tag)
            if raw is None:
                self.client.zrem(layout.unacked_index, tag)
                continue
            target, payload = self._restored_payload(raw, count_delivery)
            keys = [layout.unacked, layout.unacked_index] + ([target] if target else [])
            restored += self.scripts.move(keys=keys, args=[str(tag), payload, 'L' if leftmost else 'R'])
        return restored

    def unhold(self, hold: str, count_delivery: bool) -> int:
        """Put a hold's messages back on the queue key it was filled from (see holding.py), served next, in
        the order they were taken; `count_delivery` as for `restore`. The number pushed back."""
        source = self.layout.hold_source(hold)
        if source is None:  # not a name holding.py made: nowhere to put it back, so left where it is
            self.client.zrem(self.layout.holds, hold)
            return 0
        for _ in range(5):
            raw = self.client.lrange(hold, 0, -1)  # newest first: pushed in this order, the oldest ends rightmost
            payloads = [_recounted(m) if count_delivery else m for m in raw]
            pushed = self.scripts.unhold(keys=[hold, self.layout.holds, source], args=[len(raw), *payloads])
            if pushed >= 0:
                return pushed
        return 0  # still changing: the next sweep tries again

    def _restored_payload(self, raw: bytes | str, count_delivery: bool) -> tuple[str | None, bytes | str]:
        """(destination list, envelope) for an unacked record, flags set as kombu's restore sets them."""
        try:
            record = _core.json_loads(raw, None)
            envelope, exchange, routing_key = record
        except (ValueError, TypeError):
            return None, raw  # not even kombu's record format: dropped from unacked, logged by the caller
        if isinstance(envelope, str):  # a malformed message fastq wrapped (see fetch.lua): push it back as is
            return self.layout.queue_key(routing_key or 'celery'), envelope.encode('utf-8', 'surrogateescape')
        if not isinstance(envelope, dict):
            return None, raw
        props = envelope.get('properties')
        if count_delivery:
            _count_delivery(envelope)
        priority = props.get('priority', 0) if isinstance(props, dict) else 0
        if exchange and self.exchange_type(exchange) == 'fanout':
            queues = [routing_key]  # a copy for one broadcast queue, which its routing key names (`_fanout_copy`)
        else:
            queues = self.lookup(exchange or '', routing_key or '') or [routing_key or 'celery']
        return self.layout.queue_key(queues[0], priority if isinstance(priority, int) else 0), _core.json_dumps(
            envelope, None
        )

    def park(self, tag: str, eta: float, node: str | None = None) -> bool:
        """Keep a reserved message in `unacked` until `eta` (see park.lua); False if no longer reserved.

        The record's delivery counter is lowered by one first: the restore that brings it back at its ETA
        counts a delivery, and waiting for an ETA is not a failed one. With `node`, the tag also goes into
        that node's index (`parked`), in the same script: no round trip of its own.
        """
        layout = self.layout
        raw = self.client.hget(layout.unacked, tag)
        if raw is None:
            return False
        record: Any = raw
        try:
            envelope, exchange, routing_key = _core.json_loads(raw, None)
            headers = envelope['headers']
            earlier = headers.get(DELIVERIES_HEADER)
            headers[DELIVERIES_HEADER] = (earlier if isinstance(earlier, int) else 0) - 1
            record = _core.json_dumps([envelope, exchange, routing_key], None)
        except (ValueError, TypeError, KeyError):
            pass  # parked as it is; at worst its count is one higher
        score = repr(eta - self.visibility_timeout)
        keys, args = [layout.unacked, layout.unacked_index], [tag, score, record]
        if node is not None:
            keys.append(layout.parked(node))
            args += [repr(eta), repr(time.time())]
        return bool(self.scripts.park(keys=keys, args=args))

    def parked(self, node: str, limit: int) -> list[_core.Message]:
        """The messages `node` parked whose ETA is still ahead, earliest first, read from their `unacked`
        records: a record gone (acked, purged, restored) takes its index entry with it."""
        key, now = self.layout.parked(node), repr(time.time())
        with self.client.pipeline(transaction=False) as pipe:
            pipe.zremrangebyscore(key, '-inf', now)
            pipe.zrangebyscore(key, f'({now}', '+inf', start=0, num=limit)
            tags = pipe.execute()[1]
        records: list[Any] = []
        for i in range(0, len(tags), RESTORE_BATCH):
            records += self.client.hmget(self.layout.unacked, tags[i : i + RESTORE_BATCH])
        gone = [tag for tag, raw in zip(tags, records, strict=True) if raw is None]
        if gone:
            self.client.zrem(key, *gone)
        messages = []
        for raw in records:
            if raw is None:
                continue
            try:
                envelope = _core.json_loads(raw, None)[0]
                messages.append(_core.Message.from_envelope(_core.json_dumps(envelope, None), None))
            except (ValueError, TypeError, LookupError):  # not a kombu record: nothing to list
                continue
        return messages

    def maintenance(self) -> None:
        """Restore reservations older than the visibility timeout (dead workers', and their holds) and parked
        ETAs now due."""
        ceiling = time.time() - self.visibility_timeout
        with self.client.pipeline(transaction=False) as pipe:
            pipe.zrangebyscore(self.layout.unacked_index, '-inf', repr(ceiling), start=0, num=RESTORE_BATCH)
            pipe.zrangebyscore(self.layout.holds, '-inf', repr(ceiling), start=0, num=RESTORE_BATCH)
            tags, holds = pipe.execute()
        if tags:
            tags = [_text(t) for t in tags]
            # Parked ETA tasks come back here when due, every countdown: that is routine, so only the others (a
            # dead worker's reservations) are announced at INFO; Celery's worker, which holds ETA tasks in
            # memory, logs nothing when one is due either.
            due = sum(1 for raw in self.client.hmget(self.layout.unacked, tags) if raw is not None and _has_eta(raw))
            count = self.restore(tags, leftmost=False, count_delivery=True)
            if count > due:
                logger.info('Restored %d unacknowledged message(s)', count - due)
            if due and count:
                logger.debug('Restored %d ETA message(s) now due', min(due, count))
        count = sum(self.unhold(_text(hold), count_delivery=True) for hold in holds)
        if count:
            logger.info('Restored %d message(s) a worker reserved and did not record', count)

    # --- queues -------------------------------------------------------------------------------------------

    def purge(self, queue: str) -> int:
        keys = self.layout.step_keys(queue)
        with self.client.pipeline(transaction=True) as pipe:
            for key in keys:
                pipe.llen(key)
            pipe.delete(*keys)
            sizes = pipe.execute()
        return int(sum(sizes[:-1]))

    def qsize(self, queue: str) -> int:
        with self.client.pipeline(transaction=False) as pipe:
            for key in self.layout.step_keys(queue):
                pipe.llen(key)
            return int(sum(pipe.execute()))

    def known_queues(self) -> list[str]:
        queues: set[str] = set()
        for key in self.client.scan_iter(match=self.layout.binding_pattern, count=500):
            name = _text(key)
            if '.binding_permanent.' in name or name.endswith('binding_deadlines'):
                continue
            for member in self.client.smembers(key):
                queue = self.layout.parse_binding(_text(member))[2]
                if queue and not queue.endswith('.pidbox'):
                    queues.add(queue)
        return sorted(queues)

    @property
    def dead_letters(self) -> DeadLetterStore:
        return self._dead

    @property
    def dead_letter_store(self) -> RedisDeadLetters:
        return self._dead

    def acquire_rate(self, key: str, rate: float) -> float:
        return self.scripts.rate(keys=[f'{self.layout.prefix}fastq.rate:{key}'], args=[repr(time.time()), repr(rate)])

    def revoke(self, task_ids: Sequence[str], ttl: float) -> None:
        until = time.time() + ttl
        with self.client.pipeline(transaction=False) as pipe:
            pipe.zadd(self.layout.revoked, {task_id: until for task_id in task_ids})
            pipe.zremrangebyscore(self.layout.revoked, '-inf', repr(time.time()))
            pipe.execute()

    def revoked(self) -> set[str]:
        members = self.client.zrangebyscore(self.layout.revoked, repr(time.time()), '+inf')
        return {_text(m) for m in members}

    def bind(self, exchange: str, routing_key: str, queue: str) -> None:
        member = self.layout.binding_member(routing_key, queue)
        self.client.sadd(self.layout.binding_key(exchange), member)

    def bind_consumed(self, queue: str, exchange: str, exchange_type: str, routing_key: str) -> None:
        """kombu's binding of `queue` to `exchange` (a topic one with the pattern kombu matches keys with), so
        that what is sent to the exchange reaches it, as after Celery's `add_consumer` (without it such a
        message has no queue and is dropped, as kombu drops it)."""
        pattern = topic_pattern(routing_key) if exchange_type == 'topic' else ''
        self.client.sadd(self.layout.binding_key(exchange), self.layout.binding_member(routing_key, queue, pattern))

    def unbind(self, exchange: str, routing_key: str, queue: str) -> None:
        member = self.layout.binding_member(routing_key, queue)
        with self.client.pipeline(transaction=False) as pipe:
            pipe.srem(self.layout.binding_key(exchange), member)
            pipe.srem(f'{self.layout.prefix}_kombu.binding_permanent.{exchange}', member)
            pipe.delete(*self.layout.step_keys(queue))
            pipe.execute()

    def pop(self, queue: str, timeout: float) -> list[bytes]:
        keys = self.layout.step_keys(queue)
        first = self.client.brpop(keys, timeout=max(timeout, 0.01)) if timeout else None
        out = [_raw(first[1])] if first else []
        for key in keys:
            while True:
                item = self.client.rpop(key)
                if item is None:
                    break
                out.append(_raw(item))
        return out

    # --- fanout -------------------------------------------------------------------------------------------

    def fanout_publish(self, exchange: str, payload: bytes, routing_key: str = '') -> None:
        self.client.publish(self.layout.fanout_topic(exchange, routing_key), payload)

    def fanout_publish_many(self, exchange: str, messages: Sequence[tuple[bytes, str]]) -> None:
        topic = self.layout.fanout_topic
        self.commands.execute([('PUBLISH', topic(exchange, routing_key), payload) for payload, routing_key in messages])

    def subscribe(self, exchange: str) -> Subscription:
        return _RedisSubscription(self, exchange)

    # --- coordination (beat) -------------------------------------------------------------------------------

    def claim(self, key: str, ttl: float) -> bool:
        return bool(self.client.set(self.layout.claim(key), '1', nx=True, px=_millis(ttl)))

    def lease(self, name: str, holder: str, ttl: float) -> bool:
        return bool(self.scripts.lease(keys=[self.layout.lease(name)], args=[holder, _millis(ttl)]))

    def release_lease(self, name: str, holder: str) -> None:
        self.scripts.unlease(keys=[self.layout.lease(name)], args=[holder])

    def lease_holder(self, name: str) -> str | None:
        value = self.client.get(self.layout.lease(name))
        return None if value is None else _text(value)

    def close(self) -> None:
        self.commands.close()
        self.client.close()

    async def aclose(self) -> None:
        await self._async_clients.aclose()


async def _close_async_client(client: AsyncRedis | None) -> None:
    if client is not None:
        await client.aclose()


def _millis(seconds: float) -> int:
    return max(int(seconds * 1000), 1)


class _RedisSubscription(Subscription):
    def __init__(self, broker: RedisBroker, exchange: str) -> None:
        self.broker = broker
        self.client = broker.new_client()
        self.pubsub = self.client.pubsub(ignore_subscribe_messages=True)  # type: ignore[no-untyped-call,unused-ignore]  # typed from redis-py 8.2
        base = broker.layout.fanout_topic(exchange)
        self.base = base
        self.pubsub.psubscribe(base, f'{base}/*')
        # Wait for the subscription to be active, so nothing published after this returns is missed.
        deadline = time.monotonic() + 5
        while len(self.pubsub.patterns) < 2 or not self.pubsub.subscribed:
            self.pubsub.get_message(timeout=0.05)
            if time.monotonic() > deadline:
                break

    def get(self, timeout: float) -> list[tuple[str, bytes]]:
        out: list[tuple[str, bytes]] = []
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            msg = self.pubsub.get_message(timeout=max(remaining, 0.0) if not out else 0.0)
            if msg is None:
                if out or remaining <= 0:
                    return out
                continue
            if msg.get('type') not in ('message', 'pmessage'):
                continue
            channel = _text(msg['channel'])
            routing_key = channel[len(self.base) + 1 :] if channel.startswith(self.base + '/') else ''
            out.append((routing_key, bytes(msg['data'])))

    def close(self) -> None:
        self.pubsub.close()
        self.client.close()


def _count_delivery(envelope: dict[str, Any]) -> None:
    """Mark a delivery that ended without an ack, as kombu's restore does, and count it (DELIVERIES_HEADER)."""
    headers = envelope.get('headers')
    props = envelope.get('properties')
    if isinstance(headers, dict) and isinstance(props, dict):
        headers['redelivered'] = True
        info = props.get('delivery_info')
        if isinstance(info, dict):
            info['redelivered'] = True
        earlier = headers.get(DELIVERIES_HEADER)
        headers[DELIVERIES_HEADER] = (earlier if isinstance(earlier, int) else 0) + 1


def _has_eta(raw: bytes | str) -> bool:
    """Whether an `unacked` record is a task message with an ETA (a countdown), parked until then."""
    try:
        envelope = _core.json_loads(raw, None)[0]
        return bool(envelope['headers'].get('eta'))
    except (ValueError, TypeError, LookupError, AttributeError):
        return False


def _recounted(raw: bytes | str) -> bytes | str:
    """An envelope with its delivery counted (`_count_delivery`); anything not an envelope as it is."""
    try:
        envelope = _core.json_loads(raw, None)
    except (ValueError, TypeError):
        return raw
    if not isinstance(envelope, dict):
        return raw
    _count_delivery(envelope)
    dumped: bytes = _core.json_dumps(envelope, None)
    return dumped


def _raw(value: Any) -> bytes:
    return value.encode() if isinstance(value, str) else bytes(value)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


_PATTERNS: dict[str, re.Pattern[str]] = {}


def _pattern(pattern: str) -> re.Pattern[str]:
    compiled = _PATTERNS.get(pattern)
    if compiled is None:
        if len(_PATTERNS) > 1000:
            _PATTERNS.clear()
        compiled = _PATTERNS[pattern] = re.compile(pattern)
    return compiled


def _fanout_copy(payload: bytes, queue: str) -> bytes:
    """The envelope of one broadcast queue's copy of a message sent to a fanout exchange: a delivery tag of
    its own (each copy is reserved and acked apart) and the queue as its routing key, so a copy handed back
    goes back to that queue alone (kombu delivers fanout messages over PUB/SUB, unacked; fastq to the
    broadcast queues' lists, so that workers reserve and ack them as any task)."""
    try:
        envelope = _core.json_loads(payload, None)
        props = envelope['properties']
        props['delivery_tag'] = str(uuid.uuid4())
        props['delivery_info']['routing_key'] = queue
    except (ValueError, TypeError, KeyError):
        return payload
    return _core.json_dumps(envelope, None)


def _topic_match(binding: str, routing_key: str) -> bool:
    """AMQP topic matching (`*` one word, `#` any words) for bindings declared on topic exchanges."""
    if '*' not in binding and '#' not in binding:
        return False
    return _match_words(binding.split('.'), routing_key.split('.'))


def _match_words(words: list[str], keys: list[str]) -> bool:
    if not words:
        return not keys
    head, rest = words[0], words[1:]
    if head == '#':
        return any(_match_words(rest, keys[i:]) for i in range(len(keys) + 1))
    if not keys:
        return False
    return (head in ('*', keys[0])) and _match_words(rest, keys[1:])


class _Stream(PublishStream):
    """A batch published as one MULTI ... EXEC transaction written while it is built.

    Redis reads and parses each part (most of its work for a large batch) while the client builds the next;
    only EXEC's list inserts are left when the last part is written. Nothing is visible to consumers before
    EXEC, and a connection dropped before it (`abort`, or a failure) makes Redis discard the transaction.
    The "QUEUED" replies are read at `finish`: Redis holds them in its output buffer meanwhile.
    """

    def __init__(self, broker: RedisBroker) -> None:
        self.broker = broker
        self.conn: Link | None = None
        self.queued = 0
        self.undeclared: set[str] = set()
        self.failed = False

    def add(self, part: Sequence[Outgoing]) -> None:
        if self.failed or not part:
            return
        self._send(*self.broker._publish_commands(part, transaction=False))

    def add_envelopes(
        self, queue: str, exchange: str, routing_key: str, priority: int, delivery_mode: int, envelopes: list[bytes]
    ) -> None:
        if exchange:  # (routed by the exchange: see `_publish_commands`)
            super().add_envelopes(queue, exchange, routing_key, priority, delivery_mode, envelopes)
            return
        if self.failed or not envelopes:
            return
        broker = self.broker
        undeclared = [] if queue in broker._declared else [queue]
        pushes = {broker._queue_key(routing_key, priority): envelopes}
        self._send(broker._push_commands(pushes, undeclared, transaction=False), undeclared)

    def _send(self, commands: list[tuple[Any, ...]], undeclared: list[str]) -> None:
        if not commands:
            return
        if self.conn is None:
            commands.insert(0, ('MULTI',))
        try:
            if self.conn is None:
                self.conn = self.broker.commands.take()
            self.conn.send_packed(pack(commands))
        except CONNECTION_ERRORS:
            self._drop()
            return
        self.queued += len(commands)
        self.undeclared.update(undeclared)

    def finish(self) -> bool:
        conn = self.conn
        if self.failed or conn is None:
            return not self.failed
        try:
            conn.send_packed(pack([('EXEC',)]))
            replies = conn.receive(self.queued + 1)
            for error in replies:
                if isinstance(error, Exception):  # an error reply: refused while queueing (EXECABORT)
                    raise error
            reply = replies[-1]
        except CONNECTION_ERRORS:
            self._drop()
            return False
        except BaseException:
            self._drop()
            raise
        self.conn = None
        self.broker.commands.give(conn)
        self.broker._published([('EXEC',)], [reply], sorted(self.undeclared))
        return True

    def abort(self) -> None:
        if self.conn is not None:
            self._drop()

    def _drop(self) -> None:
        self.failed = True
        conn, self.conn = self.conn, None
        if conn is not None:
            conn.close()  # Redis discards a transaction whose client went away before EXEC
            self.broker.commands.give(conn)
