"""Celery scheduler classes (`celery.beat.Scheduler` subclasses) run by fastq's beat.

`beat_scheduler = 'django_celery_beat.schedulers:DatabaseScheduler'` (or RedBeat's, or a project's own) names
a class written against Celery: it decides what is due and keeps its own state (database rows, Redis keys),
and fastq's beat has no business redoing either. So fastq hosts it: the class is made and ticked exactly as
`celery beat` does (`cls(app=..., schedule_filename=..., max_interval=..., lazy=...)`, `tick()` until it asks
to sleep, `should_sync()`/`_do_sync()` after, `close()` at the end), and the app it is given is `CeleryApp`, a
view of the fastq app: `app.tasks` are fastq's tasks and `app.send_task` fastq's, so what it sends are fastq
messages with the scheduler's options and headers: those Celery's beat sends, plus fastq's `fastq_sent_at`
header (tests/integration/test_django_celery_beat.py compares them).

What fastq's beat guarantees with a hosted scheduler:

- One leader among several beats of the app on the broker (the leader lock, `lock.py`) holds: only the
  leading beat makes and ticks the scheduler; a standby makes it when it takes over (so it starts from what
  the scheduler stored: django-celery-beat's `last_run_at`), and a leader that loses the lock closes it
  (which stores its last runs).
- Claims per run (`<entry>@<scheduled time>`) do not: the scheduler's own due-time logic has no scheduled
  time every beat would agree on, so two beats that both believe they lead (one paused past its lease)
  can both send a run. Runs are stored after each send (`beat_sync_every` defaults to 1 here, not Celery's
  3-minute cadence), so a new leader after a crash repeats at most the run in flight.
- The schedule file (`-s`) is not fastq's SQLite file: it is passed to the class as `schedule_filename`, as
  Celery does, for the class to use or ignore (django-celery-beat ignores it).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any

from fastq.exceptions import ImproperlyConfigured

if TYPE_CHECKING:
    from fastq.app import Fastq
    from fastq.connection import Connection

__all__ = ['CeleryApp', 'HostedScheduler', 'celery_scheduler_class', 'celery_schedule']

logger = logging.getLogger('celery.beat')

RETRY_DELAY = 5.0  # seconds before ticking again a scheduler whose tick raised


def celery_scheduler_class(candidate: Any) -> bool:
    """Is `candidate` a Celery scheduler class fastq's beat can host (a `celery.beat.Scheduler` subclass)?"""
    if not isinstance(candidate, type):
        return False
    try:
        from celery.beat import Scheduler as CeleryScheduler
    except ImportError:  # no Celery: nothing can be a subclass of its Scheduler
        return False
    return issubclass(candidate, CeleryScheduler)


def celery_schedule(value: Any, app: Any = None) -> Any:
    """fastq's `schedule`/`crontab`/`solar` as Celery's (others as they are): the scheduler compares entries'
    schedules with Celery's classes (django-celery-beat stores a `beat_schedule` entry by its schedule's
    type), and each of fastq's classes takes the same arguments as Celery's namesake."""
    if type(value).__module__ != 'fastq.schedules':
        return value
    from celery import schedules

    cls = getattr(schedules, type(value).__name__, None)
    if cls is None:
        return value
    _, args, *state = value.__reduce__()
    kwargs = {k: v for k, v in (state[0] if state and state[0] else {}).items() if k != 'app'}
    return cls(*args, app=app, **kwargs)


class _Settings(Mapping[str, Any]):
    """The fastq app's settings as the hosted scheduler reads them: all as they are, but `beat_schedule`'s
    schedules as Celery's classes (`celery_schedule`)."""

    def __init__(self, app: CeleryApp) -> None:
        self._app = app
        self._conf = app.fastq.conf

    def __getattr__(self, name: str) -> Any:  # (only called for names that are not attributes of this view)
        value = getattr(self._conf, name)
        return self._beat_schedule(value) if name == 'beat_schedule' else value

    def __setattr__(self, name: str, value: Any) -> None:  # (RedBeat writes `conf.beat_schedule`: the app's)
        if name.startswith('_'):
            object.__setattr__(self, name, value)
        else:
            setattr(self._conf, name, value)

    def __getitem__(self, name: str) -> Any:
        value = self._conf[name]
        return self._beat_schedule(value) if name == 'beat_schedule' else value

    def __iter__(self) -> Iterator[str]:
        return iter(self._conf)

    def __len__(self) -> int:
        return len(self._conf)

    def get(self, name: str, default: Any = None) -> Any:
        return self[name] if name in self._conf else default

    def _beat_schedule(self, schedule: Any) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name, entry in (schedule or {}).items():
            if isinstance(entry, Mapping) and 'schedule' in entry:
                entry = {**entry, 'schedule': celery_schedule(entry['schedule'], self._app)}
            out[name] = entry
        return out


class _Amqp:
    """`app.amqp` as Celery's `Scheduler` uses it: `Producer(connection, auto_declare=False)` for the
    `producer=` it passes to `apply_async` (fastq publishes on its own connection either way)."""

    def __init__(self, app: CeleryApp) -> None:
        self._app = app

    def Producer(self, connection: Connection, **kwargs: Any) -> Any:
        from fastq.connection import Producer

        return Producer(connection)

    def __getattr__(self, name: str) -> Any:  # queues, router, default_queue: the fastq app's
        return getattr(self._app.fastq.amqp, name)


