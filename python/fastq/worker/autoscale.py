"""`--autoscale=max,min`: grow the prefork pool while tasks wait, shrink it back once it idles.

Celery's rule (`celery/worker/autoscale.py`), on the worker loop's timer instead of a thread: the wanted size
is the number of tasks the worker holds (running, reserved, rate-limited), kept within [min, max]. It grows at
once; it shrinks only after `keepalive` seconds without a change, so a bursty queue does not fork and reap
children every second. The prefetch window follows the pool size (processes x prefetch multiplier).
"""

from __future__ import annotations

import logging
import os
import time
from typing import TYPE_CHECKING, Any

from fastq.worker.control import command, ok, on_loop

if TYPE_CHECKING:
    from fastq.worker.worker import WorkController

__all__ = ['AUTOSCALE_KEEPALIVE', 'Autoscaler', 'autoscaler_class', 'parse_autoscale']

logger = logging.getLogger('celery.worker.autoscale')

#: Celery's default; FASTQ_AUTOSCALE_KEEPALIVE (seconds) overrides it, as Celery's AUTOSCALE_KEEPALIVE does.
AUTOSCALE_KEEPALIVE = float(os.environ.get('FASTQ_AUTOSCALE_KEEPALIVE') or os.environ.get('AUTOSCALE_KEEPALIVE') or 30)
INTERVAL = 1.0


def parse_autoscale(value: str) -> tuple[int, int]:
    """'10,3' -> (10, 3); '10' -> (10, 0), as Celery reads `--autoscale`."""
    max_s, _, min_s = str(value).partition(',')
    try:
        max_c, min_c = int(max_s), int(min_s or 0)
    except ValueError:
        raise ValueError(f'--autoscale: expected MAX[,MIN] (e.g. 10,3), got {value!r}') from None
    if min_s and min_c > max_c:  # either order, as Celery reads it ('1,4' is min 1, max 4)
        max_c, min_c = min_c, max_c
    if max_c < 1 or min_c < 0:
        raise ValueError(f'--autoscale: expected 1 <= MIN <= MAX, got max={max_c} min={min_c}')
    return max_c, min_c


#: Celery's default `worker_autoscaler`, which means this class.
DEFAULT_AUTOSCALER = 'celery.worker.autoscale:Autoscaler'


def autoscaler_class(name: str | None) -> type[Autoscaler]:
    """The `worker_autoscaler` setting's class: this module's Autoscaler for Celery's default, else the class
    it names, which must subclass this module's Autoscaler (it drives fastq's pool, not billiard's)."""
    from fastq.exceptions import ImproperlyConfigured
    from fastq.utils.imports import symbol_by_name

    if not name or name == DEFAULT_AUTOSCALER:
        return Autoscaler
    cls = symbol_by_name(name)
    if not (isinstance(cls, type) and issubclass(cls, Autoscaler)):
        raise ImproperlyConfigured(
            f'worker_autoscaler: {name!r} is not a subclass of fastq.worker.autoscale.Autoscaler '
            "(Celery's Autoscaler drives billiard's pool; derive from fastq's, which has the same "
            '_maybe_scale/qty/processes/scale_up/scale_down)'
        )
    return cls


