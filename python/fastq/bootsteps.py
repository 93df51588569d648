"""Celery's bootsteps (`celery.bootsteps`), so the "Extensions and Bootsteps" guide's steps run on a fastq worker.

    from fastq import bootsteps

    class Metrics(bootsteps.StartStopStep):
        requires = {'celery.worker.components:Pool'}

        def __init__(self, worker, enable_metrics=False, **options): ...
        def start(self, worker): ...
        def stop(self, worker): ...

    app.steps['worker'].add(Metrics)

fastq's worker is not assembled from steps: its own parts (pool, broker connection, fetcher, remote
control, ...) start in a fixed order (fastq.worker.worker). A blueprint here orders the *application's*
steps and runs their hooks at the moments Celery's would: `__init__`, `include_if` and `create` while the
worker is built, `start` once its pool has started (worker steps) or once it consumes from the broker
(consumer steps), `close`/`stop` (or `terminate` on a cold shutdown) in reverse order at shutdown, and
`shutdown` for consumer steps at the very end. Celery's own steps can be named in `requires` as Celery
spells them ('celery.worker.components:Pool', 'celery.worker.consumer:Connection', ...): they stand for
the fastq part that is started by then (fastq.worker.steps lists them).

`ConsumerStep.get_consumers(channel)` gets a channel of a kombu `Connection` to the worker's broker (kombu
must be installed and understand the broker's URL; the worker refuses to start, naming the step, if not).
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Iterable
from typing import Any, ClassVar

from fastq.utils.imports import symbol_by_name

__all__ = ['CLOSE', 'RUN', 'TERMINATE', 'Blueprint', 'ConsumerStep', 'StartStopStep', 'Step']

#: Blueprint states (Celery's values).
RUN = 0x1
CLOSE = 0x2
TERMINATE = 0x3

logger = logging.getLogger('celery.bootsteps')

#: Celery's step paths as users write them in `requires` -> the name of the step they are (Celery's
#: `celery.worker.consumer` package re-exports its steps under shorter paths).
_ALIASES = {
    f'celery.worker.consumer.{short}': f'celery.worker.consumer.{module}.{short}'
    for short, module in (
        ('Connection', 'connection'),
        ('Events', 'events'),
        ('Mingle', 'mingle'),
        ('Gossip', 'gossip'),
        ('Heart', 'heart'),
        ('Control', 'control'),
        ('Tasks', 'tasks'),
        ('Agent', 'agent'),
        ('Evloop', 'consumer'),
        ('Consumer', 'consumer'),
        ('DelayedDelivery', 'delayed_delivery'),
    )
}

#: Steps known by name without importing them: fastq.worker.steps registers its stand-ins for Celery's.
_KNOWN: dict[str, type[Step]] = {}


def _label(obj: Any) -> str:
    return str(obj.name).rsplit('.', 1)[-1]


def _step_name(path: str) -> str:
    name = path.replace(':', '.')
    return _ALIASES.get(name, name)


def resolve_step(step: Any) -> type[Step]:
    """A step class from a class or a path ('pkg.mod:Step'); Celery's built-in steps by their Celery path."""
    if isinstance(step, str):
        known = _KNOWN.get(_step_name(step))
        if known is not None:
            return known
        step = symbol_by_name(step)
    if not (isinstance(step, type) and issubclass(step, Step)):
        raise TypeError(f'not a bootstep: {step!r} (subclass fastq.bootsteps.Step)')
    return step


class StepType(type):
    """Names each step class after its module and class (Celery's), unless it sets `name`."""

    name: str | None = None
    requires: Any = None

    def __new__(mcs, name: str, bases: tuple[type, ...], attrs: dict[str, Any]) -> StepType:
        module = attrs.get('__module__')
        qname = f'{module}.{name}' if module else name
        attrs.update(__qualname__=qname, name=attrs.get('name') or qname)
        return super().__new__(mcs, name, bases, attrs)

    def __str__(cls) -> str:
        return str(cls.name)

    def __repr__(cls) -> str:
        return f'step:{cls.name}{{{cls.requires!r}}}'


