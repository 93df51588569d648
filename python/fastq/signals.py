"""Signals with Celery's names and arguments, and a small dispatcher.

Receivers are called as `receiver(signal=..., sender=..., **arguments)`. A receiver connected with a sender
only hears that sender (matched by identity, or by name when a task name string is given). An exception in a
receiver is logged and does not stop the others or the worker, as in Celery.
"""

from __future__ import annotations

import logging
import threading
import weakref
from collections.abc import Callable
from typing import Any

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


def _sender_matches(wanted: Any, sender: Any) -> bool:
    if wanted is None or wanted is sender:
        return True
    if isinstance(wanted, str):
        return wanted == sender or wanted == getattr(sender, 'name', None)
    return False


class Signal:
    """A named hook; `connect` receivers, `send` to call them."""

    def __init__(self, name: str, providing_args: frozenset[str] | set[str] | None = None) -> None:
        self.name = name
        self.providing_args = frozenset(providing_args or ())
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

    def connect(
        self,
        receiver: Receiver | None = None,
        *,
        sender: Any = None,
        weak: bool = True,
        dispatch_uid: Any = None,
    ) -> Any:
        """Connect a receiver; usable as `sig.connect(fn)`, `@sig.connect` or `@sig.connect(sender=...)`."""
        if receiver is None:

            def decorator(fn: Receiver) -> Receiver:
                self.connect(fn, sender=sender, weak=weak, dispatch_uid=dispatch_uid)
                return fn

            return decorator
        key = dispatch_uid if dispatch_uid is not None else (id(receiver), id(sender))
        ref: Any = receiver
        if weak:
            try:
                ref = weakref.WeakMethod(receiver) if hasattr(receiver, '__self__') else weakref.ref(receiver)
            except TypeError:
                weak = False
        with self._lock:
            if not any(k == key for k, *_ in self._receivers):
                self._receivers.append((key, ref, sender, weak))
        return receiver

    def disconnect(self, receiver: Receiver | None = None, sender: Any = None, dispatch_uid: Any = None) -> bool:
        key = dispatch_uid if dispatch_uid is not None else (id(receiver), id(sender))
        with self._lock:
            before = len(self._receivers)
            self._receivers = [r for r in self._receivers if r[0] != key]
            return len(self._receivers) != before

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
        return f'<Signal: {self.name} providing_args={set(self.providing_args)!r}>'


# --- task signals ---------------------------------------------------------------------------------------
before_task_publish = Signal(
    'before_task_publish',
    {'body', 'exchange', 'routing_key', 'headers', 'properties', 'declare', 'retry_policy'},
)
after_task_publish = Signal('after_task_publish', {'body', 'exchange', 'routing_key'})
task_sent = Signal('task_sent')
task_received = Signal('task_received', {'request'})
task_prerun = Signal('task_prerun', {'task_id', 'task', 'args', 'kwargs'})
task_postrun = Signal('task_postrun', {'task_id', 'task', 'args', 'kwargs', 'retval', 'state'})
task_success = Signal('task_success', {'result', 'runtime'})
task_retry = Signal('task_retry', {'request', 'reason', 'einfo'})
task_failure = Signal('task_failure', {'task_id', 'exception', 'args', 'kwargs', 'traceback', 'einfo'})
task_internal_error = Signal('task_internal_error', {'task_id', 'args', 'kwargs', 'request', 'exception', 'einfo'})
task_revoked = Signal('task_revoked', {'request', 'terminated', 'signum', 'expired'})
task_rejected = Signal('task_rejected', {'message', 'exc'})
task_unknown = Signal('task_unknown', {'message', 'exc', 'name', 'id'})

# --- worker signals -------------------------------------------------------------------------------------
celeryd_init = Signal('celeryd_init', {'instance', 'conf', 'options'})
celeryd_after_setup = Signal('celeryd_after_setup', {'instance', 'conf'})
import_modules = Signal('import_modules')
worker_init = Signal('worker_init')
worker_before_create_process = Signal('worker_before_create_process')
worker_process_init = Signal('worker_process_init')
worker_process_shutdown = Signal('worker_process_shutdown', {'pid', 'exitcode'})
worker_ready = Signal('worker_ready')
worker_shutdown = Signal('worker_shutdown')
worker_shutting_down = Signal('worker_shutting_down', {'sig', 'how', 'exitcode'})
heartbeat_sent = Signal('heartbeat_sent')
setup_logging = Signal('setup_logging', {'loglevel', 'logfile', 'format', 'colorize'})
after_setup_logger = Signal('after_setup_logger', {'logger', 'loglevel', 'logfile', 'format', 'colorize'})
after_setup_task_logger = Signal('after_setup_task_logger', {'logger', 'loglevel', 'logfile', 'format', 'colorize'})

# --- beat and misc --------------------------------------------------------------------------------------
beat_init = Signal('beat_init')
beat_embedded_init = Signal('beat_embedded_init')
eventlet_pool_apply = Signal('eventlet_pool_apply', {'target', 'args', 'kwargs'})
user_preload_options = Signal('user_preload_options', {'app', 'options'})
