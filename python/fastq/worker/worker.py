"""`WorkController`: a worker's life, from banner to shutdown.

Start order matters: the pool (and its fork server) starts before any thread exists or the broker is
connected, so children are forked from a clean single-threaded process. The shutdown signals do what
Celery 5.7's do (`_signalled`): SIGTERM is a warm shutdown (stop fetching, hand back what has not started,
let running tasks finish), SIGQUIT a cold one (after the soft shutdown, if set, the running tasks are
cancelled: unacked messages go back to the broker), SIGINT warm and then cold. Nothing reserved is lost.
"""

from __future__ import annotations

import contextlib
import logging
import os
import platform
import random
import signal
import sys
import threading
import time
from datetime import datetime
from typing import TYPE_CHECKING, Any

from fastq import __version__, _state, signals
from fastq.exceptions import BrokerConnectionError, ImproperlyConfigured
from fastq.serialization import accept_set
from fastq.utils.log import redirect_worker_stdouts
from fastq.utils.nodenames import default_nodename, host_format
from fastq.utils.platforms import install_rdb_handler
from fastq.utils.text import as_uri
from fastq.worker.dispatcher import Dispatcher
from fastq.worker.fetcher import Fetcher
from fastq.worker.loop import Loop
from fastq.worker.monitor import HEARTBEAT_INTERVAL, WorkerEvents
from fastq.worker.pool import create_pool
from fastq.worker.settler import Settler
from fastq.worker.steps import StepConsumer, StepTimer, WorkerBlueprint

if TYPE_CHECKING:
    from fastq.app import Fastq
    from fastq.brokers.base import Broker, Consumer, Delivery
    from fastq.worker.lending import Lending
    from fastq.worker.pool.base import Pool
    from fastq.worker.qos import QoS

logger = logging.getLogger('celery.worker')
# The loggers Celery's lines come from, for a logging config (or `%(name)s` format) that names them.
ready_logger = logging.getLogger('celery.apps.worker')
connection_logger = logging.getLogger('celery.worker.consumer.connection')

TIME_LIMIT_CHECK = 0.25
HOUSEKEEPING_INTERVAL = 1.0
REVOKED_REFRESH = 5.0  # seconds between reads of the broker's revoked ids (the pidbox is the fast path)


def _concurrency(value: Any) -> int | None:
    """`worker_concurrency` as a number: None (and Celery 5.7's 'auto') for the pool's own default."""
    if value is None or value == 'auto':
        return None
    return int(value) or None


