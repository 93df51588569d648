"""`Task`: what `@app.task` makes of a function, with Celery's attributes, calling API and request context.

A Task is typed by its function: `Task[P, R]` gives `delay(*args: P.args, **kwargs: P.kwargs)` a checked
signature and returns `AsyncResult[R]`. Each decorated function becomes a subclass of `app.Task` (or of
`base=`) with the function as `run`, instantiated once and registered under its name, as in Celery, so
`Task` subclass hooks (`on_success`, `on_failure`, `after_return`, ...) and class attributes work unchanged.
"""

from __future__ import annotations

import functools
import importlib
import inspect
import keyword
import sys
import threading
import uuid
from collections.abc import Callable
from contextvars import ContextVar
from datetime import datetime
from typing import TYPE_CHECKING, Any, ClassVar, Generic, ParamSpec, TypeVar

from fastq import _state, states
from fastq.exceptions import MaxRetriesExceededError, OperationalError, Retry
from fastq.utils.functional import as_list
from fastq.utils.text import saferepr

if TYPE_CHECKING:
    from fastq.app import Fastq
    from fastq.backends.base import Backend
    from fastq.canvas import Signature
    from fastq.result import AsyncResult, EagerResult

__all__ = ['Context', 'Task']

P = ParamSpec('P')
R = TypeVar('R')


#: Header names that are the protocol's, not the sender's (Celery's list: the Context fields and these), and
#: prefixes of fastq's own and RabbitMQ's dead-lettering headers.
_PROTOCOL_KEYS = frozenset(
    {
        'lang', 'task', 'id', 'shadow', 'eta', 'expires', 'group', 'group_index', 'retries', 'timelimit',
        'root_id', 'parent_id', 'argsrepr', 'kwargsrepr', 'origin', 'ignore_result', 'replaced_task_nesting',
        'stamped_headers', 'stamps', 'compression', 'redelivered', 'chord', 'chain', 'callbacks', 'errbacks',
        'args', 'kwargs', 'is_eager', 'correlation_id', 'reply_to', 'hostname', 'delivery_info', 'utc',
        'called_directly', 'headers', 'properties', 'priority', 'loglevel', 'logfile', 'taskset',
    }
)  # fmt: skip
_OWN_PREFIXES = ('fastq_', 'x-fastq-', 'x-death', 'x-first-death-', 'x-last-death-')

_UNSET = object()

#: The request field holding the envelope a worker ran the task from (what `Context.properties` is read from);
#: `Context.adopt` moves it off the fields, so `vars(request)` shows only Celery's.
ENVELOPE = '_envelope'


