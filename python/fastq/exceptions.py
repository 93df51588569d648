"""Every public exception of fastq, with Celery's names and hierarchy.

Code written for Celery catches these by name (`from celery.exceptions import Retry`), so the classes keep
Celery's bases and constructor signatures; `TimeLimitExceeded`, `SoftTimeLimitExceeded` and `WorkerLostError`
come from billiard in Celery and are defined here. Compiled modules never define exceptions of their own.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

__all__ = [
    'AMQPChannelError',
    'AlwaysEagerIgnored',
    'BackendError',
    'BackendGetMetaError',
    'BackendStoreError',
    'DuplicateNodenameWarning',
    'DuplicateTaskNameWarning',
    'BrokerConnectionError',
    'CDeprecationWarning',
    'CPendingDeprecationWarning',
    'CeleryError',
    'ChordError',
    'ContentDisallowed',
    'DecodeError',
    'EncodeError',
    'FastqError',
    'FastqWarning',
    'FixupWarning',
    'Ignore',
    'ImproperlyConfigured',
    'IncompleteStream',
    'InvalidTaskError',
    'MaxRetriesExceededError',
    'NotConfigured',
    'NotRegistered',
    'OperationalError',
    'QueueNotFound',
    'Reject',
    'Retry',
    'SecurityError',
    'SecurityWarning',
    'SerializerNotInstalled',
    'SoftTimeLimitExceeded',
    'TaskError',
    'TaskPredicate',
    'TaskRevokedError',
    'Terminated',
    'TimeLimitExceeded',
    'UndeliverableWarning',
    'TimeoutError',
    'WorkerLostError',
    'WorkerShutdown',
    'WorkerTerminate',
]


class FastqWarning(UserWarning):
    """Base class for fastq's warnings."""


CeleryWarning = FastqWarning


class CDeprecationWarning(DeprecationWarning):
    """Celery's: something Celery deprecated and still accepts (e.g. `Signal.disconnect(weak=...)`); a
    DeprecationWarning, as Celery's, so `warnings.filterwarnings` written against either category applies."""


class CPendingDeprecationWarning(PendingDeprecationWarning):
    """Celery's: something Celery will deprecate."""


class AlwaysEagerIgnored(FastqWarning):
    """`send_task` ignores `task_always_eager`."""


class SecurityWarning(FastqWarning):
    """Potential security issue found (a worker running as root)."""


class DuplicateNodenameWarning(FastqWarning):
    """Several workers answered under one node name (give each its own with `-n`)."""


class DuplicateTaskNameWarning(FastqWarning):
    """Two callables registered under one task name (Celery 5.7's): the message says which one calls reach."""


class FixupWarning(FastqWarning):
    """A fixup's warning (Celery's, for `warnings.filterwarnings` written against it)."""


class NotConfigured(FastqWarning):
    """No configuration module was found (Celery's, for `warnings.filterwarnings` written against it)."""


class UndeliverableWarning(FastqWarning):
    """A message sent to an exchange no queue is bound to went to the `deadletter_queue` transport option
    (kombu's virtual transports' warning, in its words); without that option the message is dropped."""


class FastqError(Exception):
    """Base class for fastq's errors."""


CeleryError = FastqError


class TaskPredicate(FastqError):
    """Base class for exceptions a task raises to steer the worker rather than to fail."""


class Retry(TaskPredicate):
    """The task is to be retried later (raised by `Task.retry`)."""

    message: str | None = None
    exc: BaseException | None = None
    excs: str | None = None
    when: float | datetime | None = None
    #: Set once the RETRY state is stored (Task.retry stores it before sending the next run).
    state_stored: bool = False

    def __init__(
        self,
        message: str | None = None,
        exc: BaseException | str | None = None,
        when: float | datetime | None = None,
        is_eager: bool = False,
        sig: Any = None,
        **kwargs: Any,
    ) -> None:
        self.message = message
        if isinstance(exc, str):
            self.exc = None
            self.excs = exc
        else:
            self.exc = exc
            self.excs = repr(exc) if exc else None
        self.when = when
        self.is_eager = is_eager
        self.sig = sig
        super().__init__(self, exc, when, **kwargs)

    def humanize(self) -> str:
        if isinstance(self.when, int | float):
            return f'in {self.when}s'
        return f'at {self.when}'

    def __str__(self) -> str:
        if self.message:
            return self.message
        if self.excs:
            return f'Retry {self.humanize()}: {self.excs}'
        return f'Retry {self.humanize()}'

    def __reduce__(self) -> tuple[Any, ...]:
        return self.__class__, (self.message, self.exc, self.when)


RetryTaskError = Retry


class Ignore(TaskPredicate):
    """A task raises this to skip storing any state for this run."""


class Reject(TaskPredicate):
    """A task raises this to reject its message, optionally requeueing it."""

    def __init__(self, reason: Any = None, requeue: bool = False) -> None:
        self.reason = reason
        self.requeue = requeue
        super().__init__(reason, requeue)

    def __repr__(self) -> str:
        return f'reject requeue={self.requeue}: {self.reason}'


class ImproperlyConfigured(FastqError):
    """A setting is missing, unknown or has a bad value; the message names the setting."""


class SecurityError(FastqError):
    """Security related error (e.g. a stored exception that is not an exception class)."""