class WorkController:
    def __init__(
        self,
        app: Fastq,
        hostname: str | None = None,
        concurrency: int | None = None,
        pool: str | None = None,
        processes: int | None = None,
        queues: list[str] | None = None,
        prefetch_multiplier: int | None = None,
        max_tasks_per_child: int | None = None,
        max_memory_per_child: int | None = None,
        time_limit: float | None = None,
        soft_time_limit: float | None = None,
        quiet: bool = False,
        banner_stream: Any = None,
        beat: bool = False,
        schedule_filename: str | None = None,
        scheduler: str | None = None,
        task_events: bool | None = None,
        heartbeat: bool = True,
        heartbeat_interval: float | None = None,
        metrics_port: int | None = None,
        autoscale: str | None = None,
        options: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        self.app = app
        conf = app.conf
        # The app's `include`/`imports` modules first (Celery's `loader.init_worker()`), so their receivers
        # hear celeryd_init: Celery's first worker signal, sent before the worker reads its settings or
        # logging is set up, so a receiver may configure this worker by its name. `options` are the command
        # line's (loglevel, logfile, ...), custom `app.user_options` among them; with any other keywords (Celery's
        # Worker takes them) they also reach the application's bootsteps (fastq.bootsteps).
        app.init_worker()
        self.hostname = host_format(default_nodename(hostname))
        _state.worker_hostname = self.hostname  # (inherited by the pool's children)
        self.options: dict[str, Any] = {
            'hostname': hostname,
            'concurrency': concurrency,
            'pool_cls': pool,
            'queues': queues,
            'prefetch_multiplier': prefetch_multiplier,
            'max_tasks_per_child': max_tasks_per_child,
            'max_memory_per_child': max_memory_per_child,
            'time_limit': time_limit,
            'soft_time_limit': soft_time_limit,
            'beat': beat,
            'task_events': task_events,
            'autoscale': autoscale,
            **(options or {}),
            **kwargs,
        }
        signals.celeryd_init.send(sender=self.hostname, instance=self, conf=conf, options=self.options)
        # The command line's time limits are this worker's defaults (for a task and message without their
        # own), not the app's settings, as in Celery: written into `task_time_limit` they became every task's
        # `time_limit` in this process, so each message a task sent (a retry, a subtask, a chain's next step)
        # carried them in its header, and other workers enforced them.
        self.time_limit = time_limit if time_limit is not None else conf.task_time_limit
        self.soft_time_limit = soft_time_limit if soft_time_limit is not None else conf.task_soft_time_limit
        for name, value in (
            ('worker_max_tasks_per_child', max_tasks_per_child),
            ('worker_max_memory_per_child', max_memory_per_child),
            ('worker_prefetch_multiplier', prefetch_multiplier),
            ('worker_concurrency', concurrency),
            ('worker_pool', pool),
            ('worker_asyncio_processes', processes),
            ('worker_send_task_events', task_events or None),
            ('worker_metrics_port', metrics_port),
        ):
            if value is not None:
                conf[name] = value
        conf.validate()  # (again: the command line's values and the receivers' changes)
        self.pool_name = 'prefork' if conf.worker_pool == 'processes' else conf.worker_pool  # (Celery's alias)
        if self.pool_name == 'asyncio':  # -c: tasks in flight per child; the children are counted apart
            from fastq.worker.pool.aio import DEFAULT_COROUTINES

            self.concurrency = _concurrency(conf.worker_concurrency) or DEFAULT_COROUTINES
            self.processes = int(conf.worker_asyncio_processes or os.cpu_count() or 1)
            slots = self.processes * self.concurrency
        else:
            if conf.worker_asyncio_processes:
                logger.warning('--processes (worker_asyncio_processes) applies to -P asyncio only; ignored')
            self.concurrency = slots = _concurrency(conf.worker_concurrency) or os.cpu_count() or 1
            self.processes = self.concurrency if self.pool_name == 'prefork' else 1
        self.queues = app.router.worker_queues(queues)
        #: queue name -> (exchange, exchange type, routing key) of the queues `add_consumer` bound to an exchange
        #: of their own, which `inspect active_queues` reports as Celery's consumer declared them
        self.added_bindings: dict[str, tuple[str, str, str]] = {}
        if conf.worker_direct:  # a queue of this worker's own, for tasks routed to it by name (Celery's)
            from fastq.routing import worker_direct

            self.queues.append(worker_direct(self.hostname).name)
        self.autoscale: tuple[int, int] | None = None
        if autoscale:
            from fastq.worker.autoscale import autoscaler_class, parse_autoscale

            self._autoscaler_class = autoscaler_class(conf.worker_autoscaler)  # (refused here, before starting)

            if self.pool_name != 'prefork':
                raise ImproperlyConfigured(f'--autoscale needs the prefork pool, not {self.pool_name!r}')
            try:
                self.autoscale = parse_autoscale(autoscale)
            except ValueError as exc:
                raise ImproperlyConfigured(str(exc)) from None
            slots = self.autoscale[0]  # the window is for the largest pool, as Celery's
            self.concurrency = self.processes = max(self.autoscale[1], 1)
        self.autoscaler: Any = None
        self.multiplier = multiplier = int(conf.worker_prefetch_multiplier)
        self.window = 0 if multiplier == 0 else slots * multiplier
        self.accept = accept_set(conf.accept_content)
        self.quiet = quiet
        self.banner_stream = banner_stream if banner_stream is not None else sys.__stdout__
        self.loop = Loop()
        self.started_at = time.monotonic()  # `inspect stats` uptime
        self._shutdown: str | None = None  # None, 'warm' or 'cold'
        # What each shutdown signal does next (`_signalled`), and the cold shutdowns announced once the running
        # tasks are cancelled (signal number, whether the line is printed).
        self._on_next_signal: dict[int, tuple[str, bool]] = {}
        self._cold_announcements: list[tuple[int, bool]] = []
        self._hard = False  # a hard shutdown: no more waiting
        self._pool_terminated = False
        self.exitcode = 0
        #: stdout and stderr into the log once the banner is out (`fastq worker` sets it; Celery's Worker too).
        self.redirect_stdouts = False
        #: Whether SIGHUP restarts the worker (the `fastq worker` command sets it: it runs itself again once
        #: the worker has stopped, when `restart_requested`).
        self.restart_on_hup = False
        self.restart_requested = False
        self.broker: Broker | None = None
        self.consumer: Consumer | None = None
        self.pool: Pool | None = None
        self.dispatcher: Dispatcher | None = None
        self.fetcher: Fetcher | None = None
        self.settler: Settler | None = None
        self.lending: Lending | None = None
        self.control: Any = None
        self.events: WorkerEvents | None = None
        self.metrics: Any = None
        self.heartbeat = heartbeat
        self.heartbeat_interval = float(heartbeat_interval or HEARTBEAT_INTERVAL)
        from fastq.worker.metrics import check_metrics_port

        self.metrics_port = check_metrics_port(conf.worker_metrics_port)
        self._renewer: threading.Thread | None = None
        self._stop_renew = threading.Event()
        self.beat: Any = None
        if beat:
            from fastq.beat import EmbeddedService

            self.beat = EmbeddedService(app, schedule_filename=schedule_filename, scheduler_cls=scheduler)
        # The application's bootsteps: built at `start` (after logging is set up, as Celery's are).
        self.timer = StepTimer(self.loop)
        self.hub = None  # (Celery's kombu hub: None, as on its thread-based pools)
        self.use_eventloop = False  # (Celery's: whether `hub` is there)
        self.statedb = None  # (Celery's --statedb store: fastq keeps revocations in the broker)
        self.steps: list[Any] = []
        self.blueprint: WorkerBlueprint | None = None
        self.step_consumer: StepConsumer | None = None
        signals.worker_init.send(sender=self)

    def __repr__(self) -> str:
        """Celery's: '<Worker: w@example.com (running)>', the worker blueprint's state ('INIT' before it is
        built); what the guide's steps print as their parent and signal receivers as their sender."""
        state = self.blueprint.human_state() if self.blueprint is not None else 'INIT'
        return f'<Worker: {self.hostname} ({state})>'

    # --- startup ------------------------------------------------------------------------------------------

    def start(self) -> int:
        self._apply_bootsteps()
        # Before the banner, as Celery's: a receiver may still add queues (`app.amqp.queues.select_add`).
        self.app.amqp.selected = self.queues
        try:
            signals.celeryd_after_setup.send(sender=self.hostname, instance=self, conf=self.app.conf)
        finally:
            self.app.amqp.selected = None
        if not self.quiet:
            self._print_banner()
        if self.redirect_stdouts:
            redirect_worker_stdouts(self.app.conf)
        self._install_signal_handlers()
        extra: dict[str, Any] = {'processes': self.processes} if self.pool_name == 'asyncio' else {}
        self.pool = create_pool(
            self.pool_name,
            **extra,
            app=self.app,
            concurrency=self.concurrency,
            loop=self.loop,
            accept=self.accept,
            on_result=self._on_result,
            on_lost=self._on_lost,
            on_requeue=self._on_requeue,
            max_tasks_per_child=self.app.conf.worker_max_tasks_per_child,
            max_memory_per_child=self.app.conf.worker_max_memory_per_child,
        )
        self.pool.on_successes = self._on_successes
        self.pool.start()
        if self._shutdown or not self._start_steps(self.blueprint, self):
            return self._finish()
        self.broker = self._connect()
        if self.broker is None:
            return self._finish()
        self.broker.check_tasks(self.app.tasks.values(), (self.time_limit, self.soft_time_limit))
        self.consumer = self.broker.consumer(self.queues, owner=self.hostname)
        self.consumer.prefetch(self.window)
        self.dispatcher = Dispatcher(
            self.app, self.broker, self.consumer, self.pool, self.loop, self.window, self.accept, self.hostname,
            (self.time_limit, self.soft_time_limit),
        )  # fmt: skip
        self._load_revoked()
        self.settler = Settler(self.consumer, self.broker.describe())
        self.settler.start()
        carried = self.consumer.carry_acks(self.settler.take, self.settler.settled, self.settler.hand_over)
        self.dispatcher.settler = self.settler
        if self.app.conf.worker_cancel_long_running_tasks_on_connection_loss:
            cancel = self.dispatcher.cancel_unackable
            self.consumer.on_connection_lost = lambda: self.loop.call_soon_threadsafe(cancel)
        self.loop.on_idle(self.dispatcher.dispatch)
        self.loop.on_idle(self.dispatcher.flush)
        if self.pool.supports_hard_time_limit():
            self.loop.call_repeatedly(TIME_LIMIT_CHECK, lambda: self.pool.check_time_limits(time.monotonic()))  # type: ignore[union-attr]
        self.fetcher = Fetcher(
            self.consumer,
            self.dispatcher.ledger,
            lambda ds: self.loop.call_soon_threadsafe(lambda: self.dispatcher.on_deliveries(ds)),  # type: ignore[union-attr]
            as_uri(self.broker.url),  # (its "Connected to" after an outage says what the first one said, as Celery's)
            None if self.pool.runs_tasks_in_loop else self._deliver_here,
        )
        self.dispatcher.fetcher = self.fetcher
        self.fetcher.retry = bool(self.app.conf.broker_connection_retry)
        self.fetcher.max_retries = self.app.conf.broker_connection_max_retries
        self.fetcher.on_give_up = self._broker_lost
        steps = self.step_consumer
        if steps is not None:
            self.fetcher.on_lost = lambda: self.loop.call_soon_threadsafe(steps.connection_lost)
            self.fetcher.on_regained = lambda: self.loop.call_soon_threadsafe(steps.connection_regained)
        if carried:  # acks the fetcher queues ride with its next fetch; it hands them over before it waits
            self.settler.carrier = self.fetcher
            self.fetcher.handover = self.settler.hand_over
        self._start_lending()
        self._start_events()
        self._start_metrics()
        if self.autoscale is not None:
            self.autoscaler = self._autoscaler_class(self, *self.autoscale)
            self.autoscaler.start()
        self.fetcher.start()
        self._start_housekeeping()
        self._start_remote_control()
        if self.control is not None and not self.options.get('without_mingle'):
            from fastq.worker import mingle

            mingle.start(self)
        if self.beat is not None:
            self.beat.start()  # a thread: only now that the pool has forked its children
        if not self._start_steps(self.step_consumer, None):
            return self._finish()
        signals.worker_ready.send(sender=self)  # (before the line, as Celery's on_consumer_ready)
        ready_logger.info('%s ready.', self.hostname)
        self.loop.run_until(lambda: self._shutdown is not None)
        return self._finish()

    def _apply_bootsteps(self) -> None:
        """Build the application's worker and consumer steps (`__init__`, `include_if`, `create`) with the
        worker's options; a `ConsumerStep` the broker cannot serve stops the start here, named."""
        self.blueprint = WorkerBlueprint(steps=self.app.steps['worker'])
        self.blueprint.apply(self, **self.options)
        self.step_consumer = StepConsumer(self, **self.options)

    def _start_steps(self, blueprint: Any, parent: Any) -> bool:
        """Start the worker's steps (`parent` is the worker) or the consumer's (`blueprint` is the
        StepConsumer); False, shutting down with exit code 1, if one raised: as Celery's worker, it says
        'Unrecoverable error: ...' and stops, without announcing a warm shutdown (no worker_shutting_down:
        Celery sends it for signals only)."""
        if blueprint is None:
            return True
        try:
            blueprint.start(parent) if parent is not None else blueprint.start()
        except Exception as exc:
            logger.critical('Unrecoverable error: %r', exc, exc_info=True)
            self.exitcode = 1
            self._shutdown = self._shutdown or 'warm'
            return False
        return True

    def _stop_steps(self) -> None:
        """Celery's order: the worker's steps are closed, then the consumer's steps stop (its last step,
        fastq.worker.steps.Consumer), then the worker's, last started first (each `close`d, then `stop`ped,
        or `terminate`d on a cold shutdown)."""
        terminate = self._shutdown == 'cold'
        if self.blueprint is not None:
            self.blueprint.stop(self, terminate=terminate)
        if self.step_consumer is not None:  # (the worker's steps did not all start: nothing if stopped already)
            self.step_consumer.stop(terminate=terminate)

    def resize_pool(self, delta: int) -> int:
        """Grow (delta > 0) or shrink the prefork pool (or the gevent pool's greenlet limit, as Celery's), in
        the loop's thread; the prefetch window moves by the change x multiplier unless the autoscaler fixed it for
        its largest size. Returns the change."""
        from fastq.worker.pool.green import GeventPool
        from fastq.worker.pool.prefork import PreforkPool

        pool = self.pool
        if isinstance(pool, GeventPool):
            changed = pool.resize(delta)
            self.concurrency = pool.concurrency
        elif isinstance(pool, PreforkPool) and pool.name == 'prefork':
            changed = pool.grow(delta) if delta > 0 else -pool.shrink(-delta)
            self.concurrency = self.processes = pool.processes
        else:
            raise ValueError(f'the {self.pool_name} pool cannot be resized')
        if self.autoscale is None and self.dispatcher is not None and self.window:
            # (by the change, as Celery's consumer moves its QoS: a count an app's command raised stays raised)
            self.set_window(max(self.window + changed * self.multiplier, 1))
        return changed

    @property
    def qos(self) -> QoS:
        """The prefetch count as kombu's `QoS` (Celery's `consumer.qos`): what consumer steps (`c.qos`) and
        remote control commands (`state.consumer.qos`) read and change."""
        qos: QoS | None = self.__dict__.get('_qos')
        if qos is None:
            from fastq.worker.qos import QoS

            qos = self.__dict__['_qos'] = QoS(self)
        return qos

    @property
    def prefetch_count(self) -> int:
        """The window in force, ETA tasks held in memory included, as Celery's `consumer.qos.value` (read in
        the loop's thread)."""
        dispatcher = self.dispatcher
        return int(dispatcher._window()) if dispatcher is not None else self.window

    def set_window(self, window: int) -> None:
        """Make `window` the prefetch window (held ETA tasks aside), in the loop's thread: the ledger, the
        broker's own window where it pushes, and a fetcher waiting for room all follow."""
        self.window = window
        dispatcher = self.dispatcher
        if dispatcher is None:
            return
        dispatcher.base_window = window
        dispatcher.ledger.window = dispatcher._window()
        if self.consumer is not None:
            self.consumer.prefetch(window)
        if self.fetcher is not None:
            self.fetcher.notify_window()

    def _connect(self) -> Broker | None:
        """Connect with retries and backoff, naming the URL (password masked); None if shut down meanwhile.
        The broker consumed from is `broker_read_url`'s (the app's own broker unless that names another)."""
        broker = self.app.read_broker
        conf = self.app.conf
        max_retries = conf.broker_connection_max_retries
        retry = conf.broker_connection_retry_on_startup
        retry = conf.broker_connection_retry if retry is None else retry
        attempt = 0
        delay = 0.0
        while True:
            try:
                broker.connect()
                connection_logger.info('Connected to %s', as_uri(broker.url))
                return broker
            except BrokerConnectionError as exc:
                attempt += 1
                if not retry or (max_retries is not None and attempt > max_retries):
                    logger.critical('Cannot connect to %s: %s.', broker.describe(), exc)
                    self.exitcode = 1
                    return None
                delay = min(max(delay * 2, 1.0), 32.0)
                logger.error(
                    'consumer: Cannot connect to %s: %s.\nTrying again in %.2f seconds... (%d/%s)',
                    broker.describe(),
                    exc,
                    delay,
                    attempt,
                    max_retries or 'inf',
                )
                deadline = time.monotonic() + delay * (0.75 + random.random() / 2)
                while time.monotonic() < deadline and not self._shutdown:
                    self.loop.run_once(min(0.2, max(0.0, deadline - time.monotonic())))
                if self._shutdown:
                    return None

    def _start_lending(self) -> None:
        """Lend the broker's lead to an idle pool child while the worker is idle (fastq.worker.lending)."""
        from fastq.brokers.base import Consumer
        from fastq.worker.pool.prefork import PreforkPool

        pool, consumer = self.pool, self.consumer
        if (
            type(pool) is not PreforkPool
            or consumer is None
            or type(consumer).lend_lead is Consumer.lend_lead
            or self.dispatcher is None
            or self.fetcher is None
        ):
            return
        from fastq.worker.lending import Lending

        self.lending = Lending(self.dispatcher, consumer, self.fetcher, pool, self.loop)

    def _deliver_here(self, deliveries: list[Delivery]) -> bool:
        """Receive `deliveries` in the fetcher's thread while the loop sleeps (`Loop.run_borrowed`); False to
        post them to the loop instead. Also False while a handler of a signal sent on reception is connected:
        Celery sends those in the worker's main thread, and a handler may count on it."""
        if signals.task_received.connected or signals.task_unknown.connected or signals.task_revoked.connected:
            return False
        dispatcher = self.dispatcher
        assert dispatcher is not None
        return self.loop.run_borrowed(lambda: dispatcher.on_deliveries(deliveries))

    def _start_remote_control(self) -> None:
        broker = self.broker
        if broker is None or not self.app.conf.worker_enable_remote_control:
            return
        if not broker.features.fanout:  # (SQS) nothing to listen on: the worker runs without its pidbox
            logger.info(
                'Remote control is off: %s has no fanout, so inspect and control cannot reach this worker',
                broker.describe(),
            )
            return
        import fastq.worker.autoscale
        import fastq.worker.inspect  # noqa: F401  (registers the inspect commands)
        from fastq.control import pidbox_exchange
        from fastq.worker.control import ControlListener

        try:
            self.control = ControlListener(self, broker, exchange=pidbox_exchange(self.app.conf))
        except Exception as exc:
            logger.warning('Remote control unavailable on %s: %s', broker.describe(), exc)
            return
        self.control.start()

    def _start_events(self) -> None:
        broker = self.app.broker if self.broker is not None else None  # (sent as published: connection_for_write)
        if broker is None or not broker.features.fanout:
            if self.app.conf.worker_send_task_events:
                logger.warning('Events are not available on %s; -E ignored', broker and broker.describe())
            return
        self.events = WorkerEvents(
            self, broker, bool(self.app.conf.worker_send_task_events), self.heartbeat, self.heartbeat_interval
        )
        self.events.start()

    def _start_metrics(self) -> None:
        if self.metrics_port is None or self.dispatcher is None:
            return
        from fastq.worker.metrics import WorkerMetrics

        self.metrics = WorkerMetrics(self)
        self.metrics.serve(self.metrics_port, str(self.app.conf.worker_metrics_address or '0.0.0.0'))
        self.dispatcher.metrics = self.metrics

    def _load_revoked(self) -> None:
        """Take the revocations kept in the broker (made while this worker was offline, or by a peer)."""
        broker, dispatcher = self.broker, self.dispatcher
        if broker is None or dispatcher is None:
            return
        try:
            ids = broker.revoked()
        except Exception as exc:
            logger.warning('Cannot read revoked task ids from %s: %s', broker.describe(), exc)
            return
        new = ids - set(dispatcher.revoked)
        if new:
            self.loop.call_soon_threadsafe(lambda: dispatcher.revoke(new))

    def _start_housekeeping(self) -> None:
        """A thread that renews our reservations and lets the broker and backend tidy up, so neither depends
        on the loop being responsive (a solo pool blocks it for the length of a task)."""
        broker, consumer, backend = self.broker, self.consumer, self.app.backend
        assert broker is not None and consumer is not None
        renew_every = self.app.conf.worker_lease_renew_interval or broker.lease_renew_interval

        def run() -> None:
            next_renewal = time.monotonic() + renew_every
            next_revoked_check = time.monotonic() + REVOKED_REFRESH
            while not self._stop_renew.wait(HOUSEKEEPING_INTERVAL):
                try:
                    if broker.features.leases and time.monotonic() >= next_renewal:
                        next_renewal = time.monotonic() + renew_every
                        consumer.renew()
                    broker.maintenance()
                    backend.maintenance()
                    if time.monotonic() >= next_revoked_check:
                        next_revoked_check = time.monotonic() + REVOKED_REFRESH
                        self._load_revoked()
                except Exception as exc:
                    logger.warning('Housekeeping on %s failed: %s', broker.describe(), exc)

        self._renewer = threading.Thread(target=run, name='fastq-housekeeping', daemon=True)
        self._renewer.start()

    # --- pool callbacks (loop thread) ---------------------------------------------------------------------

    def _on_result(self, job: Any, outcome: Any) -> None:
        if self.dispatcher is not None:
            self.dispatcher.on_result(job, outcome)

    def _on_successes(self, jobs: list[Any], runtimes: list[float], reprs: list[str]) -> None:
        if self.dispatcher is not None:
            self.dispatcher.on_successes(jobs, runtimes, reprs)

    def _on_lost(self, job: Any, reason: str) -> None:
        if self.dispatcher is not None:
            self.dispatcher.on_lost(job, reason)

    def _on_requeue(self, jobs: list[Any]) -> None:
        if self.dispatcher is None:
            return
        if self._shutdown:
            self.dispatcher.abandon(jobs)
        else:
            self.dispatcher.on_requeue(jobs)

    # --- shutdown -----------------------------------------------------------------------------------------

    def _install_signal_handlers(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        # billiard's REMAP_SIGTERM=SIGQUIT (read by Celery when it starts) makes SIGTERM a cold shutdown.
        term = 'cold' if os.environ.get('REMAP_SIGTERM') == 'SIGQUIT' else 'warm'
        self._on_next_signal = {
            signal.SIGTERM: (term, True),
            signal.SIGQUIT: ('cold', True),
            signal.SIGINT: ('interrupt', True),
        }
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT):
            signal.signal(signum, self._on_signal)
        # As Celery's: SIGHUP restarts a worker that has no terminal (a service's reload); one on a terminal
        # keeps the default, so closing the terminal does not leave it restarted in the background.
        if self.restart_on_hup and not (sys.__stdout__ is not None and sys.__stdout__.isatty()):
            signal.signal(signal.SIGHUP, self._on_restart)
        signal.signal(signal.SIGUSR1, _cry)  # as Celery's: every thread's stack, for a worker that hangs
        install_rdb_handler()  # as Celery's: with CELERY_RDBSIG set, SIGUSR2 opens a remote debugger session

    def _on_restart(self, signum: int, frame: Any) -> None:
        said = f'Restarting fastq worker ({" ".join(sys.argv)})'
        _say(said)
        self.restart_requested = True

        def restart() -> None:
            logger.warning('%s', said)  # (and in the log: a detached worker's stdout goes nowhere)
            # A warm shutdown as Celery's restart handler starts it (should_stop): no "Warm shutdown" line and
            # no worker_shutting_down, which Celery sends only for the shutdown signals
            if self._shutdown is None:
                self._shutdown = 'warm'

        self.loop.call_soon_threadsafe(restart)

    def _on_signal(self, signum: int, frame: Any) -> None:
        pool = self.pool
        if pool is not None and pool.runs_tasks_in_loop and getattr(pool, 'busy', bool)():
            self._signalled_in_task(signum, pool)
            return
        self.loop.call_soon_threadsafe(lambda: self._signalled(signum))

    def _signalled_in_task(self, signum: int, pool: Pool) -> None:
        """A signal that interrupted a task the solo pool runs in the loop's thread (this handler runs there, and
        the loop reads nothing posted to it until the task returns). Handled now, as Celery's handlers act in
        the running task's frame: the shutdown is announced at once, and a cold one stops the task (unless a
        soft shutdown lets it finish first): Ctrl+C twice stops a solo worker, where fastq's waited for the task.
        """
        self._signalled(signum)
        soft = float(self.app.conf.worker_soft_shutdown_timeout or 0) > 0
        if self._hard or (self._shutdown == 'cold' and not soft):
            self._cancel_running()  # (the running job handed back: RETRY stored, or requeued with acks_late)
            pool.interrupt()  # type: ignore[attr-defined]

    def _signalled(self, signum: int) -> None:
        """(The loop's thread) a shutdown signal, handled as Celery 5.7's handlers are (celery.apps.worker):

        - warm (SIGTERM): "Warm shutdown", every time; the running tasks finish.
        - interrupt (SIGINT the first time): a warm shutdown with exit code 1; the next SIGINT is cold, quietly.
        - cold (SIGQUIT; SIGTERM with REMAP_SIGTERM=SIGQUIT): the soft shutdown, if set, then the running
          tasks are cancelled; "Cold shutdown" and `worker_shutting_down` come after that.
        - during (SIGQUIT/SIGINT once cold): the running tasks are cancelled now; the next one is hard.
        - hard: no more waiting, and nothing announced.
        """
        actions = self._on_next_signal
        action, verbose = actions.get(signum, ('warm', True))
        if action == 'hard':
            self._hard = True
            self._cold_announcements.clear()  # (Celery's handler raises before it prints)
            return
        if action == 'during':
            actions[signal.SIGINT] = ('hard', False)
            actions[signal.SIGQUIT] = ('hard', True)
            self._cancel_running()
            _say('Waiting gracefully for cold shutdown to complete...')
            self._announce('Cold', signum, 1, verbose)
            return
        if action == 'cold':
            _say('worker: Hitting Ctrl+C again will terminate all running tasks!')
            actions[signal.SIGINT] = actions[signal.SIGQUIT] = ('during', True)
            if actions.get(signal.SIGTERM, ('warm', True))[0] != 'warm':  # (REMAP_SIGTERM=SIGQUIT)
                actions[signal.SIGTERM] = ('during', True)
            self._cold_announcements.append((signum, verbose))
            self._shutdown = 'cold'
            return
        if action == 'interrupt':
            _say('worker: Hitting Ctrl+C again will initiate cold shutdown, terminating all running tasks!')
            actions[signal.SIGINT] = ('cold', False)
            self.exitcode = 1
        self._announce('Warm', signum, self.exitcode if action == 'interrupt' else 0, True)
        if self._shutdown is None:
            self._shutdown = 'warm'

    def request_shutdown(self, how: str = 'warm', signum: int | None = None) -> None:
        """Shut down (or go from a warm shutdown to a cold one); for a signal (`_signalled`'s) announced now.
        Without one (the remote `shutdown` command, `stop()`, a failed bootstep, the broker lost for good) it
        is not: Celery raises WorkerShutdown there, with no "Warm shutdown" line and no worker_shutting_down."""
        if self._shutdown == 'cold' or (self._shutdown == 'warm' and how == 'warm'):
            return
        self._shutdown = how
        if signum is not None:
            self._announce(how.capitalize(), signum, 1 if how == 'cold' else self.exitcode, True)

    def _announce(self, how: str, signum: int | None, exitcode: int, verbose: bool) -> None:
        """Celery's `_shutdown_handler`: "worker: Warm shutdown (MainProcess)" on the terminal, then
        `worker_shutting_down` with the signal's name ('SIGTERM'), 'Warm' or 'Cold', and the exit code it
        means."""
        sys.stdout.flush()
        if verbose:
            _say(f'worker: {how} shutdown (MainProcess)')
        signals.worker_shutting_down.send(
            sender=self.hostname,
            sig=signal.Signals(signum).name if signum else None,
            how=how,
            exitcode=exitcode,
        )

    def _soft_shutdown(self, pool: Pool) -> None:
        """Celery 5.5's soft shutdown: before a cold shutdown cancels the running tasks, give them up to
        `worker_soft_shutdown_timeout` seconds to finish (nothing new starts meanwhile); with
        `worker_enable_soft_shutdown_on_idle`, wait the whole time even with none running (as Celery does:
        e.g. for ETA tasks to be handed back). A hard shutdown stops the wait."""
        conf = self.app.conf
        timeout = conf.worker_soft_shutdown_timeout or 0
        on_idle = bool(conf.worker_enable_soft_shutdown_on_idle)
        running = self.dispatcher is not None and bool(self.dispatcher.running)
        if float(timeout) <= 0 or self._hard or not (running or on_idle):
            return
        # (The value as set, as Celery prints it: 5.0 is "5.0")
        logger.warning('Initiating Soft Shutdown, terminating in %s seconds', timeout)
        if self.dispatcher is not None:
            self.dispatcher.stop_accepting()
        pool.stop()
        deadline = time.monotonic() + float(timeout)
        # Once a second signal cancelled the running tasks, the rest of the time is waited too ("Waiting
        # gracefully for cold shutdown to complete..."), as Celery's handler sleeps it out.
        self.loop.run_until(
            lambda: (
                self._hard
                or time.monotonic() >= deadline
                or (not on_idle and not self._pool_terminated and pool.idle())
            ),
            0.2,
        )

    def _cancel_running(self) -> None:
        """Celery's `cancel_active_requests`: kill the running tasks; the started ones are announced as
        cancelled (RETRY stored for those without acks_late), and the unacked messages go back to the broker."""
        pool, dispatcher = self.pool, self.dispatcher
        if pool is None or self._pool_terminated:
            return
        self._pool_terminated = True
        held = pool.terminate()
        if dispatcher is not None:
            dispatcher.stop_accepting()
            dispatcher.flush()
            dispatcher.cancel(held)
            dispatcher.abandon(held)

    def _announce_cold(self) -> None:
        """The cold shutdowns asked for by signal, announced once their running tasks were cancelled, as
        Celery's handler announces it when its soft shutdown and cancelling are done."""
        announcements, self._cold_announcements = self._cold_announcements, []
        for signum, verbose in announcements:
            self._announce('Cold', signum, 1, verbose)

    def _broker_lost(self) -> None:
        """(The fetcher's thread) the broker is gone for good per the retry settings: stop, exit code 1."""
        self.exitcode = 1
        self.loop.call_soon_threadsafe(lambda: self.request_shutdown('warm'))

    def stop(self) -> None:
        """Warm shutdown, callable from any thread (tests, embedding)."""
        self.loop.call_soon_threadsafe(lambda: self.request_shutdown('warm'))

    def _finish(self) -> int:
        self._stop_beat()
        try:
            self._stop_steps()
            self._stop_fetching()
            if self.control is not None:
                self.control.stop()
            pool = self.pool
            if self._shutdown == 'warm' and pool is not None:
                if self.dispatcher is not None:
                    self.dispatcher.stop_accepting()
                pool.stop()
                self.loop.run_until(lambda: self._shutdown == 'cold' or (pool.idle() and self._dispatcher_idle()), 0.2)
                if self.dispatcher is not None:
                    self.dispatcher.flush()
            if self._shutdown != 'warm' and self.pool is not None:
                self._soft_shutdown(self.pool)
                self._cancel_running()
                self._announce_cold()
            elif self.pool is not None and hasattr(self.pool, 'close'):
                self.pool.close()
            # Only now: a warm shutdown waits for the running tasks, whose reservations must stay renewed
            # meanwhile, or a long one outlasting the visibility timeout is handed to another worker.
            self._stop_renew.set()
            if self.fetcher is not None:
                self.fetcher.join(5.0)
                # A delivery the fetcher handed over while we were stopping is released with the rest.
                self.loop.run_once(0)
                if self.dispatcher is not None:
                    self.dispatcher.stop_accepting()
            self._stop_monitoring()
            if self.settler is not None:
                self.settler.stop()  # every ack queued is sent before the consumer hands back the rest
            if self.consumer is not None:
                self.consumer.close()
            self._join_broker_threads()
        finally:
            if self.step_consumer is not None:
                self.step_consumer.shutdown()
            signals.worker_shutdown.send(sender=self)
            self.app.close()
            self.loop.close()
        return self.exitcode

    def _stop_fetching(self) -> None:
        if self.lending is not None:
            self.lending.stop()
        if self.fetcher is not None:
            self.fetcher.stop()

    def _join_broker_threads(self) -> None:
        """Housekeeping ends within a moment of `_stop_renew`; let it finish before app.close(). The pidbox
        listener may sit in a one-second wait: it is not waited for (`Db.close` leaves a live thread's SQLite
        connection alone, see fastq.utils.sqlite)."""
        if self._renewer is not None and self._renewer.is_alive():
            self._renewer.join(5.0)

    def _stop_monitoring(self) -> None:
        """After the pool is done: send the last task events and `worker-offline`; stop serving metrics."""
        if self.events is not None:
            self.events.stop()
        if self.metrics is not None:
            self.metrics.close()

    def _stop_beat(self) -> None:
        if self.beat is not None and self.beat.is_alive():
            self.beat.stop()

    def _dispatcher_idle(self) -> bool:
        return self.dispatcher is None or not self.dispatcher.running

    # --- banner -------------------------------------------------------------------------------------------

    def _print_banner(self) -> None:
        app = self.app
        conf = app.conf
        events = 'ON' if conf.worker_send_task_events else 'OFF (enable -E to monitor tasks in this worker)'
        when = datetime.now().strftime('%Y-%m-%d %H:%M:%S')
        artlines = [
            ' -------------- ',
            '--- ***** ----- ',
            '-- ******* ---- ',
            '- *** --- * --- ',
            '- ** ---------- ',
            '- ** ---------- ',
            '- ** ---------- ',
            '- ** ---------- ',
            '- *** --- * --- ',
            '-- ******* ---- ',
            '--- ***** ----- ',
            ' -------------- ',
        ]
        backend = app.backend.describe()
        info = [
            f'{self.hostname} v{__version__} (fastq)',
            '',
            f'{platform.platform()} {when}',
            '',
            '[config]',
            f'.> app:         {app.main or "__main__"}:{id(app):#x}',
            f'.> transport:   {as_uri(app.broker.url)}',  # (as Celery prints it: kombu's as_uri)
            f'.> results:     {backend}',
            f'.> concurrency: {self._describe_concurrency()}',
            f'.> task events: {events}',
            '',
            '[queues]',
        ]
        # (Celery's banner starts with a line of one space)
        lines = [' '] + [art + text for art, text in zip(artlines, info, strict=False)]
        from fastq.routing import as_exchange

        for name in sorted(self.queues):  # (sorted by name, as Celery's `Queues.format` lists them)
            queue = app.router.declared(name)  # (the default queue on the default exchange, as Celery's)
            exchange = as_exchange(queue.exchange)
            lines.append(
                f'                .> {name:<16} exchange={exchange.name}({exchange.type}) key={queue.routing_key}'
            )
        if len(self.queues) == 1:  # Celery's layout: its one-queue table ends with a line of the art's indent
            lines.append(' ' * 16)
        lines.append('')
        level = logging.getLogger().getEffectiveLevel()
        if level <= logging.INFO:  # Celery lists the tasks at -l info and below, the built-in ones at -l debug
            lines.append('[tasks]')
            builtins = level <= logging.DEBUG
            for name in sorted(n for n in app.tasks if builtins or not n.startswith('celery.')):
                lines.append(f'  . {name}')
            lines.append('')
        if self.banner_stream is not None:
            print('\n'.join(lines), file=self.banner_stream, flush=True)

    def _describe_concurrency(self) -> str:
        if self.pool_name == 'asyncio':
            processes = f'{self.processes} process' + ('es' if self.processes != 1 else '')
            return f'{processes} x {self.concurrency} tasks each ({self.pool_name})'
        pool = 'thread' if self.pool_name == 'threads' else self.pool_name
        if self.autoscale is not None:  # Celery shows the autoscaler's range, not the pool's starting size
            return f'{{min={self.autoscale[1]}, max={self.autoscale[0]}}} ({pool})'
        # Celery names the pool by its class's module (celery.concurrency.thread for -P threads: '4 (thread)')
        return f'{self.concurrency} ({pool})'


def check_pool(name: str) -> None:
    from fastq.config.validate import POOLS, UNSUPPORTED_POOLS

    if name not in POOLS:
        message = UNSUPPORTED_POOLS.get(name) or f'unknown pool {name!r} (choose from {", ".join(POOLS)})'
        raise ImproperlyConfigured(f'worker_pool: {message}')


def _say(message: str) -> None:
    """Celery's `safe_say`: a line on the real stdout (the terminal, not the log), after a blank line, written
    with os.write (safe in a signal handler)."""
    with contextlib.suppress(OSError, ValueError, AttributeError):
        os.write(sys.__stdout__.fileno(), f'\n{message}\n'.encode())  # type: ignore[union-attr]


def _cry(signum: int, frame: Any) -> None:
    """(SIGUSR1) Where each of this process's threads is, on stderr and in the log (Celery's `cry`)."""
    import traceback

    frames = sys._current_frames()
    parts = []
    for thread in threading.enumerate():
        parts.append(f'\n=== {thread.name} (ident {thread.ident}) ===\n')
        stack = frames.get(thread.ident or 0)
        if stack is not None:
            parts.extend(traceback.format_stack(stack))
    text = ''.join(parts)
    with contextlib.suppress(OSError, ValueError, AttributeError):
        os.write(sys.__stderr__.fileno(), text.encode())  # type: ignore[union-attr]
    logger.warning('Thread stacks (SIGUSR1):%s', text)