class Step(metaclass=StepType):
    """A bootstep: `__init__(parent, **options)` runs when the worker is built, with the worker's options
    (the command line's, custom `app.user_options` among them); `create(parent)` too, if `include_if` says so.
    """

    #: Optional name; the module-qualified class name if not given.
    name: ClassVar[str | None] = None
    #: Short name for logs.
    label: ClassVar[str | None] = None
    #: Whether the step is included on a condition (informational, as in Celery).
    conditional: ClassVar[bool] = False
    #: Steps (classes or paths) that must start before this one; they are added to the blueprint if absent.
    requires: ClassVar[Iterable[Any]] = ()
    #: Reserved for the step that starts last (Celery's worker Consumer, consumer Evloop).
    last: ClassVar[bool] = False
    #: The default for `include_if`.
    enabled: ClassVar[bool] = True

    def __init__(self, parent: Any, **kwargs: Any) -> None:
        pass

    def include_if(self, parent: Any) -> bool:
        """Whether the step is used (then `create` is called); `enabled` unless overridden."""
        return bool(self.enabled)

    def instantiate(self, name: Any, *args: Any, **kwargs: Any) -> Any:
        return symbol_by_name(name)(*args, **kwargs)

    def _should_include(self, parent: Any) -> tuple[bool, Any]:
        if self.include_if(parent):
            return True, self.create(parent)
        return False, None

    def include(self, parent: Any) -> bool:
        return self._should_include(parent)[0]

    def create(self, parent: Any) -> Any:
        """Create the step's service (a `StartStopStep` keeps what this returns as `obj`)."""

    def info(self, obj: Any) -> Any:
        return None

    @property
    def alias(self) -> str:
        return self.label or _label(self)

    def __repr__(self) -> str:
        return f'<step: {self.alias}>'


class StartStopStep(Step):
    """A step with a service to start and stop: by default `create`'s return value (`obj`), whose
    `start()`/`stop()` (`terminate()` on a cold shutdown, if it has one) are called."""

    obj: Any = None

    def start(self, parent: Any) -> Any:
        if self.obj:
            return self.obj.start()
        return None

    def stop(self, parent: Any) -> Any:
        if self.obj:
            return self.obj.stop()
        return None

    def close(self, parent: Any) -> None:
        pass

    def terminate(self, parent: Any) -> Any:
        if self.obj:
            return getattr(self.obj, 'terminate', self.obj.stop)()
        return None

    def include(self, parent: Any) -> bool:
        included, created = self._should_include(parent)
        if included:
            self.obj = created
            parent.steps.append(self)
        return included


class ConsumerStep(StartStopStep):
    """A consumer step with kombu consumers of its own: `get_consumers(channel)` returns them, given a
    channel on a kombu connection to the worker's broker; they consume until the worker stops. Their
    callbacks run in the worker's consumer-steps thread (one thread for all such steps)."""

    requires: ClassVar[Iterable[Any]] = ('celery.worker.consumer:Connection',)
    consumers: list[Any] | None = None

    def get_consumers(self, channel: Any) -> list[Any]:
        raise NotImplementedError('missing get_consumers')

    def start(self, c: Any) -> None:
        channel = c.connection.channel()
        self.consumers = self.get_consumers(channel)
        for consumer in self.consumers or []:
            consumer.consume()

    def stop(self, c: Any) -> None:
        self._close(c, True)

    def shutdown(self, c: Any) -> None:
        self._close(c, False)

    def _close(self, c: Any, cancel_consumers: bool = True) -> None:
        channels = []
        for consumer in self.consumers or []:
            if cancel_consumers:
                _quietly(consumer.cancel)
            channel = getattr(consumer, 'channel', None)
            if channel is not None and channel not in channels:
                channels.append(channel)
        for channel in channels:
            _quietly(channel.close)


def _quietly(fun: Any) -> None:
    """Celery's `ignore_errors`: a connection already gone must not stop the shutdown."""
    try:
        fun()
    except Exception as exc:
        logger.debug('Ignored while closing: %r', exc)


