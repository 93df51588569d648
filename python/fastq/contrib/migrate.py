"""Celery's `celery.contrib.migrate`: find task messages waiting in a broker and move them to another queue
(`move`, `move_task_by_id`, `move_by_idmap`, `move_by_taskmap`, `move_direct...`), or to another broker
(`migrate_tasks`, what `fastq migrate` runs).

Filters keep kombu's consumer signature, `predicate(body, message)`: `body` is the decoded body (protocol 2:
`[args, kwargs, embed]`) and `message` has kombu's `Message` attributes (`headers`, `properties`,
`delivery_info`, `payload`, `ack()`...). The connections may be `app.connection()`, kombu `Connection`s, or
broker URLs; None is the app's broker.

Every message is published before it is acked on the source, and whatever a run took and did not move goes
back to its queue, in order, when it ends (`fastq.migrate.filter_deliveries`).

Where this differs from Celery 5.7, on purpose: `task_id_eq`, `task_id_in`, `move_by_taskmap` and
`filter_status` read a protocol 2 message's id and task name from its headers (Celery's read them from the
body, which for protocol 2 is a list, so they raise TypeError on every message Celery 4+ sends); and a
message moved to a `Queue` is published to that queue by name, so it reaches it on every broker whatever the
queue's exchange.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from functools import partial
from typing import TYPE_CHECKING, Any

from fastq import _core
from fastq.brokers.base import Outgoing
from fastq.migrate import (
    DELAYED_EXCHANGE_PREFIX,
    State,
    StopFiltering,
    decoded_body,
    filter_deliveries,
    prepare_queues,
    republished,
)
from fastq.routing import Queue, worker_direct
from fastq.worker.message import ReceivedMessage

if TYPE_CHECKING:
    from fastq.app import Fastq
    from fastq.brokers.base import Broker, Delivery

__all__ = (
    'State',
    'StopFiltering',
    'expand_dest',
    'filter_callback',
    'filter_status',
    'migrate_task',
    'migrate_tasks',
    'move',
    'move_by_idmap',
    'move_by_taskmap',
    'move_direct',
    'move_direct_by_id',
    'move_direct_by_idmap',
    'move_direct_by_taskmap',
    'move_task_by_id',
    'prepare_queues',
    'republish',
    'start_filter',
    'task_id_eq',
    'task_id_in',
)

MOVING_PROGRESS_FMT = 'Moving task {state.filtered}/{state.strtotal}: {task}[{id}]'

#: Properties that belong to one broker's copy of a message (the destination sets its own).
_TRANSPORT_PROPERTIES = ('delivery_info', 'delivery_tag', 'body_encoding')


class Message(ReceivedMessage):
    """A message as a kombu consumer callback gets it (the worker's `ReceivedMessage` reading of a delivery),
    not settled yet: `ack()` acks it on the source once the run has published what its filter chose (never
    before); `reject()`/`requeue()` leave it. Its body decodes as an accepted content type, else stays bytes
    (moving a message does not need trusting it)."""

    def __init__(self, delivery: Delivery, accept: frozenset[str] | None) -> None:
        message = delivery.message
        assert message is not None
        super().__init__(delivery, message)
        self.acknowledged = False
        self._accept = accept
        self.delivery_info.setdefault('exchange', '')
        self.delivery_info.setdefault('redelivered', delivery.redelivered)

    def decode(self) -> Any:
        return decoded_body(self._message, self._accept)

    def ack(self, multiple: bool = False) -> None:
        self.acknowledged = True

    def reject(self, requeue: bool = False) -> None:
        self.acknowledged = False

    def requeue(self) -> None:
        self.acknowledged = False

    def __repr__(self) -> str:
        return f'<Message object at {id(self):#x} with details {dict(self.delivery_info)!r}>'


class _Producer:
    """What `republish` and `migrate=` functions publish through: each call becomes a message of the batch
    the run publishes before it acks (kombu's `Producer.publish` keywords)."""

    def __init__(self, app: Fastq) -> None:
        self.app = app
        self.outgoing: list[Outgoing] = []

    def publish(
        self,
        body: Any,
        routing_key: str | None = None,
        exchange: Any = None,
        headers: Mapping[str, Any] | None = None,
        content_type: str | None = None,
        content_encoding: str | None = None,
        compression: str | None = None,
        expiration: float | None = None,
        priority: int | None = None,
        delivery_mode: int | None = None,
        **properties: Any,
    ) -> None:
        headers = dict(headers or {})
        if content_type is None:  # (a Python object: serialized as kombu would, with the task serializer)
            from fastq import serialization

            data, content_type, content_encoding = serialization.dumps(body, self.app.conf.task_serializer)
        else:
            data = body.encode(content_encoding or 'utf-8') if isinstance(body, str) else bytes(body)
        if compression:  # (the body of a republished message is still compressed: say so again)
            headers['compression'] = compression
        props = {key: value for key, value in properties.items() if key not in _TRANSPORT_PROPERTIES}
        queue, exchange_name, key = _route(exchange, routing_key)
        self.outgoing.append(
            Outgoing(
                _core.Message(data, content_type, content_encoding or 'utf-8', headers, props),
                queue=queue,
                exchange=exchange_name,
                routing_key=key,
                priority=priority if isinstance(priority, int) else 0,
                delivery_mode=delivery_mode if delivery_mode in (1, 2) else 2,
                expiration=None if expiration is None else str(int(float(expiration) * 1000)),
            )
        )


def _name(thing: Any) -> str:
    return str(getattr(thing, 'name', thing) or '')


def _route(exchange: Any, routing_key: str | None) -> tuple[str, str, str]:
    """(queue, exchange, routing key) for a message sent to `exchange` with `routing_key`: by name through the
    default exchange, else through the exchange (brokers that route do so by its bindings)."""
    name, key = _name(exchange), routing_key or ''
    if not name or name.startswith(DELAYED_EXCHANGE_PREFIX):
        return key, '', key
    return key or name, name, key


def republish(
    producer: Any,
    message: Message,
    exchange: Any = None,
    routing_key: str | None = None,
    remove_props: Sequence[str] | None = None,
) -> None:
    """Publish `message` again as it is (body, headers, properties) through `producer`, to `exchange` and
    `routing_key` (default: the ones it was sent with)."""
    remove = remove_props or ('application_headers', 'content_type', 'content_encoding', 'headers')
    info = message.delivery_info
    headers = dict(message.headers)
    props = {key: value for key, value in message.properties.items() if key not in remove}
    expiration = props.pop('expiration', None)  # (milliseconds, as stored; publish takes seconds, as kombu's)
    producer.publish(
        message.body,
        exchange=info['exchange'] if exchange is None else exchange,
        routing_key=info['routing_key'] if routing_key is None else routing_key,
        compression=headers.pop('compression', None),
        headers=headers,
        content_type=message.content_type,
        content_encoding=message.content_encoding,
        expiration=None if expiration is None else float(expiration) / 1000,
        **props,
    )


def migrate_task(producer: Any, body_: Any, message: Message, queues: Mapping[str, str] | None = None) -> None:
    """Migrate one message: republished with its exchange and routing key renamed where `queues` says."""
    info = message.delivery_info
    queues = queues or {}
    republish(producer, message, exchange=queues.get(info['exchange']), routing_key=queues.get(info['routing_key']))


def filter_callback(callback: Callable[..., Any], tasks: Iterable[str]) -> Callable[[Any, Message], Any]:
    """`callback(body, message)` called only for messages of `tasks` (all when empty)."""
    tasks = set(tasks)

    def filtered(body: Any, message: Message) -> Any:
        if tasks and _task_of(body, message) not in tasks:
            return None
        return callback(body, message)

    return filtered


def _app(app: Fastq | None) -> Fastq:
    from fastq import _state

    return _state.app_or_default(app)


def _broker(app: Fastq, connection: Any) -> tuple[Broker, bool]:
    """The broker `connection` points at, and whether it was made here (to close): the app's own when it
    is the app's URL."""
    if connection is None:
        return app.broker, False
    url = connection if isinstance(connection, str) else getattr(connection, 'url', None)
    if url is None and hasattr(connection, 'as_uri'):  # a kombu Connection
        url = connection.as_uri(include_password=True)
    if not url or url == app.broker_url:
        return app.broker, False
    from fastq.brokers import create_broker

    return create_broker(str(url), app.conf), True


def _accept(app: Fastq, accept: Iterable[str] | None) -> frozenset[str]:
    from fastq.serialization import accept_set

    return accept_set(tuple(accept or app.conf.accept_content or ('json',)))


def _queues(app: Fastq, queues: Iterable[Any] | None) -> list[str]:
    names = [app.router.queue_name(_name(queue)) for queue in queues or ()]
    return names or app.router.worker_queues(None)


def _task_of(body: Any, message: Message) -> Any:
    name = message.headers.get('task')
    if name is None and isinstance(body, dict):  # protocol 1
        name = body.get('task')
    return name


def _id_of(body: Any, message: Message) -> Any:
    task_id = message.headers.get('id')
    if task_id is None and isinstance(body, dict):  # protocol 1
        task_id = body.get('id')
    return task_id


def start_filter(
    app: Fastq | None,
    conn: Any,
    filter: Callable[[Any, Message], Any],
    limit: int | None = None,
    timeout: float = 1.0,
    ack_messages: bool = False,
    tasks: Iterable[str] | str | None = None,
    queues: Any = None,
    callback: Callable[[State, Any, Message], Any] | None = None,
    forever: bool = False,
    on_declare_queue: Callable[[Any], Any] | None = None,
    consume_from: Iterable[Any] | None = None,
    state: State | None = None,
    accept: Iterable[str] | None = None,
    **kwargs: Any,
) -> State:
    """Call `filter(body, message)` for each message waiting in `consume_from` (default: the queues `queues`
    names, else the app's), then `callback(state, body, message)`; ack those the filter acked (all with
    `ack_messages`). Stops after `limit` messages, `timeout` seconds without one (never with `forever`),
    or when the filter or callback raises `StopFiltering`. What was not acked goes back to its queue."""
    app = _app(app)
    broker, owned = _broker(app, conn)
    names = _queues(app, consume_from or list(prepare_queues(queues)))
    allowed = _accept(app, accept)
    state = State() if state is None else state

    def choose(delivery: Delivery) -> tuple[Sequence[Outgoing], bool]:
        message = Message(delivery, allowed)
        body = message.payload
        filter(body, message)
        if callback is not None:
            callback(state, body, message)
        return (), message.acknowledged or ack_messages

    try:
        return filter_deliveries(
            broker, names, choose, broker, limit=limit, timeout=timeout, tasks=tasks, forever=forever, state=state,
            limit_seen=True,
        )  # fmt: skip
    finally:
        if owned:
            broker.close()


def migrate_tasks(
    source: Any,
    dest: Any,
    migrate: Callable[..., Any] = migrate_task,
    app: Fastq | None = None,
    queues: Any = None,
    **kwargs: Any,
) -> State:
    """Migrate the tasks waiting in `source` (a connection or URL) to `dest`: the app's queues, or those
    `queues` names (`'a,b:c'`: b renamed c on the destination). Takes `start_filter`'s keywords (`limit`,
    `timeout`, `ack_messages`, `tasks`, `forever`, `callback(state, body, message)`)."""
    app = _app(app)
    source_broker, owned_source = _broker(app, source)
    try:
        dest_broker, owned_dest = _broker(app, dest)
        try:
            return _migrate(app, source_broker, dest_broker, migrate, prepare_queues(queues), **kwargs)
        finally:
            if owned_dest:
                dest_broker.close()
    finally:
        if owned_source:
            source_broker.close()


def _migrate(
    app: Fastq,
    source: Broker,
    dest: Broker,
    migrate: Callable[..., Any],
    renames: dict[str, str],
    limit: int | None = None,
    timeout: float = 1.0,
    ack_messages: bool = False,
    tasks: Iterable[str] | str | None = None,
    callback: Callable[[State, Any, Message], Any] | None = None,
    forever: bool = False,
    accept: Iterable[str] | None = None,
    **kwargs: Any,
) -> State:
    allowed = _accept(app, accept)
    names = list(renames) or app.router.worker_queues(None)
    dest.connect()
    declare = getattr(dest, 'declare', None)  # (brokers that route: the queues and their bindings, as Celery)
    if declare is not None:
        declare([renames.get(queue, queue) for queue in names])
    taken: dict[int, Message] = {}

    def choose(delivery: Delivery) -> tuple[Sequence[Outgoing], bool]:
        message = Message(delivery, allowed)
        if migrate is migrate_task:  # (the usual case, without the kombu-shaped detour)
            outgoing = [republished(delivery, renames)]
        else:
            producer = _Producer(app)
            migrate(producer, message.payload, message, queues=renames)
            outgoing = producer.outgoing
        taken[id(delivery)] = message
        return outgoing, ack_messages or message.acknowledged

    def after(state: State, delivery: Delivery) -> None:
        message = taken.pop(id(delivery))
        if callback is not None:
            callback(state, message.payload, message)

    return filter_deliveries(
        source,
        names,
        choose,
        dest,
        limit=limit,
        timeout=timeout,
        tasks=tasks,
        forever=forever,
        callback=after,
    )


def move(
    predicate: Callable[[Any, Message], Any],
    connection: Any = None,
    exchange: Any = None,
    routing_key: str | None = None,
    source: Iterable[Any] | None = None,
    app: Fastq | None = None,
    callback: Callable[[State, Any, Message], Any] | None = None,
    limit: int | None = None,
    transform: Callable[[Any], Any] | None = None,
    **kwargs: Any,
) -> State:
    """Move the messages `predicate(body, message)` picks to another queue. What it returns says where: a
    `Queue`, an `(exchange, routing_key)` pair, or any other true value for the `exchange` and `routing_key`
    given here (`transform` may turn the answer into one of those first: `move_direct` makes a worker's
    direct queue of a node name). `source` lists the queues to look in (default: the app's), `limit` stops
    after that many moved, `callback(state, body, message)` follows each; other keywords are
    `start_filter`'s (`timeout`, `forever`, `tasks`)."""
    app = _app(app)
    broker, owned = _broker(app, connection)
    allowed = _accept(app, kwargs.pop('accept', None))
    names = _queues(app, source or kwargs.pop('consume_from', None))
    moved: dict[int, tuple[Any, Message]] = {}

    def choose(delivery: Delivery) -> tuple[Sequence[Outgoing], bool]:
        message = Message(delivery, allowed)
        body = message.payload
        answer = predicate(body, message)
        if not answer:
            return (), message.acknowledged
        if transform is not None:
            answer = transform(answer)
        if isinstance(answer, Queue) or _is_kombu_queue(answer):
            name = _name(answer)
            declare = getattr(broker, 'declare', None)
            if declare is not None:
                declare([name])
            out = republished(delivery, {})
            out.queue, out.exchange, out.routing_key = name, '', name
        else:
            target_exchange, target_key = expand_dest(answer, exchange, routing_key)
            producer = _Producer(app)
            republish(producer, message, exchange=target_exchange, routing_key=target_key)
            out = producer.outgoing[0]
        moved[id(delivery)] = (body, message)
        return [out], True

    def after(state: State, delivery: Delivery) -> None:
        body, message = moved.pop(id(delivery))
        state.filtered += 1
        if callback is not None:
            callback(state, body, message)

    try:
        return filter_deliveries(
            broker,
            names,
            choose,
            broker,
            limit=limit,
            timeout=kwargs.pop('timeout', 1.0),
            tasks=kwargs.pop('tasks', None),
            forever=kwargs.pop('forever', False),
            callback=after,
            state=kwargs.pop('state', None),
        )
    finally:
        if owned:
            broker.close()


def _is_kombu_queue(value: Any) -> bool:
    return type(value).__name__ == 'Queue' and hasattr(value, 'exchange') and hasattr(value, 'routing_key')


def expand_dest(ret: Any, exchange: Any, routing_key: str | None) -> tuple[Any, str | None]:
    """A predicate's `(exchange, routing_key)` answer, else the defaults."""
    try:
        ex, rk = ret
    except (TypeError, ValueError):
        ex, rk = exchange, routing_key
    return ex, rk


def task_id_eq(task_id: str, body: Any, message: Message) -> bool:
    """Whether the message is the task `task_id`."""
    return bool(_id_of(body, message) == task_id)


def task_id_in(ids: Any, body: Any, message: Message) -> bool:
    """Whether the message is one of the tasks `ids`."""
    return _id_of(body, message) in ids


def move_task_by_id(task_id: str, dest: Any, **kwargs: Any) -> State:
    """Find the task `task_id` and move it to `dest` (a `Queue`, or what `transform` makes one of)."""
    return move_by_idmap({task_id: dest}, **kwargs)


def move_by_idmap(map: Mapping[str, Any], **kwargs: Any) -> State:
    """Move tasks by id, each to the queue `map` gives it: `{task_id: Queue(...)}`. Stops once all are moved."""

    def task_id_in_map(body: Any, message: Message) -> Any:
        return map.get(message.properties.get('correlation_id') or _id_of(body, message))

    return move(task_id_in_map, limit=len(map), **kwargs)


def move_by_taskmap(map: Mapping[str, Any], **kwargs: Any) -> State:
    """Move tasks by name, each to the queue `map` gives its name: `{'tasks.add': Queue(...)}`."""

    def task_name_in_map(body: Any, message: Message) -> Any:
        return map.get(_task_of(body, message))

    return move(task_name_in_map, **kwargs)


def filter_status(state: State, body: Any, message: Message, **kwargs: Any) -> None:
    """A `callback` that prints each move: `Moving task 1/3: tasks.add[id]`."""
    print(MOVING_PROGRESS_FMT.format(state=state, task=_task_of(body, message), id=_id_of(body, message), **kwargs))


move_direct = partial(move, transform=worker_direct)
move_direct_by_id = partial(move_task_by_id, transform=worker_direct)
move_direct_by_idmap = partial(move_by_idmap, transform=worker_direct)
move_direct_by_taskmap = partial(move_by_taskmap, transform=worker_direct)
