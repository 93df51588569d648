"""The worker parent's task state machine, run in the loop's thread.

    delivery --receive--> rejected (dead letter / expired / unknown)      [settled]
                     \\--> deferred to the broker until its ETA            [settled]
                     \\--> held in memory until a near ETA --> ready
                     \\--> ready --dispatch--> running (early ack here) --result--> settled (late ack here)
                                                              \\--lost--> requeued / failed

Every held delivery is in the `Ledger` until settled, so the prefetch window is exact. Early acks are sent
before the task is handed to the pool (never later than it starts); late acks are batched and sent after
the pool reports the result, which the executor stored before reporting.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import time
from collections import Counter, deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from fastq import _core, signals, states
from fastq.brokers.base import Consumer
from fastq.exceptions import (
    InvalidTaskError,
    NotRegistered,
    TaskRevokedError,
    TimeLimitExceeded,
    WorkerLostError,
)
from fastq.protocol import parse_delivery
from fastq.task import Task, actual_ignore_result
from fastq.utils.functional import as_list
from fastq.utils.imports import symbol_by_name
from fastq.worker.job import DECODE_ERROR, Job, embed_into, request_of
from fastq.worker.message import ReceivedMessage
from fastq.worker.parked import ParkedTasks, of_job
from fastq.worker.ratelimit import RateLimiter
from fastq.worker.request import DEFAULT_REQUEST, ExceptionInfo, Request
from fastq.worker.trace import Outcome, _Einfo

if TYPE_CHECKING:
    from fastq.app import Fastq
    from fastq.brokers.base import Broker, Delivery
    from fastq.worker.fetcher import Fetcher
    from fastq.worker.loop import Loop
    from fastq.worker.metrics import WorkerMetrics
    from fastq.worker.monitor import TaskEvents
    from fastq.worker.pool.base import Pool
    from fastq.worker.settler import Settler

logger = logging.getLogger('celery.worker.strategy')
error_logger = logging.getLogger('celery.worker.consumer.consumer')
request_logger = logging.getLogger('celery.worker.request')  # (Celery's Request logs a task's failure there)

#: ETAs closer than this are held in memory; later ones are parked in the broker (when it can).
HOLD_IN_MEMORY = 1.0
#: Outcomes a child reports for which Celery's parent calls the task's `Request.on_failure` (with
#: return_ok=True): its pool answers every run that did not return as failed (a failure, Reject, Retry, Ignore).
CHILD_FAILED = frozenset({states.FAILURE, states.REJECTED, states.RETRY, states.IGNORED})

UNKNOWN_TASK_ERROR = """\
Received unregistered task of type %r.
The message has been moved to the dead-letter store.

Did you remember to import the module containing this task?
Or maybe you're using relative imports?

The message headers:
%s

The delivery info for this task is:
%s"""

UNKNOWN_MESSAGE = """\
Received and deleted unknown message.  Wrong destination?!?
(fastq keeps it in the dead-letter store: fastq deadletter list)

The full contents of the message body was: %s
"""

INVALID_TASK_ERROR = """\
Received invalid task message: %s
The message has been moved to the dead-letter store (fastq deadletter list).

