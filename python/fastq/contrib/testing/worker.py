"""Embedded workers for tests: `start_worker(app)` runs a real worker in a thread of the test's process.

Celery's `celery.contrib.testing.worker` under the same names and defaults (the solo pool, one slot, a
`celery.ping` round trip before the test runs), so tests written against it run on fastq unchanged. The
worker is the real one (its fetcher, dispatcher, acks and result stores), on whatever broker the app
names: `memory://` (the test app's default) works because worker and test share the process.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import threading
import time
from collections.abc import Iterator
from typing import Any

from fastq import signals
from fastq.app import Fastq
from fastq.signals import Signal
from fastq.utils.nodenames import anon_nodename
from fastq.worker.worker import WorkController

__all__ = [
    'TestWorkController',
    'setup_app_for_worker',
    'start_worker',
    'test_worker_started',
    'test_worker_starting',
    'test_worker_stopped',
]

WORKER_LOGLEVEL = os.environ.get('WORKER_LOGLEVEL', 'error')
#: How long `start_worker` waits for the worker to be consuming (a broker that is down fails the test here).
START_TIMEOUT = 60.0

test_worker_starting = Signal(name='test_worker_starting')
test_worker_started = Signal(name='test_worker_started', providing_args={'worker', 'consumer'})
test_worker_stopped = Signal(name='test_worker_stopped', providing_args={'worker'})


class TestWorkController(WorkController):
    """A worker that says when it is consuming (`ensure_started`), run by `start_worker` in a thread."""

    __test__ = False  # (pytest: not a test class)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._on_started = threading.Event()
        super().__init__(*args, **kwargs)
        signals.worker_ready.connect(self._ready, sender=self, weak=False)

    def _ready(self, sender: Any = None, **kwargs: Any) -> None:
        if sender is self:
            self.on_consumer_ready(self.consumer)

    def on_consumer_ready(self, consumer: Any) -> None:
        """Called (in the worker's thread) once it consumes."""
        self._on_started.set()
        test_worker_started.send(sender=self.app, worker=self, consumer=consumer)

    def ensure_started(self, timeout: float | None = None) -> bool:
        """Wait until the worker consumes (it must run in another thread); False on timeout."""
        return self._on_started.wait(timeout)

    def reload(self, modules: Any = None, reload: bool = False, reloader: Any = None) -> None:
        """Celery's way to make a worker see tasks defined after it started. An embedded worker shares the
        app's registry with the test, so they are seen already; named `modules` are imported."""
        for module in modules or ():
            importlib.reload(importlib.import_module(module)) if reload else importlib.import_module(module)

    def close(self) -> None:
        signals.worker_ready.disconnect(self._ready, sender=self)


@contextlib.contextmanager
def _joins_allowed() -> Iterator[None]:
    from fastq import result

    result._embedded_workers += 1
    try:
        yield
    finally:
        result._embedded_workers -= 1


def _names(value: Any) -> list[str]:
    if not value:
        return []
    if isinstance(value, str):
        return [name.strip() for name in value.split(',') if name.strip()]
    return list(value)


def _ping_task(app: Fastq) -> Any:
    from fastq.contrib.testing import tasks  # registers celery.ping on apps finalized from now on

    if 'celery.ping' not in app.tasks:  # (shared tasks bind when an app finalizes; this one may not have)
        app._task_from_fun(tasks.ping.__wrapped__, name='celery.ping')
    return app.tasks['celery.ping']


def setup_app_for_worker(app: Fastq, loglevel: str | int, logfile: str | None) -> None:
    """Celery's: finalize `app`, make it the current and default app, and set logging up as a worker does
    (once per process: `app.log.setup`)."""
    app.finalize()
    app.set_current()
    app.set_default()
    app.log.setup(loglevel=loglevel, logfile=logfile)


@contextlib.contextmanager
def start_worker(
    app: Fastq,
    concurrency: int = 1,
    pool: str = 'solo',
    loglevel: str | int = WORKER_LOGLEVEL,
    logfile: str | None = None,
    perform_ping_check: bool = True,
    ping_task_timeout: float = 10.0,
    shutdown_timeout: float = 10.0,
    **kwargs: Any,
) -> Iterator[TestWorkController]:
    """Start an embedded worker for `app`, yield it once it consumes (and answered a ping), stop it after.

    `kwargs` go to the worker (`queues=[...]`, `hostname=...`, `prefetch_multiplier`, ...); Celery's
    `without_heartbeat`, `without_mingle`, `without_gossip` are accepted.
    """
    test_worker_starting.send(sender=app)
    worker = None
    try:
        with _start_worker_thread(
            app, concurrency=concurrency, pool=pool, loglevel=loglevel, logfile=logfile,
            shutdown_timeout=shutdown_timeout, **kwargs,
        ) as worker:  # fmt: skip
            if perform_ping_check:
                from fastq.result import allow_join_result

                ping = _ping_task(app)
                with allow_join_result():
                    assert ping.delay().get(timeout=ping_task_timeout) == 'pong'
            yield worker
    finally:
        test_worker_stopped.send(sender=app, worker=worker)


@contextlib.contextmanager
def _start_worker_thread(
    app: Fastq,
    concurrency: int = 1,
    pool: str = 'solo',
    loglevel: str | int = WORKER_LOGLEVEL,
    logfile: str | None = None,
    WorkController: type[TestWorkController] = TestWorkController,
    shutdown_timeout: float = 10.0,
    **kwargs: Any,
) -> Iterator[TestWorkController]:
    if logfile:
        from fastq.utils.log import setup_worker_logging

        setup_worker_logging(app.conf, loglevel, logfile, redirect=False)
    # Celery's WorkController takes these as a list or a comma-separated string (the Testing guide's
    # `'exclude_queues': ('celery')` is one), and imports `include` before it starts.
    queues = _names(kwargs.pop('queues', None))
    excluded = {app.router.queue_name(name) for name in _names(kwargs.pop('exclude_queues', None))}
    for module in _names(kwargs.pop('include', None)):
        importlib.import_module(module)
    app.finalize()
    app.set_current()
    app.set_default()
    _ping_task(app)
    # Fail now on a broker that cannot be reached, with the connection error, as Celery's start_worker
    # does (`TEST_BROKER` names another broker to check), rather than once the worker gave up retrying.
    with app.connection(hostname=os.environ.get('TEST_BROKER')) as connection:
        connection.default_channel  # noqa: B018
    for name in ('without_mingle', 'without_gossip', 'ready_callback', 'optimization'):
        kwargs.pop(name, None)
    kwargs['without_mingle'] = True  # (as Celery's test workers: always)
    heartbeat = not kwargs.pop('without_heartbeat', True)
    worker = WorkController(
        app, concurrency=concurrency, pool=pool, hostname=kwargs.pop('hostname', anon_nodename()),
        quiet=True, heartbeat=heartbeat, queues=queues or None, **kwargs,
    )  # fmt: skip
    if excluded:
        worker.queues = [name for name in worker.queues if name not in excluded]
    thread = threading.Thread(target=worker.start, name='fastq-test-worker', daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while not worker.ensure_started(0.1):
            if not thread.is_alive():
                raise RuntimeError(f'the embedded worker stopped before it consumed (exit code {worker.exitcode})')
            if time.monotonic() > deadline:
                raise RuntimeError(f'the embedded worker did not start consuming within {START_TIMEOUT:g} s')
        with _joins_allowed():
            yield worker
    finally:
        worker.stop()
        thread.join(shutdown_timeout)
        worker.close()
        if thread.is_alive():
            raise RuntimeError(
                'Worker thread failed to exit within the allocated timeout. '
                'Consider raising `shutdown_timeout` if your tasks take longer to execute.'
            )
