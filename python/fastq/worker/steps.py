"""The worker's side of bootsteps (fastq.bootsteps): its two blueprints, stand-ins for Celery's own steps, and
the objects steps receive as `parent`.

A worker step gets the `WorkController` (`app`, `hostname`, `pool` once started, `timer`, `hub` = None and
`use_eventloop` = False as on Celery's thread-based pools, `statedb` = None, `autoscaler`, `blueprint`,
`steps`, `concurrency`); a consumer step gets a `StepConsumer` (`app`, `controller`, `hostname`, `pool`,
`timer`, `connection`, `event_dispatcher`, `qos`, `blueprint`, `steps`, and the methods `add_task_queue`,
`cancel_task_queue`, `reset_rate_limits`). Both print as Celery's ('<Worker: w@example.com (running)>').
Not there: the consumer's `gossip` (fastq workers do not gossip), `heart`, `task_consumer`, `strategies`,
`task_buckets`/`bucket_for_task` and `apply_eta_task` (fastq's consuming and rate limiting are not kombu's);
the worker's `consumer` is fastq's broker consumer, not Celery's Consumer. fastq's own parts are not steps,
so Celery's step paths in `requires` resolve to the no-op stand-ins below: each marks the moment its fastq
part is running (every worker step starts after the pool has started and before the worker connects to the
broker; every consumer step once the worker consumes, before `worker_ready`).

As Celery's consumer restarts when the broker connection is lost, the consumer steps are stopped when the
worker's fetching fails and started again once it works (`connection_lost`/`connection_regained`).
`StepConsumer.connection` is a kombu `Connection` to the broker, opened on first use (by a `ConsumerStep`):
the consumers steps create on it are served by one thread, `fastq-consumer-steps`, which drains its events
and, if that connection is lost, stops the consumer steps, reconnects and starts them again.
"""

from __future__ import annotations

import importlib
import logging
import threading
import time
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from fastq import bootsteps
from fastq.exceptions import ImproperlyConfigured
from fastq.utils.text import mask_url

if TYPE_CHECKING:
    from fastq.app import Fastq
    from fastq.worker.loop import Loop
    from fastq.worker.loop import Timer as LoopTimer
    from fastq.worker.qos import QoS

logger = logging.getLogger('celery.worker.consumer')

DRAIN_TIMEOUT = 1.0  # seconds the consumer-steps thread waits for an event before checking whether to stop


def _stand_in(path: str, last: bool = False, label: str | None = None) -> type[bootsteps.Step]:
    """A no-op step named (and labelled, in the boot order's debug line) as Celery's step at `path`, so
    `requires` naming it resolves."""
    module, _, name = path.rpartition('.')
    attrs = {'__module__': module, 'name': path, 'last': last, 'label': label}
    cls = bootsteps.StepType(name, (bootsteps.Step,), attrs)
    bootsteps._KNOWN[path] = cls  # type: ignore[assignment]
    return cls  # type: ignore[return-value]


class Consumer(bootsteps.StartStopStep):
    """Celery's worker step `celery.worker.components.Consumer`, the worker blueprint's last: the consumer
    steps start later (once fastq consumes), but they stop as part of the worker's `stop`, so a worker
    shuts down in Celery's order: every worker step's `close`, then the consumer steps (`close`, `stop`),
    then the worker steps' `stop`, last started first."""

    name = 'celery.worker.components.Consumer'
    last = True

    def start(self, w: Any) -> None:
        pass

    def stop(self, w: Any) -> None:
        self._stop(w, terminate=False)

    def terminate(self, w: Any) -> None:
        self._stop(w, terminate=True)

    def _stop(self, w: Any, terminate: bool) -> None:
        consumer = getattr(w, 'step_consumer', None)
        if consumer is not None:
            consumer.stop(terminate=terminate)


bootsteps._KNOWN[Consumer.name] = Consumer

WORKER_STEPS = [
    _stand_in('celery.worker.components.Hub'),
    _stand_in('celery.worker.components.Pool'),
    _stand_in('celery.worker.components.Beat'),
    _stand_in('celery.worker.components.Timer'),
    _stand_in('celery.worker.components.StateDB'),
    _stand_in('celery.worker.autoscale.WorkerComponent', label='Autoscaler'),
    Consumer,
]

CONSUMER_STEPS = [
    _stand_in('celery.worker.consumer.connection.Connection'),
    _stand_in('celery.worker.consumer.mingle.Mingle'),
    _stand_in('celery.worker.consumer.events.Events'),
    _stand_in('celery.worker.consumer.gossip.Gossip'),
    _stand_in('celery.worker.consumer.heart.Heart'),
    _stand_in('celery.worker.consumer.control.Control'),
    _stand_in('celery.worker.consumer.tasks.Tasks'),
    _stand_in('celery.worker.consumer.delayed_delivery.DelayedDelivery'),
    _stand_in('celery.worker.consumer.agent.Agent'),
    _stand_in('celery.worker.consumer.consumer.Evloop', last=True, label='event loop'),
]


class WorkerBlueprint(bootsteps.Blueprint):
    name = 'Worker'
    default_steps = WORKER_STEPS


