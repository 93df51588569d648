"""Signals with Celery's names and arguments, and a small dispatcher.

Receivers are called as `receiver(signal=..., sender=..., **arguments)`. A receiver connected with a sender
only hears that sender (matched by identity, or by name when a task name string is given). An exception in a
receiver is logged and does not stop the others or the worker, as in Celery.
"""

from __future__ import annotations

import functools
import inspect
import logging
import threading
import time
import warnings
import weakref
from collections.abc import Callable, Iterable
from typing import Any

from fastq.exceptions import CDeprecationWarning

__all__ = [
    'Signal',
    'after_setup_logger',
    'after_setup_task_logger',
    'after_task_publish',
    'beat_embedded_init',
    'beat_init',
    'before_task_publish',
    'celeryd_after_setup',
    'celeryd_init',
    'eventlet_pool_apply',
    'eventlet_pool_postshutdown',
    'eventlet_pool_preshutdown',
    'eventlet_pool_started',
    'heartbeat_sent',
    'import_modules',
    'setup_logging',
    'task_failure',
    'task_internal_error',
    'task_postrun',
    'task_prerun',
    'task_received',
    'task_rejected',
    'task_retry',
    'task_revoked',
    'task_sent',
    'task_success',
    'task_unknown',
    'user_preload_options',
    'worker_before_create_process',
    'worker_init',
    'worker_process_init',
    'worker_process_shutdown',
    'worker_ready',
    'worker_shutdown',
    'worker_shutting_down',
]

logger = logging.getLogger('fastq.signals')
Receiver = Callable[..., Any]

#: `connect(..., retry=True)`: Celery's (kombu's) waits between attempts, and its words for each failure.
RETRY_INTERVAL_START, RETRY_INTERVAL_STEP, RETRY_INTERVAL_MAX = 2.0, 2.0, 30.0
RECEIVER_RETRY_ERROR = 'Could not process signal receiver %(receiver)s. Retrying %(when)s...'


def _make_id(target: Any) -> Any:
    """Celery's identity of a receiver or sender: a string is itself (a task name given as a sender equals
    any copy of it); a bound method is its instance and function, so `disconnect(obj.method)` finds the
    `connect(obj.method)` made with another bound-method object; anything else is its id."""
    if isinstance(target, (bytes, str)):
        return target
    if hasattr(target, '__func__'):
        return (id(getattr(target, '__self__', None)), id(target.__func__))
    return id(target)


def _unproxied(sender: Any) -> Any:
    """A `@shared_task` (a proxy resolved against the current app on each use) as its task's name: the sender
    a receiver connected with it hears is that task in whichever app runs it (Celery resolves its Proxy)."""
    from fastq.shared import _SharedTaskProxy

    return sender.name if isinstance(sender, _SharedTaskProxy) else sender


def _lookup_key(receiver: Any, sender: Any, dispatch_uid: Any) -> tuple[Any, Any]:
    """One connection per (receiver, sender), as Celery's: the same `dispatch_uid` may be connected once
    for each sender."""
    if dispatch_uid:
        return (dispatch_uid, _make_id(sender))
    if hasattr(receiver, '_dispatch_uid'):  # (a retry=True wrapper: found by the function it wraps)
        return (receiver._dispatch_uid, _make_id(sender))
    return (_make_id(receiver), _make_id(sender))


def _accepts_kwargs(fn: Any) -> bool:
    try:
        parameters = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):  # (no signature to read, e.g. some builtins: let it be called)
        return True
    return any(p.kind is p.VAR_KEYWORD for p in parameters)


def _sender_matches(wanted: Any, sender: Any) -> bool:
    if wanted is None or wanted is sender:
        return True
    if isinstance(wanted, str):
        return wanted == sender or wanted == getattr(sender, 'name', None)
    return False


def _retrying(fn: Receiver) -> Receiver:
    """`connect(fn, retry=True)`: `fn` called until it returns, each failure logged in Celery's words and
    retried after a longer wait (2 s more each time, at most 30 s), as Celery's `retry_over_time` does."""

    def retrying_receiver(*args: Any, **kwargs: Any) -> Any:
        interval = RETRY_INTERVAL_START
        while True:
            try:
                return fn(*args, **kwargs)
            except Exception:
                from fastq.schedules import humanize_seconds

                logger.error(RECEIVER_RETRY_ERROR, {'receiver': fn, 'when': humanize_seconds(interval, 'in ')})
                time.sleep(interval)
                interval = min(interval + RETRY_INTERVAL_STEP, RETRY_INTERVAL_MAX)

    functools.update_wrapper(retrying_receiver, fn)
    return retrying_receiver


