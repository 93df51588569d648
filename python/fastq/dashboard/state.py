"""What the dashboard knows, folded from Celery's event stream and the broker's queue depths.

Everything here comes from events any Celery-compatible worker sends (fastq's and Celery's alike), so the page
works for a mixed fleet. It keeps a bounded window: the most recent tasks, the last minute of rates, the
last failures. One lock guards it: events arrive on the feed thread, snapshots are read by web requests.
"""

from __future__ import annotations

import threading
import time
from collections import Counter, OrderedDict, deque
from dataclasses import dataclass, field
from typing import Any

__all__ = ['DashboardState', 'TaskView', 'WorkerView']

#: Celery's state precedence: a late event for an earlier state must not move a task backwards.
_RANK = {'PENDING': 0, 'RECEIVED': 1, 'STARTED': 2, 'RETRY': 3, 'SUCCESS': 4, 'FAILURE': 4, 'REVOKED': 4,
         'REJECTED': 4}  # fmt: skip
_STATE_OF = {
    'task-sent': 'PENDING',
    'task-received': 'RECEIVED',
    'task-started': 'STARTED',
    'task-succeeded': 'SUCCESS',
    'task-failed': 'FAILURE',
    'task-retried': 'RETRY',
    'task-revoked': 'REVOKED',
    'task-rejected': 'REJECTED',
}
#: Celery's monitors count a worker offline after two missed heartbeats (HEARTBEAT_EXPIRE_WINDOW = 200%).
EXPIRE_WINDOW = 2.0
_TASK_FIELDS = ('name', 'args', 'kwargs', 'retries', 'eta', 'expires', 'root_id', 'parent_id', 'result',
                'exception', 'traceback', 'runtime')  # fmt: skip


@dataclass(slots=True)
class WorkerView:
    hostname: str
    freq: float = 2.0
    last_heartbeat: float = 0.0
    offline: bool = False
    active: int = 0
    processed: int = 0
    loadavg: list[float] = field(default_factory=list)
    sw_ident: str = ''
    sw_ver: str = ''
    pid: int | None = None

    def alive(self, now: float) -> bool:
        return not self.offline and now - self.last_heartbeat <= self.freq * EXPIRE_WINDOW


@dataclass(slots=True)
class TaskView:
    uuid: str
    state: str = 'PENDING'
    name: str | None = None
    worker: str | None = None
    queue: str | None = None
    args: Any = None
    kwargs: Any = None
    retries: int | None = None
    eta: Any = None
    expires: Any = None
    root_id: str | None = None
    parent_id: str | None = None
    result: Any = None
    exception: str | None = None
    traceback: str | None = None
    runtime: float | None = None
    sent: float | None = None
    received: float | None = None
    started: float | None = None
    finished: float | None = None

    def as_dict(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.__slots__}