class Autoscaler:
    def __init__(self, worker: WorkController, max_concurrency: int, min_concurrency: int) -> None:
        self.worker = worker
        self.max_concurrency = max_concurrency
        self.min_concurrency = min_concurrency
        self.keepalive = AUTOSCALE_KEEPALIVE
        self._last_action = time.monotonic()

    def start(self) -> None:
        self.worker.loop.call_repeatedly(INTERVAL, self.maybe_scale)

    @property
    def qty(self) -> int:
        """The tasks the worker holds (Celery's `qty`: its reserved requests)."""
        d = self.worker.dispatcher
        if d is None:
            return 0
        return len(d.running) + len(d.ready) + sum(len(q) for q in d.limiter.waiting.values())

    @property
    def processes(self) -> int:
        """The pool's size now (Celery's `processes`)."""
        return int(self.worker.processes)

    def maybe_scale(self, req: Any = None) -> None:
        if self.worker.pool is None:
            return
        self._maybe_scale(req)

    def _maybe_scale(self, req: Any = None) -> bool | None:
        """The rule, as Celery names it: a `worker_autoscaler` subclass overrides this one (with `qty`,
        `processes`, `min_concurrency`, `max_concurrency`, `scale_up(n)`, `scale_down(n)`)."""
        procs = self.processes
        cur = min(max(self.qty, self.min_concurrency), self.max_concurrency)
        if cur > procs:
            self.scale_up(cur - procs)
            return True
        if cur < procs and time.monotonic() - self._last_action > self.keepalive:
            self.scale_down(min(procs - cur, procs - max(self.min_concurrency, 1)))
            return True
        return None

    def scale_up(self, n: int) -> None:
        self._last_action = time.monotonic()
        logger.info('Scaling up %s processes.', n)
        self.worker.resize_pool(n)

    def scale_down(self, n: int) -> None:
        if n <= 0:
            return
        self._last_action = time.monotonic()
        logger.info('Scaling down %s processes.', n)
        self.worker.resize_pool(-n)

    def info(self) -> dict[str, int]:
        """What `inspect stats` reports under 'autoscaler', as Celery's (in the loop's thread)."""
        return {
            'max': self.max_concurrency,
            'min': self.min_concurrency,
            'current': self.worker.processes,
            'qty': self.qty,
        }

    def update(self, max_concurrency: int | None = None, min_concurrency: int | None = None) -> tuple[int, int]:
        if max_concurrency is not None:
            # The window is for the largest pool: it moves with the maximum (Celery's consumer prefetch update)
            diff = int(max_concurrency) - self.max_concurrency
            if diff and self.worker.window:
                self.worker.set_window(max(self.worker.window + diff * self.worker.multiplier, 1))
            self.max_concurrency = int(max_concurrency)
        if min_concurrency is not None:
            self.min_concurrency = int(min_concurrency)
        procs = self.worker.processes
        if self.worker.pool is not None:  # Celery: the new bounds apply at once
            if procs > self.max_concurrency:
                self.scale_down(procs - self.max_concurrency)
            elif procs < self.min_concurrency:
                self.scale_up(self.min_concurrency - procs)
        return self.max_concurrency, self.min_concurrency


# --- remote control: Celery's pool commands -------------------------------------------------------------------


@command('pool_grow')
def _pool_grow(worker: WorkController, n: int = 1, **kwargs: Any) -> dict[str, Any]:
    if worker.autoscaler is not None:  # Celery >= 5.3: the autoscaler owns the pool size
        return {'error': 'pool_grow is not supported with autoscale. Adjust autoscale range instead.'}
    on_loop(worker, lambda: worker.resize_pool(int(n)))
    return ok('pool will grow')


@command('pool_shrink')
def _pool_shrink(worker: WorkController, n: int = 1, **kwargs: Any) -> dict[str, Any]:
    if worker.autoscaler is not None:
        return {'error': 'pool_shrink is not supported with autoscale. Adjust autoscale range instead.'}
    on_loop(worker, lambda: worker.resize_pool(-int(n)))
    return ok('pool will shrink')


@command('pool_restart')
def _pool_restart(worker: WorkController, modules: Any = None, reload: bool = False, **kwargs: Any) -> dict[str, Any]:
    """Replace the pool's children; each finishes what it holds first. Children are forked from a fork server
    that loaded the code at start, so changed task code needs a worker restart (Celery's `reload` neither
    re-imports reliably); `modules`/`reload` are accepted and ignored. The other pools have no children: the
    worker's process imports `modules` (`_import_in_process`)."""
    if not worker.app.conf.worker_pool_restarts:
        raise ValueError('Pool restarts not enabled')
    from fastq.worker.pool.prefork import PreforkPool

    pool = worker.pool
    if not isinstance(pool, PreforkPool):
        # threads, solo, gevent: tasks run in the worker's own process, which imports the modules (re-imports
        # them with `reload`), as Celery's WorkController.reload does before its pool.restart(), which these
        # pools do not implement: 'reload started' all the same
        on_loop(worker, lambda: _import_in_process(worker, modules, bool(reload)))
        return ok('reload started')
    on_loop(worker, pool.restart)
    return ok('reload started')


def _import_in_process(worker: WorkController, modules: Any, reload: bool) -> None:
    """Celery's `_reload_modules`: each module (by default those the registered tasks come from) imported if it
    is not yet, re-imported if `reload` (tasks it adds are taken from then on)."""
    import importlib
    import sys

    app = worker.app
    names = {task.__module__ for task in app.tasks.values()} if modules is None else set(modules or ())
    for name in sorted(names):
        if name not in sys.modules:
            logger.debug('importing module %s', name)
            importlib.import_module(name)
        elif reload:
            logger.debug('reloading module %s', name)
            importlib.reload(sys.modules[name])


@command('autoscale')
def _autoscale(worker: WorkController, max: int | None = None, min: int | None = None, **kwargs: Any) -> dict[str, Any]:
    scaler = worker.autoscaler
    if scaler is None:
        raise ValueError('Autoscale not enabled')
    max_c, min_c = on_loop(worker, lambda: scaler.update(max, min))
    return ok(f'autoscale now max={max_c} min={min_c}')
