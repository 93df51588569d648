"""The beat service: the loop that keeps (or waits for) the leader lock and ticks the scheduler.

`Service.start()` runs it in the calling thread until `stop()` (from a signal handler or another thread):
`fastq beat` runs it in its main thread, and `fastq worker -B` in a thread of the worker (`EmbeddedService`),
started after the pool has forked its children. The scheduler it ticks is fastq's, or a Celery scheduler class
(django-celery-beat's DatabaseScheduler, RedBeat's) hosted by `fastq.beat.hosted`, under the same leader lock.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from typing import TYPE_CHECKING, Any

from fastq import signals
from fastq.beat.hosted import HostedScheduler, celery_scheduler_class
from fastq.beat.lock import LeaderLock
from fastq.beat.scheduler import Scheduler
from fastq.beat.store import ScheduleStore
from fastq.exceptions import BrokerConnectionError, ImproperlyConfigured
from fastq.schedules import humanize_seconds

if TYPE_CHECKING:
    from fastq.app import Fastq
    from fastq.brokers.base import Broker

__all__ = ['SCHEDULER_NAMES', 'EmbeddedService', 'Service', 'check_scheduler', 'make_scheduler']

logger = logging.getLogger('celery.beat')

#: `--scheduler` / `beat_scheduler` values that mean fastq's scheduler (Celery's default name among them, so
#: Celery configurations keep working).
SCHEDULER_NAMES = frozenset(
    {
        'celery.beat:PersistentScheduler',
        'celery.beat.PersistentScheduler',
        'fastq.beat:Scheduler',
        'fastq.beat.Scheduler',
        'fastq.beat.scheduler:Scheduler',
        'fastq.beat.scheduler.Scheduler',
    }
)


def check_scheduler(value: Any) -> type[Any]:
    """The scheduler class `beat_scheduler`/`--scheduler` names (a class, 'module:Name', or an alias of the
    `celery.beat_schedulers` entry points, as `-S django`): fastq's, a subclass of it, or a Celery scheduler
    class, which fastq's beat hosts (fastq.beat.hosted). Anything else fails, naming the value and why."""
    if value is None or (isinstance(value, str) and value in SCHEDULER_NAMES):
        return Scheduler
    candidate = value
    if isinstance(value, str):
        from fastq.utils.imports import symbol_by_name

        try:
            candidate = symbol_by_name(_scheduler_aliases().get(value, value))
        except Exception as exc:  # (a Django project's scheduler raises Django's errors when Django is not set up)
            raise ImproperlyConfigured(
                f'beat_scheduler: {value!r} is not available in fastq beat: importing it raised '
                f'{type(exc).__name__}: {exc}'
            ) from exc
    if isinstance(candidate, type) and (issubclass(candidate, Scheduler) or celery_scheduler_class(candidate)):
        return candidate
    raise ImproperlyConfigured(
        f'beat_scheduler: {value!r} is not available in fastq beat: it is neither fastq.beat:Scheduler (nor a '
        'subclass) nor a Celery scheduler class (a celery.beat.Scheduler subclass, which fastq hosts).'
    )


def _scheduler_aliases() -> dict[str, str]:
    """Short names schedulers register for `celery beat -S` (django-celery-beat: `django`)."""
    from importlib.metadata import entry_points

    return {ep.name: ep.value for ep in entry_points(group='celery.beat_schedulers')}


def make_scheduler(
    app: Fastq, value: Any, schedule_filename: str, max_interval: float | None, embedded: bool
) -> Scheduler | HostedScheduler:
    """fastq's scheduler with its schedule file, or a hosted Celery one. A scheduler class other than
    fastq's may import the project's models (django-celery-beat's do), so the app's modules are imported
    first, which sets Django up as `celery beat` does before it loads the scheduler."""
    if not (value is None or (isinstance(value, str) and value in SCHEDULER_NAMES)):
        app.init_worker()
    cls = check_scheduler(value)
    if issubclass(cls, Scheduler):
        return cls(app, ScheduleStore(schedule_filename), max_interval)
    return HostedScheduler(app, cls, schedule_filename, max_interval, embedded=embedded)