class DashboardState:
    """The fleet as seen from events: workers, recent tasks, rates, failures, queue depths and waits."""

    def __init__(self, max_tasks: int = 5000, window: int = 60, max_failures: int = 50) -> None:
        self.max_tasks = max_tasks
        self.window = window
        self._lock = threading.Lock()
        self.workers: dict[str, WorkerView] = {}
        self.tasks: OrderedDict[str, TaskView] = OrderedDict()
        self.failures: deque[str] = deque(maxlen=max_failures)
        # One bucket per second: (second, succeeded, failed); per task name over the window.
        self._buckets: deque[list[int]] = deque()
        self._by_name: deque[tuple[int, str, bool]] = deque()
        self._waits: dict[str, deque[float]] = {}  # queue -> recent enqueue-to-start seconds
        self.queue_depths: dict[str, int] = {}
        self.events_seen = 0

    # --- input ----------------------------------------------------------------------------------------------

    def event(self, event: dict[str, Any]) -> None:
        kind = event.get('type')
        if not isinstance(kind, str):
            return
        with self._lock:
            self.events_seen += 1
            if kind.startswith('worker-'):
                self._worker_event(kind, event)
            elif kind.startswith('task-'):
                self._task_event(kind, event)

    def set_queue_depths(self, depths: dict[str, int]) -> None:
        with self._lock:
            self.queue_depths = dict(depths)

    def _worker_event(self, kind: str, event: dict[str, Any]) -> None:
        hostname = event.get('hostname')
        if not isinstance(hostname, str):
            return
        worker = self.workers.get(hostname)
        if worker is None:
            worker = self.workers[hostname] = WorkerView(hostname)
        worker.offline = kind == 'worker-offline'
        worker.last_heartbeat = float(event.get('timestamp') or time.time())
        worker.freq = float(event.get('freq') or worker.freq)
        worker.active = int(event.get('active') or 0)
        worker.processed = int(event.get('processed') or 0)
        worker.loadavg = list(event.get('loadavg') or [])
        worker.sw_ident = str(event.get('sw_ident') or '')
        worker.sw_ver = str(event.get('sw_ver') or '')
        worker.pid = event.get('pid')

    def _task_event(self, kind: str, event: dict[str, Any]) -> None:
        uuid = event.get('uuid')
        state = _STATE_OF.get(kind)
        if not isinstance(uuid, str) or state is None:
            return
        task = self._task(uuid)
        for name in _TASK_FIELDS:
            value = event.get(name)
            if value is not None:
                setattr(task, name, value)
        hostname = event.get('hostname')
        if kind == 'task-sent':
            task.queue = event.get('queue') or event.get('routing_key') or task.queue
        elif isinstance(hostname, str):
            task.worker = hostname
        if kind != 'task-sent' and event.get('queue'):
            task.queue = event['queue']
        self._timing(task, kind, state, event, float(event.get('timestamp') or time.time()))
        if _RANK[state] >= _RANK.get(task.state, 0):
            task.state = state

    def _task(self, uuid: str) -> TaskView:
        task = self.tasks.get(uuid)
        if task is None:
            task = self.tasks[uuid] = TaskView(uuid)
            while len(self.tasks) > self.max_tasks:
                self.tasks.popitem(last=False)
        else:
            self.tasks.move_to_end(uuid)
        return task

    def _timing(self, task: TaskView, kind: str, state: str, event: dict[str, Any], timestamp: float) -> None:
        if kind == 'task-sent':
            task.sent = timestamp
        elif kind == 'task-received':
            task.received = timestamp
            sent_at = event.get('sent_at')  # fastq clients stamp it; Celery's do not
            if task.sent is None and isinstance(sent_at, int | float):
                task.sent = float(sent_at)
        elif kind == 'task-started':
            task.started = timestamp
            if task.sent is not None:
                waits = self._waits.setdefault(task.queue or '?', deque(maxlen=200))
                waits.append(max(0.0, timestamp - task.sent))
        elif state in ('SUCCESS', 'FAILURE', 'REVOKED', 'REJECTED'):
            task.finished = timestamp
            if state in ('SUCCESS', 'FAILURE'):
                self._count(timestamp, task.name or '?', failed=state == 'FAILURE')
            if state == 'FAILURE':
                self.failures.appendleft(task.uuid)

    def _count(self, timestamp: float, name: str, failed: bool) -> None:
        second = int(timestamp)
        if not self._buckets or self._buckets[-1][0] < second:
            self._buckets.append([second, 0, 0])
        bucket = next((b for b in reversed(self._buckets) if b[0] == second), None)
        if bucket is None:  # older than the newest bucket: count it in the newest
            bucket = self._buckets[-1]
        bucket[2 if failed else 1] += 1
        self._by_name.append((second, name, failed))
        self._trim(second)

    def _trim(self, now_second: int) -> None:
        horizon = now_second - self.window
        while self._buckets and self._buckets[0][0] <= horizon:
            self._buckets.popleft()
        while self._by_name and self._by_name[0][0] <= horizon:
            self._by_name.popleft()

    # --- output ---------------------------------------------------------------------------------------------

    def snapshot(self, now: float | None = None, tasks: int = 100) -> dict[str, Any]:
        now = time.time() if now is None else now
        with self._lock:
            self._trim(int(now))
            succeeded = sum(b[1] for b in self._buckets)
            failed = sum(b[2] for b in self._buckets)
            per_name: Counter[str] = Counter()
            failed_by_name: Counter[str] = Counter()
            for _, name, was_failure in self._by_name:
                per_name[name] += 1
                if was_failure:
                    failed_by_name[name] += 1
            series = {b[0]: (b[1], b[2]) for b in self._buckets}
            start = int(now) - self.window + 1
            rate_series = [[s, *series.get(s, (0, 0))] for s in range(start, int(now) + 1)]
            queues = sorted(set(self.queue_depths) | {q for q in self._waits if q != '?'})
            return {
                'now': now,
                'events_seen': self.events_seen,
                'workers': [
                    {
                        'hostname': w.hostname,
                        'online': w.alive(now),
                        'active': w.active,
                        'processed': w.processed,
                        'loadavg': w.loadavg,
                        'last_heartbeat': w.last_heartbeat,
                        'software': f'{w.sw_ident} {w.sw_ver}'.strip(),
                    }
                    for w in sorted(self.workers.values(), key=lambda w: w.hostname)
                ],
                'queues': [
                    {'name': q, 'depth': self.queue_depths.get(q), 'wait_p50': _median(self._waits.get(q))}
                    for q in queues
                ],
                'rates': {
                    'window': self.window,
                    'succeeded_per_s': succeeded / self.window,
                    'failed_per_s': failed / self.window,
                    'series': rate_series,
                    'by_task': [
                        {'name': name, 'per_s': count / self.window, 'failed': failed_by_name[name]}
                        for name, count in per_name.most_common(20)
                    ],
                },
                'tasks': [t.as_dict() for t in list(reversed(self.tasks.values()))[:tasks]],
                'failures': [self.tasks[u].as_dict() for u in self.failures if u in self.tasks],
            }

    def task(self, uuid: str) -> dict[str, Any] | None:
        with self._lock:
            task = self.tasks.get(uuid)
            return None if task is None else task.as_dict()


def _median(values: deque[float] | None) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[len(ordered) // 2]