class Context:
    """The request of the task being executed (`self.request` in a bound task), with Celery's field names."""

    # The fields are the instance's `__dict__`; `_envelope` is kept apart from them (see `properties`).
    __slots__ = ('__dict__', '__weakref__', '_envelope')
    _envelope: bytes | str | None

    id: str | None = None
    task: str | None = None
    args: list[Any] | tuple[Any, ...] | None = None
    kwargs: dict[str, Any] | None = None
    retries: int = 0
    is_eager: bool = False
    eta: str | None = None
    expires: str | None = None
    group: str | None = None
    group_index: int | None = None
    chord: Any = None
    chain: Any = None
    callbacks: Any = None
    errbacks: Any = None
    root_id: str | None = None
    parent_id: str | None = None
    correlation_id: str | None = None
    reply_to: str | None = None
    hostname: str | None = None
    origin: str | None = None
    delivery_info: dict[str, Any] | None = None
    #: The message's `[time_limit, soft_time_limit]` as sent (a list, as Celery's), not the limits the worker
    #: enforces (which may be the task's or the worker's when the message has none).
    timelimit: list[float | None] | tuple[float | None, float | None] | None = None
    utc: bool | None = None  # (Celery's: protocol 2 carries no utc, so a request never has one set)
    #: The message's `ignore_result` header: None when the sender left it to the task (Celery's `send_task`);
    #: `actual_ignore_result` says what applies.
    ignore_result: bool | None = False
    called_directly: bool = True
    shadow: str | None = None
    replaced_task_nesting: int = 0
    stamps: dict[str, Any] | None = None
    stamped_headers: list[str] | None = None
    #: Celery's Context has these too (None in a worker; `apply(loglevel=, logfile=)` sets them eagerly):
    #: code written for Celery reads them without a default.
    loglevel: int | None = None
    logfile: str | None = None
    taskset: str | None = None  # (Celery's old name of `group`, never set)
    children: list[Any]

    def __init__(self, *args: dict[str, Any], **kwargs: Any) -> None:
        self.children = []
        self.update(*args, **kwargs)

    @classmethod
    def adopt(cls, fields: dict[str, Any]) -> Context:
        """A Context whose attributes are `fields` itself, not a copy: the worker builds a fresh dict for each
        task it runs, and copying its ~30 fields into a new Context was a fifth of a no-op task's trace."""
        ctx = cls.__new__(cls)
        ctx._envelope = fields.pop(ENVELOPE, None)
        fields.setdefault('children', [])
        ctx.__dict__ = fields
        return ctx

    def update(self, *args: dict[str, Any], **kwargs: Any) -> None:
        fields = self.__dict__
        limits = fields.get('timelimit', _UNSET)
        for d in args:
            fields.update(d)
        fields.update(kwargs)
        if fields.get('timelimit', _UNSET) is not limits:  # (Celery 5.7's: its halves follow a new `timelimit`)
            fields.pop('time_limit', None)
            fields.pop('soft_time_limit', None)

    def __getattr__(self, name: str) -> Any:
        # A header the sender added (`apply_async(headers={'tenant': ...})`) reads as an attribute, as in
        # Celery, where every message header becomes one. Looked up only when no field has the name, so the
        # worker's path pays nothing for it.
        headers = self.__dict__.get('headers')
        if headers and not name.startswith('__') and name in headers:
            return headers[name]
        raise AttributeError(f'{type(self).__name__!r} object has no attribute {name!r}')

    def get(self, key: str, default: Any = None) -> Any:
        return getattr(self, key, default)

    # Celery 5.7's two halves of `timelimit`, read from it (a task message carries only the pair) unless given
    # or set on their own (`Context(time_limit=5)`, `request.time_limit = 5`), until `timelimit` changes.

    @property
    def time_limit(self) -> float | None:
        fields = self.__dict__
        if 'time_limit' in fields:
            return fields['time_limit']  # type: ignore[no-any-return]
        limits = self.timelimit
        return limits[0] if limits and len(limits) >= 2 else None

    @time_limit.setter
    def time_limit(self, value: float | None) -> None:
        self.__dict__['time_limit'] = value

    @property
    def soft_time_limit(self) -> float | None:
        fields = self.__dict__
        if 'soft_time_limit' in fields:
            return fields['soft_time_limit']  # type: ignore[no-any-return]
        limits = self.timelimit
        return limits[1] if limits and len(limits) >= 2 else None

    @soft_time_limit.setter
    def soft_time_limit(self, value: float | None) -> None:
        self.__dict__['soft_time_limit'] = value

    @property
    def properties(self) -> dict[str, Any] | None:
        """The message's properties as kombu gives them, None for a request no message made: on Redis
        (kombu's virtual transports) correlation_id, reply_to, delivery_mode, delivery_info, priority,
        body_encoding, delivery_tag, ...; on RabbitMQ py-amqp's (content_type, content_encoding,
        application_headers, delivery_mode, priority, correlation_id, reply_to, ...: see amqp_properties).

        A worker's request holds the envelope it ran from, read here on first use: decoding the properties
        for every task would cost every task for the few that read them."""
        fields = self.__dict__
        properties = fields.get('properties')
        if properties is None:
            envelope = getattr(self, '_envelope', None)
            if envelope is not None:
                from fastq import _core
                from fastq.brokers.amqp_properties import celery_properties

                message = _core.Message.from_envelope(envelope, None)
                properties = fields['properties'] = celery_properties(message)
        return properties

    @properties.setter
    def properties(self, value: dict[str, Any] | None) -> None:
        self.__dict__['properties'] = value

    @property
    def all_headers(self) -> dict[str, Any] | None:
        """Every header of the message (the protocol's and the sender's), as fastq's worker received it."""
        return self.__dict__.get('headers')

    def _custom_headers(self) -> dict[str, Any] | None:
        raw = self.__dict__.get('headers')
        if not raw:
            return None
        custom = {k: v for k, v in raw.items() if k not in _PROTOCOL_KEYS and not k.startswith(_OWN_PREFIXES)}
        return custom or None

    def _set_headers(self, value: dict[str, Any] | None) -> None:
        self.__dict__['headers'] = value

    def as_execution_options(self) -> dict[str, Any]:
        return {
            'task_id': self.id,
            'root_id': self.root_id,
            'parent_id': self.parent_id,
            'group_id': self.group,
            'group_index': self.group_index,
            'shadow': self.shadow,
            'chord': self.chord,
            'chain': self.chain,
            'link': self.callbacks,
            'link_error': self.errbacks,
            'expires': self.expires,
            'soft_time_limit': self.timelimit[1] if self.timelimit else None,
            'time_limit': self.timelimit[0] if self.timelimit else None,
            'headers': self.headers,
            'ignore_result': self.ignore_result,
        }

    def __repr__(self) -> str:
        return f'<Context: {vars(self)!r}>'

    #: The headers the sender added (`apply_async(headers={...})`, beat's `celery_beat_task`), None when
    #: there are none: Celery's `request.headers`. (The message's protocol headers are the other fields.)
    headers = property(_custom_headers, _set_headers)


class _RequestStack:
    """The requests a task is executing, innermost last, per thread and per asyncio task.

    A context variable, not a thread-local: the asyncio pool runs many requests of one task concurrently in
    one thread, each in its own asyncio task (which copies the context it starts in). The stack is a tuple,
    replaced on each push and pop, so a copy taken by one asyncio task never sees another's pushes.
    """

    __slots__ = ('idle', 'var')

    def __init__(self, name: str) -> None:
        # One variable per Task instance: tasks are created once, when registered, so these stay few.
        self.var: ContextVar[tuple[Context, ...]] = ContextVar(f'fastq.request:{name}', default=())
        # `task.request` read while nothing executes (called directly): one per thread or asyncio task, kept
        # off the stack, as Celery's default request is.
        self.idle: ContextVar[Context | None] = ContextVar(f'fastq.idle-request:{name}', default=None)

    # Celery's `Task.request_stack` (a `_LocalStack`): what code written against it reads and pushes.

    def push(self, request: Context) -> None:
        self.var.set((*self.var.get(), request))

    def pop(self) -> Context | None:
        stack = self.var.get()
        if not stack:
            return None
        self.var.set(stack[:-1])
        return stack[-1]

    @property
    def top(self) -> Context | None:
        """The innermost request, None when the task is not executing."""
        stack = self.var.get()
        return stack[-1] if stack else None

    @property
    def stack(self) -> list[Context]:
        return list(self.var.get())

    def __len__(self) -> int:
        return len(self.var.get())