def reraise_errors(responses: list[tuple[Receiver, Any]]) -> list[tuple[Receiver, Any]]:
    """Raise the first exception a receiver raised, for the signals sent before logging is set up
    (`setup_logging`, `import_modules`): Celery re-raises those, so a broken logging configuration or import
    hook stops the program instead of going unnoticed; other signals only log it."""
    for _, response in responses:
        if isinstance(response, Exception):
            raise response
    return responses


class Signal:
    """A named hook; `connect` receivers, `send` to call them.

    Made as Celery's: `Signal(providing_args=None, use_caching=False, name=None)` (a string first argument
    is taken as the name, as fastq's own signals were made). `use_caching` is accepted and not needed:
    `send` looks the receivers up directly.
    """

    def __init__(
        self,
        providing_args: Iterable[str] | str | None = None,
        use_caching: bool = False,
        name: str | None = None,
    ) -> None:
        if isinstance(providing_args, str):
            name, providing_args = providing_args, None
        self.name = name
        self.providing_args = set(providing_args if providing_args is not None else ())
        self.use_caching = use_caching
        self._lock = threading.Lock()
        # (key, receiver-or-weakref, sender, is_weak)
        self._receivers: list[tuple[Any, Any, Any, bool]] = []

    @property
    def connected(self) -> bool:
        """Whether any receiver is connected (a weak one that died counts until the next `send`): checked before
        building a `send` that would call nobody, on paths that run per task."""
        return bool(self._receivers)

    @property
    def receivers(self) -> list[Receiver]:
        out = []
        for _, ref, _, weak in self._receivers:
            fn = ref() if weak else ref
            if fn is not None:
                out.append(fn)
        return out

    def connect(self, *args: Any, **kwargs: Any) -> Any:
        """Connect a receiver, as Celery's: `sig.connect(fn)`, `@sig.connect`, `@sig.connect(sender=...)`, or
        `sig.connect(fn, sender, weak, dispatch_uid, retry)`. A receiver must take `**kwargs` (ValueError
        otherwise, when connected rather than at the first `send`); `retry=True` calls it again until it
        succeeds, and keeps it by a strong reference."""
        if 'receiver' in kwargs:  # (fastq's keyword form: `connect(receiver=fn)`, or None for a decorator)
            args = (kwargs.pop('receiver'), *args)
        if args and args[0] is None:
            args = args[1:]
        elif args and callable(args[0]):
            return self._options(*args[1:], **kwargs)(args[0])
        return self._options(*args, **kwargs)

    def _options(
        self, sender: Any = None, weak: bool = True, dispatch_uid: Any = None, retry: bool = False
    ) -> Callable[[Receiver], Receiver]:
        def connect_receiver(fn: Receiver) -> Receiver:
            uid, is_weak = dispatch_uid, weak
            if retry:
                is_weak = False
                if not uid:
                    uid = _make_id(fn)
                fn = _retrying(fn)
                fn._dispatch_uid = uid  # type: ignore[attr-defined]
            self._connect(fn, sender, is_weak, uid)
            return fn

        return connect_receiver

    def _connect(self, receiver: Receiver, sender: Any, weak: bool, dispatch_uid: Any) -> None:
        sender = _unproxied(sender)
        if not callable(receiver):
            raise TypeError('Signal receivers must be callable')
        if not _accepts_kwargs(receiver):
            raise ValueError('Signal receiver must accept keyword arguments.')
        key = _lookup_key(receiver, sender, dispatch_uid)
        ref: Any = receiver
        if weak:
            try:
                ref = weakref.WeakMethod(receiver) if hasattr(receiver, '__self__') else weakref.ref(receiver)
            except TypeError:
                weak = False
        with self._lock:
            if not any(k == key for k, *_ in self._receivers):
                self._receivers.append((key, ref, sender, weak))

    def disconnect(
        self, receiver: Receiver | None = None, sender: Any = None, weak: Any = None, dispatch_uid: Any = None
    ) -> bool:
        """Disconnect what `connect` connected with the same receiver (or `dispatch_uid`) and sender."""
        if weak is not None:
            warnings.warn('Passing `weak` to disconnect has no effect.', CDeprecationWarning, stacklevel=2)
        key = _lookup_key(receiver, _unproxied(sender), dispatch_uid)
        with self._lock:
            for index, (k, *_) in enumerate(self._receivers):
                if k == key:
                    del self._receivers[index]
                    return True
            return False

    def has_listeners(self, sender: Any = None) -> bool:
        """Whether a live receiver would hear `sender` (Celery's; any sender when None)."""
        sender = _unproxied(sender)
        for _, ref, wanted, weak in list(self._receivers):
            if (ref() if weak else ref) is not None and (sender is None or _sender_matches(wanted, sender)):
                return True
        return False

    def send(self, sender: Any, **named: Any) -> list[tuple[Receiver, Any]]:
        if not self._receivers:
            return []
        responses = []
        dead = False
        for _, ref, wanted, weak in list(self._receivers):
            fn = ref() if weak else ref
            if fn is None:
                dead = True
                continue
            if not _sender_matches(wanted, sender):
                continue
            try:
                responses.append((fn, fn(signal=self, sender=sender, **named)))
            except Exception as exc:
                logger.exception('Signal handler %r raised: %r', fn, exc)
                responses.append((fn, exc))
        if dead:
            with self._lock:
                self._receivers = [r for r in self._receivers if not r[3] or r[1]() is not None]
        return responses

    send_robust = send

    def __repr__(self) -> str:
        return f'<{type(self).__name__}: {self.name} providing_args={self.providing_args!r}>'


