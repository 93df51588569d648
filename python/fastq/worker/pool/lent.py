"""A prefork child's side of the broker's lead, lent by the parent while the worker is idle.

See fastq/worker/lending.py for why and when. The child waits in the broker (`ChildLead`) and in its channel
at once. A task it takes runs here only if the parent would have sent it here anyway: parseable, of an
accepted content type, of a task the parent has vetted (`names`: registered and not rate limited), not
revoked, not expired, no ETA ahead, not redelivered too often. It tells the parent first (TOOK, flushed
before the task starts), so the parent's bookkeeping (events, time limits, the reservation, the early ack)
runs beside the task. Anything else goes to the parent unrun, and with it the lead.

Whether the child still holds the lead is a generation number in memory shared with the parent (prefork.py's
`_progress`): the parent recalls the lead by changing it, with no frame to read, and sends RECALL only to wake
a child that waits.
"""

from __future__ import annotations

import logging
import marshal
import os
import select
import time
from collections import deque
from typing import TYPE_CHECKING, Any, NamedTuple

from fastq import _core, _ipc
from fastq.exceptions import InvalidTaskError
from fastq.protocol import parse_delivery

if TYPE_CHECKING:
    from fastq.app import Fastq
    from fastq.brokers.base import Delivery

logger = logging.getLogger('fastq.worker.pool')
#: Celery's "Task ...[...] received" line (the parent's, dispatcher.py): written by the child for a task it
#: runs as it takes it, so the log keeps Celery's order (received, then succeeded), which the parent, told
#: of a short task with its answer, would write after the child's "succeeded".
received_logger = logging.getLogger('celery.worker.strategy')

# Frame kinds (child.py has the others).
LEND = 8  # parent -> child: wait in the broker; payload: marshalled `terms`; job id: the generation
RECALL = 9  # parent -> child: stop waiting (the shared generation says so; the frame wakes a waiting child)
TOOK = 10  # child -> parent: a marshalled `Took`; job id: the job's (0 if it did not run here)
RELEASED = (
    11  # child -> parent: stopped waiting; payload: marshalled early acks it could not send; job id: the generation
)


class Took(NamedTuple):
    """What a TOOK frame says: one definition for the child that writes it and the parent that reads it."""

    keys: list[str]  # the lead's keys, which the parent's consumer needs to read `raw`
    raw: list[Any]  # the fetch script's reply, as the child got it
    ran: bool = False  # runs in this child (else the parent dispatches it)
    held: bool = False  # the child still holds the lead
    acked: bool = False  # acked early by the child
    logged: bool = False  # the child wrote its "received" line

    def dumps(self) -> bytes:
        return marshal.dumps(tuple(self))

    @classmethod
    def loads(cls, payload: bytes) -> Took:
        return cls(*marshal.loads(payload))


#: Job ids of the tasks a child takes itself: above any id the parent assigns, unique per child process.
TAKEN_IDS = 1 << 62
#: Shared bytes per child for the tag of a task taken and not reported (a length byte, then the tag).
TAG_BYTES = 64


def loan_memory(progress: memoryview, index: int) -> tuple[memoryview, memoryview]:
    """The loan's part of the memory a prefork pool shares with its children (prefork.py's `_progress`, three
    regions of 8-byte counts, the third the generation of the lead lent to each child; then `TAG_BYTES` per
    child): the child of `index`'s generation (one count) and its tag bytes."""
    slots = len(progress) // 3
    start = 8 * 3 * slots + TAG_BYTES * index
    return progress[2 * slots + index : 2 * slots + index + 1], memoryview(progress.obj)[start : start + TAG_BYTES]


_NO_LIMITS = [None, None]  # the time limits header of a message that sets none
#: Job kinds, as child.py names them (JOB_SHORT: its answer may wait; see `_Answers`).
_JOB, _JOB_SHORT = 1, 5
SHADOW = _core.TASK_HEAD_FIELDS.index('shadow')  # in `TaskHead.fields`