The message headers:
%s"""


def _log_handler_error(exc: BaseException) -> None:
    """Celery's words for a task its pool saw fail from outside (a lost child), with a traceback as its
    request handler logs it, whether the task is then requeued (reject_on_worker_lost) or failed."""
    try:
        raise exc
    except BaseException:
        request_logger.error('Task handler raised error: %r', exc, exc_info=True)
    finally:
        exc.__traceback__ = None


class Dispatcher:
    def __init__(
        self,
        app: Fastq,
        broker: Broker,
        consumer: Consumer,
        pool: Pool,
        loop: Loop,
        window: int,
        accept: frozenset[str],
        hostname: str,
        time_limits: tuple[float | None, float | None] | None = None,
    ) -> None:
        """`time_limits`: the worker's `(time_limit, soft_time_limit)` for tasks and messages that set none
        (the command line's, else the app's settings)."""
        self.app = app
        self.broker = broker
        self.consumer = consumer
        # Consumers whose broker takes deliveries back by itself say which are still theirs (else: all).
        self._current = consumer.current if type(consumer).current is not Consumer.current else None
        # What it parks, for `inspect scheduled`, where the broker cannot list it back (fastq.worker.parked).
        self.parked = ParkedTasks() if type(consumer).parked is Consumer.parked else None
        self.pool = pool
        self.loop = loop
        self.accept = accept
        self.hostname = hostname
        self.base_window = window
        self.ledger = _core.Ledger(window)
        self.fetcher: Fetcher | None = None
        self.settler: Settler | None = None
        self.ready: deque[Job] = deque()
        self.held: list[tuple[float, int, Job]] = []  # ETA heap
        self.running: dict[int, Job] = {}
        #: The signal each running job a revoke terminates was sent (job id -> signum): what its task-revoked
        #: event and task_revoked signal carry, as Celery's.
        self._terminated_with: dict[int, int] = {}
        self._late_acks: list[Any] = []
        self._ids = itertools.count(1)
        conf = app.conf
        self.max_redeliveries = int(conf.task_max_redeliveries or 0)
        if time_limits is None:
            time_limits = (conf.task_time_limit, conf.task_soft_time_limit)
        self.default_time_limit, self.default_soft_time_limit = time_limits
        self.accepting = True
        self.revoked = RevokedSet()
        #: `worker_deduplicate_successful_tasks`: a redelivered acks_late task whose result says SUCCESS is
        #: acked, not run again (it ran; the ack was lost). Needs a result backend that keeps results.
        self.deduplicate = bool(conf.worker_deduplicate_successful_tasks) and bool(conf.result_backend)
        #: `revoke_by_stamped_headers`: stamp name -> the values revoked (Celery's worker_state.revoked_stamps).
        self.revoked_stamps: dict[str, list[Any]] = {}
        self.limiter = RateLimiter(
            loop, broker, lambda job: self.ready.append(job), enabled=not conf.worker_disable_rate_limits
        )
        self._limits_known: set[str] = set()
        # Task names seen and not rate limited: the usual task goes straight to `ready` (see `_enqueue`).
        self._unlimited: set[str] = set()
        self.processed = 0
        self.totals: Counter[str] = Counter()  # tasks finished per name (`inspect stats`)
        self._warned_time_limit = False
        self._recheck_pending = False  # a timer for the earliest held ETA is set (see `_release_due`)
        # Observers of the task lifecycle, None when off (one attribute check per step on the hot path).
        self.events: TaskEvents | None = None
        self.metrics: WorkerMetrics | None = None
        # Called when what a pool child holding the lent lead was told goes stale (a revoke, a rate limit).
        self.on_terms_changed: Callable[[], None] | None = None

    # --- receiving ----------------------------------------------------------------------------------------

    def on_deliveries(self, deliveries: list[Delivery]) -> None:
        for delivery in deliveries:
            try:
                self._receive(delivery)
            except Exception as exc:  # a bug handling one message must not take the worker down
                error_logger.exception('Error handling delivery %r: %r', delivery.tag, exc)
                self._dead_letter(delivery, f'internal error while receiving: {exc!r}')

    def _receive(self, d: Delivery) -> None:
        if not self.accepting:
            self._release([d.tag])
            return
        head = d.head
        if head is None and d.message is None:
            error_logger.error('Received a message that cannot be parsed (delivery %r): %s', d.tag, d.error)
            self._dead_letter(d, f'malformed message: {d.error}')
            signals.task_rejected.send(sender=self, message=d, exc=None)  # (Celery's "unknown message")
            return
        try:
            request = parse_delivery(d)
        except InvalidTaskError as exc:
            message = d.message
            if message is not None and 'task' not in message.headers:  # not a task at all: Celery's words
                logger.warning(UNKNOWN_MESSAGE, _body_report(message.body))
                self._dead_letter(d, f'unknown message: {exc}')
                signals.task_rejected.send(sender=self, message=ReceivedMessage(d, message), exc=None)
                return
            error_logger.error(INVALID_TASK_ERROR, exc, _safe_headers(d))
            self._dead_letter(d, f'invalid task message: {exc}')
            signals.task_rejected.send(
                sender=self, message=ReceivedMessage(d, message) if message is not None else d, exc=exc
            )
            return
        if self.max_redeliveries and d.deliveries > self.max_redeliveries:
            error_logger.error(
                'Task %s[%s] was delivered %d times without being acknowledged (its worker died each time); '
                'moved to the dead-letter store (task_max_redeliveries=%d)',
                request.task,
                request.id,
                d.deliveries,
                self.max_redeliveries,
            )
            self._dead_letter(d, f'delivered {d.deliveries} times without being acknowledged')
            return
        content_type = head.content_type if head is not None else d.message.content_type  # type: ignore[union-attr]
        if content_type not in self.accept:
            error_logger.error(
                'Task %s[%s]: refusing to deserialize untrusted content of type %s (accept_content=%s); '
                'moved to the dead-letter store',
                request.task,
                request.id,
                content_type,
                sorted(self.accept),
            )
            self._dead_letter(d, f'content type {content_type!r} is not accepted')
            return
        task = self.app.tasks.get(request.task)
        if task is None:
            self._unknown_task(d, request.task, request.id)
            return
        now = time.time()
        # Logged as received before revocation is looked at, as Celery's strategy logs every task it takes (no
        # `task_received` is sent for one discarded here, as in Celery).
        if (self.revoked.ids and request.id in self.revoked) or (self.revoked_stamps and self._stamp_revoked(d)):
            logger.info('Task %s[%s] received', request.display_name, request.id)
            self._discard_revoked(d, request, task, expired=False)
            return
        if request.expires is not None and request.expires < now:
            logger.info('Task %s[%s] received', request.display_name, request.id)
            self._discard_revoked(d, request, task, expired=True)
            return
        if d.redelivered and self.deduplicate and task.acks_late and self._already_succeeded(request):
            logger.info('Task %s[%s] Task already completed successfully.', request.task, request.id)
            self._ack_now([d.tag])
            return
        job = self._job(next(self._ids), d, request, task)
        if request.eta is not None and request.eta > now:
            self._hold(job, request.eta, now)
            return
        self._received(job)
        self._enqueue(job)

    def _job(self, job_id: int, d: Delivery, request: Any, task: Any) -> Job:
        return Job(
            job_id,
            d,
            request,
            bool(task.acks_late),  # acks_late
            bool(task.reject_on_worker_lost),  # reject_on_worker_lost
            request.time_limit or task.time_limit or self.default_time_limit,  # time_limit
            request.soft_time_limit or task.soft_time_limit or self.default_soft_time_limit,  # soft_time_limit
            self.hostname,
            time.monotonic(),  # received
        )  # (positional: keywords cost this, the one busy thread, a little more per task)

    def _received(self, job: Job, logged: bool = False) -> None:
        if not logged and logger.isEnabledFor(logging.INFO):  # (checked first: the arguments cost more)
            logger.info('Task %s[%s] received', job.name, job.request.id)
        if self.events is not None or self.metrics is not None:
            self._observe_received(job)
        if signals.task_received.connected:
            self._announce_received(job)

    def _announce_received(self, job: Job) -> None:
        """`task_received` with Celery's `request`: a worker Request (`id`, `name`, `task`, `args`, `eta`, ...)."""
        task = self.app.tasks.get(job.request.task)
        signals.task_received.send(sender=self, request=Request(job, task, self.app))

    # --- tasks a pool child took from the broker itself (fastq.worker.lending) ------------------------------

    def lendable(self) -> dict[str, tuple[Any, Any]]:
        """Task names a child may run as it takes them (registered, seen here and not rate limited), with
        their time limits (hard, soft) as this process has them (`time_limit` may have changed them)."""
        tasks = self.app.tasks
        return {
            name: (tasks[name].time_limit, tasks[name].soft_time_limit) for name in self._unlimited if name in tasks
        }

    def adopt(self, d: Delivery, job_id: int, acked: bool, logged: bool = False) -> Job:
        """A task a pool child took with the lent lead and is running or ran (it checked what `_receive`
        checks): received and started here as if dispatched. An early ack is the child's when `acked` (it
        rides with the child's next wait in the broker), else sent now, as Celery's is (on the pool's word
        that the task started). `logged`: the child wrote the "received" line (before it ran the task)."""
        self.ledger.add(d.tag)
        request = parse_delivery(d)
        job = self._job(job_id, d, request, self.app.tasks[request.task])
        self._received(job, logged)
        if job.acks_late:
            self.ledger.start(job.tag)
        else:
            job.acked = True
            self.ledger.settle(job.tag)
            if acked:
                self.consumer.forget([job.tag])
            else:
                self._ack([job.tag])
        self.running[job.id] = job
        if self.events is not None:
            self.events.started(job)
        if self.metrics is not None:
            self.metrics.started(job)
        return job

    def lost_taken(self, d: Delivery, reason: str) -> None:
        """A task a pool child took with the lent lead and died with before it reported it: it may have
        started, so it is lost as a running task is (`on_lost`: never run twice unless acks_late says so)."""
        self.on_lost(self.adopt(d, next(self._ids), False), reason)

    def ack_for_child(self, tags: list[Any]) -> None:
        """Early acks a pool child took on and could not send (its broker connection failed): sent from here."""
        self._ack(tags)

    def _hold(self, job: Job, eta: float, now: float) -> None:
        """A task with an ETA ahead: parked in the broker if far enough and it can, else held in memory."""
        request = job.request
        if eta - now > HOLD_IN_MEMORY and self.broker.features.delayed:
            try:
                self.consumer.defer(job.tag, eta)
            except NotImplementedError:
                # Not this consumer's to park any more (RabbitMQ requeued it with a lost connection): held like
                # any other, and dropped at dispatch (`current`), rather than failing the whole delivery batch.
                pass
            else:
                self._settled(job.tag)
                if self.parked is not None:
                    self.parked.add(of_job(eta, job))
                logger.debug('Task %s[%s] parked in the broker until its ETA', request.task, request.id)
                return
        logger.info('Task %s[%s] received', job.name, request.id)
        self._observe_received(job)
        if signals.task_received.connected:  # (on reception, as Celery's, not when its ETA comes)
            self._announce_received(job)
        heapq.heappush(self.held, (eta, job.id, job))
        self.ledger.window = self._window()
        self.loop.call_later(max(0.0, eta - now), self._release_due)

    def _observe_received(self, job: Job) -> None:
        if self.events is not None:
            self.events.received(job)
        if self.metrics is not None:
            self.metrics.received(job)

    def _enqueue(self, job: Job) -> None:
        """Ready to run, unless its task is rate limited: then it waits for a token first."""
        name = job.request.task
        if name in self._unlimited:
            self.ready.append(job)
            return
        if name not in self._limits_known:
            self._limits_known.add(name)
            task = self.app.tasks.get(name)
            if task is not None:
                self.limiter.configure(name, task.rate_limit, getattr(task, 'global_rate_limit', None))
        if self.limiter.limited(name):
            self.limiter.admit(job)
        else:
            self._unlimited.add(name)
            self.ready.append(job)

    def set_rate_limit(self, name: str, rate_limit: Any) -> None:
        task = self.app.tasks.get(name)
        if task is not None:
            task.rate_limit = rate_limit
        self._limits_known.add(name)
        self._unlimited.discard(name)
        self.limiter.configure(name, rate_limit, getattr(task, 'global_rate_limit', None))
        if self.on_terms_changed is not None:
            self.on_terms_changed()

    def _window(self) -> int:
        # Like Celery, scheduled (ETA) tasks held in memory do not count against the prefetch window.
        return 0 if self.base_window == 0 else self.base_window + len(self.held)

    def _release_due(self) -> None:
        now = time.time()
        while self.held and self.held[0][0] <= now:
            _, _, job = heapq.heappop(self.held)
            self._enqueue(job)
        self.ledger.window = self._window()
        # Each held job's timer was set by the monotonic clock at reception; if the wall clock has stepped
        # back since (an NTP correction), the timers fire before the ETAs, and without another look the
        # held jobs would wait for the next ETA task to arrive, maybe forever.
        if self.held and not self._recheck_pending:
            self._recheck_pending = True
            self.loop.call_later(max(0.0, self.held[0][0] - now), self._recheck_held)

    def _recheck_held(self) -> None:
        self._recheck_pending = False
        self._release_due()

    def _unknown_task(self, d: Delivery, name: str, task_id: str) -> None:
        assert d.message is not None
        error_logger.error(UNKNOWN_TASK_ERROR, name, _safe_headers(d), d.message.properties.get('delivery_info'))
        exc = NotRegistered(name)
        # Dead-letter first: whoever sees the FAILURE can then also find the message.
        self._dead_letter(d, f'unregistered task {name!r}')
        if not d.message.headers.get('ignore_result'):
            try:
                self.app.backend.mark_as_failure(task_id, exc)
            except NotImplementedError:
                pass
            except Exception as store_exc:
                error_logger.warning('Could not store NotRegistered for %s: %r', task_id, store_exc)
        signals.task_unknown.send(sender=self, message=ReceivedMessage(d, d.message), exc=exc, name=name, id=task_id)

    def _already_succeeded(self, request: Any) -> bool:
        """Whether the result backend holds SUCCESS for this task (read only for redelivered messages)."""
        try:
            return bool(self.app.backend.get_task_meta(request.id).get('status') == states.SUCCESS)
        except Exception as exc:  # the backend cannot say: run it (at least once, as without the setting)
            logger.warning('Task %s[%s]: cannot read its state to skip a duplicate: %r', request.task, request.id, exc)
            return False

    def _discard_revoked(self, d: Delivery, request: Any, task: Any, expired: bool) -> None:
        """Revoked (or expired) before it ran: REVOKED stored, message acked, never executed."""
        logger.info('Discarding revoked task: %s[%s]', request.display_name, request.id)  # (shadow name first)
        if self.events is not None:
            self.events.revoked(request, False, None, expired)
        if self.metrics is not None:
            self.metrics.revoked(request.task)
        ctx = self._finished_outside(d, request, states.REVOKED, TaskRevokedError('expired' if expired else 'revoked'))
        signals.task_revoked.send(sender=task, request=ctx, terminated=False, signum=None, expired=expired)
        self._ack_now([d.tag])

    def _finished_outside(self, d: Delivery, request: Any, state: str, exc: BaseException) -> Any:
        """Store the end of a task that never reached (or never left) an executor, as the trace would:
        its state, then its part of a chord and the failure of the chain steps it carried, so a workflow
        waiting on it does not wait forever. Returns the task's request as a `Context` (what Celery's
        `task_revoked` carries)."""
        ctx = outside_context(d, request, self.hostname, self.accept)
        task = self.app.tasks.get(request.task)
        # (the call's ignore_result, else the task's: Celery's Request.store_errors)
        ignores = actual_ignore_result(task, ctx) if task is not None else request.ignore_result
        ignored = ignores and not (task is not None and task.store_errors_even_if_ignored)
        backend = task.backend if task is not None else self.app.backend  # (Celery's `request.task.backend`)
        try:
            if not ignored:  # (no traceback: Celery stores None for these, as nothing ran to raise it)
                backend.store_result(request.id, exc, state, traceback=None, request=ctx)
            if ctx.chord:
                backend.on_chord_part_return(ctx, state, exc)
            if ctx.chain:
                backend.fail_chain(ctx.chain, exc)
        except NotImplementedError:
            pass
        except Exception as store_exc:
            error_logger.warning('Could not store the %s state of %s: %r', state, request.id, store_exc)
        return ctx

    def revoke(self, ids: set[str], terminate: bool = False, signum: int = 15) -> None:
        """Remember revoked ids; drop matching waiting jobs now; with `terminate`, kill running ones."""
        for task_id in ids:
            self.revoked.add(task_id)
        if not ids:
            return
        if self.on_terms_changed is not None:
            self.on_terms_changed()
        self._drop_matching(lambda job: job.request.id in ids, terminate, signum)

    def revoke_stamped(self, headers: dict[str, Any], terminate: bool = False, signum: int = 15) -> list[Job]:
        """`revoke_by_stamped_headers`: remember the stamp values; drop waiting jobs stamped with one now;
        with `terminate`, kill the running ones (returned). Held in memory, as Celery's worker holds them."""
        for name, values in headers.items():
            self.revoked_stamps[name] = [*as_list(self.revoked_stamps.get(name)), *as_list(values)]
        if self.on_terms_changed is not None:
            self.on_terms_changed()
        # (no 'Terminating' line: Celery's revoke_by_stamped_headers kills without one)
        return self._drop_matching(lambda job: self._stamp_revoked(job.delivery, headers), terminate, signum, False)

    def _stamp_revoked(self, d: Delivery, revoked: dict[str, Any] | None = None) -> bool:
        """Whether the message is stamped with a revoked value (its headers decoded: only while some are)."""
        message = d.message
        stamps = message.headers.get('stamps') if message is not None else None
        if not isinstance(stamps, dict):
            return False
        revoked = self.revoked_stamps if revoked is None else revoked
        for name, value in stamps.items():
            if name in revoked:
                against = as_list(revoked[name])
                if any(v in against for v in as_list(value)):
                    return True
        return False

    def cancel_unackable(self) -> None:
        """After the broker connection was lost (`worker_cancel_long_running_tasks_on_connection_loss`, as
        Celery's): a running acks_late task can no longer be acked, and RabbitMQ requeued its message with the
        dead connection, so it would run twice. Terminate those runs instead; each is stored as RETRY
        ('cancelled by Celery') in `on_lost`. (A Redis reservation outlives the connection: not called.)"""
        import signal as signals_module

        for job in list(self.running.values()):
            if job.acks_late and not job.acked:
                logger.warning(
                    'Task %s cannot be acknowledged after a connection loss since late acknowledgement is '
                    'enabled for it.\nTerminating it instead.\n',
                    job.request.id,
                )
                kill = getattr(self.pool, 'kill_job', None)
                if kill is None or not kill(job, 'cancelled', signals_module.SIGTERM):
                    logger.warning('The %s pool cannot terminate a running task', self.pool.name)

    def _drop_matching(
        self, matches: Callable[[Job], bool], terminate: bool, signum: int, announce: bool = True
    ) -> list[Job]:
        """Discard the waiting and held jobs that `matches`; with `terminate`, kill the running ones with the
        signal `signum` (each logged as Celery's revoke logs it, when `announce`)."""
        # (submitted to a pool that has not begun them, the solo pool's till its next pass: not started, so
        # discarded with the waiting ones, as Celery's worker discards a revoked task it has not run)
        withdraw = getattr(self.pool, 'withdraw', None)  # (a pool outside the SPI may lack it)
        withdrawn = [job for job in list(self.running.values()) if withdraw and matches(job) and withdraw(job)]
        if withdrawn:
            self.on_requeue(withdrawn)
        for queue in self.limiter.waiting.values():
            for job in [j for j in queue if matches(j)]:
                queue.remove(job)
                self.ready.append(job)  # discarded below with the rest
        waiting = [job for job in self.ready if matches(job)]
        held = [entry for entry in self.held if matches(entry[2])]
        if waiting or held:
            dropped = {id(job) for job in waiting} | {id(entry[2]) for entry in held}
            self.ready = deque(job for job in self.ready if id(job) not in dropped)
            self.held = [entry for entry in self.held if id(entry[2]) not in dropped]
            heapq.heapify(self.held)
            for job in waiting + [entry[2] for entry in held]:
                self._discard_revoked(job.delivery, job.request, self.app.tasks.get(job.request.task), False)
        killed: list[Job] = []
        if terminate:
            for job in list(self.running.values()):
                if matches(job):
                    if announce:
                        logger.info('Terminating %s (%s)', job.request.id, signum)  # (the number, as Celery's)
                    killed.append(job)
                    kill = getattr(self.pool, 'kill_job', None)
                    self._terminated_with[job.id] = int(signum)
                    if kill is None or not kill(job, 'revoked', signum):
                        self._terminated_with.pop(job.id, None)
                        logger.warning('The %s pool cannot terminate a running task', self.pool.name)
        return killed

    # --- dispatching --------------------------------------------------------------------------------------

    def dispatch(self) -> None:
        """Hand ready jobs to the pool while it takes them (idle callback of the loop)."""
        ready, pool, revoked, current = self.ready, self.pool, self.revoked, self._current
        if not ready:
            return
        early = []
        sent = dropped = False
        events, metrics = self.events, self.metrics
        while ready:
            job = ready[0]
            if current is not None and not current(job.tag):
                ready.popleft()
                self._drop_taken_back(job)
                dropped = True
                continue
            if (revoked.ids or self.revoked_stamps or job.request.expires is not None) and self._discarded(job):
                ready.popleft()
                continue
            if not pool.can_take(job):
                break
            ready.popleft()
            if job.time_limit and not self._warned_time_limit and not pool.supports_hard_time_limit():
                self._warn_time_limit(job)
            if job.acks_late:
                self.ledger.start(job.tag)
            else:
                job.acked = True
                early.append(job.tag)
                self.ledger.settle(job.tag)
            self.running[job.id] = job
            pool.submit(job)
            if events is not None:
                events.started(job)
            if metrics is not None:
                metrics.started(job)
            sent = True
        if sent:
            pool.commit()
        if (early or dropped) and self.fetcher is not None:
            self.fetcher.notify_window()
        if early:
            self._ack(early)

    def _discarded(self, job: Job) -> bool:
        """Whether `job` was revoked, or expired while it waited (its ETA, a rate limit, a busy pool): Celery
        looks at both again as it runs a task. Such a job is discarded (REVOKED stored, message acked)."""
        request = job.request
        if (self.revoked.ids and request.id in self.revoked) or (
            self.revoked_stamps and self._stamp_revoked(job.delivery)
        ):
            expired = False
        elif request.expires is not None and request.expires < time.time():
            expired = True
        else:
            return False
        self._discard_revoked(job.delivery, request, self.app.tasks.get(request.task), expired)
        return True

    def _drop_taken_back(self, job: Job) -> None:
        """Not started, and its delivery is no longer ours: the broker requeued it (the connection that
        brought it was lost) and delivers it again, to this worker or another. Running it too would run it
        twice."""
        self.ledger.settle(job.tag)
        logger.info(
            'Task %s[%s] not run here: its delivery went back to the queue with a lost connection',
            job.name,
            job.request.id,
        )

    def _warn_time_limit(self, job: Job) -> None:
        self._warned_time_limit = True
        logger.warning(
            'Task %s[%s] has a hard time limit, which the %s pool cannot enforce (it cannot kill a '
            'task); use the prefork pool for hard time limits',
            job.name,
            job.request.id,
            self.pool.name,
        )

    # --- results ------------------------------------------------------------------------------------------

    def on_result(self, job: Job, outcome: Outcome) -> None:
        self.running.pop(job.id, None)
        if self._terminated_with:  # (finished before the signal reached it)
            self._terminated_with.pop(job.id, None)
        self.processed += 1
        self.totals[job.request.task] += 1
        state = outcome.state
        if self.events is not None:
            if state == states.REJECTED and not outcome.requeue:  # (stored as FAILURE: Celery says task-failed)
                self.events.finished(job, _failed_outcome(outcome))
            self.events.finished(job, outcome)
        if self.metrics is not None:
            self.metrics.finished(job, outcome)
        if state == DECODE_ERROR:
            error_logger.error("Can't decode message body of %s[%s]: %s", job.name, job.request.id, outcome.exc_repr)
            self._dead_letter(job.delivery, f'cannot decode body: {outcome.exc_repr}', acked=job.acked)
            return
        if state in CHILD_FAILED:
            einfo = ExceptionInfo(Exception(outcome.exc_repr), outcome.traceback)
            self._request_hook(job, 'on_failure', einfo, True, True)
        if job.acked:
            return
        if state == states.REJECTED:
            if outcome.requeue:
                self._reject([job.tag], requeue=True)
            else:  # rejected for good: kept aside (AMQP would dead-letter it too), not silently dropped
                self._dead_letter(job.delivery, f'rejected by the task: {outcome.exc_repr}')
        elif (
            state == states.FAILURE and job.acks_late and not _acks_on(self.app.tasks.get(job.request.task), 'failure')
        ):
            self._dead_letter(job.delivery, f'task failed: {outcome.exc_repr}')
        else:
            self._late_acks.append(job.tag)

    def on_successes(self, jobs: list[Job], runtimes: list[float], reprs: list[str]) -> None:
        """`on_result` of each job with `Outcome(SUCCESS, runtime, retval_repr)`, the Outcome made only for
        the observers that read it (the prefork pool's batched answers: the loop thread's usual work)."""
        running, totals, late = self.running, self.totals, self._late_acks
        events, metrics = self.events, self.metrics
        self.processed += len(jobs)
        if self._terminated_with:  # (finished before the signal reached them)
            for job in jobs:
                self._terminated_with.pop(job.id, None)
        for job, runtime, retval_repr in zip(jobs, runtimes, reprs, strict=True):
            running.pop(job.id, None)
            totals[job.request.task] += 1
            if events is not None or metrics is not None:
                outcome = Outcome(states.SUCCESS, runtime, retval_repr)
                if events is not None:
                    events.finished(job, outcome)
                if metrics is not None:
                    metrics.finished(job, outcome)
            if not job.acked:
                late.append(job.tag)

    def on_lost(self, job: Job, reason: str) -> None:
        """The executor running `job` died (or was killed by us for its time limit or a revoke)."""
        self.running.pop(job.id, None)
        signum = self._terminated_with.pop(job.id, None)
        if reason == 'revoked':
            task = self.app.tasks.get(job.request.task)
            if self.events is not None:
                self.events.revoked(job.request, True, signum, False)
            if self.metrics is not None:
                self.metrics.lost(job, states.REVOKED)
            ctx = self._finished_outside(job.delivery, job.request, states.REVOKED, TaskRevokedError('terminated'))
            signals.task_revoked.send(sender=task, request=ctx, terminated=True, signum=signum, expired=False)
            if not job.acked:
                self._late_acks.append(job.tag)
            return
        if reason == 'cancelled':
            self._cancelled(job)
            return
        if reason.startswith('time-limit:'):
            # Celery's order: the pool sets the job's result first (Request.on_failure: FAILURE stored,
            # task_failure sent), then calls its timeout handler (Request.on_timeout, which since 5.7 also runs
            # the task's on_failure and after_return here, the child being gone).
            exc: BaseException = TimeLimitExceeded(job.time_limit)
            ctx = self._store_failure(job, exc)  # (Celery stores the failure either way)
            self._request_hook(job, 'on_failure', ExceptionInfo(exc))
            self._timed_out_task_hooks(job, ctx, exc)
            self._request_hook(job, 'on_timeout', False, job.time_limit)
            if job.acked:
                return
            if not job.acks_late or _acks_on(self.app.tasks.get(job.request.task), 'timeout'):
                self._late_acks.append(job.tag)
            else:  # (Celery 5.7: a timed-out acks_late task not acked on timeout is requeued, without a word)
                self._reject([job.tag], requeue=True)
            return
        if job.acks_late and not job.acked and self._retry_lost(job, reason):
            return
        exc = WorkerLostError(reason)
        requeue = job.acks_late and job.reject_on_worker_lost and not job.acked
        if requeue:
            self._reject([job.tag], requeue=True)  # (requeued: no FAILURE stored, no task_failure)
        else:
            self._store_failure(job, exc)  # (Celery's Request.on_failure: stored, task_failure sent, then logged)
        _log_handler_error(exc)
        self._request_hook(job, 'on_failure', ExceptionInfo(exc))
        if requeue or job.acked:
            return
        if job.acks_late and not _acks_on(self.app.tasks.get(job.request.task), 'failure'):
            # (Celery rejects it without requeue, as a failure the task answered: see on_result)
            self._dead_letter(job.delivery, f'task failed: {reason}')
        else:
            self._late_acks.append(job.tag)

    def _cancelled(self, job: Job) -> None:
        """A run `cancel_unackable` terminated: announced as cancelled, and its message requeued (a no-op
        where the broker did so already)."""
        self._announce_cancelled(job, emit_retry=True)
        self._reject([job.tag], requeue=True)

    def cancel(self, jobs: list[Job]) -> None:
        """Cold shutdown (Celery's `cancel_active_requests`): of the jobs killed with their executors, each
        that had started is announced as cancelled; only one without acks_late is stored as RETRY, since an
        acks_late one is still unacked and the broker runs it again (`abandon` hands it back)."""
        for job in jobs:
            if job.started is None or (job.acked and job.acks_late):
                continue
            self.running.pop(job.id, None)
            self._announce_cancelled(job, emit_retry=not job.acks_late)

    def _announce_cancelled(self, job: Job, emit_retry: bool) -> None:
        """Celery's `Request._announce_cancelled`: `task-cancelled`, and with `emit_retry` RETRY stored
        ('cancelled by Celery'), `on_retry`, and `task_retry` (sent without a reason, as Celery's is)."""
        from fastq.exceptions import Retry

        if self.events is not None:
            self.events.dispatcher.send('task-cancelled', uuid=job.request.id)
        if not emit_retry:
            return
        task = self.app.tasks.get(job.request.task)
        exc = Retry('cancelled by Celery')
        ctx = outside_context(job.delivery, job.request, self.hostname, self.accept)
        if task is not None and (not actual_ignore_result(task, ctx) or task.store_errors_even_if_ignored):
            try:
                task.backend.mark_as_retry(job.request.id, exc, None, request=ctx)
            except Exception as store_exc:
                error_logger.warning('Could not store the RETRY state of %s: %r', job.request.id, store_exc)
        if task is not None:
            try:
                task.on_retry(exc, job.request.id, ctx.args, ctx.kwargs, None)
            except Exception:
                error_logger.exception('on_retry of %s[%s] failed', job.name, job.request.id)
            signals.task_retry.send(sender=task, request=ctx, einfo=None)

    def _retry_lost(self, job: Job, reason: str) -> bool:
        """`retry_on_worker_lost`: send the task again as `retry` would (its retries counted), ack this one;
        False (and nothing done) when the task does not ask for it, its retries ran out, or sending fails."""
        task = self.app.tasks.get(job.request.task)
        if task is None or not task.retry_on_worker_lost:
            return False
        max_retries = task.max_retries
        if max_retries is not None and job.request.retries >= max_retries:
            return False
        exc = WorkerLostError(reason)
        ctx = outside_context(job.delivery, job.request, self.hostname, self.accept)
        countdown = task.default_retry_delay
        try:
            task.signature_from_request(ctx, countdown=countdown, retries=job.request.retries + 1).apply_async()
        except Exception as send_exc:
            error_logger.error(
                'Failed to retry task %s[%s] after worker was lost: %r', job.name, job.request.id, send_exc
            )
            return False
        if not actual_ignore_result(task, ctx) or task.store_errors_even_if_ignored:
            try:
                task.backend.mark_as_retry(job.request.id, exc, None, request=ctx)
            except Exception as store_exc:
                error_logger.warning('Could not store the RETRY state of %s: %r', job.request.id, store_exc)
        logger.info('Task %s[%s] retry: Retry in %ss: %r', job.name, job.request.id, countdown, exc)
        self._late_acks.append(job.tag)
        return True

    def _request_hook(self, job: Job, hook: str, *args: Any) -> None:
        """Call a task class's custom `Request` hook (fastq.worker.request), if it has one; its errors are
        logged, never raised into the worker."""
        task = self.app.tasks.get(job.request.task)
        custom = getattr(task, 'Request', None) if task is not None else None
        if custom is None or custom == DEFAULT_REQUEST:
            return
        try:
            cls = symbol_by_name(custom)
            if cls is Request:
                return
            getattr(cls(job, task, self.app), hook)(*args)
        except Exception:
            logger.exception('Task %s[%s]: its Request.%s raised', job.name, job.request.id, hook)

    def _timed_out_task_hooks(self, job: Job, ctx: Any, exc: BaseException) -> None:
        """Celery 5.7's hard time limit: the task's `on_failure`, then its `after_return` if the task class has
        its own, run in the worker's parent (the child running the task was killed), with the request on the
        task's stack; what they raise is logged."""
        task = self.app.tasks.get(job.request.task)
        if task is None:
            return
        args = ctx.args if ctx.args is not None else []
        kwargs = ctx.kwargs if ctx.kwargs is not None else {}
        task.request_stack.push(ctx)
        try:
            task.on_failure(exc, job.request.id, args, kwargs, _Einfo(exc))
            own_after_return = type(task).after_return is not Task.after_return or 'after_return' in task.__dict__
            if own_after_return:  # (Celery's task_has_custom)
                task.after_return(states.FAILURE, exc, job.request.id, args, kwargs, None)
        except Exception as hook_exc:
            error_logger.error('Pool callback raised exception: %r', hook_exc, exc_info=True)
        finally:
            task.request_stack.pop()

    def _store_failure(self, job: Job, exc: BaseException) -> Any:
        """FAILURE stored (and `task-failed`, metrics), `task_failure` sent; the request's `Context`."""
        if self.events is not None:
            self.events.failed(job.request, exc)
        if self.metrics is not None:
            self.metrics.lost(job, states.FAILURE)
        task = self.app.tasks.get(job.request.task)
        ctx = self._finished_outside(job.delivery, job.request, states.FAILURE, exc)
        if task is not None:
            # As Celery's parent sends it for a task it saw fail from outside (time limit, process lost): the
            # task's arguments ([] and {} when its body cannot be read), the traceback text, `ExceptionInfo`.
            einfo = _Einfo(exc)
            # With the request on the task's stack meanwhile, as Celery's: its receivers read `sender.request`.
            task.request_stack.push(ctx)
            try:
                signals.task_failure.send(
                    sender=task, task_id=job.request.id, exception=exc, args=ctx.args if ctx.args is not None else [],
                    kwargs=ctx.kwargs if ctx.kwargs is not None else {}, traceback=einfo.traceback, einfo=einfo,
                )  # fmt: skip
            finally:
                task.request_stack.pop()
        return ctx

    def on_requeue(self, jobs: list[Job]) -> None:
        """Jobs an executor received but never started: run them elsewhere, first."""
        for job in reversed(jobs):
            self.running.pop(job.id, None)
            job.started = None
            job.pid = None
            self.ready.appendleft(job)

    # --- settling -----------------------------------------------------------------------------------------

    def _settled(self, tag: Any) -> None:
        self.ledger.settle(tag)
        if self.fetcher is not None:
            self.fetcher.notify_window()

    def _ack(self, tags: list[Any]) -> None:
        """Ack through the settler thread (batched, off the loop), or directly when there is none."""
        if self.settler is not None:
            self.settler.ack(tags)
            return
        try:
            self.consumer.ack(tags)
        except Exception as exc:
            error_logger.error('Cannot acknowledge messages on %s: %s', self.broker.describe(), exc)

    def _ack_now(self, tags: list[Any]) -> None:
        for tag in tags:
            self._settled(tag)
        self._ack(tags)

    # Messages made visible again are forgotten by the ledger *before* the broker call: the fetcher may get
    # them back at once, and it must find the tag free.

    def _reject(self, tags: list[Any], requeue: bool) -> None:
        for tag in tags:
            self._settled(tag)
        try:
            self.consumer.reject(tags, requeue)
        except Exception as exc:
            error_logger.error('Cannot reject messages on %s: %s', self.broker.describe(), exc)

    def _release(self, tags: list[Any]) -> None:
        if not tags:
            return
        for tag in tags:
            self._settled(tag)
        try:
            self.consumer.release(tags)
        except Exception as exc:
            error_logger.error('Cannot hand messages back to %s: %s', self.broker.describe(), exc)

    def _dead_letter(self, d: Delivery, reason: str, acked: bool = False) -> None:
        try:
            letter = self.consumer.dead_letter(d, reason)
        except Exception as exc:
            error_logger.error('Cannot dead-letter delivery %r on %s: %s', d.tag, self.broker.describe(), exc)
            if not acked:
                self._reject([d.tag], requeue=False)
            return
        error_logger.warning(
            'Dead-lettered message %s (task %s[%s]): %s', letter.id, d.task_name or '?', d.task_id or '?', reason
        )
        if not acked:
            self._settled(d.tag)

    def flush(self) -> None:
        """Send batched late acks (idle callback, after dispatch)."""
        if not self._late_acks:
            return
        tags, self._late_acks = self._late_acks, []
        self._ack_now(tags)

    # --- shutdown -----------------------------------------------------------------------------------------

    def stop_accepting(self) -> None:
        """Warm shutdown: hand back everything not started; running tasks finish."""
        self.accepting = False
        waiting = [job.tag for job in self.ready] + [job.tag for _, _, job in self.held]
        waiting += [job.tag for job in self.limiter.clear()]
        self.ready.clear()
        self.held.clear()
        self._release([t for t in waiting if t in self.ledger])

    def idle(self) -> bool:
        return not self.running and not self.ready

    def abandon(self, jobs: list[Job]) -> None:
        """Cold shutdown: jobs killed with their executors; unacked ones go back to the broker.

        So do the ones acked early that never started (a prefork child had them queued behind its running
        job: fastq acks a short job when it writes it to a child, a few at a time), as copies of their
        messages: Celery acks a task only once a pool process has accepted it, so its cold shutdown leaves
        such tasks in the broker, and here they would be lost. A job that started is never sent again."""
        self._release([job.tag for job in jobs if not job.acked and job.tag in self.ledger])
        for job in jobs:
            if job.acked and job.started is None:
                d = job.delivery
                try:
                    self.broker._publish_raw(d.queue, d.raw)
                except Exception as exc:  # the broker is gone: the task is lost, and said so
                    error_logger.error(
                        'Task %s[%s] could not be put back in %r: %r', job.name, job.request.id, d.queue, exc
                    )

    def info(self) -> dict[str, Any]:
        return {
            'active': len(self.running),
            'reserved': len(self.ready),
            'scheduled': len(self.held),
            'rate_limited': len(self.limiter.held()),
            'held': len(self.ledger),
            'processed': self.processed,
        }