class CeleryApp:
    """The fastq app seen as a Celery app by code written against Celery (a hosted scheduler, its entries and
    schedules): fastq's app already has Celery's names (`conf`, `tasks`, `send_task`, `timezone`, `now`,
    `connection_for_write`, `backend` ...), so everything but the few below is the fastq app's own."""

    def __init__(self, app: Fastq) -> None:
        self.fastq = app
        self.conf = _Settings(self)
        self.amqp = _Amqp(self)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.fastq, name)

    @property
    def namespace(self) -> str | None:
        """The settings prefix (django-celery-beat reads `<namespace>_TIMEZONE` from Django's settings)."""
        return self.fastq.namespace

    def _get_current_object(self) -> CeleryApp:
        return self

    @contextlib.contextmanager
    def as_current(self) -> Iterator[CeleryApp]:
        """Be Celery's `current_app` in this thread meanwhile: Celery schedules and django-celery-beat's
        entries made without an app (`ModelEntry.__next__`) take it, and Celery's own default app (an AMQP
        broker on localhost, UTC) would send nothing anywhere and read no setting of this project."""
        from celery import _state

        previous = _state._tls.current_app
        _state._set_current_app(self)
        try:
            yield self
        finally:
            _state._set_current_app(previous)

    def __repr__(self) -> str:
        return f'<CeleryApp of {self.fastq!r}>'


class _CelerySender:
    """The `sender` of Celery's beat signals (Celery's beat `Service`), for what receivers read of it."""

    def __init__(self, app: CeleryApp, scheduler: Any) -> None:
        self.app = app
        self.scheduler = scheduler


class HostedScheduler:
    """A Celery scheduler class ticked by fastq's beat service (see the module docstring): made when this
    beat leads, closed when it stops leading or shuts down."""

    store = None  # (no fastq schedule file: the hosted class keeps its own state)

    def __init__(
        self,
        app: Fastq,
        scheduler_cls: type[Any],
        schedule_filename: str | None = None,
        max_interval: float | None = None,
        embedded: bool = False,
    ) -> None:
        self.app = app
        self.scheduler_class = scheduler_cls
        self.celery_app = CeleryApp(app)
        self.namespace = app.main or 'default'
        self.schedule_filename = schedule_filename
        self.embedded = embedded
        self._max_interval = max_interval
        self.instance: Any = None
        # As `celery beat` does for its banner: a lazy instance (no schedule read) for the max interval and info.
        with self.celery_app.as_current():
            try:
                probe = self._make(lazy=True)
            except Exception as exc:
                raise ImproperlyConfigured(
                    f'beat_scheduler: {self.label} cannot be made: {type(exc).__name__}: {exc}'
                ) from exc
        self.max_interval = float(probe.max_interval)
        self.info = str(getattr(probe, 'info', '') or '')

    @property
    def label(self) -> str:
        return f'{self.scheduler_class.__module__}.{self.scheduler_class.__qualname__}'

    def _make(self, lazy: bool) -> Any:
        return self.scheduler_class(
            app=self.celery_app,
            schedule_filename=self.schedule_filename,
            max_interval=self._max_interval,
            lazy=lazy,
        )

    def setup(self) -> None:
        """On becoming leader: forget the instance a previous lead left (the next tick makes a fresh one,
        reading what the other beat stored meanwhile)."""
        self.standby()

    def _start(self) -> Any:
        from celery import signals as celery_signals

        instance = self._make(lazy=False)
        if not self.app.conf.beat_sync_every:
            instance.sync_every_tasks = 1  # store each run as it is sent (see the module docstring)
        # Celery's beat sends its beat_init with the service as sender; schedulers hook it (RedBeat takes its
        # lock there, reading `sender.scheduler`).
        sender = _CelerySender(self.celery_app, instance)
        celery_signals.beat_init.send(sender=sender)
        if self.embedded:
            celery_signals.beat_embedded_init.send(sender=sender)
        return instance

    def tick(self) -> float:
        """One tick of the hosted scheduler (it sends at most one due entry per tick, and returns 0 while more
        are due); stored runs are written when it asks to sleep, as Celery's service does."""
        with self.celery_app.as_current():
            try:
                if self.instance is None:
                    self.instance = self._start()
                interval = float(self.instance.tick() or 0.0)
                if interval > 0 and self.instance.should_sync():
                    self.instance._do_sync()
            except Exception:
                logger.error('beat: %s raised; trying again in %s s.', self.label, RETRY_DELAY, exc_info=True)
                return RETRY_DELAY
        return max(interval, 0.0)

    def standby(self) -> None:
        """No longer leading: close the instance (it stores its last runs) so that only the leader sends."""
        instance, self.instance = self.instance, None
        if instance is not None:
            with self.celery_app.as_current():
                try:
                    instance.close()
                except Exception:
                    logger.error('beat: Closing %s failed', self.label, exc_info=True)

    def close(self) -> None:
        self.standby()
