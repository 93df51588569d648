"""`State`: the fleet as the event stream describes it (workers and their liveness, tasks and their states).

Folded the way Celery's `celery.events.state.State` folds events, so monitors built on it see the same
thing: a task's state only moves forward (a late `task-started` does not undo `task-succeeded`, but its
fields are merged), a worker is alive until two heartbeat intervals pass without one (or it says
`worker-offline`), and memory is bounded (`max_tasks_in_memory`, `max_workers_in_memory`, oldest dropped).
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from typing import Any

from fastq import states

__all__ = ['HEARTBEAT_EXPIRE_WINDOW', 'State', 'Task', 'Worker']

#: A worker is offline once this many heartbeat intervals (in percent, as Celery) passed without one.
HEARTBEAT_EXPIRE_WINDOW = 200
#: Heartbeats remembered per worker.
HEARTBEAT_KEEP = 4

TASK_EVENT_TO_STATE = {
    'sent': states.PENDING,
    'received': states.RECEIVED,
    'started': states.STARTED,
    'failed': states.FAILURE,
    'retried': states.RETRY,
    'succeeded': states.SUCCESS,
    'revoked': states.REVOKED,
    'rejected': states.REJECTED,
}
#: Higher comes later; a state ranked lower than the current one does not replace it.
_RANK = {
    states.PENDING: 0,
    states.RECEIVED: 1,
    states.RETRY: 2,
    states.STARTED: 3,
    states.REJECTED: 4,
    states.REVOKED: 5,
    states.FAILURE: 6,
    states.SUCCESS: 6,
}
#: Fields a late event may still add to a task that moved past its state.
_MERGE_RULES = {
    states.RECEIVED: frozenset({'name', 'args', 'kwargs', 'parent_id', 'root_id', 'retries', 'eta', 'expires'}),
    states.PENDING: frozenset(
        {
            'name',
            'args',
            'kwargs',
            'parent_id',
            'root_id',
            'retries',
            'eta',
            'expires',
            'queue',
            'exchange',
            'routing_key',
        }
    ),  # fmt: skip
    states.STARTED: frozenset({'pid'}),
}


def heartbeat_expires(timestamp: float, freq: float = 60.0, expire_window: float = HEARTBEAT_EXPIRE_WINDOW) -> float:
    return timestamp + freq * (expire_window / 100.0)


class Worker:
    """A worker as its `worker-*` events describe it."""

    def __init__(self, hostname: str) -> None:
        self.hostname = hostname
        self.pid: int | None = None
        self.freq = 60.0
        self.heartbeats: list[float] = []
        self.clock = 0
        self.active: int | None = None
        self.processed: int | None = None
        self.loadavg: list[float] | None = None
        self.sw_ident: str | None = None
        self.sw_ver: str | None = None
        self.sw_sys: str | None = None
        self.event_count = 0

    def event(self, type: str | None, timestamp: float, fields: dict[str, Any]) -> None:
        """Fold in a `worker-<type>` event; type None: one of its task events, which also says it is alive."""
        for key in ('pid', 'freq', 'clock', 'active', 'processed', 'loadavg', 'sw_ident', 'sw_ver', 'sw_sys'):
            if key in fields and type is not None:
                setattr(self, key, fields[key])
        if type is not None:
            self.event_count += 1
        if type == 'offline':
            self.heartbeats.clear()
            return
        # Celery's: when it arrived here (the receiver's local_received), so a sender whose clock is off is
        # still judged by this host's clock
        received = fields.get('local_received')
        if isinstance(received, int | float) and received:
            timestamp = float(received)
        heartbeats = self.heartbeats
        if not heartbeats or timestamp >= heartbeats[-1]:
            heartbeats.append(timestamp)
            del heartbeats[:-HEARTBEAT_KEEP]

    @property
    def heartbeat_expires(self) -> float:
        return heartbeat_expires(self.heartbeats[-1], float(self.freq or 60.0))

    @property
    def alive(self) -> bool:
        return bool(self.heartbeats) and time.time() < self.heartbeat_expires

    @property
    def status_string(self) -> str:
        return 'ONLINE' if self.alive else 'OFFLINE'

    @property
    def id(self) -> str:
        return f'{self.hostname}.{self.pid}'  # (Celery's)

    def as_dict(self) -> dict[str, Any]:
        return {
            'hostname': self.hostname,
            'pid': self.pid,
            'freq': self.freq,
            'heartbeats': list(self.heartbeats),
            'clock': self.clock,
            'active': self.active,
            'processed': self.processed,
            'loadavg': self.loadavg,
            'sw_ident': self.sw_ident,
            'sw_ver': self.sw_ver,
            'sw_sys': self.sw_sys,
            'alive': self.alive,
        }

    def __repr__(self) -> str:
        return f'<Worker: {self.hostname} ({self.status_string} clock:{self.clock})>'


class Task:
    """A task as its `task-*` events describe it; fields a task never reported are None."""

    _FIELDS = ('name', 'args', 'kwargs', 'retries', 'eta', 'expires', 'root_id', 'parent_id', 'result',
               'exception', 'traceback', 'runtime', 'pid', 'queue', 'exchange', 'routing_key', 'terminated',
               'signum', 'expired', 'requeue', 'sent', 'received', 'started', 'succeeded', 'failed', 'retried',
               'revoked', 'rejected')  # fmt: skip

    def __init__(self, uuid: str) -> None:
        self.uuid = uuid
        self.state: str | None = None
        self.timestamp: float | None = None
        self.clock = 0
        self.worker: Worker | None = None
        #: The node that sent it (`task-sent`'s hostname), as Celery's.
        self.client: str | None = None
        for name in self._FIELDS:
            setattr(self, name, None)

    def __getattr__(self, name: str) -> Any:  # for mypy: the fields above are set in __init__
        raise AttributeError(name)

    #: What `info()` shows by default (Celery's).
    _info_fields = ('args', 'kwargs', 'retries', 'result', 'eta', 'runtime', 'expires', 'exception',
                    'exchange', 'routing_key', 'root_id', 'parent_id')  # fmt: skip

    def info(self, fields: Any = None, extra: Any = None) -> dict[str, Any]:
        """The task's fields that are set, for display (Celery's `Task.info()`)."""
        names = [*(self._info_fields if fields is None else fields), *(extra or ())]
        return {name: value for name in names if (value := getattr(self, name, None)) is not None}

    def event(self, kind: str, timestamp: float, fields: dict[str, Any]) -> None:
        state = TASK_EVENT_TO_STATE.get(kind) or kind.upper()
        if kind in TASK_EVENT_TO_STATE:
            setattr(self, kind, timestamp)
        current = self.state
        if (
            current is not None
            and state != states.RETRY
            and current != states.RETRY
            and (_RANK.get(state, 0) < _RANK.get(current, 0))
        ):  # this happened before what we know: keep the state, take the fields that only it carries
            keep = _MERGE_RULES.get(state, frozenset())
            fields = {key: value for key, value in fields.items() if key in keep}
        else:
            self.state = state
            self.timestamp = timestamp
        for key, value in fields.items():
            if key in ('uuid', 'type', 'hostname', 'timestamp', 'utcoffset', 'local_received'):
                continue
            setattr(self, key, value)

    @property
    def ready(self) -> bool:
        return self.state in states.READY_STATES

    def as_dict(self) -> dict[str, Any]:
        out = {name: getattr(self, name) for name in self._FIELDS}
        out.update(uuid=self.uuid, state=self.state, timestamp=self.timestamp, clock=self.clock,
                   worker=self.worker.hostname if self.worker is not None else None)  # fmt: skip
        return out

    def __repr__(self) -> str:
        return f'<Task: {self.name}({self.uuid}) {self.state} clock:{self.clock}>'


class _TaskIndex(dict[Any, set[Task]]):
    """Celery's `CallableDefaultdict` of tasks by a key: indexed, the set of tasks with that key (empty if
    none); called, those tasks as (uuid, task) pairs by time, at most `limit`."""

    def __init__(
        self,
        key: Callable[[Task], Any],
        tasks: list[Task],
        by_time: Callable[..., list[tuple[str, Task]]],
    ) -> None:
        super().__init__()
        for task in tasks:
            self.setdefault(key(task), set()).add(task)
        self._key = key
        self._by_time = by_time

    def __missing__(self, key: Any) -> set[Task]:
        return set()

    def __call__(self, value: Any, limit: int | None = None, reverse: bool = True) -> list[tuple[str, Task]]:
        found = [(uuid, task) for uuid, task in self._by_time(reverse=reverse) if self._key(task) == value]
        return found[:limit] if limit is not None else found


class State:
    """Workers and tasks from an event stream: `State().event(ev)` for each event, from any thread."""

    def __init__(
        self,
        callback: Callable[[State, dict[str, Any]], Any] | None = None,
        max_workers_in_memory: int = 5000,
        max_tasks_in_memory: int = 10000,
        on_node_join: Callable[[Worker], Any] | None = None,
        on_node_leave: Callable[[Worker], Any] | None = None,
    ) -> None:
        self.callback = callback
        self.max_workers_in_memory = max_workers_in_memory
        self.max_tasks_in_memory = max_tasks_in_memory
        self.on_node_join = on_node_join
        self.on_node_leave = on_node_leave
        self.workers: OrderedDict[str, Worker] = OrderedDict()
        self.tasks: OrderedDict[str, Task] = OrderedDict()
        self.event_count = 0
        self.task_count = 0
        self._mutex = threading.RLock()

    def event(self, event: dict[str, Any]) -> tuple[tuple[Any, bool] | None, str]:
        """Fold one event in; returns ((the worker or task it was about, whether that one is new), the event's
        type after its group: 'succeeded'), as Celery's (None for an event about neither)."""
        with self._mutex:
            self.event_count += 1
            group, _, kind = str(event.get('type', '')).partition('-')
            result: tuple[Any, bool] | None = None
            if group == 'worker':
                result = self._worker_event(kind, event)
            elif group == 'task':
                result = self._task_event(kind, event)
            if self.callback is not None:
                self.callback(self, event)
            return result, kind

    def _get_worker(self, hostname: str) -> tuple[Worker, bool]:
        worker = self.workers.get(hostname)
        if worker is not None:
            return worker, False
        worker = self.workers[hostname] = Worker(hostname)
        while len(self.workers) > self.max_workers_in_memory:
            self.workers.popitem(last=False)
        return worker, True

    def _worker_event(self, kind: str, event: dict[str, Any]) -> tuple[Worker, bool]:
        hostname = str(event.get('hostname'))
        if kind == 'offline' and hostname not in self.workers:  # (Celery's: not added only to say it left)
            worker, created = Worker(hostname), False
        else:
            worker, created = self._get_worker(hostname)
        was_alive = worker.alive
        worker.event(kind, float(event.get('timestamp') or time.time()), event)
        if kind == 'online' or (not was_alive and worker.alive):
            if self.on_node_join is not None:
                self.on_node_join(worker)
        elif kind == 'offline' and self.on_node_leave is not None:
            self.on_node_leave(worker)
            self.workers.pop(hostname, None)  # (Celery's: forgotten once on_node_leave was told)
        return worker, created

    def _task_event(self, kind: str, event: dict[str, Any]) -> tuple[Task | None, bool]:
        uuid = event.get('uuid')
        if not isinstance(uuid, str):
            return None, False
        task = self.tasks.get(uuid)
        created = task is None
        if task is None:
            task = self.tasks[uuid] = Task(uuid)
            while len(self.tasks) > self.max_tasks_in_memory:
                self.tasks.popitem(last=False)
        if kind == 'received':  # (Celery's task_count: the task-received events seen)
            self.task_count += 1
        hostname = event.get('hostname')
        timestamp = float(event.get('timestamp') or time.time())
        if kind == 'sent':
            task.client = hostname if isinstance(hostname, str) else None
        elif isinstance(hostname, str):
            task.worker, _ = self._get_worker(hostname)
            task.worker.event(None, timestamp, {})  # (Celery's: a worker's task event is a sign of life, at its time)
        clock = event.get('clock')
        if isinstance(clock, int):
            task.clock = max(task.clock, clock)
        task.event(kind, timestamp, event)
        return task, created

    # --- queries ------------------------------------------------------------------------------------------

    def clear(self, ready: bool = True) -> None:
        """Forget the workers and the tasks (with `ready`, Celery's default, only the finished ones: a task
        still running keeps its state for the next look); the counts start again."""
        with self._mutex:
            self._clear(ready)

    def _clear(self, ready: bool = True) -> None:
        self.workers.clear()
        if ready:
            running = [(uuid, task) for uuid, task in self.tasks.items() if not task.ready]
            self.tasks.clear()
            self.tasks.update(running)
        else:
            self.tasks.clear()
        self.event_count = self.task_count = 0

    def freeze_while(self, fun: Callable[..., Any], *args: Any, clear_after: bool = False, **kwargs: Any) -> Any:
        """Call `fun` with no event folded in meanwhile (a snapshot camera's look), then `clear` if asked."""
        with self._mutex:
            try:
                return fun(*args, **kwargs)
            finally:
                if clear_after:
                    self._clear()

    def alive_workers(self) -> list[Worker]:
        return [w for w in list(self.workers.values()) if w.alive]

    def itertasks(self, limit: int | None = None) -> Iterator[tuple[str, Task]]:
        for index, item in enumerate(list(self.tasks.items())):
            if limit is not None and index >= limit:
                return
            yield item

    def tasks_by_time(self, limit: int | None = None, reverse: bool = True) -> list[tuple[str, Task]]:
        """Tasks ordered by their last event's time, newest first."""
        ordered = sorted(self.tasks.items(), key=lambda item: item[1].timestamp or 0.0, reverse=reverse)
        return ordered[:limit] if limit is not None else ordered

    @property
    def tasks_by_type(self) -> _TaskIndex:
        """`tasks_by_type(name, limit=None, reverse=True)`: (uuid, task) of that name, newest first; and, as
        Celery's, `tasks_by_type[name]`: the set of those tasks."""
        return _TaskIndex(lambda task: task.name, list(self.tasks.values()), self.tasks_by_time)

    @property
    def tasks_by_worker(self) -> _TaskIndex:
        """`tasks_by_worker(hostname, limit=None, reverse=True)`, and `tasks_by_worker[hostname]`, as
        `tasks_by_type`."""
        return _TaskIndex(
            lambda task: task.worker.hostname if task.worker is not None else None,
            list(self.tasks.values()),
            self.tasks_by_time,
        )

    def task_types(self) -> list[str]:
        return sorted({task.name for task in list(self.tasks.values()) if task.name})

    def __repr__(self) -> str:
        return f'<State: events={self.event_count} tasks={self.task_count}>'
