"""Prometheus metrics of a worker (`--metrics-port`, `worker_metrics_port`), served from the worker parent.

Every task passes through the parent, so its counts and times are taken there, from what the children
answer (state and runtime); a child needs no registry of its own and nothing is lost when one is replaced.
The loop thread only adds to plain counters; `prometheus_client` reads them when scraped (a custom
collector), so a scrape never slows the loop and an unscraped worker pays a few additions per task.

Time in queue is from the moment a fastq client sent the task (its `fastq_sent_at` header, unix seconds) or
its ETA, whichever is later, to its hand-off to the pool. Celery's messages carry no send time: tasks sent
by Celery clients are counted but not timed.
"""

from __future__ import annotations

import bisect
import logging
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from fastq import states
from fastq.exceptions import ImproperlyConfigured
from fastq.protocol import SENT_AT_HEADER

if TYPE_CHECKING:
    from fastq.worker.job import Job
    from fastq.worker.trace import Outcome
    from fastq.worker.worker import WorkController

__all__ = ['RUNTIME_BUCKETS', 'SENT_AT_HEADER', 'WorkerMetrics', 'check_metrics_port']

logger = logging.getLogger('fastq.worker.metrics')

#: Histogram bounds (seconds) of task runtimes and times in queue: prometheus_client's defaults, widened.
RUNTIME_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0,
                   float('inf'))  # fmt: skip
QUEUE_BUCKETS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0, 1800.0, 3600.0,
                 float('inf'))  # fmt: skip


def check_metrics_port(value: Any) -> int | None:
    """The port `worker_metrics_port` names (0: any free port), None if unset; ImproperlyConfigured if bad."""
    if value is None or value == '':
        return None
    try:
        port = int(value)
    except (TypeError, ValueError):
        port = -1
    if isinstance(value, bool) or not 0 <= port <= 65535 or (isinstance(value, float) and value != port):
        raise ImproperlyConfigured(f'worker_metrics_port: must be a TCP port number (0-65535), got {value!r}')
    try:
        import prometheus_client  # noqa: F401
    except ImportError:
        raise ImproperlyConfigured(
            "worker_metrics_port: metrics need prometheus_client: pip install 'fastq[metrics]'"
        ) from None
    return port


class _Histogram:
    __slots__ = ('bounds', 'counts', 'total')

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * len(bounds)  # per bucket, not cumulative
        self.total = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.total += value

    def buckets(self) -> tuple[list[tuple[str, float]], float]:
        counts = list(self.counts)  # one copy: a scrape sees a consistent histogram
        cumulative = []
        running = 0
        for bound, count in zip(self.bounds, counts, strict=True):
            running += count
            cumulative.append(('+Inf' if bound == float('inf') else repr(bound), float(running)))
        return cumulative, self.total


class _TaskStats:
    __slots__ = ('failed', 'queue', 'received', 'rejected', 'retried', 'revoked', 'runtime', 'succeeded')

    def __init__(self) -> None:
        self.received = self.succeeded = self.failed = self.retried = self.revoked = self.rejected = 0
        self.runtime = _Histogram(RUNTIME_BUCKETS)
        self.queue = _Histogram(QUEUE_BUCKETS)


_COUNTERS = (
    ('received', 'Tasks received by this worker'),
    ('succeeded', 'Tasks that succeeded'),
    ('failed', 'Tasks that failed (raised, exceeded a hard time limit, or lost with their process)'),
    ('retried', 'Task runs that ended in a retry'),
    ('revoked', 'Tasks revoked before or while running'),
    ('rejected', 'Tasks that rejected their message'),
)