class ConsumerBlueprint(bootsteps.Blueprint):
    name = 'Consumer'
    default_steps = CONSUMER_STEPS


# --- the worker's timer ---------------------------------------------------------------------------------


class TimerEntry:
    """What `worker.timer.call_*` return (kombu's `Entry`): `cancel()` it, from any thread."""

    __slots__ = ('args', 'cancelled', 'fun', 'handle', 'kwargs')

    def __init__(self, fun: Any, args: Any, kwargs: Any) -> None:
        self.fun, self.args, self.kwargs = fun, tuple(args or ()), dict(kwargs or {})
        self.cancelled = False
        self.handle: LoopTimer | None = None

    def cancel(self) -> None:
        self.cancelled = True
        if self.handle is not None:
            self.handle.cancel()

    @property
    def canceled(self) -> bool:
        """kombu's `Entry.canceled` (it has both spellings)."""
        return self.cancelled

    def __call__(self) -> None:
        if self.cancelled:
            return
        try:
            self.fun(*self.args, **self.kwargs)
        except Exception as exc:  # (kombu's timer logs and goes on; the worker's loop must not die of it)
            logger.exception('Error in timer: %r', exc)


class StepTimer:
    """`worker.timer` with kombu's `Timer` methods, run by the worker's loop (in its thread); callable from
    any thread."""

    def __init__(self, loop: Loop) -> None:
        self.loop = loop

    def _arm(self, entry: TimerEntry, delay: float, repeat: bool) -> TimerEntry:
        def arm() -> None:
            if not entry.cancelled:
                when = max(0.0, delay)
                entry.handle = self.loop.call_repeatedly(when, entry) if repeat else self.loop.call_later(when, entry)

        self.loop.call_soon_threadsafe(arm)
        return entry

    def call_after(self, secs: float, fun: Any, args: Any = (), kwargs: Any = None, priority: int = 0) -> TimerEntry:
        return self._arm(TimerEntry(fun, args, kwargs), float(secs), False)

    def call_at(self, eta: Any, fun: Any, args: Any = (), kwargs: Any = None, priority: int = 0) -> TimerEntry:
        """At `eta`, as kombu's timer reads it: a datetime (naive: UTC), or a number on the monotonic clock
        (`time.monotonic() + 30`), which kombu's timer keeps time by."""
        if isinstance(eta, datetime):
            delay = (eta if eta.tzinfo else eta.replace(tzinfo=UTC)).timestamp() - time.time()
        else:
            delay = float(eta) - time.monotonic()
        return self._arm(TimerEntry(fun, args, kwargs), delay, False)

    def call_repeatedly(
        self, secs: float, fun: Any, args: Any = (), kwargs: Any = None, priority: int = 0
    ) -> TimerEntry:
        return self._arm(TimerEntry(fun, args, kwargs), float(secs), True)

    enter_after = call_after

    def cancel(self, tref: TimerEntry | None) -> None:
        if tref is not None:
            tref.cancel()

    def stop(self) -> None:
        pass


# --- the consumer ---------------------------------------------------------------------------------------


def check_consumer_step(app: Fastq, step: Any) -> None:
    """Refuse to start a worker with a `ConsumerStep` whose kombu connection cannot be made, naming it."""
    try:
        from kombu.transport import TRANSPORT_ALIASES
    except ImportError:
        raise ImproperlyConfigured(
            f'bootstep {step.name}: a ConsumerStep consumes with kombu, which is not installed (pip install kombu)'
        ) from None
    url = app.read_broker_url
    scheme = url.partition('://')[0].partition('+')[0]
    if scheme not in TRANSPORT_ALIASES or scheme in ('sqlite', 'memory'):  # (kombu's memory:// is per process)
        raise ImproperlyConfigured(
            f'bootstep {step.name}: a ConsumerStep consumes with kombu, which has no transport for '
            f'{mask_url(url)} (use a redis:// or amqp:// broker)'
        )


