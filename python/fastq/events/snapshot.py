"""Snapshot cameras: `Polaroid` and `evcam`, Celery's way of recording the cluster's state at intervals.

A stream of events suits a live view; a database of task history (Celery's django-celery, or a monitor that
writes to a metrics store) wants the state at intervals instead. A camera subclasses `Polaroid` and
overrides `on_shutter(state)`; `fastq events --camera=myapp.Camera --frequency=2.0` (or `evcam`) feeds an
`app.events.State` from the event stream in the main thread and calls the camera every `freq` seconds from
a timer thread, with the state frozen (no event folded in) while it looks. `maxrate` ('100/m', Celery's
rate strings) caps how often it fires; `clear_after` empties the state after each shot, so each one sees
only what happened since the last (tasks still running are kept, as Celery's `State.clear` keeps them).
Stopping takes one last shot, so the events since the previous one are not lost.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from fastq.signals import Signal
from fastq.utils.imports import symbol_by_name
from fastq.utils.time import parse_rate
from fastq.worker.ratelimit import TokenBucket

if TYPE_CHECKING:
    from fastq.app import Fastq
    from fastq.events.state import State

__all__ = ['Polaroid', 'evcam']

logger = logging.getLogger('celery.evcam')


class Repeater:
    """Calls `fun` every `interval` seconds from a daemon thread until cancelled; calling the repeater runs
    `fun` once now (in the caller's thread), as calling a Celery timer entry does."""

    def __init__(self, interval: float, fun: Callable[[], Any]) -> None:
        self.interval = interval
        self.fun = fun
        self._cancelled = threading.Event()
        self._thread = threading.Thread(target=self._run, name='fastq-evcam', daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._cancelled.wait(self.interval):
            try:
                self.fun()
            except Exception:  # a camera that fails once keeps its schedule (Celery's timer logs and goes on)
                logger.exception('Error in timer: %r', self.fun)

    def __call__(self) -> Any:
        return self.fun()

    def cancel(self) -> None:
        self._cancelled.set()


class _Timer:
    """The default timer: `call_repeatedly` as on Celery's `timer2.Timer` (which may be passed instead)."""

    def call_repeatedly(self, secs: float, fun: Callable[[], Any], *args: Any, **kwargs: Any) -> Repeater:
        return Repeater(secs, (lambda: fun(*args, **kwargs)) if args or kwargs else fun)


class Polaroid:
    """Record event snapshots: subclass it and override `on_shutter` (and `on_cleanup`)."""

    timer: Any = None
    shutter_signal = Signal(name='shutter_signal', providing_args={'state'})
    cleanup_signal = Signal(name='cleanup_signal')
    #: Empty the state after each shot (tasks still running are kept).
    clear_after = False

    _tref: Any = None
    _ctref: Any = None

    def __init__(
        self,
        state: State,
        freq: float = 1.0,
        maxrate: str | float | None = None,
        cleanup_freq: float = 3600.0,
        timer: Any = None,
        app: Fastq | None = None,
    ) -> None:
        from fastq import _state

        self.app = _state.app_or_default(app)
        self.state = state
        self.freq = float(freq)
        self.cleanup_freq = float(cleanup_freq)
        self.timer = timer or self.timer or _Timer()
        self.logger = logger
        rate = parse_rate(maxrate) if maxrate else 0.0
        self.maxrate = TokenBucket(rate) if rate > 0 else None

    def install(self) -> None:
        self._tref = self.timer.call_repeatedly(self.freq, self.capture)
        self._ctref = self.timer.call_repeatedly(self.cleanup_freq, self.cleanup)

    def on_shutter(self, state: State) -> None:
        pass

    def on_cleanup(self) -> None:
        pass

    def cleanup(self) -> None:
        logger.debug('Cleanup: Running...')
        self.cleanup_signal.send(sender=self.state)
        self.on_cleanup()

    def shutter(self) -> None:
        if self.maxrate is None or self.maxrate.take(time.monotonic()) == 0.0:
            logger.debug('Shutter: %s', self.state)
            self.shutter_signal.send(sender=self.state)
            self.on_shutter(self.state)

    def capture(self) -> None:
        self.state.freeze_while(self.shutter, clear_after=self.clear_after)

    def cancel(self) -> None:
        if self._tref:
            self._tref()  # the events since the last shot
            self._tref.cancel()
        if self._ctref:
            self._ctref.cancel()

    def __enter__(self) -> Polaroid:
        self.install()
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.cancel()


def evcam(
    camera: str | type[Polaroid],
    freq: float = 1.0,
    maxrate: str | float | None = None,
    loglevel: int | str = 0,
    logfile: str | None = None,
    pidfile: str | None = None,
    timer: Any = None,
    app: Fastq | None = None,
    max_time: float | None = None,
    **kwargs: Any,
) -> None:
    """Take snapshots with `camera` (a `Polaroid` subclass or its dotted name) of `app`'s events until
    interrupted (or `max_time` seconds passed, fastq's addition for scripts and tests)."""
    from fastq import _state
    from fastq.cli.base import write_pidfile
    from fastq.utils.log import setup_logging

    app = _state.app_or_default(app)
    if pidfile:
        write_pidfile(pidfile)
    if loglevel or logfile:
        level = logging.getLevelName(loglevel) if isinstance(loglevel, int) and loglevel else loglevel or 'WARNING'
        setup_logging(str(level), logfile)
    print(f'-> evcam: Taking snapshots with {camera} (every {freq} secs.)', flush=True)
    state = app.events.State()
    cls = symbol_by_name(camera) if isinstance(camera, str) else camera
    cam = cls(state, app=app, freq=freq, maxrate=maxrate, timer=timer)
    cam.install()
    receiver = app.events.Receiver(handlers={'*': state.event})
    try:
        with receiver:
            receiver.capture(limit=None, timeout=max_time)
    except KeyboardInterrupt:
        raise SystemExit() from None
    finally:
        cam.cancel()
        if pidfile:
            import contextlib
            import os

            with contextlib.suppress(OSError):
                os.unlink(os.path.abspath(pidfile))