def _failed_outcome(rejected: Outcome) -> Outcome:
    """The FAILURE a `Reject(requeue=False)` is stored as, for its `task-failed` event (Celery 5.7 sends one
    before `task-rejected`, so a monitor shows the task failed rather than stuck in STARTED)."""
    return Outcome(states.FAILURE, rejected.runtime, exc_repr=rejected.exc_repr, traceback=rejected.traceback)


def _acks_on(task: Any, what: str) -> bool:
    """With acks_late, whether a task's message is acked on 'failure' or 'timeout' (Celery 5.7's
    acks_on_failure / acks_on_timeout, falling back to acks_on_failure_or_timeout, then True)."""
    if task is None:
        return True
    own = getattr(task, f'acks_on_{what}', None)
    if own is None:
        own = task.acks_on_failure_or_timeout
    return own is not False


def outside_context(d: Delivery, request: Any, hostname: str, accept: frozenset[str]) -> Any:
    """A task's request built in the parent as an executor would build it (`request_of`), body included:
    only rare paths (revoked, expired, killed) need it, so decoding the body here is affordable."""
    from fastq.protocol import decode_body
    from fastq.task import Context

    message = d.message
    if message is None:
        return Context(id=request.id, task=request.task, retries=request.retries, hostname=hostname,
                       called_directly=False)  # fmt: skip
    fields = request_of(message, d.queue, d.redelivered, hostname)
    fields['properties'] = message.properties
    try:
        args, kwargs, embed = decode_body(
            message.body, message.content_type, message.headers.get('compression'), accept
        )
    except Exception:  # the part cannot be returned; the state is still stored
        return Context(fields, called_directly=False)
    embed_into(fields, embed)
    return Context(fields, args=args, kwargs=kwargs, called_directly=False)