class Task(Generic[P, R]):
    """A task type. Class attributes are the defaults that `@app.task(...)` options override."""

    __trace__: Any = None
    name: str = ''
    app: Fastq
    #: Check a call's arguments against the function when it is sent (None: the app's `strict_typing`).
    typing: bool | None = None
    max_retries: int | None = 3
    default_retry_delay: float = 3 * 60
    rate_limit: str | None = None
    #: fastq's own: a limit shared by every worker of the fleet, kept in the broker ('100/s').
    global_rate_limit: str | None = None
    ignore_result: bool | None = None
    trail: bool = True
    send_events: bool = True
    store_errors_even_if_ignored: bool | None = None
    #: Whether a task run by `apply()` or `task_always_eager` stores its result (Celery's).
    store_eager_result: bool | None = None
    serializer: str | None = None
    compression: str | None = None
    time_limit: float | None = None
    soft_time_limit: float | None = None
    acks_late: bool | None = None
    acks_on_failure_or_timeout: bool | None = None
    #: Celery 5.7's split of the above (None: as acks_on_failure_or_timeout says, else True): with acks_late,
    #: whether a failed task's message is acked (else dead-lettered), and a timed-out one's (else requeued).
    acks_on_failure: bool | None = None
    acks_on_timeout: bool | None = None
    #: A task whose process was lost is sent again as `retry` would (max_retries and default_retry_delay
    #: apply); once they run out it fails. Before reject_on_worker_lost.
    retry_on_worker_lost: bool | None = None
    reject_on_worker_lost: bool | None = None
    track_started: bool | None = None
    expires: float | datetime | None = None
    priority: int | None = None
    queue: str | None = None
    routing_key: str | None = None
    exchange: str | None = None
    shadow: str | None = None
    #: The class whose hooks run in the worker's parent for this task (fastq.worker.request: on_timeout,
    #: on_failure); a class or its 'module:Name'.
    Request: ClassVar[Any] = 'fastq.worker.request:Request'
    #: Celery's, as task attributes: `except self.MaxRetriesExceededError:` in a bound task.
    MaxRetriesExceededError: ClassVar[type[MaxRetriesExceededError]] = MaxRetriesExceededError
    OperationalError: ClassVar[type[Exception]] = OperationalError
    #: Exceptions this task raises on purpose: logged at INFO without a traceback ("raised expected"), as
    #: Celery does; the task still fails.
    throws: tuple[type[BaseException], ...] = ()
    autoretry_for: tuple[type[BaseException], ...] = ()
    dont_autoretry_for: tuple[type[BaseException], ...] = ()
    retry_kwargs: dict[str, Any] = {}
    retry_backoff: bool | float = False
    retry_backoff_max: float = 600
    retry_jitter: bool = True
    #: Characters of the return value's repr kept for the "succeeded" line and events (Celery's).
    resultrepr_maxsize: int = 1024
    abstract: ClassVar[bool] = True
    _decorated: ClassVar[bool] = False
    _bound: ClassVar[bool] = False
    _from_settings: dict[str, Any] = {}  # see bind
    _settings_generation: int = -1
    _is_async: ClassVar[bool] = False
    _signature: inspect.Signature | None = None
    #: `@app.task(pydantic=True)`: how a caller's model arguments are sent (fastq.pydantic_args).
    _dump_pydantic_arguments: Callable[[Any, Any], tuple[Any, Any]] | None = None
    _arity_checker: Callable[..., None] | None = None
    #: This task's own result backend, Celery's `_backend`: as given (a URL, a Backend class or instance)
    #: until first used, then the instance it made; None for the app's. Read through `backend`; the worker's
    #: trace reads it directly, so a task without one pays an attribute read for it and nothing more.
    _backend: Any = None

    # Settings a task reads from app.conf when its own attribute is None (Celery's `from_config`).
    from_config: ClassVar[tuple[tuple[str, str], ...]] = (
        ('serializer', 'task_serializer'),
        ('rate_limit', 'task_default_rate_limit'),
        ('priority', 'task_default_priority'),
        ('track_started', 'task_track_started'),
        ('acks_late', 'task_acks_late'),
        ('acks_on_failure_or_timeout', 'task_acks_on_failure_or_timeout'),
        ('acks_on_failure', 'task_acks_on_failure'),
        ('acks_on_timeout', 'task_acks_on_timeout'),
        ('retry_on_worker_lost', 'task_retry_on_worker_lost'),
        ('reject_on_worker_lost', 'task_reject_on_worker_lost'),
        ('ignore_result', 'task_ignore_result'),
        ('store_errors_even_if_ignored', 'task_store_errors_even_if_ignored'),
        ('store_eager_result', 'task_store_eager_result'),
        ('time_limit', 'task_time_limit'),
        ('soft_time_limit', 'task_soft_time_limit'),
        ('compression', 'task_compression'),
    )

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        # `@app.task(backend=...)` makes its options class attributes, as does `backend = ...` in a class body:
        # either would hide the `backend` property, so a URL would reach the trace as a string (Celery's fails
        # so: "'str' object has no attribute 'store_result'"). Kept in `_backend`, which the property reads.
        if 'backend' in cls.__dict__ and not isinstance(cls.__dict__['backend'], property):
            cls._backend = cls.__dict__['backend']
            delattr(cls, 'backend')

    @functools.cached_property
    def _requests(self) -> _RequestStack:
        """Made on first use rather than in `__init__`: a Celery task class may define its own `__init__`
        without calling `super().__init__()` (the Tasks guide's `NaiveAuthenticateServer`), as Celery's
        Task has no constructor of its own to skip."""
        return _RequestStack(self.name or type(self).__name__)

    # --- binding to an app --------------------------------------------------------------------------------

    def bind(self, app: Fastq) -> None:
        """Attach to an app and fill unset attributes from its settings and `task_annotations`.

        Celery binds a task when its app is finalized, so settings configured after `@app.task` still
        apply; fastq binds at once (the task is usable right away) and binds again, through `sync_config`,
        when the settings changed since: before the next send is planned, and when the app is finalized.
        What was filled in from the settings is remembered, so only those attributes follow the settings,
        never one set explicitly since (by `control time_limit`, say)."""
        self.app = app
        conf = app.conf
        filled: dict[str, Any] = {}
        for attr, setting in self.from_config:  # (`_read`: binding at decoration does not configure the app)
            if getattr(self, attr) is None:
                filled[attr] = conf._read(setting)
                setattr(self, attr, filled[attr])
        self._from_settings = filled
        self._settings_generation = conf.generation
        if self.typing is None:
            self.typing = app.strict_typing
        self._annotate(conf._read('task_annotations'))
        type(self).on_bound(app)

    @classmethod
    def on_bound(cls, app: Fastq) -> None:
        """Called when the task is bound to an app (Celery's hook; PeriodicTask-style classes use it)."""

    def sync_config(self) -> None:
        """Bind again if the app's settings changed since this task was bound (see `bind`)."""
        app = self.__dict__.get('app')
        if app is None or self._settings_generation == app.conf.generation:
            return
        conf = app.conf
        settings = dict(self.from_config)
        for attr, value in list(self._from_settings.items()):
            if self.__dict__.get(attr, value) is value:  # (still what the settings gave it)
                self._from_settings[attr] = conf[settings[attr]]
                setattr(self, attr, self._from_settings[attr])
        self._settings_generation = conf.generation
        self._annotate(conf.task_annotations)

    def _annotate(self, annotations: Any) -> None:
        """Apply `task_annotations`: dicts by task name (or '*'), objects with `annotate(task)` (and
        `annotate_any()`), dotted paths to their classes (Celery's forms), or functions of the task (fastq's).
        As Celery resolves them: the first annotation in the list that answers for this task by name, then
        the first that answers for any task ('*'), the latter applied last; a method annotated (`on_failure`)
        replaces the class's for this task."""
        if not annotations:
            return
        from fastq.utils.imports import symbol_by_name

        found: list[Any] = [None, None]  # (for this task, for any task)
        for annotation in annotations if isinstance(annotations, list | tuple) else [annotations]:
            if isinstance(annotation, str):
                annotation = symbol_by_name(annotation)()
            if isinstance(annotation, dict):
                answers = (annotation.get(self.name), annotation.get('*'))
            elif hasattr(annotation, 'annotate') or hasattr(annotation, 'annotate_any'):
                by_name, any_task = getattr(annotation, 'annotate', None), getattr(annotation, 'annotate_any', None)
                answers = (by_name(self) if by_name else None, any_task() if any_task else None)
            elif callable(annotation):
                answers = (annotation(self), None)
            else:
                continue
            found = [mine if mine is not None else answer for mine, answer in zip(found, answers, strict=True)]
        for values in found:
            for key, value in dict(values or {}).items():
                if key.startswith('@'):  # Celery's '@name': wrap the method instead of replacing it
                    method = getattr(type(self), key[1:])
                    method = getattr(method, '__wrapped__', method)
                    wrapped = value(method)
                    wrapped.__wrapped__ = method
                    setattr(self, key[1:], wrapped.__get__(self, type(self)))
                    continue
                if callable(value) and callable(getattr(type(self), key, None)) and not isinstance(value, type):
                    value = value.__get__(self, type(self))  # a function given for a method: bound to the task
                setattr(self, key, value)

    # --- calling ------------------------------------------------------------------------------------------

    def run(self, *args: Any, **kwargs: Any) -> Any:
        raise NotImplementedError('Tasks must define the run method.')

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        """Run the task in this process, now (no message); `self.request.called_directly` is True."""
        _state.push_current_task(self)
        self.push_request(args=args, kwargs=kwargs)
        try:
            result = self.run(*args, **kwargs)
            if self._is_async and inspect.isawaitable(result):
                from fastq.worker.asyncrun import run_coroutine

                result = run_coroutine(result)
            return result  # type: ignore[no-any-return]
        finally:
            self.pop_request()
            _state.pop_current_task()

    def check_arguments(self, args: tuple[Any, ...] | list[Any], kwargs: dict[str, Any]) -> None:
        """Raise TypeError now, in the caller, if the arguments do not fit the function (Celery's `typing`)."""
        checker = self._arity_checker
        if checker is None:
            if self._signature is None:
                return
            checker = self._arity_checker = _arity_checker(self._signature, type(self).__name__, self._bound)
        try:
            checker(*args, **kwargs)
        except TypeError as exc:
            raise TypeError(str(exc)) from None

    def _checked_call(
        self, args: tuple[Any, ...] | list[Any] | None, kwargs: dict[str, Any] | None
    ) -> tuple[tuple[Any, ...], dict[str, Any]]:
        """The checks every send makes in the caller: limits that fit, and (with `typing`) the arguments."""
        if self.soft_time_limit and self.time_limit and self.soft_time_limit > self.time_limit:
            raise ValueError('soft_time_limit must be less than or equal to time_limit')
        args = tuple(args or ())
        kwargs = dict(kwargs or {})
        if self.typing:
            self.check_arguments(args, kwargs)
        if self._dump_pydantic_arguments is not None and self.serializer != 'pickle':  # (pickle sends models)
            dumped, kwargs = self._dump_pydantic_arguments(args, kwargs)
            args = tuple(dumped)
        return args, kwargs

    def delay(self, *args: P.args, **kwargs: P.kwargs) -> AsyncResult[R]:
        """Send the task with these arguments (the star-args shortcut of `apply_async`)."""
        return self.apply_async(args, kwargs)

    def apply_async(
        self,
        args: tuple[Any, ...] | list[Any] | None = None,
        kwargs: dict[str, Any] | None = None,
        task_id: str | None = None,
        link: Any = None,
        link_error: Any = None,
        shadow: str | None = None,
        **options: Any,
    ) -> AsyncResult[R]:
        """Send the task; options are Celery's (countdown, eta, expires, queue, priority, serializer, ...)."""
        if isinstance(args, list) and args and options.get('argsrepr') is None:  # (Celery: a list as a list, [] as ())
            options['argsrepr'] = saferepr(args)
        args, kwargs = self._checked_call(args, kwargs)
        app = self.app
        if app.conf.task_always_eager:
            options = {**self._exec_options(), **options}
            options.setdefault('ignore_result', self.ignore_result)
            return self._apply_eagerly(args, kwargs, task_id, link, link_error, options)
        # The task's own options (queue, serializer, time limits, ...) are merged in once per option set,
        # by the cached send plan (fastq.sending), not on every call.
        return app.send_task(
            self.name,
            args,
            kwargs,
            task_id=task_id,
            link=link,
            link_error=link_error,
            shadow=shadow or self.shadow or self._shadow_name(args, kwargs, options),
            task_type=self,
            **options,
        )

    def shadow_name(self, args: Any, kwargs: Any, options: Any) -> str | None:
        """Override to give a call a name of its own in logs and monitors (Celery's): `shadow` per call."""
        return None

    def _shadow_name(self, args: Any, kwargs: Any, options: Any) -> str | None:
        if type(self).shadow_name is Task.shadow_name:  # (not overridden: nothing to call per send)
            return None
        return self.shadow_name(args, kwargs, options)

    async def adelay(self, *args: P.args, **kwargs: P.kwargs) -> AsyncResult[R]:
        """`delay` for code running in an event loop (FastAPI, aiohttp): awaits the publish instead of
        blocking the loop on it. A returned `adelay()` means the broker has the task."""
        return await self.aapply_async(args, kwargs)

    async def aapply_async(
        self,
        args: tuple[Any, ...] | list[Any] | None = None,
        kwargs: dict[str, Any] | None = None,
        task_id: str | None = None,
        link: Any = None,
        link_error: Any = None,
        shadow: str | None = None,
        **options: Any,
    ) -> AsyncResult[R]:
        """`apply_async` for code running in an event loop: same options, same message.

        On Redis the publish goes over a connection pool of the running loop's own (made on first use,
        closed when the loop shuts down), with no thread per call. On SQLite and the in-memory broker, whose
        publish is a local write, it runs in the loop's default executor. With `task_always_eager` the task
        runs here, synchronously, as `apply_async` would run it.
        """
        args, kwargs = self._checked_call(args, kwargs)
        app = self.app
        if app.conf.task_always_eager:
            return self.apply_async(args, kwargs, task_id, link, link_error, shadow, **options)
        return await app.asend_task(
            self.name,
            args,
            kwargs,
            task_id=task_id,
            link=link,
            link_error=link_error,
            shadow=shadow or self.shadow,
            task_type=self,
            **options,
        )

    def _apply_eagerly(
        self,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        task_id: str | None,
        link: Any,
        link_error: Any,
        options: dict[str, Any],
    ) -> EagerResult[R]:
        # As Celery does: round-trip the arguments through the serializer, so eager tests catch
        # arguments that a real worker could not receive.
        from fastq.serialization import dumps, loads

        serializer = options.get('serializer') or self.app.conf.task_serializer
        data, content_type, _ = dumps((args, kwargs), serializer)
        args, kwargs = loads(data, content_type, None)
        return self.apply(
            args, kwargs, task_id=task_id or str(uuid.uuid4()), link=link, link_error=link_error, **options
        )

    def _exec_options(self) -> dict[str, Any]:
        out = {
            'queue': self.queue,
            'routing_key': self.routing_key,
            'exchange': self.exchange,
            'priority': self.priority,
            'serializer': self.serializer,
            'compression': self.compression,
            'time_limit': self.time_limit,
            'soft_time_limit': self.soft_time_limit,
            'expires': self.expires,
        }
        return {k: v for k, v in out.items() if v is not None}

    def apply(
        self,
        args: tuple[Any, ...] | list[Any] | None = None,
        kwargs: dict[str, Any] | None = None,
        link: Any = None,
        link_error: Any = None,
        task_id: str | None = None,
        retries: int | None = None,
        throw: bool | None = None,
        **options: Any,
    ) -> EagerResult[R]:
        """Run the task in this process and return an `EagerResult` (what `task_always_eager` uses)."""
        from fastq.worker.trace import apply_eagerly

        return apply_eagerly(
            self,
            args or (),  # (as given, as Celery's: `apply((1,))`'s signals and request hold the tuple)
            dict(kwargs or {}),
            task_id=task_id or str(uuid.uuid4()),
            retries=retries or 0,
            throw=self.app.conf.task_eager_propagates if throw is None else throw,
            link=link,
            link_error=link_error,
            options=options,
        )

    def AsyncResult(self, task_id: str, **kwargs: Any) -> AsyncResult[R]:
        """The result of this task's call `task_id`, read from this task's backend (Celery's)."""
        if self._backend is not None:  # (else unbound: it follows the app's backend, replaced or not)
            kwargs.setdefault('backend', self.backend)
        kwargs.setdefault('task_name', self.name)
        return self.app.AsyncResult(task_id, **kwargs)  # (an `app.AsyncResult`, as Celery's)

    # --- signatures ---------------------------------------------------------------------------------------

    def signature(self, args: Any = None, *starargs: Any, **starkwargs: Any) -> Signature[R]:
        starkwargs.setdefault('app', self.app)
        return _signature_type()(self, args, *starargs, **starkwargs)

    subtask = signature

    def s(self, *args: Any, **kwargs: Any) -> Signature[R]:
        """A signature with these arguments: `add.s(2, 2)`."""
        if type(self).signature is not _TASK_SIGNATURE:  # a subclass builds its own signatures
            return self.signature(args, kwargs)
        # `group(add.s(i, i) for i in ...)` makes one per task sent: this is `signature(args, kwargs)`
        # without the keyword plumbing and copies (`args` and `kwargs` are fresh here), a third of its cost.
        return _signature_type().of_task(self, args, kwargs)

    def si(self, *args: Any, **kwargs: Any) -> Signature[R]:
        """An immutable signature: a parent's result is not prepended when it runs as a callback."""
        return self.signature(args, kwargs, immutable=True)

    def map(self, it: Any) -> Signature[list[R]]:
        """One `celery.map` task calling this task for each item: `add.map([1, 2])`."""
        from fastq.canvas import xmap

        return xmap(self.s(), it, app=self.app)

    def starmap(self, it: Any) -> Signature[list[R]]:
        """One `celery.starmap` task calling this task with each argument tuple."""
        from fastq.canvas import xstarmap

        return xstarmap(self.s(), it, app=self.app)

    def chunks(self, it: Any, n: int) -> Signature[Any]:
        """A group of `celery.starmap` tasks, `n` argument tuples each."""
        from fastq.canvas import chunks

        return chunks(self.s(), it, n, app=self.app)

    # --- request context ----------------------------------------------------------------------------------

    def push_request(self, *args: Any, **kwargs: Any) -> None:
        """Push a request made of the current one's fields updated with these (Celery's): a custom `__call__`
        that calls `super().__call__` in a worker keeps the request's id, retries and the rest."""
        var = self._requests.var
        stack = var.get()
        fields = {**vars(stack[-1]), **kwargs} if stack else kwargs
        var.set((*stack, Context(*args, **fields)))

    def push_fields(self, fields: dict[str, Any]) -> Context:
        """`push_request` of a Context whose attributes are `fields` itself (`Context.adopt`); returns it."""
        ctx = Context.adopt(fields)
        var = self._requests.var
        var.set((*var.get(), ctx))
        return ctx

    def pop_request(self) -> None:
        var = self._requests.var
        var.set(var.get()[:-1])

    def _get_request(self) -> Context:
        stack = self._requests.var.get()
        if not stack:
            idle = self._requests.idle
            ctx = idle.get()
            if ctx is None:
                ctx = Context()
                idle.set(ctx)
            return ctx
        return stack[-1]

    @property
    def request(self) -> Context:
        """The request this task is executing in this thread or asyncio task (`called_directly` when none)."""
        return self._get_request()

    @property
    def request_stack(self) -> _RequestStack:
        """The requests this task is executing, innermost on `top` (Celery's `Task.request_stack`)."""
        return self._requests

    # --- retry --------------------------------------------------------------------------------------------

    def replace(self, sig: Any) -> Any:
        """Replace this task by `sig` (a task, chain, group or chord), which takes over its id: whoever waits
        on this task gets `sig`'s result, and this task's callbacks, errbacks, group, chord and the rest of
        its chain go with it (Celery's `Task.replace`).

        On a worker it sends `sig` and raises `Ignore`, so nothing is stored for this run (`raise
        self.replace(sig)` reads well there); run eagerly, it runs `sig` in place and returns its result.
        """
        from fastq.canvas import group, signature
        from fastq.canvas.chain import _chain
        from fastq.exceptions import Ignore, ImproperlyConfigured

        request = self.request
        if 'chord' in sig.options:
            raise ImproperlyConfigured('A signature replacing a task must not be part of a chord')
        if isinstance(sig, _chain) and not sig.tasks:
            raise ImproperlyConfigured('Cannot replace with an empty chain')
        if isinstance(sig, group):  # a chord, so what follows links onto its body: the result is the list
            sig |= self.app.tasks['celery.accumulate'].s(index=0)
        for callback in as_list(request.callbacks):
            sig.link(callback)
        for errback in as_list(request.errbacks):
            sig.link_error(errback)
        if isinstance(sig, _chain) and 'link' in sig.options:  # a chain's callbacks go with its last step
            sig.tasks[-1].options.setdefault('link', []).extend(as_list(sig.options.pop('link')))
        sig.freeze(request.id)
        nesting = (request.replaced_task_nesting or 0) + 1
        sig.set(
            chord=request.chord,
            group_id=request.group,
            group_index=request.group_index,
            root_id=request.root_id,
            replaced_task_nesting=nesting,
        )
        for step in reversed(request.chain or ()):  # (stored last step first, as the protocol has it)
            sig |= signature(step, app=self.app)
        if request.is_eager:
            return sig.apply().get()
        sig.delay()
        raise Ignore('Replaced by new task')

    def retry(
        self,
        args: Any = None,
        kwargs: Any = None,
        exc: BaseException | None = None,
        throw: bool = True,
        eta: datetime | None = None,
        countdown: float | None = None,
        max_retries: int | None = None,
        **options: Any,
    ) -> Retry:
        """Retry this task later: re-sent with the same id and `retries + 1`; raises `Retry` to end this run.

        Past `max_retries` the original `exc` is raised (or MaxRetriesExceededError without one). Called
        outside a worker, the exception is raised at once; run eagerly, the retry runs eagerly too.
        """
        request = self.request
        if request.called_directly:
            raise exc or Retry('Task can be retried', None)
        retries = request.retries + 1
        max_retries = self.max_retries if max_retries is None else max_retries
        if eta is None and countdown is None:
            countdown = self.default_retry_delay
        sig = self.signature_from_request(request, args, kwargs, countdown=countdown, eta=eta, **options)
        sig.options['retries'] = retries
        if max_retries is not None and retries > max_retries:
            if exc:
                raise exc
            raise MaxRetriesExceededError(
                f"Can't retry {self.name}[{request.id}] args:{sig.args} kwargs:{sig.kwargs}",
                task_args=sig.args,
                task_kwargs=sig.kwargs,
            )
        ret = Retry(exc=exc, when=eta or countdown, is_eager=request.is_eager, sig=sig)
        if not request.is_eager:
            from fastq.worker.trace import store_retry_state

            # RETRY is stored before the message goes: the next run may finish (and store its FAILURE) on
            # another worker before this one returns, and a RETRY written after it would hide the outcome.
            store_retry_state(self, request, ret)
            try:
                sig.apply_async()
            except Exception as publish_error:
                from fastq.exceptions import Reject

                raise Reject(publish_error, requeue=False) from publish_error
        if throw:
            raise ret
        return ret

    def signature_from_request(
        self,
        request: Context | None = None,
        args: Any = None,
        kwargs: Any = None,
        queue: str | None = None,
        **extra: Any,
    ) -> Signature[R]:
        """A signature that sends this request again: same id, workflow links, limits and queue."""
        request = request or self.request
        delivery_info = request.delivery_info or {}
        options = {
            **request.as_execution_options(),
            'reply_to': request.reply_to,
            'queue': queue or delivery_info.get('routing_key'),
            'priority': delivery_info.get('priority'),
            'ignore_result': actual_ignore_result(self, request),  # (the task's, for a sender that said none)
            **extra,
        }
        options = {k: v for k, v in options.items() if v is not None}  # (the sender's headers carry over)
        return self.signature(
            request.args if args is None else args, request.kwargs if kwargs is None else kwargs, **options
        )

    def update_state(
        self, task_id: str | None = None, state: str | None = None, meta: Any = None, **kwargs: Any
    ) -> None:
        """Store a custom state (e.g. progress) for this or another task."""
        task_id = task_id or self.request.id
        if not task_id:  # (outside a task, with no id: Celery's error, rather than a state stored under '')
            raise ValueError(f'task_id must not be empty. Got {task_id!r} instead.')
        self.backend.store_result(task_id, meta, state or states.PENDING, request=self.request, **kwargs)

    def send_event(self, type_: str, retry: bool = True, retry_policy: Any = None, **fields: Any) -> None:
        """Send a monitoring event about the running task (`uuid` is its id): custom event types for Flower
        and `app.events.Receiver` handlers (Celery's). Sent whether or not the worker has -E."""
        request = self.request
        with self.app.events.default_dispatcher(hostname=request.hostname) as dispatcher:
            dispatcher.send(type_, uuid=request.id, **fields)

    @property
    def backend(self) -> Backend:
        """The result backend this task's results are stored in and read from: its own, given as
        `@app.task(backend=...)` (made on first use, once, when a URL or class), else the app's."""
        backend = self._backend
        if backend is None:
            return self.app.backend
        if isinstance(backend, str | type):
            return _own_backend(self)
        return backend  # type: ignore[no-any-return]

    @backend.setter
    def backend(self, value: Any) -> None:
        self._backend = value
        app = self.__dict__.get('app')
        if app is not None:  # its cached send plans say whether results read from a backend of the task's own
            app._send_plans.clear()

    # --- hooks (override in subclasses) -------------------------------------------------------------------

    def before_start(self, task_id: str, args: Any, kwargs: Any) -> None:
        """Called in the worker before the task runs."""

    def on_success(self, retval: Any, task_id: str, args: Any, kwargs: Any) -> None:
        """Called in the worker when the task returned."""

    def on_failure(self, exc: BaseException, task_id: str, args: Any, kwargs: Any, einfo: Any) -> None:
        """Called in the worker when the task raised."""

    def on_retry(self, exc: BaseException, task_id: str, args: Any, kwargs: Any, einfo: Any) -> None:
        """Called in the worker when the task is to be retried."""

    def after_return(self, status: str, retval: Any, task_id: str, args: Any, kwargs: Any, einfo: Any) -> None:
        """Called in the worker after the task finished, whatever the outcome."""

    def __repr__(self) -> str:
        return (
            f'<@task: {self.name} of {self.app.main or "__main__"} at {id(self.app):#x}>'  # (Celery's `appstr`)
            if hasattr(self, 'app')
            else f'<unbound {type(self).__name__}>'
        )

    def __reduce__(self) -> tuple[Any, ...]:
        """Pickled as its name (and module), unpickled as the current app's task of that name, as Celery's
        tasks are: a task handed to multiprocessing, a cache or `copy.deepcopy` travels as a reference,
        never as its class (which pickle could not find: the module's name is the task, not the class)."""
        module = type(self).__module__
        return (_unpickle_task, (self.name, module if module in sys.modules else None), None)

    def __evaluated__(self) -> bool:
        """True: the Application guide's `add.__evaluated__()` asks whether Celery's lazy task was made yet;
        fastq makes the task when decorated (settings configured later still apply, see `bind`; a base class
        set on `app.Task` after the decorator ran does not, where Celery's lazy task would take it)."""
        return True

    if not TYPE_CHECKING:  # (for mypy, `type(task).__name__` would then be this property)

        @property
        def __name__(self) -> str:
            """The function's name, as Celery's tasks have it (decorators, `functools.wraps`, `celery shell`)."""
            return type(self).__name__