def terms(gen: int, spec: dict[str, Any], names: dict[str, tuple[Any, Any]], short: frozenset[str],
          revoked: list[str], limits: tuple[Any, Any], max_redeliveries: int, hostname: str) -> bytes:  # fmt: skip
    """The LEND payload: the broker's lead (`spec`), what the parent checks before it runs a task (`names`:
    the tasks it may run, with their time limits as the parent has them), and the names of tasks known to run
    short (reported with their answers, see `Lent._took`)."""
    return marshal.dumps((gen, spec, names, sorted(short), revoked, limits, max_redeliveries, hostname))


class Lent:
    """The lead, held by this child, and the parent's terms for running what it takes."""

    def __init__(self, app: Fastq, accept: frozenset[str], payload: bytes, lead: Any = None) -> None:
        gen, spec, names, short, revoked, limits, max_redeliveries, hostname = marshal.loads(payload)
        self.app = app
        self.accept = accept
        self.gen: int = gen
        self.spec = spec
        self.names: dict[str, tuple[Any, Any]] = names
        self.short = frozenset(short)
        self.revoked = frozenset(revoked)
        self.time_limit, self.soft_time_limit = limits
        self.max_redeliveries: int = max_redeliveries
        self.hostname: str = hostname
        #: A redelivered acks_late task goes to the parent, which checks its result first (dedupe).
        self.deduplicate = bool(app.conf.worker_deduplicate_successful_tasks)
        spare, Lent._spare = Lent._spare, None
        self.lead = spare if spare is not None and spare.spec == spec else app.read_broker.child_lead(spec)
        self.active = True  # False once this child gave the lead back itself (TOOK), or lost it
        self.acks: list[str] = []  # early acks of tasks taken here, sent with the next wait
        self.slot: memoryview | None = None  # shared with the parent: the tag of a task taken, not yet reported
        self.generation: memoryview | None = None  # shared with the parent: the generation it lends (`held`)
        self._base = TAKEN_IDS | (os.getpid() << 24)

    #: The connection of the last lead held, kept for the next (the parent lends again whenever it is idle).
    _spare: Any = None
    _taken = 0  # tasks this process took (for their job ids)

    def held(self) -> bool:
        """Whether this child still holds the lead: it did not give it back, and the parent still lends it (the
        generation in the shared memory is ours)."""
        return self.active and self.generation is not None and self.generation[0] == self.gen

    def settle(self, chan: _ipc.Channel, wait: bool) -> None:
        """Send the early acks of the tasks taken (before their answers: an answer tells the parent the ack is
        sent): with the next wait in the broker when `wait` (it starts now), else on their own. Once sent,
        the task that ran last is settled: the parent need not find it if this child dies before reporting."""
        if wait:
            self.rearm(chan)  # (a failure is settled by `_failed`; settling again changes nothing)
        elif self.acks:
            try:
                self.lead.ack(self.acks)
            except Exception as exc:
                self._failed(chan, exc)
                return
        self._settled()

    def rearm(self, chan: _ipc.Channel) -> None:
        """Wait in the broker again (with the early acks) as a task ends, while Redis stores its result.

        The child's store write goes out first (the caller's result is on its way at once), then this write,
        then the child reads the store's reply: the wait is in place before the caller has its result (and
        sends the next task), and the child does not sleep between the two. It re-armed after the store's
        round trip, and then (briefly) before the store, which put a write that wakes Redis (~45 us here) in
        front of the caller's result. The slot stays set until `settle`, after the store: a child that dies
        in between still has its task found by the parent. Child's wake-up to its store write, p50: 165 ->
        87 us; `probe.py latency` (alternating, 4 pairs of 2 rounds) p50 0.519 -> 0.468 ms for re-arming
        first, then 0.462 -> 0.427 (4 alternating pairs) for storing first."""
        try:
            self.lead.arm(self.acks)
        except Exception as exc:
            self._failed(chan, exc)

    def _settled(self) -> None:
        slot = self.slot
        if slot is not None and slot[0]:
            slot[0] = 0

    def _failed(self, chan: _ipc.Channel, exc: Exception) -> None:
        logger.warning('Waiting in the broker from a pool child failed: %r', exc)
        self.lead.close()
        self.active = False
        acks, self.acks = self.acks, []
        chan.send(self.gen, RELEASED, marshal.dumps(acks))  # the parent sends the acks this child could not
        chan.flush_blocking()
        self._settled()

    def wait(
        self,
        chan: _ipc.Channel,
        queue: deque[tuple[int, int, Any]],
        answers: Any,
        timeout: float | None,
    ) -> bool:
        """Wait in the broker and the channel (up to `timeout`); True when a task was taken to run here (queued in
        `queue`; the TOOK frame of a short one goes with the `answers`, `_Answers.report`)."""
        lead = self.lead
        deadline = None if timeout is None else time.monotonic() + timeout
        try:
            lead.arm(self.acks)
            fds = [lead.fileno(), chan.fileno()]
            while True:
                readable, _, _ = select.select(fds, [], [], timeout)
                got = lead.collect() if fds[0] in readable else None
                if got is not None or fds[1] in readable or not readable:
                    break
                # only the replies of the acks sent ahead of the wait: wait on
                if deadline is not None:
                    timeout = max(0.0, deadline - time.monotonic())
        except Exception as exc:  # the broker connection failed: the parent's fetcher takes over (and retries)
            self._failed(chan, exc)
            return False
        if got is None:
            return False
        raw, more = got
        if not raw:
            return False
        return self._took(chan, queue, answers, raw, more)

    def _took(
        self,
        chan: _ipc.Channel,
        queue: deque[tuple[int, int, Any]],
        answers: Any,
        raw: list[Any],
        more: bool,
    ) -> bool:
        deliveries = self.lead.deliveries(raw)
        # (Not once the parent took the lead back: it may have done so to revoke this very task.)
        job = self._job(deliveries[0]) if len(deliveries) == 1 and self.held() else None
        if job is None:
            chan.send(0, TOOK, Took(self.lead.keys, raw).dumps())
            chan.flush_blocking()
            self.active = False
            return False
        Lent._taken += 1
        job_id = self._base | (Lent._taken & 0xFFFFFF)
        kind, payload, early, name = job
        tag = str(deliveries[0].tag)
        logged = received_logger.isEnabledFor(logging.INFO)
        if logged:
            _log_received(deliveries[0], name)
        slot = self.slot
        if kind == _JOB_SHORT and not more and slot is not None and len(tag) < TAG_BYTES and name in self.short:
            # Reported with its answer (one write, one wake-up of the parent, after the result is stored), its
            # early ack sent by this child before that; till then the tag is in the shared memory, where the
            # parent finds it if this child dies meanwhile.
            if early:
                self.acks.append(tag)
            encoded = tag.encode()
            slot[1 : 1 + len(encoded)] = encoded
            slot[0] = len(encoded)
            answers.report((job_id, TOOK, Took(self.lead.keys, raw, True, not more, early, logged).dumps()))
        else:  # reported before it starts (the parent acks it early, times its limit, may take the lead back)
            chan.send(job_id, TOOK, Took(self.lead.keys, raw, True, not more, False, logged).dumps())
            chan.flush_blocking()
        if more:  # more are waiting: a batch is the fetcher's
            self.active = False
        queue.append((job_id, kind, payload))
        return True

    def _job(self, d: Delivery) -> tuple[int, tuple[Any, ...], bool, str] | None:
        """The job kind and payload (as `Job.payload` has it, not marshalled) to run `d` here, whether it is
        acked early (by this child), and its task name; None when the parent must decide about it."""
        head = d.head
        if head is None or (self.max_redeliveries and d.deliveries > self.max_redeliveries):
            return None
        if head.content_type not in self.accept:
            return None
        task_id, name, eta, expires, _, timelimit = head.fields[:6]
        if (
            eta is None
            and expires is None
            and (timelimit is None or timelimit == _NO_LIMITS)
            and type(name) is str
            and type(task_id) is str
        ):
            # the usual message: parse_delivery's fast path, without building the request
            time_limit = soft_limit = None
        else:
            try:
                request = parse_delivery(d)
            except (InvalidTaskError, ValueError, TypeError):
                return None
            task_id, name, eta, expires = request.id, request.task, request.eta, request.expires
            time_limit, soft_limit = request.time_limit, request.soft_time_limit
            if eta is not None or expires is not None:
                now = time.time()
                if (eta is not None and eta > now) or (expires is not None and expires < now):
                    return None
        task = self.app.tasks.get(name) if name in self.names else None
        if task is None or task_id in self.revoked or (d.redelivered and self.deduplicate and task.acks_late):
            return None
        task_limit, task_soft_limit = self.names[name]
        time_limit = time_limit or task_limit or self.time_limit
        soft_limit = soft_limit or task_soft_limit or self.soft_time_limit
        fields = (d.raw, d.queue, d.redelivered, time_limit, soft_limit, self.hostname)
        return (_JOB if time_limit else _JOB_SHORT), fields, not task.acks_late, name

    def give_back(self, chan: _ipc.Channel) -> None:
        """Stop waiting (recalled, or this child stops): what the wait reserved meanwhile goes to the parent,
        and RELEASED if the parent still counts on this child holding the lead."""
        lead = self.lead
        try:
            raw = lead.release()
            lead.ack(self.acks)
        except Exception as exc:  # what it reserved comes back after the visibility timeout
            logger.warning('Could not stop waiting in the broker cleanly: %r', exc)
            lead.close()
            raw = []
        else:
            Lent._spare = lead
        acks, self.acks = self.acks, []
        try:
            if raw:
                chan.send(0, TOOK, Took(lead.keys, raw).dumps())
            if self.active or acks:
                chan.send(self.gen, RELEASED, marshal.dumps(acks))
            chan.flush_blocking()
        except (BrokenPipeError, OSError):  # the parent is gone
            pass
        self.active = False
        return None


