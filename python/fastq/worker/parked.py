"""ETA tasks waiting in the broker, listed by `inspect scheduled` as a Celery worker lists the ones it holds.

A Celery worker keeps every countdown/ETA task it receives in memory until it is due, so `inspect scheduled`
shows each such task once, under the node that received it. fastq keeps only those due within a second
(`HOLD_IN_MEMORY`) and parks the rest in the broker. Without this module they would vanish from the listing,
and a user checking on a countdown would conclude it was lost and send it again. So each parked task is
listed once, under one node, until its ETA passes:

- Brokers that can read parked messages back (`Consumer.parked`) answer from the broker. Reading the whole
  delayed store in every worker would list each task under every node, so each broker says which consumer
  answers for which message. Redis keeps an index per node of what that node parked (written by the park
  script itself). A restarted node lists its tasks again, much as a restarted Celery worker receives its
  ETA tasks again. SQLite also holds messages sent with an ETA, which no worker has seen: the one worker
  holding the broker lease `scheduled.<queue>` lists a queue's.
- Other brokers (RabbitMQ's delayed chain, SQS) cannot be read back. The worker remembers what it deferred
  (`ParkedTasks`), and a restart forgets it, since a message in the delayed chain belongs to no worker.

Revoked tasks are not listed. Celery 5.7 keeps a revoked request in its timer, and lists it, until its
ETA; fastq drops the tasks it holds in memory when they are revoked, and a task due in a minute should not
look different from one due in half a second.

Costs: parking stays one broker call. On Redis the park script also writes the index entry. Elsewhere
`ParkedTasks.add` runs on the loop thread: a dict insert, plus a sweep of passed ETAs at most once a minute.
Listing reads at most `LIMIT` messages, in the remote-control thread, never on the loop.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, NamedTuple

from fastq.exceptions import InvalidTaskError
from fastq.protocol import decode_body, parse_task_headers
from fastq.worker.control import on_loop

if TYPE_CHECKING:
    from fastq._core import Message
    from fastq.worker.job import Job
    from fastq.worker.worker import WorkController

logger = logging.getLogger('celery.worker.control')

#: Parked tasks a worker remembers, and lists at most (the earliest); beyond it the oldest are dropped.
LIMIT = 100_000
#: Bodies kept for the listing's args, in total (the oldest entries are dropped beyond it): the cap on memory.
MAX_BODY_BYTES = 32 * 1024 * 1024
PRUNE_EVERY = 60.0  # seconds between sweeps of entries whose ETA passed


class Parked(NamedTuple):
    """What the listing shows of one parked task, and no more (a tuple: 100,000 of them stay small)."""

    eta: float
    id: str
    name: str
    priority: int | None
    exchange: str
    routing_key: str
    redelivered: bool
    body: bytes
    content_type: str
    compression: str | None


def of_job(eta: float, job: Job) -> Parked:
    d, message = job.delivery, job.delivery.message
    properties = message.properties if message is not None else {}
    found = properties.get('delivery_info')
    info: dict[str, Any] = found if isinstance(found, dict) else {}
    return Parked(
        eta,
        job.request.id,
        job.request.task,
        properties.get('priority'),
        info.get('exchange', ''),
        info.get('routing_key', d.queue),
        d.redelivered,
        message.body if message is not None else b'',
        message.content_type if message is not None else '',
        message.headers.get('compression') if message is not None else None,
    )


def of_message(message: Message) -> Parked | None:
    """A message read back from the broker; None if it is no task with an ETA (it is not listed)."""
    try:
        request = parse_task_headers(message)
    except InvalidTaskError:
        return None
    if request.eta is None:
        return None
    headers, properties = message.headers, message.properties
    found = properties.get('delivery_info')
    info: dict[str, Any] = found if isinstance(found, dict) else {}
    return Parked(
        request.eta,
        request.id,
        request.task,
        properties.get('priority'),
        info.get('exchange', ''),
        info.get('routing_key', ''),
        bool(info.get('redelivered') or headers.get('redelivered')),
        message.body,
        message.content_type,
        headers.get('compression'),
    )


class ParkedTasks:
    """The tasks this worker deferred to a broker that cannot list them back, by task id, oldest first.

    Bounded by `LIMIT` entries and `MAX_BODY_BYTES` of bodies, the oldest dropped first. Entries whose ETA
    passed, or whose task was revoked, are dropped as the listing reads them, and passed ETAs also at most
    once a minute as new tasks are parked. Used in the loop's thread only.
    """

    def __init__(self) -> None:
        self.entries: OrderedDict[str, Parked] = OrderedDict()
        self.body_bytes = 0
        self._next_prune = time.monotonic() + PRUNE_EVERY

    def add(self, record: Parked) -> None:
        old = self.entries.pop(record.id, None)  # (SQS defers a far ETA again every 12 hours)
        if old is not None:
            self.body_bytes -= len(old.body)
        self.entries[record.id] = record
        self.body_bytes += len(record.body)
        if time.monotonic() >= self._next_prune:
            self._next_prune = time.monotonic() + PRUNE_EVERY
            now = time.time()
            self._keep(lambda r: r.eta > now)
        while len(self.entries) > LIMIT or self.body_bytes > MAX_BODY_BYTES:
            self.body_bytes -= len(self.entries.popitem(last=False)[1].body)

    def live(self, now: float, revoked: Any) -> list[Parked]:
        """The entries still waiting and not revoked (`revoked`: the dispatcher's RevokedSet)."""
        self._keep(lambda r: r.eta > now and not (revoked.ids and r.id in revoked))
        return list(self.entries.values())

    def _keep(self, wanted: Any) -> None:
        self.entries = OrderedDict((key, r) for key, r in self.entries.items() if wanted(r))
        self.body_bytes = sum(len(r.body) for r in self.entries.values())

    def __len__(self) -> int:
        return len(self.entries)


def eta_iso(when: float) -> str:
    """A Unix time as Celery's `scheduled` writes an ETA (`datetime.isoformat()`, UTC)."""
    return datetime.fromtimestamp(when, tz=UTC).isoformat()


def entry(r: Parked, hostname: str, accept: frozenset[str]) -> dict[str, Any]:
    """Celery's `scheduled` item: the ETA, the priority and the request's `info()` (not started, not acked)."""
    args: Any = None
    kwargs: Any = None
    try:
        args, kwargs, _ = decode_body(r.body, r.content_type, r.compression, accept)
    except Exception:  # dead-lettered when it comes due; the rest of it is still worth showing
        pass
    return {
        'eta': eta_iso(r.eta),
        'priority': r.priority,
        'request': {
            'id': r.id,
            'name': r.name,
            'args': args,
            'kwargs': kwargs,
            'type': r.name,
            'hostname': hostname,
            'time_start': None,
            'acknowledged': False,
            'delivery_info': {
                'exchange': r.exchange,
                'routing_key': r.routing_key,
                'priority': r.priority,
                'redelivered': r.redelivered,
            },
            'worker_pid': None,
        },
    }


def waiting(worker: WorkController) -> list[Parked]:
    """The parked tasks this worker lists, ETA ahead and not revoked, earliest first. Broker reads run in the
    calling (remote-control) thread; a broker that cannot answer leaves them out, with a warning."""
    dispatcher = worker.dispatcher
    if dispatcher is None:
        return []
    try:
        messages = dispatcher.consumer.parked(LIMIT)
    except Exception as exc:
        logger.warning('Cannot list the tasks waiting for their ETA in %s: %s', dispatcher.broker.describe(), exc)
        return []
    now = time.time()
    if messages is None:
        remembered = dispatcher.parked
        if remembered is None:
            return []
        records = on_loop(worker, lambda: remembered.live(now, dispatcher.revoked))
    else:
        found = [r for r in (of_message(m) for m in messages) if r is not None and r.eta > now]

        def not_revoked() -> list[Parked]:
            revoked = dispatcher.revoked
            return [r for r in found if not (revoked.ids and r.id in revoked)] if revoked.ids else found

        records = on_loop(worker, not_revoked)
    return sorted(records, key=lambda r: r.eta)


#: The states a revoke may overwrite at once (Celery 5.7's `_revoke`): the task has not started anywhere.
NOT_STARTED = frozenset({'PENDING', 'RECEIVED', 'RETRY', 'REJECTED'})


def store_revoked(worker: WorkController, ids: set[str]) -> None:
    """Store REVOKED now for the revoked tasks not running here, as Celery 5.7's `revoke` does (for a request
    waiting in its timer, and for an id it has no request for): else `AsyncResult.state` says PENDING until the
    task reaches a worker, for one parked until its ETA maybe for days.
    Only a state no worker has moved on from is overwritten; the discard at the ETA stores it again, with the
    request (chord, chain). Tasks held in memory or reserved are discarded (and stored) by the revoke itself.
    Runs in the remote-control thread: the broker is read there, and the backend written."""
    dispatcher = worker.dispatcher
    if dispatcher is None or not ids:
        return
    found: list[tuple[str, str | None]] = []
    app = worker.app
    # The parked tasks are looked up only for their names, which matter only to a task with a result backend
    # of its own: otherwise every id goes to the app's backend, and reading up to LIMIT parked messages from
    # the broker on every revoke would be work for nothing.
    own_backends = any(getattr(task, '_backend', None) is not None for task in list(app.tasks.values()))
    try:
        messages = dispatcher.consumer.parked(LIMIT) if own_backends else []
    except Exception as exc:
        logger.warning('Cannot list the tasks waiting for their ETA in %s: %s', dispatcher.broker.describe(), exc)
        messages = []
    if messages is None:
        remembered = dispatcher.parked
        if remembered is not None:
            found = on_loop(worker, lambda: [(r.id, r.name) for r in remembered.entries.values() if r.id in ids])
    else:
        found = [(r.id, r.name) for r in (of_message(m) for m in messages) if r is not None and r.id in ids]
    # The rest too, but the ones running here, as Celery's `_revoke` does for ids it holds no request for (a
    # task still in its queue): its state says REVOKED at once, on the app's backend.
    running = on_loop(worker, lambda: {job.request.id for job in dispatcher.running.values()})
    named = {task_id for task_id, _ in found}
    found += [(task_id, None) for task_id in sorted(ids - named - running)]
    for task_id, name in found:
        task = app.tasks.get(name) if name is not None else None
        backend = task.backend if task is not None else app.backend  # (a task may have a backend of its own)
        try:
            if backend.get_state(task_id) in NOT_STARTED:
                backend.mark_as_revoked(task_id, reason='revoked')
        except NotImplementedError:  # no result backend
            pass
        except Exception as exc:
            logger.warning('Failed to mark task %s as revoked in backend: %s', task_id, exc)