class Blueprint:
    """The steps of one parent (the worker, or its consumer), started and stopped in dependency order.

    Args:
        steps: step classes or paths (the application's `app.steps['worker']`, ...).
        name: for logs.
        on_start / on_close / on_stopped: called when the blueprint starts, before steps close, and once
            they stopped.
    """

    name: str | None = None
    state: int | None = None
    started = 0
    default_steps: ClassVar[Iterable[Any]] = ()
    state_to_name: ClassVar[dict[int, str]] = {
        0: 'initializing',
        RUN: 'running',
        CLOSE: 'closing',
        TERMINATE: 'terminating',
    }

    def __init__(
        self,
        steps: Iterable[Any] | None = None,
        name: str | None = None,
        on_start: Any = None,
        on_close: Any = None,
        on_stopped: Any = None,
    ) -> None:
        self.name = name or self.name or type(self).__qualname__
        self.types = [*self.default_steps, *sorted(steps or (), key=lambda s: str(getattr(s, 'name', s)))]
        self.on_start = on_start
        self.on_close = on_close
        self.on_stopped = on_stopped
        self.shutdown_complete = threading.Event()
        self.steps: dict[str, Step] = {}
        self.order: list[Step] = []

    # --- building -----------------------------------------------------------------------------------------

    def apply(self, parent: Any, **kwargs: Any) -> Blueprint:
        """Instantiate every step with `(parent, **kwargs)` in dependency order, then `include` each (which
        calls `include_if` and `create`, and lists a `StartStopStep` in `parent.steps`)."""
        self._debug('Preparing bootsteps.')
        self.order = []
        self.steps = {}
        self._debug('Building graph...')
        for cls in self._ordered():
            step = cls(parent, **kwargs)
            self.steps[str(cls.name)] = step
            self.order.append(step)
        self._debug('New boot order: {%s}', ', '.join(s.alias for s in self.order))
        for step in self.order:
            step.include(parent)
        return self

    def _debug(self, msg: str, *args: Any) -> None:
        """Celery's `-l debug` lines about the boot ('| Worker: Building graph...')."""
        logger.debug('| %s: ' + msg, self.alias, *args)

    def _ordered(self) -> list[type[Step]]:
        """Steps and what they require, each after its requirements; ties keep the listed order (Celery's
        own steps first, then the application's by name); the `last` step at the end."""
        classes: dict[str, type[Step]] = {}
        requires: dict[str, list[str]] = {}
        pending = deque(self.types)
        while pending:
            cls = resolve_step(pending.popleft())
            key = str(cls.name)
            if key in classes:
                continue
            classes[key] = cls
            deps = [resolve_step(dep) for dep in cls.requires or ()]
            requires[key] = [str(dep.name) for dep in deps]
            pending.extend(deps)
        last = [key for key, cls in classes.items() if cls.last]
        out: list[str] = []
        visiting: set[str] = set()

        def visit(key: str) -> None:
            if key in out:
                return
            if key in visiting:
                raise ValueError(f'bootsteps: circular requirement involving {key}')
            visiting.add(key)
            for dep in requires[key]:
                visit(dep)
            visiting.discard(key)
            out.append(key)

        for key in classes:
            if key not in last:
                visit(key)
        for key in last:
            visit(key)
        return [classes[key] for key in out]

    # --- running ------------------------------------------------------------------------------------------

    def start(self, parent: Any) -> None:
        """Start `parent.steps` in order; an exception stops the start there and propagates."""
        self.state = RUN
        self.started = 0
        if self.on_start:
            self.on_start()
        for i, step in enumerate(s for s in parent.steps if s is not None):
            self._debug('Starting %s', step.alias)
            self.started = i + 1
            step.start(parent)
            logger.debug('^-- substep ok')

    def _started_steps(self, parent: Any) -> list[Any]:
        return [s for s in parent.steps[: self.started] if s is not None]

    def send_all(
        self,
        parent: Any,
        method: str,
        description: str | None = None,
        reverse: bool = True,
        propagate: bool = True,
        args: tuple[Any, ...] = (),
        steps: list[Any] | None = None,
    ) -> None:
        """Call `method(parent, *args)` on each step that has it (reversed: last started, first called)."""
        description = description or method.replace('_', ' ')
        chosen = list(parent.steps if steps is None else steps)
        for step in reversed(chosen) if reverse else chosen:
            fun = getattr(step, method, None) if step is not None else None
            if fun is None:
                continue
            logger.debug('| %s: %s %s...', self.alias, description.capitalize(), step.alias)
            try:
                fun(parent, *args)
            except Exception as exc:
                if propagate:
                    raise
                logger.exception('Error on %s %s: %r', description, step.alias, exc)

    def close(self, parent: Any) -> None:
        if self.on_close:
            self.on_close()
        self.send_all(parent, 'close', 'closing', reverse=False, propagate=False, steps=self._started_steps(parent))

    def restart(
        self, parent: Any, method: str = 'stop', description: str = 'restarting', propagate: bool = False
    ) -> None:
        self.send_all(parent, method, description, propagate=propagate, steps=self._started_steps(parent))

    def stop(self, parent: Any, close: bool = True, terminate: bool = False) -> None:
        """Close, then stop (or terminate) the steps that started, last first; errors are logged. Unlike
        Celery's, a blueprint that did not start completely still stops the steps that did start."""
        if self.state in (CLOSE, TERMINATE):
            return
        if self.state == RUN:
            if close:
                self.close(parent)
            self.state = CLOSE
            self.restart(parent, 'terminate' if terminate else 'stop', 'terminating' if terminate else 'stopping')
            if self.on_stopped:
                self.on_stopped()
        self.state = TERMINATE
        self.shutdown_complete.set()

    def shutdown(self, parent: Any) -> None:
        """The consumer blueprint's last call: each started step's `shutdown`."""
        self.send_all(parent, 'shutdown', propagate=False, steps=self._started_steps(parent))

    def join(self, timeout: float | None = None) -> None:
        self.shutdown_complete.wait(timeout=timeout)

    def info(self, parent: Any) -> dict[str, Any]:
        info: dict[str, Any] = {}
        for step in parent.steps:
            info.update(step.info(parent) or {})
        return info

    def human_state(self) -> str:
        return self.state_to_name[self.state or 0]

    def __getitem__(self, name: str) -> Step:
        return self.steps[name]

    @property
    def alias(self) -> str:
        return _label(self)
