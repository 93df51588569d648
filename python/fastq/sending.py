"""From `send_task(...)` to a message on the broker: options resolved once, the message built in Rust.

Order of precedence for every option, as in Celery: the call's keyword, then the task's attribute (its
decorator option), then `task_routes`, then the app's settings.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from fastq import protocol, signals
from fastq.brokers.base import Outgoing
from fastq.exceptions import AlwaysEagerIgnored, BrokerConnectionError, OperationalError
from fastq.utils.time import to_timestamp

if TYPE_CHECKING:
    from fastq.app import Fastq
    from fastq.result import AsyncResult
    from fastq.task import Task

logger = logging.getLogger('fastq.sending')

_DELIVERY_MODES = {'persistent': 2, 'transient': 1}


def _as_list(value: Any) -> list[Any] | None:
    if value is None:
        return None
    if isinstance(value, list | tuple):
        return list(value) or None
    return [value]


def _exec_options_of(app: Fastq, name: str) -> dict[str, Any]:
    task = app.tasks.get(name)
    return task._exec_options() if task is not None else {}


def send_task_message(
    app: Fastq,
    name: str,
    *,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    countdown: float | None,
    eta: Any,
    task_id: str,
    expires: Any,
    link: Any,
    link_error: Any,
    group_id: str | None,
    group_index: int | None,
    retries: int,
    chord: Any,
    chain: Any,
    reply_to: str | None,
    time_limit: float | None,
    soft_time_limit: float | None,
    root_id: str | None,
    parent_id: str | None,
    shadow: str | None,
    task_type: Task[Any, Any] | None,
    replaced_task_nesting: int,
    options: dict[str, Any],
) -> AsyncResult[Any]:
    conf = app.conf
    if task_type is None:
        if conf.task_always_eager:
            import warnings

            warnings.warn(AlwaysEagerIgnored('task_always_eager has no effect on send_task'), stacklevel=3)
        options = {**_exec_options_of(app, name), **options}
    time_limit = time_limit if time_limit is not None else options.pop('time_limit', None)
    soft_time_limit = soft_time_limit if soft_time_limit is not None else options.pop('soft_time_limit', None)
    if expires is None:
        expires = options.pop('expires', None)
    ignore_result = bool(options.pop('ignore_result', False))
    options = app.router.route(options, shadow or name, args, kwargs, task_type)

    tz = app.timezone
    now = app.now()
    eta_header = protocol.resolve_eta(countdown, eta, now, tz)
    expires_header, expiration = protocol.resolve_expires(expires, now, tz)
    if expiration == '0':
        logger.warning('%s has an expiration date in the past; it will be revoked when received', task_id)

    root_id, parent_id = _lineage(app, root_id, parent_id, options)

    serializer = options.get('serializer') or conf.task_serializer
    compression = options.get('compression') or conf.task_compression
    stamped_headers = options.get('stamped_headers')
    message = protocol.build_task_message(
        task_id=task_id,
        name=name,
        args=args,
        kwargs=kwargs,
        embed={
            'callbacks': _as_list(link),
            'errbacks': _as_list(link_error),
            'chain': chain,
            'chord': chord,
        },
        serializer=serializer,
        compression=compression,
        eta=eta_header,
        expires=expires_header,
        reply_to=reply_to or app.thread_oid,
        origin=app.origin,
        root_id=root_id,
        parent_id=parent_id,
        shadow=shadow,
        group_id=group_id,
        group_index=group_index,
        retries=retries,
        time_limit=time_limit,
        soft_time_limit=soft_time_limit,
        ignore_result=ignore_result,
        replaced_task_nesting=replaced_task_nesting,
        stamped_headers=stamped_headers,
        stamps={h: options[h] for h in stamped_headers or () if h in options},
        headers=options.get('headers'),
    )

    out = _outgoing(app, message, options, expiration, to_timestamp(eta_header, tz))
    exchange, routing_key = out.exchange, out.routing_key
    if signals.before_task_publish.receivers:
        signals.before_task_publish.send(
            sender=name,
            body=(list(args), kwargs, None),
            exchange=exchange,
            routing_key=routing_key,
            headers=message.headers,
            properties=message.properties,
            declare=[],
            retry_policy=options.get('retry_policy'),
        )
    publish_with_retry(app, [out], retry=options.get('retry'), policy=options.get('retry_policy'))
    if signals.after_task_publish.receivers:
        signals.after_task_publish.send(
            sender=name,
            body=(list(args), kwargs, None),
            headers=message.headers,
            exchange=exchange,
            routing_key=routing_key,
        )
    result = app.AsyncResult(task_id, task_name=name)
    result.ignored = ignore_result
    if options.get('add_to_parent', True):
        parent = app.current_worker_task
        if parent is not None and parent.trail:
            parent.request.children.append(result)
    return result


def _lineage(
    app: Fastq, root_id: str | None, parent_id: str | None, options: dict[str, Any]
) -> tuple[str | None, str | None]:
    """root_id/parent_id of a task sent from inside a task (and the parent's priority, if inherited)."""
    if root_id and parent_id:
        return root_id, parent_id
    parent = app.current_worker_task
    if parent is None:
        return root_id, parent_id
    if app.conf.task_inherit_parent_priority:
        options.setdefault('priority', (parent.request.delivery_info or {}).get('priority'))
    return root_id or parent.request.root_id or parent.request.id, parent_id or parent.request.id


def _outgoing(app: Fastq, message: Any, options: dict[str, Any], expiration: str | None, eta: float | None) -> Outgoing:
    conf = app.conf
    priority = options.get('priority')
    if priority is None:
        priority = conf.task_default_priority or 0
    delivery_mode = options.get('delivery_mode') or conf.task_default_delivery_mode
    delivery_mode = _DELIVERY_MODES.get(delivery_mode, delivery_mode)
    queue = options['queue']
    exchange = options.get('exchange') or ''
    if exchange == queue:
        # Celery publishes to a direct exchange named like the queue through the default exchange.
        exchange = ''
    return Outgoing(
        message=message,
        queue=queue,
        exchange=exchange,
        routing_key=options.get('routing_key') or queue,
        priority=int(priority),
        delivery_mode=int(delivery_mode),
        expiration=expiration,
        eta=eta,
    )


def publish_with_retry(
    app: Fastq, batch: Sequence[Outgoing], retry: bool | None = None, policy: dict[str, Any] | None = None
) -> None:
    """Publish, retrying on connection errors per `task_publish_retry_policy` (Celery's semantics)."""
    conf = app.conf
    retry = conf.task_publish_retry if retry is None else retry
    policy = {**(conf.task_publish_retry_policy or {}), **(policy or {})}
    max_retries = policy.get('max_retries', 3)
    interval = float(policy.get('interval_start', 0))
    step = float(policy.get('interval_step', 0.2))
    interval_max = float(policy.get('interval_max', 1))
    attempt = 0
    broker = app.broker
    while True:
        try:
            broker.publish(batch)
            return
        except (BrokerConnectionError, OperationalError, OSError) as exc:
            error: Exception = exc
        except Exception as exc:  # e.g. sqlite3.OperationalError from a locked or unreadable file
            if type(exc).__name__ != 'OperationalError':
                raise
            error = exc
        attempt += 1
        if not retry or (max_retries is not None and attempt > max_retries):
            raise OperationalError(f'cannot publish to {broker.describe()}: {error}') from error
        logger.warning('Publishing to %s failed (%s); retry %d in %.2fs', broker.describe(), error, attempt, interval)
        time.sleep(interval)
        interval = min(interval + step, interval_max)
