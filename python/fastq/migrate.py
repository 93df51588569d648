"""Moving task messages to another broker or queue: the loop under `fastq migrate` and `fastq.contrib.migrate`.

A message is taken from the source under a reservation, published to the destination, and only once the
destination has it (`Broker.publish`'s contract: Redis answered, RabbitMQ confirmed) acked on the source, so a
crash at any point leaves it in the source, the destination or (at worst) both, never in neither. Without
`ack_messages` nothing is acked, as with Celery: the messages are copied, and go back to their source queues
when the run ends (in their order).

Messages keep their body, headers and properties; each is published anew (a fresh delivery tag) through the
exchange and routing key it was sent with, to the queue it was taken from or the name `queues` renames it to.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from itertools import cycle, islice
from typing import TYPE_CHECKING, Any

from fastq import _core
from fastq.brokers.amqp_properties import MARK as AMQP_MARK
from fastq.brokers.base import Outgoing

if TYPE_CHECKING:
    from fastq.app import Fastq
    from fastq.brokers.base import Broker, Delivery, Tag

__all__ = ['State', 'StopFiltering', 'filter_deliveries', 'migrate_tasks', 'prepare_queues']

BATCH = 100  # messages taken and published per round trip
#: Exchanges of Celery's native delayed delivery (RabbitMQ): a message that came through them is published to
#: its queue directly, as the destination may have no such chain (and the ETA is in its headers anyway).
DELAYED_EXCHANGE_PREFIX = 'celery_delayed_'
#: Properties that belong to one broker's copy of a message (the destination sets its own).
_TRANSPORT_PROPERTIES = (
    'delivery_info', 'delivery_tag', 'body_encoding', 'priority', 'delivery_mode', 'expiration', AMQP_MARK,
)  # fmt: skip


@dataclass
class State:
    """Progress, as Celery's: `count` messages taken (of the tasks asked for), of about `total_apx` waiting
    when the run started; `filtered` those `contrib.migrate.move` moved."""

    count: int = 0
    total_apx: int = 0
    filtered: int = 0

    @property
    def strtotal(self) -> str:
        return str(self.total_apx) if self.total_apx else '?'

    def __repr__(self) -> str:
        return f'^{self.filtered}' if self.filtered else f'{self.count}/{self.strtotal}'


def prepare_queues(queues: str | Sequence[str] | None) -> dict[str, str]:
    """Celery's `-Q a,b:c`: the queues to migrate, each to itself or (`b:c`) renamed on the destination."""
    if not queues:
        return {}
    names = queues.split(',') if isinstance(queues, str) else list(queues)
    pairs = [tuple(islice(cycle(name.strip().split(':')), None, 2)) for name in names if name.strip()]
    return {source: dest for source, dest in pairs}


def task_name(delivery: Delivery) -> str | None:
    """The task a message asks for: protocol 2's `task` header, or protocol 1's body field."""
    name = delivery.task_name
    if name is None and delivery.message is not None:
        body = decoded_body(delivery.message, None)
        if isinstance(body, dict) and isinstance(body.get('task'), str):
            name = body['task']
    return name


def decoded_body(message: _core.Message, accept: frozenset[str] | None) -> Any:
    """The body as a consumer decodes it (what Celery prints), or the raw bytes when it cannot or may not be
    decoded here (a content type outside `accept_content`: moving it does not need trusting it)."""
    from fastq import serialization

    data = message.body
    try:
        compression = message.headers.get('compression')
        if compression:
            data = serialization.decompress(data, compression)
        return serialization.loads(data, message.content_type, accept)
    except Exception:
        return message.body


def republished(delivery: Delivery, renames: dict[str, str]) -> Outgoing:
    """The message of `delivery` to publish on the destination: same body, headers and properties, through
    the same exchange and routing key (each renamed when `renames` names it, as Celery renames them)."""
    message = delivery.message
    assert message is not None
    props = message.properties
    info = props.get('delivery_info')
    info = info if isinstance(info, dict) else {}
    exchange = info.get('exchange') or ''
    routing_key = info.get('routing_key') or delivery.queue
    if exchange.startswith(DELAYED_EXCHANGE_PREFIX):
        exchange, routing_key = '', delivery.queue
    exchange = renames.get(exchange, exchange) if exchange else ''
    routing_key = renames.get(routing_key, routing_key)
    own = {key: value for key, value in props.items() if key not in _TRANSPORT_PROPERTIES}
    priority = props.get('priority')
    delivery_mode = props.get('delivery_mode')
    expiration = props.get('expiration')
    return Outgoing(
        _core.Message(message.body, message.content_type, message.content_encoding, dict(message.headers), own),
        queue=renames.get(delivery.queue, delivery.queue),
        exchange=exchange,
        routing_key=routing_key,
        priority=priority if isinstance(priority, int) else 0,
        delivery_mode=delivery_mode if delivery_mode in (1, 2) else 2,
        expiration=None if expiration is None else str(expiration),
    )


def migrate_tasks(
    app: Fastq,
    source: Broker,
    dest: Broker,
    *,
    limit: int | None = None,
    timeout: float = 1.0,
    ack_messages: bool = False,
    tasks: Iterable[str] | str | None = None,
    queues: str | Sequence[str] | None = None,
    forever: bool = False,
    callback: Callable[[State, Delivery], None] | None = None,
) -> State:
    """Migrate the messages waiting in the app's queues (or `queues`) of `source` to `dest`, until `timeout`
    seconds pass without one (never, with `forever`) or `limit` were migrated; `tasks` (names, or a comma-
    separated string) leaves other tasks' messages where they are. `callback(state, delivery)` follows each
    message migrated. Messages taken and not migrated go back to their source queues at the end."""
    renames = prepare_queues(queues)
    consume_from = list(renames) or app.router.worker_queues(None)
    dest.connect()
    declare = getattr(dest, 'declare', None)  # (brokers that route: the queues and their bindings, as Celery)
    if declare is not None:
        declare([renames.get(queue, queue) for queue in consume_from])
    return filter_deliveries(
        source,
        consume_from,
        lambda delivery: ([republished(delivery, renames)], ack_messages),
        dest,
        limit=limit,
        timeout=timeout,
        tasks=tasks,
        forever=forever,
        callback=callback,
    )


