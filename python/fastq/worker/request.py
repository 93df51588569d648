"""Custom requests (Celery's "Requests and custom requests"): hooks a task class runs in the worker's parent.

A task's code runs in a pool child; what happens to the task from outside it (its hard time limit enforced,
the child running it lost, the failure it reported) is seen by the parent process. Celery lets a task class
name a `Request` subclass whose `on_timeout` and `on_failure` run there, to log or alert on those events:

    class MyRequest(Request):
        def on_timeout(self, soft, timeout):
            super().on_timeout(soft, timeout)
            if not soft:
                logger.warning('A hard timeout was enforced for task %s', self.task.name)

    class MyTask(Task):
        Request = MyRequest      # or 'my.package:MyRequest'

fastq's worker keeps its own bookkeeping (results, acks, events) outside these hooks, so the base methods
do nothing and overriding them changes nothing else; calling `super()` is harmless. `on_timeout` is called
for hard limits (the parent enforces those; a soft limit is raised inside the task), `on_failure` for a task
that failed, timed out or whose process was lost. On a hard limit, as in Celery 5.7, `on_failure` comes first
(FAILURE stored, `task_failure` sent before it), then the task's own `on_failure` and `after_return` run in
this process (the child running the task was killed), then `on_timeout`.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from fastq.worker.job import Job

__all__ = ['DEFAULT_REQUEST', 'ExceptionInfo', 'Request']

#: What `Task.Request` names unless a task class sets its own.
DEFAULT_REQUEST = 'fastq.worker.request:Request'


class ExceptionInfo:
    """What `on_failure` gets as `exc_info` (Celery's `billiard.einfo.ExceptionInfo`, reduced): the exception
    (as raised in the parent; for a failure inside the task, one that carries its repr), its type and the
    traceback text."""

    def __init__(self, exception: BaseException, traceback: str | None = None) -> None:
        self.exception = exception
        self.type = type(exception)
        self.traceback = traceback or ''
        self.internal = False

    def __str__(self) -> str:
        return self.traceback

    def __repr__(self) -> str:
        return f'<ExceptionInfo: {self.exception!r}>'


class Request:
    """One task delivery as the worker's parent sees it (Celery's `celery.worker.request.Request` names)."""

    def __init__(self, job: Job, task: Any, app: Any) -> None:
        self._job = job
        self.task = task
        self.app = app
        request = job.request
        self.id = self.task_id = request.id
        self.type = request.task  # (the registered name; `name` is the one shown, a shadow name if it has one)
        self.name = self.task_name = request.shadow or request.task
        self.argsrepr = request.argsrepr
        self.kwargsrepr = request.kwargsrepr
        self.hostname = job.hostname
        self.root_id = request.root_id
        self.parent_id = request.parent_id
        self.group = request.group
        # (Celery's are aware datetimes, as the message's ISO 8601 strings read)
        self.eta = None if request.eta is None else datetime.fromtimestamp(request.eta, UTC)
        self.expires = None if request.expires is None else datetime.fromtimestamp(request.expires, UTC)
        self._time_limits: Any = None

    # Celery's: the message's times are read as UTC.
    utc = True

    @property
    def tzlocal(self) -> Any:
        return self.app.conf.timezone

    @property
    def content_type(self) -> str | None:
        message = self._job.delivery.message
        return message.content_type if message is not None else None

    @property
    def content_encoding(self) -> str | None:
        message = self._job.delivery.message
        return getattr(message, 'content_encoding', None) if message is not None else None

    @property
    def ignore_result(self) -> bool:
        """The message's `ignore_result`, or the task's when the message leaves it to it (Celery's)."""
        value = self._headers().get('ignore_result')
        if value is None:
            return bool(getattr(self.task, 'ignore_result', False))
        return bool(value)

    @property
    def store_errors(self) -> bool:
        return not self.ignore_result or bool(getattr(self.task, 'store_errors_even_if_ignored', False))

    @property
    def group_index(self) -> int | None:
        return self._headers().get('group_index')

    @property
    def time_limits(self) -> Any:
        """Celery's: the message's `timelimit` header as sent (a list), `(None, None)` without one; not the
        limits the worker enforces when the message has none (the task's, or the worker's own)."""
        if self._time_limits is not None:
            return self._time_limits
        return self._headers().get('timelimit') or (None, None)

    @time_limits.setter
    def time_limits(self, value: Any) -> None:
        self._time_limits = value

    @property
    def replaced_task_nesting(self) -> int:
        return self._headers().get('replaced_task_nesting') or 0

    @property
    def groups(self) -> list[str]:
        groups: list[str] = self._headers().get('groups', [])
        return groups

    @property
    def stamped_headers(self) -> list[str]:
        return self._headers().get('stamped_headers') or []

    @property
    def stamps(self) -> dict[str, Any]:
        stamps = self._headers().get('stamps') or {}
        return {header: stamps.get(header) for header in self.stamped_headers}

    @property
    def chord(self) -> Any:
        return self._embed().get('chord')

    @property
    def errbacks(self) -> Any:
        return self._embed().get('errbacks')

    def _headers(self) -> dict[str, Any]:
        message = self._job.delivery.message
        return message.headers if message is not None else {}

    @property
    def delivery_info(self) -> dict[str, Any]:
        """Celery's: exchange, routing key, priority, redelivered (from the message's properties)."""
        delivery = self._job.delivery
        properties = self._properties()
        info = properties.get('delivery_info') or {}
        return {
            'exchange': info.get('exchange', ''),
            'routing_key': info.get('routing_key', delivery.queue),
            'priority': properties.get('priority'),
            'redelivered': delivery.redelivered,
        }

    @property
    def correlation_id(self) -> str | None:
        """Celery's: the message's correlation_id property (a client's task id, unless it sent another)."""
        return self._properties().get('correlation_id')

    @property
    def reply_to(self) -> str | None:
        return self._properties().get('reply_to')

    def _properties(self) -> dict[str, Any]:
        message = self._job.delivery.message
        return message.properties if message is not None else {}

    def _celery_properties(self) -> dict[str, Any]:
        """The properties as Celery's request_dict has them (py-amqp's on RabbitMQ: see amqp_properties)."""
        from fastq.brokers.amqp_properties import celery_properties

        message = self._job.delivery.message
        if message is None:
            return {}
        return celery_properties(message)

    @property
    def message(self) -> Any:
        """Celery's: the delivery as kombu's Message reads it (headers, properties, body, delivery_info,
        delivery_tag, payload, decode(), acknowledged), None for one whose message could not be read."""
        from fastq.worker.message import ReceivedMessage

        delivery = self._job.delivery
        if delivery.message is None:
            return None
        received = self.__dict__.get('_message')
        if received is None:
            received = self.__dict__['_message'] = ReceivedMessage(delivery, delivery.message)
        received.acknowledged = self._job.acked  # (settled after task_received, as Celery's)
        return received

    @property
    def worker_pid(self) -> int | None:
        return self._job.pid

    @property
    def time_start(self) -> float | None:
        return self._job.started

    @property
    def acknowledged(self) -> bool:
        return self._job.acked

    @property
    def request_dict(self) -> dict[str, Any]:
        """Celery's: the message's headers with its properties, reply_to, correlation_id, hostname,
        delivery_info, args and kwargs (decoded on first use: the parent does not otherwise read them all)."""
        properties = self._properties()
        args, kwargs, _ = self._payload()
        return {
            **self._headers(),
            'properties': self._celery_properties(),
            'reply_to': properties.get('reply_to'),
            'correlation_id': properties.get('correlation_id'),
            'hostname': self.hostname,
            'delivery_info': self.delivery_info,
            'args': args,
            'kwargs': kwargs,
        }

    @property
    def args(self) -> Any:
        return self._payload()[0]

    @property
    def kwargs(self) -> Any:
        return self._payload()[1]

    def _embed(self) -> dict[str, Any]:
        return self._payload()[2] or {}

    def _payload(self) -> tuple[Any, Any, Any]:
        from fastq import protocol
        from fastq.serialization import accept_set

        message = self._job.delivery.message
        if message is None:
            return (), {}, {}
        accept = accept_set([message.content_type])
        return protocol.decode_body(message.body, message.content_type, message.headers.get('compression'), accept)

    def on_timeout(self, soft: bool, timeout: float | None) -> None:
        """The task ran over its time limit (`soft` False: the parent killed it)."""

    def on_failure(self, exc_info: ExceptionInfo, send_failed_event: bool = True, return_ok: bool = False) -> None:
        """The task failed, timed out or its process was lost."""

    def __repr__(self) -> str:
        return f'<{type(self).__name__}: {self.name}[{self.id}]>'