# --- task signals ---------------------------------------------------------------------------------------
before_task_publish = Signal(
    name='before_task_publish',
    providing_args={'body', 'exchange', 'routing_key', 'headers', 'properties', 'declare', 'retry_policy'},
)
after_task_publish = Signal(name='after_task_publish', providing_args={'body', 'exchange', 'routing_key'})
task_sent = Signal(name='task_sent')
task_received = Signal(name='task_received', providing_args={'request'})
task_prerun = Signal(name='task_prerun', providing_args={'task_id', 'task', 'args', 'kwargs'})
task_postrun = Signal(name='task_postrun', providing_args={'task_id', 'task', 'args', 'kwargs', 'retval', 'state'})
task_success = Signal(name='task_success', providing_args={'result', 'runtime'})
task_retry = Signal(name='task_retry', providing_args={'request', 'reason', 'einfo'})
task_failure = Signal(
    name='task_failure', providing_args={'task_id', 'exception', 'args', 'kwargs', 'traceback', 'einfo'}
)
task_internal_error = Signal(
    name='task_internal_error',
    providing_args={'task_id', 'args', 'kwargs', 'request', 'exception', 'traceback', 'einfo'},
)
task_revoked = Signal(name='task_revoked', providing_args={'request', 'terminated', 'signum', 'expired'})
task_rejected = Signal(name='task_rejected', providing_args={'message', 'exc'})
task_unknown = Signal(name='task_unknown', providing_args={'message', 'exc', 'name', 'id'})

# --- worker signals -------------------------------------------------------------------------------------
celeryd_init = Signal(name='celeryd_init', providing_args={'instance', 'conf', 'options'})
celeryd_after_setup = Signal(name='celeryd_after_setup', providing_args={'instance', 'conf'})
import_modules = Signal(name='import_modules')
worker_init = Signal(name='worker_init')
worker_before_create_process = Signal(name='worker_before_create_process')
worker_process_init = Signal(name='worker_process_init')
worker_process_shutdown = Signal(name='worker_process_shutdown', providing_args={'pid', 'exitcode'})
worker_ready = Signal(name='worker_ready')
worker_shutdown = Signal(name='worker_shutdown')
worker_shutting_down = Signal(name='worker_shutting_down', providing_args={'sig', 'how', 'exitcode'})
heartbeat_sent = Signal(name='heartbeat_sent')
setup_logging = Signal(name='setup_logging', providing_args={'loglevel', 'logfile', 'format', 'colorize'})
after_setup_logger = Signal(
    name='after_setup_logger', providing_args={'logger', 'loglevel', 'logfile', 'format', 'colorize'}
)
after_setup_task_logger = Signal(
    name='after_setup_task_logger', providing_args={'logger', 'loglevel', 'logfile', 'format', 'colorize'}
)

# --- beat and misc --------------------------------------------------------------------------------------
beat_init = Signal(name='beat_init')
beat_embedded_init = Signal(name='beat_embedded_init')
# fastq has no eventlet pool (fastq.config.validate says why): these are never sent, and are here so that
# code connecting to them, written for Celery, still imports.
eventlet_pool_started = Signal(name='eventlet_pool_started')
eventlet_pool_preshutdown = Signal(name='eventlet_pool_preshutdown')
eventlet_pool_postshutdown = Signal(name='eventlet_pool_postshutdown')
eventlet_pool_apply = Signal(name='eventlet_pool_apply', providing_args={'target', 'args', 'kwargs'})
user_preload_options = Signal(name='user_preload_options', providing_args={'app', 'options'})