class Service:
    """One beat: connects, stands by or leads, ticks, and on `stop()` hands the lock over."""

    def __init__(
        self,
        app: Fastq,
        max_interval: float | None = None,
        schedule_filename: str | None = None,
        scheduler_cls: Any = None,
        lock_timeout: float | None = None,
        embedded: bool = False,
        remote_control: bool | None = None,
        hostname: str | None = None,
    ) -> None:
        self.app = app
        self.schedule_filename = schedule_filename or app.conf.beat_schedule_filename
        self.embedded = embedded
        self.lock_timeout = float(lock_timeout or app.conf.beat_lock_timeout)
        if self.lock_timeout <= 0:
            raise ImproperlyConfigured(f'beat_lock_timeout: must be more than 0 seconds, got {self.lock_timeout}')
        value = scheduler_cls if scheduler_cls is not None else app.conf.beat_scheduler
        self.scheduler = make_scheduler(app, value, self.schedule_filename, max_interval, embedded)
        self.lock: LeaderLock | None = None
        self.leader = False
        self._stop = threading.Event()
        self._stopped = threading.Event()
        self._standby_said = False
        #: Celery 5.7's beat remote control: a `celerybeat@host` node answering `ping` on the pidbox while its
        #: scheduler ticks (a liveness probe: `inspect ping -d celerybeat@host`), silent once it stalls.
        self.remote_control = app.conf.beat_enable_remote_control if remote_control is None else remote_control
        from fastq.utils.nodenames import default_nodename, host_format

        self.hostname = host_format(default_nodename(hostname, 'celerybeat'))
        self._last_tick: float | None = None
        self._pidbox: Any = None

    @property
    def lock_name(self) -> str:
        return f'beat.{self.scheduler.namespace}'

    def start(self) -> None:
        """Run until `stop()`; raises on a configuration error (the schedule, the schedule file)."""
        logger.info('beat: Starting...')
        self.app.init_worker()
        logger.debug('beat: Ticking with max interval->%s', humanize_seconds(self.scheduler.max_interval))
        signals.beat_init.send(sender=self)
        if self.embedded:
            signals.beat_embedded_init.send(sender=self)
        store = self.scheduler.store
        try:
            if store is not None:
                tz = self.app.conf.timezone
                store.open(str(tz) if tz else None, bool(self.app.conf.enable_utc))
            self.scheduler.setup()
            broker = self._connect()
            if broker is not None:
                self._start_remote_control(broker)
                self._loop(broker)
        finally:
            self._shutdown()
            self._stopped.set()

    def _connect(self) -> Broker | None:
        broker = self.app.broker
        delay = 1.0
        while not self._stop.is_set():
            try:
                broker.connect()
                return broker
            except BrokerConnectionError as exc:
                logger.error('beat: Connection error: %s. Trying again in %s seconds...', exc, delay)
                self._stop.wait(delay)
                delay = min(delay * 2, 32.0)
        return None

    def _loop(self, broker: Broker) -> None:
        lock = self.lock = LeaderLock(broker, self.lock_name, self.lock_timeout)
        while not self._stop.is_set():
            if not lock.due():
                self._elect(lock, broker)
            wait = lock.due()
            if self.leader and lock.held:
                wait = min(wait, self.scheduler.tick())
            self._last_tick = time.monotonic()
            if wait > 0:
                logger.debug('beat: Waking up %s.', humanize_seconds(wait, prefix='in '))
            self._stop.wait(wait)

    def _start_remote_control(self, broker: Broker) -> None:
        if not self.remote_control:
            return
        if not broker.features.fanout:
            logger.warning(
                'beat pidbox: the %s transport has no fanout exchanges, so remote control is unavailable.',
                broker.url.split('://', 1)[0],
            )
            return
        from fastq.control import pidbox_exchange
        from fastq.utils.text import as_uri
        from fastq.worker.control import ControlListener

        exchange = pidbox_exchange(self.app.conf)
        self._pidbox = ControlListener(self, broker, commands={'ping': self._ping}, exchange=exchange)
        self._pidbox.start()
        logger.info('beat pidbox: Connected to %s.', as_uri(broker.url))  # (Celery's line)

    def _ping(self, node: Any, **kwargs: Any) -> Any:
        from fastq.worker.control import NO_REPLY

        age, limit = self._tick_age()
        if limit and age is not None and age > limit:
            logger.warning(
                'beat pidbox: not answering %s, the scheduler has not ticked for %.1fs (over the %ss limit).',
                'ping',
                age,
                limit,
            )
            return NO_REPLY
        return {'ok': 'pong'}

    def _tick_age(self) -> tuple[float | None, float]:
        """Seconds since the last tick, and how many make the scheduler stuck (beat_remote_control_max_tick_age,
        by default twice the max interval, 60 s at least; 0: never): saying nothing then is what a liveness
        probe can act on."""
        configured = self.app.conf.beat_remote_control_max_tick_age
        limit = configured if configured is not None else max(2 * self.scheduler.max_interval, 60.0)
        age = None if self._last_tick is None else time.monotonic() - self._last_tick
        return age, limit

    def _elect(self, lock: LeaderLock, broker: Broker) -> None:
        was_leader = self.leader
        try:
            self.leader = lock.acquire()
        except Exception as exc:
            self.leader = False
            if was_leader:
                self.scheduler.standby()
            logger.error('beat: Cannot reach %s for the leader lock: %s', broker.describe(), exc)
            return
        if self.leader and not was_leader:
            logger.info(
                'beat: Acquired the leader lock %s on %s: sending periodic tasks.', lock.name, broker.describe()
            )
            self.scheduler.setup()
            self._standby_said = False
        elif not self.leader and was_leader:
            self.scheduler.standby()
            logger.warning('beat: Lost the leader lock to %s: standing by.', lock.holder_now() or 'another beat')
        elif not self.leader and not self._standby_said:
            self._standby_said = True
            logger.info(
                'beat: Standing by: another beat (%s) holds the leader lock %s on %s.',
                lock.holder_now() or '?',
                lock.name,
                broker.describe(),
            )

    def _shutdown(self) -> None:
        if self._pidbox is not None:
            self._pidbox.stop()
        # The schedule saved (its last runs) before the lead is let go: a standby taking over in between would
        # read the runs from before and send the last one again.
        try:
            self.scheduler.close()
        finally:
            if self.lock is not None and self.leader:
                with contextlib.suppress(Exception):
                    self.lock.release()
            self.leader = False

    def stop(self, wait: bool = False) -> None:
        """Ask the loop to end (safe from signal handlers and other threads); `wait` blocks until it has."""
        if not self._stop.is_set():
            logger.info('beat: Shutting down...')
        self._stop.set()
        if wait:
            self._stopped.wait()


class EmbeddedService(threading.Thread):
    """Beat in a thread of a worker (`fastq worker -B`); sends `beat_init` and `beat_embedded_init`."""

    def __init__(self, app: Fastq, **kwargs: Any) -> None:
        super().__init__(name='Beat', daemon=True)
        self.service = Service(app, embedded=True, **kwargs)

    def run(self) -> None:
        _name_beat_records()
        try:
            self.service.start()
        except Exception as exc:
            logger.critical('beat raised exception %s: %r', type(exc), exc, exc_info=True)

    def stop(self, timeout: float = 10.0) -> None:
        self.service.stop()
        if self.is_alive():
            self.join(timeout)


def _name_beat_records() -> None:
    """Records logged from the embedded beat's thread name `Beat` as their process (`%(processName)s`), as
    those of Celery's embedded beat, a process named Beat: `[...: INFO/Beat] Scheduler: Sending due task ...`."""
    previous = logging.getLogRecordFactory()
    if getattr(previous, 'fastq_beat', False):
        return

    def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = previous(*args, **kwargs)
        if isinstance(threading.current_thread(), EmbeddedService):
            record.processName = 'Beat'
        return record

    factory.fastq_beat = True  # type: ignore[attr-defined]
    logging.setLogRecordFactory(factory)
