"""The gevent pool (`-P gevent -c N`): each task runs in a greenlet of the worker process, up to N at once.

For I/O-bound sync tasks written for Celery's gevent pool: while one waits on a socket or sleeps, the others
run, so N can be hundreds. Everything else in the worker (fetching, acks, results, remote control) runs as it
does under the other pools: gevent's monkey-patching (fastq.utils.green, done by the command line before
anything is imported) turns its threads into greenlets and its waits into cooperative ones. That holds for
the Redis and SQLite brokers; fastq's RabbitMQ client waits inside rabbitmq-c, where no greenlet can switch
away, so the pool refuses RabbitMQ rather than stall.

Limits are enforced from the loop, by killing greenlets: a soft time limit raises `SoftTimeLimitExceeded`
inside the task (where it can catch it), a hard one kills the greenlet and is reported as the prefork pool
reports a killed child (`time-limit:`, so acks_late, `acks_on_timeout` and the stored TimeLimitExceeded
follow the same rules); `revoke(terminate=True)` kills it too. A greenlet stops only where it yields, so a
task that computes without yielding runs past its limits: as in Celery's gevent pool, such work belongs in a
prefork worker. (`async def` tasks have a native pool of their own: `-P asyncio`.)
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any

from fastq.exceptions import ImproperlyConfigured, SoftTimeLimitExceeded
from fastq.utils.green import is_patched
from fastq.worker.job import prepare_payload, run_prepared
from fastq.worker.pool.base import Pool
from fastq.worker.trace import Killed, Outcome

if TYPE_CHECKING:
    from fastq.worker.job import Job

logger = logging.getLogger('celery.worker.request')


class GeventPool(Pool):
    name = 'gevent'

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        try:
            import gevent
        except ImportError:
            raise ImproperlyConfigured(
                "worker_pool: the gevent pool needs gevent (pip install 'fastq[gevent]')"
            ) from None
        if not is_patched():
            raise ImproperlyConfigured(
                'worker_pool: the gevent pool needs gevent to monkey-patch the process before anything else is '
                'imported: start the worker with `fastq worker -P gevent` (the command line patches first), or '
                'call gevent.monkey.patch_all() at the very top of the program that runs the worker'
            )
        from fastq.brokers import broker_class
        from fastq.brokers.amqp import AMQPBroker

        if issubclass(broker_class(self.app.broker_url), AMQPBroker):
            raise ImproperlyConfigured(
                'worker_pool: the gevent pool runs on the Redis and SQLite brokers, not on RabbitMQ: fastq talks '
                'AMQP through rabbitmq-c, which waits in C where gevent cannot switch away; use -P threads, or '
                'async def tasks with -P asyncio'
            )
        self._gevent = gevent
        self._running: dict[int, Any] = {}  # job id -> its greenlet
        self._active: dict[int, Job] = {}
        self._killed: dict[int, str] = {}  # job id -> why the pool killed it (reported through on_lost)
        self._soft: dict[int, float] = {}  # job id -> when its soft time limit expires (monotonic)
        self._started: set[int] = set()  # job ids whose greenlet has begun to run
        self._stopping = False

    def start(self) -> None:
        return None

    def free_slots(self) -> int:
        return 0 if self._stopping else max(0, self.concurrency - len(self._active))

    def submit(self, job: Job) -> None:
        job.started = time.monotonic()
        self._active[job.id] = job
        greenlet = self._running[job.id] = self._gevent.spawn(self._run, job)
        # `inspect active`'s worker_pid: Celery's gevent pool reports the id of the greenlet running the task
        job.pid = id(greenlet)

    def _run(self, job: Job) -> None:
        outcome: Outcome | None = None
        self._started.add(job.id)
        try:
            prepared = prepare_payload(self.app, job.payload(), self.accept)
            if isinstance(prepared, Outcome):
                outcome = prepared
            else:
                if prepared.soft_time_limit:
                    self._soft[job.id] = time.monotonic() + float(prepared.soft_time_limit)
                outcome = run_prepared(self.app, prepared)
        except (Killed, self._gevent.GreenletExit):
            pass  # killed by the pool: `_finished` reports why
        except BaseException as exc:  # never lose the answer for a job
            outcome = Outcome('FAILURE', 0.0, exc_repr=repr(exc))
        finally:
            self._started.discard(job.id)
            self._soft.pop(job.id, None)
            self._running.pop(job.id, None)
            # (the loop and the greenlets share one thread, but the loop may be waiting in select: post)
            self.loop.call_soon_threadsafe(lambda: self._finished(job, outcome))

    def _finished(self, job: Job, outcome: Outcome | None) -> None:
        killed = self._killed.pop(job.id, None)
        if self._active.pop(job.id, None) is None:
            return  # handed back by `terminate`
        if killed is not None:
            self.on_lost(job, killed)
        elif outcome is not None:
            self.on_result(job, outcome)
        else:
            self.on_lost(job, 'greenlet exited')

    def resize(self, delta: int) -> int:
        """`pool_grow`/`pool_shrink`: more or fewer greenlets at once (never under one); running ones finish.
        Returns the change."""
        size = max(1, self.concurrency + delta)
        changed, self.concurrency = size - self.concurrency, size
        return changed

    def active(self) -> list[Job]:
        return list(self._active.values())

    def supports_hard_time_limit(self) -> bool:
        return True

    def check_time_limits(self, now: float) -> None:
        for job_id, expires in list(self._soft.items()):
            greenlet = self._running.get(job_id)
            job = self._active.get(job_id)
            if now >= expires and greenlet is not None and job is not None:
                del self._soft[job_id]
                logger.warning(
                    'Soft time limit (%ss) exceeded for %s[%s]', job.soft_time_limit, job.name, job.request.id
                )
                greenlet.kill(SoftTimeLimitExceeded(), block=False)
        for job in list(self._active.values()):
            if job.time_limit and job.started is not None and now - job.started > job.time_limit:
                if job.id in self._running and job.id not in self._killed:
                    logging.getLogger('fastq.worker.pool').error(
                        'Hard time limit (%ss) exceeded for %s[%s]', job.time_limit, job.name, job.request.id
                    )
                    self._kill(job, f'time-limit:{job.time_limit}')

    def kill_job(self, job: Job, reason: str, sig: int = 15) -> bool:
        """Kill the greenlet running `job` (revoke with terminate): a signal cannot reach one greenlet, so
        any `sig` kills it where it next yields."""
        if job.id not in self._running or job.id in self._killed:
            return False
        self._kill(job, reason)
        return True

    def _kill(self, job: Job, reason: str) -> None:
        self._killed[job.id] = reason
        self._running[job.id].kill(Killed(reason), block=False)
        if job.id not in self._started:
            # gevent never runs a greenlet killed before it was first switched to (a revoke or a hard limit
            # that came before the hub started it), so `_run`'s `finally` would never report the job: it
            # stayed active for good, its message unsettled and a warm shutdown waiting on it. Report it here.
            self._running.pop(job.id, None)
            self.loop.call_soon_threadsafe(lambda: self._finished(job, None))

    def stop(self) -> None:
        self._stopping = True

    def idle(self) -> bool:
        return not self._active

    def terminate(self) -> list[Job]:
        """Cold shutdown: kill every greenlet; their jobs are handed back unsettled."""
        held = list(self._active.values())
        for job in held:
            self._killed[job.id] = 'terminated'
            greenlet = self._running.get(job.id)
            if greenlet is not None:
                greenlet.kill(Killed('terminated'), block=False)
        self._active.clear()
        self._stopping = True
        return held