class RevokedSet:
    """Revoked task ids, bounded as Celery bounds them (50,000 ids, each kept 3 hours)."""

    MAX = 50_000
    EXPIRES = 3 * 3600.0

    def __init__(self) -> None:
        # Read directly (`if revoked.ids and task_id in revoked`) where every task is checked: empty nearly
        # always, and a method call per task costs the loop's thread more than the check.
        self.ids: dict[str, float] = {}

    def add(self, task_id: str) -> None:
        self.ids.pop(task_id, None)
        self.ids[task_id] = time.monotonic()
        if len(self.ids) > self.MAX:
            for old in list(self.ids)[: len(self.ids) - self.MAX]:
                del self.ids[old]

    def __contains__(self, task_id: object) -> bool:
        added = self.ids.get(task_id) if isinstance(task_id, str) else None
        if added is None:
            return False
        if time.monotonic() - added > self.EXPIRES:
            del self.ids[task_id]  # type: ignore[arg-type]
            return False
        return True

    def __iter__(self) -> Any:
        return iter(list(self.ids))

    def __len__(self) -> int:
        return len(self.ids)


def _body_report(body: bytes) -> str:
    """The body as Celery's unknown-message warning shows it (its text, or its repr; at most 1024 bytes)."""
    try:
        text = body[:1024].decode()
    except UnicodeDecodeError:
        text = repr(body[:1024])
    return f'{text} ({len(body)}b)'


def _safe_headers(d: Delivery) -> str:
    from fastq.utils.text import saferepr

    return saferepr(d.message.headers if d.message is not None else None, 2048)