class TaskError(FastqError):
    """Task related errors."""


class QueueNotFound(KeyError, TaskError):
    """A task was routed to a queue that is not configured."""


class IncompleteStream(TaskError):
    """Found the end of a stream of data, but the data isn't complete."""


class NotRegistered(KeyError, TaskError):
    """The task is not registered."""

    def __repr__(self) -> str:
        return f"Task of kind {self} never registered, please make sure it's imported."


class AlreadyRegistered(TaskError):
    """The task is already registered."""


class TimeoutError(TaskError):
    """The operation timed out (e.g. `AsyncResult.get(timeout=...)`)."""


class MaxRetriesExceededError(TaskError):
    """The task's `max_retries` has been exceeded."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.task_args = kwargs.pop('task_args', [])
        self.task_kwargs = kwargs.pop('task_kwargs', {})
        super().__init__(*args, **kwargs)


class TaskRevokedError(TaskError):
    """The task has been revoked, so no result is available."""


class InvalidTaskError(TaskError):
    """The task message has invalid data or is not properly constructed."""


class ChordError(TaskError):
    """A task that is part of a chord raised an exception."""


class WorkerTerminate(SystemExit):
    """Signals that the worker should terminate immediately."""


SystemTerminate = WorkerTerminate


class WorkerShutdown(SystemExit):
    """Signals that the worker should perform a warm shutdown."""


class BackendError(Exception):
    """An issue writing or reading to/from the result backend."""


class BackendGetMetaError(BackendError):
    """An issue reading from the result backend."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.task_id = kwargs.pop('task_id', '')
        super().__init__(*args)


class BackendStoreError(BackendError):
    """An issue writing to the result backend."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.state = kwargs.pop('state', '')
        self.task_id = kwargs.pop('task_id', '')
        super().__init__(*args)


# --- billiard's names (Celery re-exports them from celery.exceptions) ------------------------------------


class TimeLimitExceeded(Exception):
    """The task's hard time limit was exceeded; its process was killed."""

    def __str__(self) -> str:
        return f'TimeLimitExceeded{self.args!r}'


class SoftTimeLimitExceeded(Exception):
    """Raised inside a task when its soft time limit is exceeded."""

    def __str__(self) -> str:
        return 'SoftTimeLimitExceeded()'


class WorkerLostError(Exception):
    """The process executing the task exited prematurely."""


class Terminated(Exception):
    """The task was terminated (revoked with terminate=True)."""


# --- kombu's names (messaging and serialization errors) ----------------------------------------------------


class KombuError(Exception):
    """Base for the messaging errors Celery users catch from kombu."""


class OperationalError(KombuError):
    """The broker could not be reached or failed an operation."""


_PUBLISH_FAILED: type[OperationalError] | None = None


def publish_failed(message: str) -> OperationalError:
    """The OperationalError a caller gets when the broker cannot take a message (`delay()` with the broker
    down, `app.connection().connect()`): where kombu is installed, one that is kombu's too, so code written
    for Celery (`except kombu.exceptions.OperationalError:` around `delay()`) still catches it. kombu is
    imported on the failure, not with fastq (it brings py-amqp: ~50 ms)."""
    return _publish_failed_class()(message)


def _publish_failed_class() -> type[OperationalError]:
    global _PUBLISH_FAILED
    if _PUBLISH_FAILED is None:
        try:
            from kombu.exceptions import OperationalError as KombuOperationalError
        except ImportError:
            _PUBLISH_FAILED = OperationalError
        else:  # (named OperationalError; pickled by its module's name for it, `_PublishFailed`: see __getattr__)
            _PUBLISH_FAILED = type(
                'OperationalError',
                (OperationalError, KombuOperationalError),
                {'__module__': __name__, '__qualname__': '_PublishFailed', '__doc__': OperationalError.__doc__},
            )
    return _PUBLISH_FAILED


def __getattr__(name: str) -> Any:
    if name == '_PublishFailed':
        return _publish_failed_class()
    raise AttributeError(f'module {__name__!r} has no attribute {name!r}')


class BrokerConnectionError(OperationalError):
    """No connection to the broker could be made; the message names the URL (password masked)."""


class AMQPChannelError(OperationalError):
    """RabbitMQ closed a channel (the connection stays up): e.g. 406 PRECONDITION_FAILED when a queue is
    redeclared with other arguments, 404 NOT_FOUND for a missing exchange. `channel` is the one it closed (the
    others stay open), when known."""

    def __init__(self, reply_code: int, reply_text: str, channel: int | None = None) -> None:
        super().__init__(f'{reply_code} {reply_text}')
        self.reply_code = reply_code
        self.reply_text = reply_text
        self.channel = channel


class SerializationError(KombuError):
    """Failed to serialize or deserialize a message."""


class EncodeError(SerializationError):
    """A message could not be serialized (the original error is chained)."""


class SerializerNotInstalled(EncodeError):
    """No serializer of that name (kombu's: `apply_async(serializer='nope')` raises it in the caller). An
    EncodeError too, as fastq raised before, so code catching that still does."""


class DecodeError(SerializationError):
    """A message could not be deserialized (the original error is chained)."""


class ContentDisallowed(SerializationError):
    """A message's content type is not in the accepted list, so it was not deserialized."""
