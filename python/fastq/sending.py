"""From `send_task(...)` to a message on the broker: options resolved once, the message built in Rust.

Order of precedence for every option, as in Celery: the call's keyword, then the task's attribute (its
decorator option), then `task_routes`, then the app's settings.

Sending is split in two so that a call costs little more than the broker's round trip:

* a `SendPlan` holds what follows from the task, its options and the settings (queue, exchange, priority,
  serializer, compression, time limits, ...). Plans are cached per app, keyed by everything they are made
  from, so the tenth million `delay()` resolves nothing; a router function (which sees the arguments) or
  an option that cannot be hashed only turns the cache off for that call.
* what differs per message (ids, ETA, arguments, workflow links) goes into one tuple per message, and
  `protocol.task_envelopes` builds every envelope of a batch in one Rust call.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import time
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from fastq import _state, protocol, signals
from fastq.brokers.base import Outgoing, alike_outgoing
from fastq.exceptions import (
    AlwaysEagerIgnored,
    AMQPChannelError,
    BrokerConnectionError,
    OperationalError,
    publish_failed,
)
from fastq.result import AsyncResult
from fastq.routing import Broadcast
from fastq.serialization import compression_mime
from fastq.task import Task as _Task
from fastq.utils.text import saferepr
from fastq.utils.time import to_timestamp

if TYPE_CHECKING:
    from fastq.app import Fastq
    from fastq.task import Task

__all__ = [
    'SEND_KEYWORDS',
    'BatchCall',
    'SendPlan',
    'apublish_with_retry',
    'asend_task_message',
    'plan_for',
    'publish_with_retry',
    'send_batch',
    'send_keywords',
    'send_task_message',
]

logger = logging.getLogger('fastq.sending')

SENT_AT_HEADER = protocol.SENT_AT_HEADER

_DELIVERY_MODES = {'persistent': 2, 'transient': 1}
#: Serializers the Rust envelope builder encodes itself; others are encoded in Python first.
_NATIVE_SERIALIZERS = frozenset({'json', 'msgpack'})
#: Plans kept per app before the cache starts over (distinct option sets are few in real programs).
_MAX_PLANS = 512
_TASK_ASYNC_RESULT = _Task.AsyncResult
#: Batches at least this large are built with the cyclic garbage collector paused (see `gc_paused`).
GC_PAUSE_BATCH = 1000
#: Messages per part of a batch published while it is built (`Broker.publish_stream`), for batches larger
#: than one part: small enough that the broker starts soon, large enough that each write is worth it.
STREAM_PART = 4096

#: `send_task` keywords that describe one message rather than how to send it (they never key a plan).
SEND_KEYWORDS = (
    'task_id',
    'countdown',
    'eta',
    'expires',
    'link',
    'link_error',
    'group_id',
    'group_index',
    'retries',
    'chord',
    'chain',
    'reply_to',
    'time_limit',
    'soft_time_limit',
    'root_id',
    'parent_id',
    'shadow',
    'replaced_task_nesting',
    'argsrepr',
    'kwargsrepr',
    'route_name',
)
#: Of those, the ones a group gives its members, for which `_Context.prepare_plain` is enough.
PLAIN_KEYWORDS = frozenset({'task_id', 'reply_to', 'group_id', 'group_index', 'root_id'})
#: Of those, the ones passed only as options (not parameters of `send_task`).
_OPTION_ONLY_KEYWORDS = ('argsrepr', 'kwargsrepr', 'route_name')


def send_keywords(params: Mapping[str, Any], options: dict[str, Any]) -> dict[str, Any]:
    """A call's `SEND_KEYWORDS` from `send_task`'s parameters (`locals()`), and from `options` the ones only
    passed there (removed from `options`)."""
    kw = {key: params[key] for key in SEND_KEYWORDS if key not in _OPTION_ONLY_KEYWORDS}
    for key in _OPTION_ONLY_KEYWORDS:
        kw[key] = options.pop(key, None)
    return kw


def retry_policy_in_force(conf: Any, policy: Mapping[str, Any] | None) -> dict[str, Any]:
    """The publish retry policy a send follows: the call's (or task's) keys over `task_publish_retry_policy`."""
    return {**(conf.task_publish_retry_policy or {}), **(policy or {})}


class SendPlan:
    """What sending a task with given options resolves to, whatever its arguments and ids."""

    __slots__ = (
        'add_to_parent',
        'result_factory',
        'compression',
        'declare',
        'default_priority',
        'delivery_mode',
        'exchange',
        'expires',
        'headers',
        'ignore_result',
        'inherit_priority',
        'native',
        'priority',
        'publish_retry_policy',
        'queue',
        'retry',
        'retry_policy',
        'routing_key',
        'serializer',
        'soft_time_limit',
        'stamped_headers',
        'stamps',
        'time_limit',
    )

    def __init__(
        self,
        app: Fastq,
        name: str,
        route_name: str,
        task_type: Task[Any, Any] | None,
        options: Mapping[str, Any],
        args: Any,
        kwargs: Any,
    ) -> None:
        conf = app.conf
        if task_type is not None:
            task_type.sync_config()  # (a plan is made again when the settings changed: see plan_for)
            merged = {**task_type._exec_options(), **options}
            merged.setdefault('ignore_result', task_type.ignore_result)
        else:
            registered = app.tasks.get(name)
            merged = {**(registered._exec_options() if registered is not None else {}), **options}
        self.time_limit: float | None = merged.pop('time_limit', None)
        self.soft_time_limit: float | None = merged.pop('soft_time_limit', None)
        self.expires: Any = merged.pop('expires', None)
        ignore_result = merged.pop('ignore_result', None)
        # `send_task` sends what it was given, None by default, as Celery's does; a task's call its setting.
        self.ignore_result: bool | None = None if ignore_result is None and task_type is None else bool(ignore_result)
        # (a router function's `task`: `send_task` by the name of a registered task passes that task, as Celery's)
        asked = task_type if task_type is not None else app.tasks.get(name)
        routed = app.router.route(merged, route_name, args, kwargs, asked)
        priority = routed.get('priority')
        self.priority: int | None = None if priority is None else int(priority)
        self.default_priority = int(conf.task_default_priority or 0)
        self.inherit_priority = bool(conf.task_inherit_parent_priority)
        delivery_mode = routed.get('delivery_mode') or conf.task_default_delivery_mode
        self.delivery_mode = int(_DELIVERY_MODES.get(delivery_mode, delivery_mode))
        self.queue: str = routed['queue']
        # ('' for the default exchange, where the routing key names the queue: see `Router.route`)
        self.exchange: str = routed.get('exchange') or ''
        self.routing_key: str = routed.get('routing_key') or self.queue
        # What `before_task_publish` gets as `declare`, as Celery's: the option given, else the queue published
        # to (its configured `Queue`), nothing for a `Broadcast` queue.
        declare = routed.get('declare')
        if declare is None:
            declare = () if isinstance(queue := app.router.queue(self.queue), Broadcast) else (queue,)
        self.declare: tuple[Any, ...] = tuple(declare)
        self.serializer: str = routed.get('serializer') or conf.task_serializer
        self.native = self.serializer in _NATIVE_SERIALIZERS
        compression = routed.get('compression') or conf.task_compression
        self.compression: str | None = compression_mime(compression) if compression else None
        stamped_headers = routed.get('stamped_headers')
        self.stamped_headers: list[str] | None = stamped_headers
        self.stamps: dict[str, Any] = {h: routed[h] for h in stamped_headers or () if h in routed}
        self.headers: Mapping[str, Any] | None = routed.get('headers')
        self.retry: bool | None = routed.get('retry')
        self.retry_policy: dict[str, Any] | None = routed.get('retry_policy')
        # (the policy publishing follows, as `before_task_publish` receivers see it: the call's over the app's)
        self.publish_retry_policy = retry_policy_in_force(conf, self.retry_policy)
        self.add_to_parent = bool(routed.get('add_to_parent', True))
        self.result_factory = _result_factory(app, name, task_type)


def _result_factory(
    app: Fastq, name: str, task_type: Task[Any, Any] | None
) -> Callable[[str], AsyncResult[Any]] | None:
    """What makes the results of a send, None for the usual `AsyncResult` on the app's backend.

    A task class with its own AsyncResult (AbortableTask's) makes them, as Celery's `send_task(result_cls=
    task.AsyncResult)` has it, whether sent by `apply_async` or by name. So does a task with a result backend
    of its own, whose results read from it, when sent by `apply_async`: Celery's `send_task` by name gives
    `app.AsyncResult`, on the app's backend. (Setting `Task.backend` drops the cached plans.)"""
    if task_type is not None and task_type._backend is not None:
        return task_type.AsyncResult
    custom = task_type if task_type is not None else app.tasks.get(name)
    if custom is not None and type(custom).AsyncResult is not _TASK_ASYNC_RESULT:
        return custom.AsyncResult
    return None


def _task_key(task: Task[Any, Any] | None) -> tuple[Any, ...] | None:
    """The task attributes a plan is made from: changing one (even at runtime) makes a new plan."""
    if task is None:
        return None
    return (
        task.queue,
        task.routing_key,
        task.exchange,
        task.priority,
        task.serializer,
        task.compression,
        task.time_limit,
        task.soft_time_limit,
        task.expires,
        task.ignore_result,
    )


def plan_for(
    app: Fastq,
    name: str,
    route_name: str,
    task_type: Task[Any, Any] | None,
    options: Mapping[str, Any],
    args: Any,
    kwargs: Any,
) -> SendPlan:
    """The plan for sending `name` (routed as `route_name`: its own name, or map's inner task) with `options`; cached unless a router
    function, which sees the arguments, may answer differently per call."""
    if not app.router.static:
        return SendPlan(app, name, route_name, task_type, options, args, kwargs)
    try:
        key = (
            name,
            route_name,
            task_type is None,
            _task_key(task_type if task_type is not None else app.tasks.get(name)),
            app.conf.generation,
            frozenset(options.items()) if options else None,
        )
        plans = app._send_plans
        plan = plans.get(key)
    except TypeError:  # an option value that cannot be hashed (a list, a dict of headers)
        return SendPlan(app, name, route_name, task_type, options, args, kwargs)
    if plan is None:
        plan = SendPlan(app, name, route_name, task_type, options, args, kwargs)
        if len(plans) >= _MAX_PLANS:
            plans.clear()
        plans[key] = plan
    return plan


@contextlib.contextmanager
def gc_paused(size: int) -> Iterator[None]:
    """Pause the cyclic garbage collector while a batch of `size` messages is built.

    Building a batch allocates several containers per message, none of them in a reference cycle, and
    each full collection those allocations trigger walks every object of the process (the signatures of a
    100,000-task group among them): a third of the time of a large batch went there. The collector is
    process-wide, so it is only re-enabled if this call disabled it; a collection pending meanwhile runs
    at the next allocation after.
    """
    if size < GC_PAUSE_BATCH or not gc.isenabled():
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def _as_list(value: Any) -> list[Any] | None:
    if value is None:
        return None
    if isinstance(value, list | tuple):
        return list(value) or None
    return [value]


# Positions in the envelope fields tuple (`_core.task_envelopes`' order) that sending reads back.
_NAME, _ARGS, _KWARGS, _EXCHANGE, _ROUTING_KEY, _TAG = 1, 21, 22, 29, 30, 34


class _Message:
    """One message being prepared: its envelope fields (in `task_envelopes` order) and delivery details."""

    __slots__ = ('eta', 'fields', 'plan', 'result')

    def __init__(self, fields: tuple[Any, ...], plan: SendPlan, eta: float | None, result: AsyncResult[Any]) -> None:
        self.fields = fields
        self.plan = plan
        self.eta = eta
        self.result = result


class _Context:
    """What every message of one send shares: this process's origin, this thread's reply_to, and the task
    being executed (whose ids the messages inherit as root_id and parent_id), looked up once; and when they
    were sent: the `fastq_sent_at` header (unix seconds), from which fastq workers measure time in queue
    (Celery's workers ignore it, as any header they do not know)."""

    __slots__ = ('_templates', 'app', 'origin', 'parent', 'reply_to', 'sent_at')

    def __init__(self, app: Fastq) -> None:
        self.app = app
        self.origin = app.origin
        self.reply_to = app.thread_oid
        self.parent = _state.get_current_worker_task()
        self.sent_at = {SENT_AT_HEADER: time.time()}
        self._templates: dict[tuple[int, str], tuple[Any, ...]] = {}

    def prepare(
        self,
        plan: SendPlan,
        name: str,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        kw: Mapping[str, Any],
        task_id: str,
        delivery_tag: str,
    ) -> _Message:
        """The message for one call; `kw` holds its `SEND_KEYWORDS` (missing ones are None)."""
        countdown, eta, expires = kw.get('countdown'), kw.get('eta'), kw.get('expires')
        if expires is None:
            expires = plan.expires
        eta_header = expires_header = expiration = None
        eta_time = None
        if countdown or eta is not None or expires is not None:
            app = self.app
            tz = app.timezone
            now = app.now()
            eta_header = protocol.resolve_eta(countdown, eta, now, tz)
            expires_header, expiration = protocol.resolve_expires(expires, now, tz)
            if expiration == '0':
                logger.warning('%s has an expiration date in the past; it will be revoked when received', task_id)
            eta_time = to_timestamp(eta_header)
        root_id, parent_id = kw.get('root_id'), kw.get('parent_id')
        priority = plan.priority
        parent = self.parent
        if parent is not None:
            request = parent.request
            if not (root_id and parent_id):
                root_id, parent_id = root_id or request.root_id or request.id, parent_id or request.id
            if priority is None and plan.inherit_priority:
                inherited = (request.delivery_info or {}).get('priority')
                priority = None if inherited is None else int(inherited)
        if priority is None:
            priority = plan.default_priority
        time_limit, soft_time_limit = kw.get('time_limit'), kw.get('soft_time_limit')
        link, link_error = kw.get('link'), kw.get('link_error')
        fields = (
            task_id,
            name,
            kw.get('shadow'),
            eta_header,
            expires_header,
            kw.get('group_id'),
            kw.get('group_index'),
            kw.get('retries') or 0,
            plan.time_limit if time_limit is None else time_limit,
            plan.soft_time_limit if soft_time_limit is None else soft_time_limit,
            root_id or task_id,
            parent_id,
            kw.get('argsrepr'),
            kw.get('kwargsrepr'),
            self.origin,
            plan.ignore_result,
            kw.get('replaced_task_nesting') or 0,
            plan.stamped_headers,
            plan.stamps,
            self.sent_at if plan.headers is None else {**plan.headers, **self.sent_at},
            kw.get('reply_to') or self.reply_to,
            args,
            kwargs,
            None if link is None else _as_list(link),
            None if link_error is None else _as_list(link_error),
            kw.get('chain'),
            kw.get('chord'),
            plan.serializer,
            plan.compression,
            plan.exchange,
            plan.routing_key,
            priority,
            plan.delivery_mode,
            expiration,
            delivery_tag,
        )
        factory = plan.result_factory
        result: AsyncResult[Any] = (
            self.app.AsyncResult(task_id, task_name=name) if factory is None else factory(task_id)
        )
        result.ignored = plan.ignore_result
        result.sent_at = time.monotonic()
        return _Message(fields, plan, eta_time, result)

    def plain_template(self, plan: SendPlan, name: str) -> tuple[Any, ...]:
        """`prepare_plain`'s fields for a call without keywords, but for the task id and delivery tag
        (None here): what `_core.uniform_envelopes` fills in per call."""
        return (
            None,
            name,
            None,
            None,
            None,
            None,
            None,
            0,
            plan.time_limit,
            plan.soft_time_limit,
            None,
            None,
            None,
            None,
            self.origin,
            plan.ignore_result,
            0,
            plan.stamped_headers,
            plan.stamps,
            self.sent_at if plan.headers is None else {**plan.headers, **self.sent_at},
            self.reply_to,
            (),
            {},
            None,
            None,
            None,
            None,
            plan.serializer,
            plan.compression,
            plan.exchange,
            plan.routing_key,
            plan.default_priority if plan.priority is None else plan.priority,
            plan.delivery_mode,
            None,
            None,
        )

    def prepare_plain(
        self,
        plan: SendPlan,
        name: str,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        kw: Mapping[str, Any],
        task_id: str,
        delivery_tag: str,
        sent_at: float,
    ) -> _Message:
        """`prepare` for a call whose keywords are only `PLAIN_KEYWORDS`, sent from outside a task with a plan
        that sets no expiry (a group's members, most often): the same message, without looking up the
        keywords that cannot be there. `sent_at` is `time.monotonic()`, read once per batch. Any field added
        to `prepare` belongs in `plain_template` too (tests/unit/test_client.py compares them)."""
        key = (id(plan), name)  # (the plans outlive this context: see `_Preparer.plans`)
        t = self._templates.get(key)
        if t is None:
            t = self._templates[key] = self.plain_template(plan, name)
        # The template's fields with those of this call, at the positions `_core.uniform_envelopes` fills.
        fields = (
            task_id, *t[1:5], kw.get('group_id'), kw.get('group_index'), *t[7:10], kw.get('root_id') or task_id,
            *t[11:20], kw.get('reply_to') or t[20], args, kwargs, *t[23:34], delivery_tag,
        )  # fmt: skip
        factory = plan.result_factory
        result: AsyncResult[Any] = (
            self.app.AsyncResult(task_id, task_name=name) if factory is None else factory(task_id)
        )
        result.ignored = plan.ignore_result
        result.sent_at = sent_at
        return _Message(fields, plan, None, result)


def _outgoing(messages: Sequence[_Message], policies: list[dict[str, Any]] | None = None) -> list[Outgoing]:
    """Outgoing messages with their envelopes: built together in Rust, unless something needs the headers
    as a dict first (a `before_task_publish` receiver may change them) or the serializer is Python's. The
    retry policies handed to `before_task_publish` receivers (who may change them) go to `policies`."""
    hooked = bool(signals.before_task_publish.receivers or signals.after_task_publish.receivers)
    native = [m.fields for m in messages if m.plan.native and not hooked]
    envelopes = iter(protocol.task_envelopes(native) if native else ())
    out = []
    for m in messages:
        f, plan = m.fields, m.plan
        exchange, routing_key, priority, delivery_mode, expiration = f[_EXCHANGE:_TAG]
        if plan.native and not hooked:
            envelope = next(envelopes)
            out.append(
                Outgoing(None, plan.queue, exchange, routing_key, priority, delivery_mode, expiration, m.eta, envelope)
            )
            continue
        message = protocol.message_from_fields(f)
        if signals.before_task_publish.receivers:
            properties = _signal_properties(message.properties, plan, priority, expiration)
            policy = dict(plan.publish_retry_policy)  # (a copy: the plan is shared)
            signals.before_task_publish.send(
                sender=f[_NAME],
                body=_signal_body(f),
                exchange=exchange,
                routing_key=routing_key,
                headers=message.headers,
                properties=properties,
                declare=list(plan.declare),
                retry_policy=policy,
            )
            if policies is not None:
                policies.append(policy)
            # What a receiver set among the publish properties is how the message is sent (Celery hands the
            # properties dict to the producer as its keyword arguments).
            priority = properties.pop('priority', priority)
            delivery_mode = properties.pop('delivery_mode', delivery_mode)
            expiration = _expiration_ms(properties.pop('expiration', None))
        envelope = message.to_envelope(exchange, routing_key, priority, delivery_mode, expiration, f[_TAG])
        out.append(
            Outgoing(message, plan.queue, exchange, routing_key, priority, delivery_mode, expiration, m.eta, envelope)
        )
    return out


def _signal_properties(properties: dict[str, Any], plan: Any, priority: Any, expiration: str | None) -> dict[str, Any]:
    """The message properties as Celery's `before_task_publish` has them: with the publish options Celery hands
    to kombu among them, `priority` when one was asked for (not the `task_default_priority` fastq fills in) and
    `expiration` in seconds (from `expires`; on the wire it is milliseconds)."""
    if priority is not None and (plan.priority is not None or priority != plan.default_priority):
        properties['priority'] = priority
    if expiration is not None:
        seconds = int(expiration) / 1000
        properties['expiration'] = int(seconds) if seconds.is_integer() else seconds
    return properties


def _expiration_ms(seconds: Any) -> str | None:
    """A `before_task_publish` receiver's `expiration` (seconds, as kombu takes it) as the wire's milliseconds."""
    return None if seconds is None else str(max(round(float(seconds) * 1000), 0))


def _signal_body(f: tuple[Any, ...]) -> tuple[tuple[Any, ...], Any, dict[str, Any]]:
    """The protocol-v2 body as Celery's publish signals carry it: (args, kwargs, embed)."""
    return tuple(f[_ARGS]), f[_KWARGS], {'callbacks': f[23], 'errbacks': f[24], 'chain': f[25], 'chord': f[26]}


def _publish_signalled() -> bool:
    """Whether `_after_publish` has receivers to call (after_task_publish, or the deprecated task_sent)."""
    return bool(signals.after_task_publish.receivers or signals.task_sent.receivers)


def _after_publish(messages: Sequence[_Message], outgoing: Sequence[Outgoing]) -> None:
    for m, out in zip(messages, outgoing, strict=True):
        f = m.fields
        headers = out.message.headers if out.message is not None else None
        signals.after_task_publish.send(
            sender=f[_NAME],
            body=_signal_body(f),
            headers=headers,
            exchange=f[_EXCHANGE],
            routing_key=f[_ROUTING_KEY],
        )
        if signals.task_sent.receivers:  # (deprecated in Celery, still sent by it: its arguments)
            signals.task_sent.send(
                sender=f[_NAME], task_id=f[0], task=f[_NAME], args=tuple(f[_ARGS]), kwargs=f[_KWARGS], eta=f[3],
                taskset=f[5],
            )  # fmt: skip


def _add_to_parent(parent: Task[Any, Any], messages: Sequence[_Message]) -> None:
    if parent.trail:
        parent.request.children.extend(m.result for m in messages if m.plan.add_to_parent)


class _Single:
    """One task being sent: its message and envelope built, its publish still to do (sync or async)."""

    __slots__ = ('context', 'messages', 'outgoing', 'plan', 'retry_policy')

    def __init__(
        self,
        app: Fastq,
        name: str,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        task_type: Task[Any, Any] | None,
        kw: Mapping[str, Any],
        options: Mapping[str, Any],
    ) -> None:
        if task_type is None and app.conf.task_always_eager:
            warnings.warn(AlwaysEagerIgnored('task_always_eager has no effect on send_task'), stacklevel=4)
        # Routed by the task's own name (a shadow name is for display), or by `route_name` (map's inner task)
        plan = self.plan = plan_for(app, name, kw.get('route_name') or name, task_type, options, args, kwargs)
        task_id = kw.get('task_id')
        if task_id:
            tag = protocol.new_ids(1)[0]
        else:
            task_id, tag = protocol.new_ids(2)
        context = self.context = _Context(app)
        self.messages = [context.prepare(plan, name, args, kwargs, kw, task_id, tag)]
        policies: list[dict[str, Any]] = []
        self.outgoing = _outgoing(self.messages, policies)
        # The publish follows the retry policy as a `before_task_publish` receiver left it (Celery publishes
        # with the dict its receivers were handed).
        self.retry_policy = policies[0] if policies else plan.retry_policy

    def published(self) -> AsyncResult[Any]:
        if _publish_signalled():
            _after_publish(self.messages, self.outgoing)
        if self.plan.add_to_parent and self.context.parent is not None:
            _add_to_parent(self.context.parent, self.messages)
        result = self.messages[0].result
        if not result.ignored:
            result.backend.sent(result)
        return result


def send_task_message(
    app: Fastq,
    name: str,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    task_type: Task[Any, Any] | None,
    kw: Mapping[str, Any],
    options: Mapping[str, Any],
) -> AsyncResult[Any]:
    """Send one task: `kw` holds its `SEND_KEYWORDS`, `options` the rest of the call's options."""
    single = _Single(app, name, args, kwargs, task_type, kw, options)
    publish_with_retry(app, single.outgoing, retry=single.plan.retry, policy=single.retry_policy)
    if app.conf.task_send_sent_event:
        send_sent_events(app, single.messages)
    return single.published()


async def asend_task_message(
    app: Fastq,
    name: str,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    task_type: Task[Any, Any] | None,
    kw: Mapping[str, Any],
    options: Mapping[str, Any],
) -> AsyncResult[Any]:
    """`send_task_message` for the asyncio client: the message is built as for the sync call (CPU only),
    then published through the broker's `apublish` on the running loop."""
    single = _Single(app, name, args, kwargs, task_type, kw, options)
    await apublish_with_retry(app, single.outgoing, retry=single.plan.retry, policy=single.retry_policy)
    return single.published()


#: One message of a batch: `(name, task_type, args, kwargs, keywords, options)`, `keywords` holding the
#: call's `SEND_KEYWORDS` (task_id may be None: one is made) and `options` the rest of its options.
BatchCall = tuple[str, 'Task[Any, Any] | None', tuple[Any, ...], dict[str, Any], dict[str, Any], dict[str, Any]]


def send_batch(app: Fastq, calls: Sequence[BatchCall]) -> list[AsyncResult[Any]]:
    """Send many tasks in one publish: every one is on the broker when this returns without error.

    Plans are resolved once per distinct task and options, ids come from one read of the random source,
    and Rust builds the envelopes, all in one call or, for a batch larger than `STREAM_PART`, one call per
    part, each part written to the broker (when it can take a `publish_stream`) while the next is built.
    """
    if not calls:
        return []
    with gc_paused(len(calls)):
        return _send_batch(app, calls)


def _send_batch(app: Fastq, calls: Sequence[BatchCall]) -> list[AsyncResult[Any]]:
    context = _Context(app)
    uniform = _send_uniform(app, context, calls)
    if uniform is not None:
        return uniform
    prepare = _Preparer(app, context, calls)
    messages: list[_Message] = []
    outgoing: list[Outgoing] = []
    stream = app.broker.publish_stream() if len(calls) > STREAM_PART and not app.rpc_results else None
    step = STREAM_PART if stream is not None else len(calls)
    # A streamed part's envelopes are dropped once written (unless publish signals saw them): the next
    # part's reuse their memory, where keeping them all made the first large batch of a process page-fault
    # its way through a fresh megabyte per thousand tasks.
    keep = stream is None or bool(signals.before_task_publish.receivers or _publish_signalled())
    try:
        for start in range(0, len(calls), step):
            prepare.into(messages, start, min(start + step, len(calls)))
            part = _outgoing(messages[start:])
            if keep:
                outgoing += part
            if stream is not None:
                stream.add(part)
    except BaseException:
        if stream is not None:
            stream.abort()
        raise
    first = messages[0].plan
    if stream is None or not stream.finish():  # a connection lost while streaming: once more, with retries
        if not outgoing:
            outgoing = _outgoing(messages)  # the same envelopes: their ids and tags are in the fields
        publish_with_retry(app, outgoing, retry=first.retry, policy=first.retry_policy)
    if app.conf.task_send_sent_event:
        send_sent_events(app, messages)
    if _publish_signalled():
        _after_publish(messages, outgoing)
    if context.parent is not None:
        _add_to_parent(context.parent, messages)
    results = [m.result for m in messages]
    waited = [r for r in results if not r.ignored]
    if waited:  # so that collecting them reads the next ones ahead (Redis), as for single sends
        _sent(app, waited, prepare.plans.values())
    return results


def _send_uniform(app: Fastq, context: _Context, calls: Sequence[BatchCall]) -> list[AsyncResult[Any]] | None:
    """`_send_batch` for a batch whose calls are all alike (a group of one task, the usual large batch):
    one plan, keywords that `prepare_plain` covers, nothing to tell (signals, task-sent events, a parent
    task). Rust reads the calls themselves and writes the envelopes from one template (no message tuple,
    `_Message` or `Outgoing` per task, a third of a large group's time); the same bytes as the general path.
    None when the batch is not such a batch (checked before anything is sent)."""
    if context.parent is not None or app.conf.task_send_sent_event:
        return None
    if signals.before_task_publish.receivers or _publish_signalled():
        return None
    calls = calls if type(calls) is list else list(calls)
    if protocol.uniform_run(calls, 0, PLAIN_KEYWORDS) != len(calls):
        return None
    name, task_type, args, kwargs, _, options = calls[0]
    plan = plan_for(app, name, name, task_type, options, args, kwargs)
    if not plan.native or plan.expires is not None:
        return None
    template = context.plain_template(plan, name)
    ids = protocol.new_ids(2 * len(calls))
    sent_at = time.monotonic()
    priority = template[31]
    task_ids: list[str] = []
    stream = app.broker.publish_stream() if len(calls) > STREAM_PART and not app.rpc_results else None
    if stream is not None:
        try:
            for start in range(0, len(calls), STREAM_PART):
                stop = min(start + STREAM_PART, len(calls))
                envelopes, part_ids = protocol.uniform_envelopes(template, calls, start, stop, ids)
                stream.add_envelopes(
                    plan.queue, plan.exchange, plan.routing_key, priority, plan.delivery_mode, envelopes
                )
                task_ids += part_ids
        except BaseException:
            stream.abort()
            raise
    if stream is None or not stream.finish():  # a connection lost while streaming: once more, with retries
        envelopes, task_ids = protocol.uniform_envelopes(template, calls, 0, len(calls), ids)
        outgoing = alike_outgoing(plan.queue, plan.exchange, plan.routing_key, priority, plan.delivery_mode, envelopes)
        publish_with_retry(app, outgoing, retry=plan.retry, policy=plan.retry_policy)
    factory, ignored = plan.result_factory, plan.ignore_result
    if factory is None:
        results = app.AsyncResult._of_sent(task_ids, app, name, ignored, sent_at)
    else:
        results = [factory(task_id) for task_id in task_ids]
        for result in results:
            result.ignored = ignored
            result.sent_at = sent_at
    if not ignored:
        _sent(app, results, (plan,))
    return results


def _sent(app: Fastq, results: list[AsyncResult[Any]], plans: Iterable[SendPlan]) -> None:
    """Tell each result's backend its task was sent: the app's, unless a plan makes results of their own kind
    (which may read from a task's own backend)."""
    if any(plan.result_factory is not None for plan in plans):
        for result in results:
            result.backend.sent(result)
        return
    app.backend.sent_many(results)


class _Preparer:
    """The messages of a batch's calls, with ids from one read of the random source and plans resolved once
    per distinct task and options (calls that share one `options` dict share its plan without hashing it)."""

    def __init__(self, app: Fastq, context: _Context, calls: Sequence[BatchCall]) -> None:
        self.app = app
        self.context = context
        self.calls = calls
        self.ids = protocol.new_ids(2 * len(calls))
        self.plans: dict[tuple[Any, ...], SendPlan] = {}
        self.sent_at = time.monotonic()

    def into(self, messages: list[_Message], start: int, stop: int) -> None:
        """Append the messages of calls `start` to `stop` to `messages`."""
        app, calls, ids, plans, sent_at = self.app, self.calls, self.ids, self.plans, self.sent_at
        prepare, prepare_plain = self.context.prepare, self.context.prepare_plain
        plain_ok = self.context.parent is None
        append = messages.append
        last: tuple[Any, ...] = ()
        plan: SendPlan | None = None
        for i in range(start, stop):
            name, task_type, args, kwargs, kw, options = calls[i]
            route_name = kw.get('route_name')
            key = (name, route_name, id(task_type), id(options))
            if key != last:  # runs of calls alike (a group of one task) skip the lookup
                plan = plans.get(key)
                if plan is None:
                    plan = plans[key] = plan_for(app, name, route_name or name, task_type, options, args, kwargs)
                last = key
            assert plan is not None
            task_id = kw.get('task_id') or ids[2 * i]
            if plain_ok and kw.keys() <= PLAIN_KEYWORDS and plan.expires is None:
                append(prepare_plain(plan, name, args, kwargs, kw, task_id, ids[2 * i + 1], sent_at))
            else:
                append(prepare(plan, name, args, kwargs, kw, task_id, ids[2 * i + 1]))


def send_sent_events(app: Fastq, messages: Sequence[_Message]) -> None:
    """`task-sent` events (task_send_sent_event), as Celery's producer sends them; never fails the send."""
    dispatcher = app.__dict__.get('_sent_dispatcher')
    if dispatcher is None:
        dispatcher = app.__dict__['_sent_dispatcher'] = app.events.Dispatcher()
    for m in messages:
        f, plan = m.fields, m.plan
        try:
            dispatcher.send('task-sent', uuid=f[0], name=f[1], args=f[12] or saferepr(f[_ARGS]),
                            kwargs=f[13] or saferepr(f[_KWARGS]), retries=f[7], eta=f[3], expires=f[4],
                            queue=plan.queue, exchange=f[_EXCHANGE], routing_key=f[_ROUTING_KEY], root_id=f[10],
                            parent_id=f[11])  # fmt: skip
        except Exception as exc:
            logger.warning('Cannot send task-sent for %s: %s', f[0], exc)


class _Retrying:
    """Celery's publish retry policy (`task_publish_retry`, `task_publish_retry_policy`), read only after a
    first failure: the first attempt costs nothing but the publish."""

    def __init__(self, app: Fastq, retry: bool | None, policy: dict[str, Any] | None) -> None:
        conf = app.conf
        self.broker = app.broker
        self.retry = conf.task_publish_retry if retry is None else retry
        policy = retry_policy_in_force(conf, policy)
        self.max_retries = policy.get('max_retries', 3)
        self.interval = float(policy.get('interval_start', 0))
        self.step = float(policy.get('interval_step', 0.2))
        self.interval_max = float(policy.get('interval_max', 1))
        self.attempt = 0

    def next_delay(self, error: Exception) -> float:
        """Seconds to wait before the next attempt; raises OperationalError when the policy is exhausted."""
        self.attempt += 1
        broker = self.broker
        if not self.retry or (self.max_retries is not None and self.attempt > self.max_retries):
            where, said = broker.describe(), str(error)  # (a connection error already names the URL: once)
            raise publish_failed(
                f'cannot publish to {said if said.startswith(where) else f"{where}: {said}"}'
            ) from error
        delay = self.interval
        logger.warning('Publishing to %s failed (%s); retry %d in %.2fs', broker.describe(), error, self.attempt, delay)
        self.interval = min(self.interval + self.step, self.interval_max)
        return delay


def _retriable(exc: Exception, policy: dict[str, Any] | None = None) -> bool:
    # sqlite3.OperationalError (a locked or unreadable file) is matched by name: sqlite3 need not be loaded.
    # RabbitMQ refusing a declaration or a route (406, 404) will refuse it again: not retried.
    if isinstance(exc, AMQPChannelError):
        return False
    extra = (policy or {}).get('retry_errors')  # the policy's own (kombu's `retry_errors`), besides these
    if extra and isinstance(exc, tuple(extra) if isinstance(extra, list | tuple | set) else extra):
        return True
    return (
        isinstance(exc, BrokerConnectionError | OperationalError | OSError) or type(exc).__name__ == 'OperationalError'
    )


def publish_with_retry(
    app: Fastq, batch: Sequence[Outgoing], retry: bool | None = None, policy: dict[str, Any] | None = None
) -> None:
    """Publish, retrying on connection errors per `task_publish_retry_policy` (Celery's semantics)."""
    broker = app.broker
    if app.rpc_results:
        app.backend.on_task_call()  # rpc://: the reply queue must exist before a worker can answer
    retrying = None
    while True:
        try:
            broker.publish(batch)
            return
        except Exception as exc:
            if not _retriable(exc, policy or app.conf.task_publish_retry_policy):
                raise
            retrying = retrying or _Retrying(app, retry, policy)
            time.sleep(retrying.next_delay(exc))


async def apublish_with_retry(
    app: Fastq, batch: Sequence[Outgoing], retry: bool | None = None, policy: dict[str, Any] | None = None
) -> None:
    """`publish_with_retry` on the running event loop (`Broker.apublish`, waits with asyncio.sleep)."""
    broker = app.broker
    if app.rpc_results:
        await asyncio.get_running_loop().run_in_executor(None, app.backend.on_task_call, app.thread_oid)
    retrying = None
    while True:
        try:
            await broker.apublish(batch)
            return
        except Exception as exc:
            if not _retriable(exc, policy or app.conf.task_publish_retry_policy):
                raise
            retrying = retrying or _Retrying(app, retry, policy)
            await asyncio.sleep(retrying.next_delay(exc))
