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
that failed, timed out or whose process was lost.
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
        self.id = self.task_id = self.correlation_id = request.id
        self.name = self.task_name = request.task
        self.hostname = job.hostname
        self.root_id = request.root_id
        self.parent_id = request.parent_id
        self.group = request.group
        # (Celery's are aware datetimes, as the message's ISO 8601 strings read)
        self.eta = None if request.eta is None else datetime.fromtimestamp(request.eta, UTC)
        self.expires = None if request.expires is None else datetime.fromtimestamp(request.expires, UTC)
        self.time_limits = (job.time_limit, job.soft_time_limit)

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
    def reply_to(self) -> str | None:
        return self._properties().get('reply_to')

    def _properties(self) -> dict[str, Any]:
        message = self._job.delivery.message
        return message.properties if message is not None else {}

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
        """The message's headers (decoded on first use: the parent does not otherwise read them all)."""
        message = self._job.delivery.message
        return dict(message.headers) if message is not None else {}

    @property
    def args(self) -> Any:
        return self._body()[0]

    @property
    def kwargs(self) -> Any:
        return self._body()[1]

    def _body(self) -> tuple[Any, Any]:
        from fastq import protocol
        from fastq.serialization import accept_set

        message = self._job.delivery.message
        if message is None:
            return (), {}
        accept = accept_set([message.content_type])
        args, kwargs, _ = protocol.decode_body(
            message.body, message.content_type, message.headers.get('compression'), accept
        )
        return args, kwargs

    def on_timeout(self, soft: bool, timeout: float | None) -> None:
        """The task ran over its time limit (`soft` False: the parent killed it)."""

    def on_failure(self, exc_info: ExceptionInfo, send_failed_event: bool = True, return_ok: bool = False) -> None:
        """The task failed, timed out or its process was lost."""

    def __repr__(self) -> str:
        return f'<{type(self).__name__}: {self.name}[{self.id}]>'