class StepConsumer:
    """The `parent` of consumer steps (Celery's `Consumer`, its attributes that mean something here)."""

    def __init__(self, controller: Any, **options: Any) -> None:
        self.controller = controller
        self.app: Fastq = controller.app
        self.hostname: str = controller.hostname
        self.timer: StepTimer = controller.timer
        self.hub = None
        self.task_consumer: Any = None
        self.steps: list[Any] = []
        self._connection: Any = None
        self._lost = False  # stopped by connection_lost, until connection_regained
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.blueprint = ConsumerBlueprint(steps=self.app.steps['consumer'])
        self.blueprint.apply(self, **options)
        for step in self.steps:
            if isinstance(step, bootsteps.ConsumerStep):
                check_consumer_step(self.app, step)

    def __repr__(self) -> str:
        """Celery's: what the guide's steps print as their parent, '<Consumer: w@example.com (running)>'."""
        return f'<Consumer: {self.hostname} ({self.blueprint.human_state()})>'

    @property
    def pool(self) -> Any:
        return self.controller.pool

    @property
    def qos(self) -> QoS:
        """The task prefetch count (Celery's `c.qos`: `set(10)`, `increment_eventually(1)`, ...): the worker's
        one `QoS`, which remote control commands change too."""
        qos: QoS = self.controller.qos
        return qos

    def reset_rate_limits(self) -> None:
        """Apply every task's `rate_limit` as it is now (Celery's; the guide's RatelimitStep changes
        `task.rate_limit`, then calls this), soon after, in the worker's thread."""
        worker = self.controller

        def reset() -> None:
            dispatcher = worker.dispatcher
            if dispatcher is not None:
                for name, task in list(self.app.tasks.items()):
                    dispatcher.set_rate_limit(name, task.rate_limit)

        worker.loop.call_soon_threadsafe(reset)

    def add_task_queue(
        self,
        queue: str,
        exchange: str | None = None,
        exchange_type: str | None = None,
        routing_key: str | None = None,
        **options: Any,
    ) -> None:
        """Consume from `queue` too (Celery's; as `control add_consumer`): it stays consumed when the broker
        connection is lost and regained."""
        from fastq.worker.inspect import add_task_queue

        add_task_queue(self.controller, queue, exchange, exchange_type, routing_key)

    def cancel_task_queue(self, queue: str) -> None:
        """Stop consuming from `queue` (Celery's; as `control cancel_consumer`)."""
        from fastq.worker.inspect import cancel_task_queue

        cancel_task_queue(self.controller, queue)

    @property
    def event_dispatcher(self) -> Any:
        """The worker's event dispatcher (Celery's Events step's): `send('worker-custom', ...)` reaches event
        receivers; as in Celery, only the 'worker' group is sent unless task events are enabled (-E). None
        where the broker has no events (fastq's SQLite broker)."""
        events = self.controller.events
        return events.dispatcher if events is not None else None

    @property
    def connection(self) -> Any:
        """A kombu `Connection` to the worker's broker, connected on first use."""
        if self._connection is None:
            kombu: Any = importlib.import_module('kombu')  # (checked by check_consumer_step; untyped)
            conf = self.app.conf
            conn = kombu.Connection(
                self.app.read_broker_url,  # (Celery's consumer connection: connection_for_read)
                ssl=conf.broker_use_ssl or False,
                transport_options=dict(conf.broker_transport_options or {}),
            )
            conn.ensure_connection(max_retries=conf.broker_connection_max_retries or None)
            self._connection = conn
        return self._connection

    def start(self) -> None:
        """Start the consumer steps (the worker's thread), then drain their kombu connection if they made one."""
        self.blueprint.start(self)
        if self._connection is not None:
            self._thread = threading.Thread(target=self._drain, name='fastq-consumer-steps', daemon=True)
            self._thread.start()

    def connection_lost(self) -> None:
        """The worker lost the broker (its fetching failed): Celery restarts its consumer then, so the consumer
        steps are stopped (`stop`, last started first) until `connection_regained`. (When they consume with
        a kombu connection, `_drain` restarts them as that connection fails and comes back instead.)"""
        if self._thread is not None or self._lost or self._stop.is_set() or self.blueprint.state != bootsteps.RUN:
            return
        self._lost = True
        self.blueprint.restart(self)

    def connection_regained(self) -> None:
        """The broker is back: the consumer steps start again (Celery's consumer restart)."""
        if not self._lost or self._stop.is_set():
            return
        self._lost = False
        try:
            self.blueprint.start(self)
        except Exception as exc:
            logger.exception('consumer: Cannot restart the consumer steps: %r', exc)

    def _drain(self) -> None:
        while not self._stop.is_set():
            conn = self._connection
            if conn is None:
                self._restart()
                continue
            try:
                conn.drain_events(timeout=DRAIN_TIMEOUT)
            except TimeoutError:
                continue
            except (*conn.connection_errors, *conn.channel_errors) as exc:
                if self._stop.is_set():
                    return
                logger.warning('consumer: Connection to broker lost (%r): restarting the consumer steps', exc)
                self.blueprint.restart(self)
                self._release()
            except Exception as exc:  # a consumer callback that raised: the others go on (Celery logs it too)
                logger.exception('consumer: a bootstep consumer callback raised: %r', exc)

    def _restart(self) -> None:
        delay = 1.0
        while not self._stop.is_set():
            try:
                self.blueprint.start(self)
                return
            except Exception as exc:
                logger.error('consumer: Cannot restart the consumer steps: %r. Trying again in %.0fs', exc, delay)
                self._release()
                self._stop.wait(delay)
                delay = min(delay * 2, 32.0)

    def _release(self) -> None:
        conn, self._connection = self._connection, None
        if conn is not None:
            try:
                conn.release()
            except Exception as exc:
                logger.debug('Ignored while releasing the consumer steps connection: %r', exc)

    def stop(self, terminate: bool = False) -> None:
        """Stop draining (in the worker's thread, after which nothing else touches the connection), then
        close and stop the consumer steps, last first."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(DRAIN_TIMEOUT * 5)
        self.blueprint.stop(self, terminate=terminate)

    def shutdown(self) -> None:
        """The consumer steps' `shutdown`, then the kombu connection closed."""
        self.blueprint.shutdown(self)
        self._release()