def _unpickle_task(name: str, module: str | None = None) -> Task[Any, Any]:
    """A pickled task: its module imported (so its tasks are registered), then the current app's task."""
    if module:
        importlib.import_module(module)
    return _state.get_current_app().tasks[name]


def _arity_checker(sig: inspect.Signature, name: str, bound: bool) -> Callable[..., None]:
    """A function with the same parameters that does nothing: calling it checks arguments as Python does,
    in about a microsecond (what `inspect.Signature.bind` does in tens).

    It has the task function's name, and a bound task's `self` first (given a placeholder), so that its
    TypeError reads as Celery's does: "add() missing 1 required positional argument: 'y'", and "takes 2
    positional arguments but 3 were given" for a bound task with one parameter given two arguments."""
    placeholder = '_self'
    while placeholder in sig.parameters:
        placeholder += '_'
    params = [placeholder] if bound else []
    seen_kw_only = False
    for p in sig.parameters.values():
        default = '=_d' if p.default is not inspect.Parameter.empty else ''
        if p.kind is p.POSITIONAL_ONLY:
            params.append(f'{p.name}{default}')
        elif p.kind is p.VAR_POSITIONAL:
            params.append(f'*{p.name}')
            seen_kw_only = True
        elif p.kind is p.KEYWORD_ONLY:
            if not seen_kw_only:
                params.append('*')
                seen_kw_only = True
            params.append(f'{p.name}{default}')
        elif p.kind is p.VAR_KEYWORD:
            params.append(f'**{p.name}')
        else:
            params.append(f'{p.name}{default}')
    if any(p.kind is p.POSITIONAL_ONLY for p in sig.parameters.values()):
        last = max(i for i, p in enumerate(sig.parameters.values()) if p.kind is p.POSITIONAL_ONLY)
        params.insert(last + 1 + bound, '/')
    name = name if name.isidentifier() and not keyword.iskeyword(name) else 'check'  # ('<lambda>')
    namespace: dict[str, Any] = {'_d': None}
    exec(f'def {name}({", ".join(params)}):\n    pass', namespace)
    checker: Callable[..., None] = namespace[name]
    return functools.partial(checker, None) if bound else checker