class Borrower:
    """A child's side of the loans: the lead it holds (`lent`), if any, and what the child loop asks of it."""

    def __init__(
        self, app: Fastq, accept: frozenset[str], chan: _ipc.Channel, progress: memoryview | None, index: int
    ) -> None:
        self.app = app
        self.accept = accept
        self.chan = chan
        self.progress = progress
        self.index = index
        self.lent: Lent | None = None

    def take_up(self, lends: list[tuple[int, bytes]]) -> None:
        """The newest LEND in `lends` (emptied); a lead still held is given back first."""
        _, payload = lends[-1]
        lends.clear()
        self.give_back()
        progress, chan = self.progress, self.chan
        try:
            if progress is None:
                raise RuntimeError('no memory shared with the parent')
            lent = Lent(self.app, self.accept, payload)
            lent.generation, lent.slot = loan_memory(progress, self.index)
        except Exception as exc:  # a broker without a child lead, or a bug: the parent takes the lead back
            logger.warning('Cannot wait in the broker from a pool child: %r', exc)
            chan.send(marshal.loads(payload)[0], RELEASED, marshal.dumps([]))
            chan.flush_blocking()
            return
        self.lent = lent

    def before_waiting(self, answers: Any, stopping: bool) -> None:
        """(About to wait) send the early acks of the tasks taken (before their answers: see `Lent.settle`),
        then the answers (`_Answers.write`). While this child holds the lead, the answers to the tasks it took
        (and the TOOK frames with them) may wait as batched answers do, so the parent is not woken for each
        of an idle worker's round trips: their results are stored, and their acks sent, without waiting."""
        lent = self.lent
        held = lent is not None and not stopping and lent.held()
        if lent is not None:
            lent.settle(self.chan, held)
        if not held or lent is None or not lent.held() or answers.due_in() == 0.0:  # (settle may have lost it)
            answers.write()

    def rearm(self) -> None:
        """(The last queued job returned) wait in the broker again now, if this child holds the lead."""
        lent = self.lent
        if lent is not None and lent.held():
            lent.rearm(self.chan)

    def wait(self, queue: deque[tuple[int, int, Any]], answers: Any) -> bool:
        """Wait for the parent, and in the broker while lent the lead; True when a task was taken (queued)."""
        lent = self.lent
        if lent is not None and not lent.held():
            self.give_back()
            lent = None
        if lent is None:
            answers.write()  # (not held any more: nothing is left waiting)
            self.chan.wait(None)
            return False
        return lent.wait(self.chan, queue, answers, answers.due_in())

    def give_back(self) -> None:
        if self.lent is not None:
            self.lent.give_back(self.chan)
            self.lent = None


def _log_received(d: Delivery, name: str) -> None:
    """The parent's "received" line, for a task this child runs (the name shown as `TaskRequest.display_name`:
    the shadow name when the message has one). `_job` ran it, so it has a head."""
    assert d.head is not None
    fields = d.head.fields
    received_logger.info('Task %s[%s] received', fields[SHADOW] or name, fields[0])