class WorkerMetrics:
    """Counts kept by the worker loop, exposed by a `prometheus_client` collector."""

    def __init__(self, worker: WorkController) -> None:
        self.worker = worker
        self.tasks: dict[str, _TaskStats] = {}
        self._server: Any = None
        self._thread: Any = None
        self.port: int | None = None

    def _stats(self, name: str) -> _TaskStats:
        stats = self.tasks.get(name)
        if stats is None:
            stats = self.tasks[name] = _TaskStats()
        return stats

    # --- the loop's side ----------------------------------------------------------------------------------

    def received(self, job: Job) -> None:
        self._stats(job.request.task).received += 1

    def started(self, job: Job) -> None:
        request = job.request
        sent = request.sent_at
        if isinstance(sent, int | float) and not isinstance(sent, bool):
            since = max(float(sent), request.eta or 0.0)
            self._stats(request.task).queue.observe(max(time.time() - since, 0.0))

    def finished(self, job: Job, outcome: Outcome) -> None:
        stats = self._stats(job.request.task)
        state = outcome.state
        if state == states.SUCCESS:
            stats.succeeded += 1
        elif state == states.FAILURE:
            stats.failed += 1
        elif state == states.RETRY:
            stats.retried += 1
        elif state == states.REJECTED:
            stats.rejected += 1
        else:
            return
        stats.runtime.observe(outcome.runtime)

    def lost(self, job: Job, state: str) -> None:
        """A task that ended outside its executor: FAILURE (lost, time limit) or REVOKED."""
        stats = self._stats(job.request.task)
        if state == states.REVOKED:
            stats.revoked += 1
        else:
            stats.failed += 1

    def revoked(self, name: str) -> None:
        self._stats(name).revoked += 1

    # --- the scrape's side --------------------------------------------------------------------------------

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily

        tasks = list(self.tasks.items())
        for field, doc in _COUNTERS:
            family = CounterMetricFamily(f'fastq_tasks_{field}', doc, labels=['task'])
            for name, stats in tasks:
                family.add_metric([name], getattr(stats, field))
            yield family
        runtime = HistogramMetricFamily('fastq_task_runtime_seconds', 'Task runtimes', labels=['task'])
        queue = HistogramMetricFamily(
            'fastq_task_queue_seconds',
            'Time from a task being sent (fastq clients) or due (ETA) to its start',
            labels=['task'],
        )
        for name, stats in tasks:
            buckets, total = stats.runtime.buckets()
            runtime.add_metric([name], buckets, total)
            buckets, total = stats.queue.buckets()
            queue.add_metric([name], buckets, total)
        yield runtime
        yield queue
        yield from self._gauges()

    def _gauges(self) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        worker = self.worker
        dispatcher, pool, fetcher = worker.dispatcher, worker.pool, worker.fetcher
        reserved = in_flight = prefetched = 0
        if dispatcher is not None:
            in_flight = len(dispatcher.running)
            reserved = len(dispatcher.ready) + len(dispatcher.held) + len(dispatcher.limiter.held())
            prefetched = len(dispatcher.ledger)
        for name, doc, value in (
            ('fastq_tasks_prefetched', 'Messages this worker holds from the broker, unacknowledged', prefetched),
            ('fastq_tasks_reserved', 'Tasks received and waiting to start (ready, ETA, rate limited)', reserved),
            ('fastq_tasks_in_flight', 'Tasks handed to the pool and not finished', in_flight),
            ('fastq_pool_processes', 'Executors in the pool (processes; threads for -P threads)', _pool_size(worker)),
        ):
            yield GaugeMetricFamily(name, doc, value=value)
        yield CounterMetricFamily(
            'fastq_pool_child_restarts', 'Pool children replaced (recycled or died)', value=getattr(pool, 'replaced', 0)
        )
        yield CounterMetricFamily(
            'fastq_broker_reconnects', 'Times the worker got its broker back after losing it',
            value=getattr(fetcher, 'reconnects', 0),
        )  # fmt: skip

    # --- serving ------------------------------------------------------------------------------------------

    def serve(self, port: int, address: str = '0.0.0.0') -> None:
        from prometheus_client import CollectorRegistry, start_http_server

        registry = CollectorRegistry(auto_describe=False)
        registry.register(self)
        self._server, self._thread = start_http_server(port, addr=address, registry=registry)
        self.port = int(self._server.server_port)
        logger.info('Metrics at http://%s:%d/metrics', address, self.port)

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None


def _pool_size(worker: WorkController) -> int:
    pool = worker.pool
    if pool is None:
        return 0
    children = getattr(pool, 'children', None)
    if isinstance(children, dict):
        return len(children)
    return int(getattr(pool, 'concurrency', 0))