class StopFiltering(Exception):
    """Raised by a filter or a callback: stop after the messages already chosen (Celery's semi-predicate)."""


#: What a filter says of one message: what to publish for it (nothing: leave it where it is), and whether to
#: ack it on the source (after that publish).
Choice = tuple[Sequence[Outgoing], bool]


def filter_deliveries(
    source: Broker,
    consume_from: Sequence[str],
    choose: Callable[[Delivery], Choice],
    dest: Broker,
    *,
    limit: int | None = None,
    timeout: float = 1.0,
    tasks: Iterable[str] | str | None = None,
    forever: bool = False,
    callback: Callable[[State, Delivery], None] | None = None,
    state: State | None = None,
    limit_seen: bool = False,
) -> State:
    """Take the messages waiting in `consume_from` on `source` and let `choose` decide, one by one, what to
    publish on `dest` for each and whether to ack it (`migrate_tasks`, and `contrib.migrate.move` with `dest`
    the source itself). Runs until `timeout` seconds pass without a message (never, with `forever`), `limit`
    messages were published (taken, with `limit_seen`), or `choose` or `callback` raise `StopFiltering`. `tasks` leaves other tasks'
    messages alone (counted neither as seen nor published); `callback(state, delivery)` follows each
    published message. What was taken and not acked goes back to its queue, in order, at the end."""
    wanted = {t.strip() for t in (tasks.split(',') if isinstance(tasks, str) else tasks or ()) if t.strip()}
    state = State() if state is None else state
    source.connect()
    dest.connect()
    state.total_apx = sum(source.qsize(queue) for queue in consume_from)
    from fastq.utils.nodenames import gethostname

    consumer = source.consumer(list(consume_from), f'migrate@{gethostname()}')
    kept: list[Tag] = []  # taken and staying in the source: copies, other tasks, messages left alone
    published = 0
    stop = False
    try:
        idle_since = time.monotonic()
        renewed = idle_since
        while not stop and (not limit or (state.count if limit_seen else published) < limit):
            now = time.monotonic()
            if now - renewed > source.lease_renew_interval:
                consumer.renew()  # (what is kept must not be restored by a sweep meanwhile: it would be twice)
                renewed = now
            wait = 1.0 if forever else timeout - (now - idle_since)
            if wait <= 0:
                break
            room = BATCH if not limit else min(BATCH, limit - (state.count if limit_seen else published))
            deliveries = consumer.fetch(room, min(wait, 1.0))
            if not deliveries:
                continue
            idle_since = time.monotonic()
            try:
                batch = _Batch(deliveries, choose, state, wanted)
                if batch.outgoing:
                    dest.publish(batch.outgoing)  # (before the acks: a crash between leaves a copy, never nothing)
            except BaseException:
                kept.extend(delivery.tag for delivery in deliveries)  # (a filter or the publish failed: all stay)
                raise
            stop = batch.stopped
            kept.extend(batch.kept)
            if batch.acks:
                consumer.ack(batch.acks)
            published += len(batch.chosen)
            stop = batch.follow(state, callback) or stop
    finally:
        try:
            # The consumer's own wait stops first: on Redis it would reserve what the releases put back.
            early = consumer.lend_lead()
            kept.extend(delivery.tag for delivery in early or ())
            if kept:
                consumer.release(kept[::-1])  # each back in front of the later ones: the queue's order again
        finally:
            consumer.close()
    return state


class _Batch:
    """One fetch sorted by `choose`: what to publish, which to ack, which stay (in order), and whether a
    `StopFiltering` ended the run (the rest of the fetch then stays)."""

    def __init__(
        self, deliveries: Sequence[Delivery], choose: Callable[[Delivery], Choice], state: State, wanted: set[str]
    ) -> None:
        self.outgoing: list[Outgoing] = []
        self.chosen: list[tuple[Delivery, int]] = []  # (with the count when it was seen, for its callback)
        self.acks: list[Tag] = []
        self.kept: list[Tag] = []
        self.stopped = False
        for delivery in deliveries:
            if self.stopped or delivery.message is None or (wanted and task_name(delivery) not in wanted):
                self.kept.append(delivery.tag)  # (one that does not parse stays as it is, for a worker to judge)
                continue
            state.count += 1
            try:
                out, ack = choose(delivery)
            except StopFiltering:
                self.stopped = True
                self.kept.append(delivery.tag)
                continue
            if out:
                self.outgoing.extend(out)
                self.chosen.append((delivery, state.count))
            (self.acks if ack else self.kept).append(delivery.tag)

    def follow(self, state: State, callback: Callable[[State, Delivery], None] | None) -> bool:
        """`callback` for each message published, seeing `count` as it was when that one was taken; True if
        one raised `StopFiltering`."""
        if callback is None:
            return False
        stop = False
        seen = state.count
        try:
            for delivery, state.count in self.chosen:
                try:
                    callback(state, delivery)
                except StopFiltering:
                    stop = True
        finally:
            state.count = seen
        return stop