def actual_ignore_result(task: Task[Any, Any], request: Context) -> bool:
    """Whether this run of `task` ignores its result (Celery's `get_actual_ignore_result`): the call's
    `ignore_result` when the sender said one (`apply_async(ignore_result=False)` stores the result of a task
    that ignores results: the guide's precedence, the execution option last), else the task's: for a header
    the sender left null (Celery's `send_task` without the option) or without the header (the field unset,
    reading the Context's default)."""
    said = request.__dict__.get('ignore_result')
    return bool(task.ignore_result if said is None else said)


def build_task_class(
    app: Fastq, fun: Callable[..., Any], name: str, base: type[Task[Any, Any]], bind: bool, options: dict[str, Any]
) -> type[Task[Any, Any]]:
    """The Task subclass for a decorated function (Celery's `_task_from_fun`)."""
    is_async = inspect.iscoroutinefunction(fun)
    run = fun if bind else staticmethod(fun)
    try:
        # The function's own parameters, not those of what a decorator wrapped (functools.wraps' __wrapped__),
        # as Celery reads them (getfullargspec): FAQ's "Can I use decorators with tasks?" (a decorator may take
        # a keyword of its own, or any arguments, and the call must be checked against that)
        sig = inspect.signature(fun, follow_wrapped=False)
        params = list(sig.parameters.values())
        if bind and params and params[0].kind in (params[0].POSITIONAL_ONLY, params[0].POSITIONAL_OR_KEYWORD):
            sig = sig.replace(parameters=params[1:])  # (`self`; a decorator's `*args` takes it instead)
    except (TypeError, ValueError):
        sig = None
    attrs: dict[str, Any] = {
        'name': name,
        'run': run,
        '_decorated': True,
        '_bound': bind,
        '_is_async': is_async,
        '_signature': sig,
        '__doc__': fun.__doc__,
        '__module__': fun.__module__,
        '__qualname__': getattr(fun, '__qualname__', fun.__name__),
        '__wrapped__': run,  # as Celery's: `add.__wrapped__(1, 2)` calls the function; a bound task's binds
        'abstract': False,
        **options,
    }
    for key in ('autoretry_for', 'dont_autoretry_for', 'throws'):
        if key in attrs:
            attrs[key] = tuple(attrs[key])
    return type(fun.__name__, (base,), attrs)


_BACKEND_LOCK = threading.Lock()


def _own_backend(task: Task[Any, Any]) -> Backend:
    """The backend `task._backend` names (a URL or a class), made once for the task, under a lock so that two
    threads do not make two. Made when first used, not when decorated: a backend reads the app's settings,
    which may be configured after the task."""
    from fastq.backends import create_backend

    with _BACKEND_LOCK:
        current = task._backend  # (another thread may have made it meanwhile)
        if isinstance(current, str | type):
            app = task.app
            app._configure()  # (the settings loaded, as for the app's own backend)
            current = task._backend = create_backend(app, current) if isinstance(current, str) else current(app)
    return task.app.backend if current is None else current


_TASK_SIGNATURE = Task.signature


def _signature_type() -> type[Signature[Any]]:
    """`fastq.canvas.Signature`, imported on first use (the canvas imports this module)."""
    global _SIGNATURE
    if _SIGNATURE is None:
        from fastq.canvas import Signature

        _SIGNATURE = Signature
    return _SIGNATURE


_SIGNATURE: type[Signature[Any]] | None = None
