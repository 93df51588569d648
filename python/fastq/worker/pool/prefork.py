"""The prefork pool: tasks run in child processes, forked from a zygote, spoken to over `fastq._ipc` channels.

Each child has a channel (a socketpair carrying frames tagged with job ids) and an ordered list of the jobs
sent to it. A child runs its jobs in order, so the first unanswered job is the running one: its start time
(for the hard time limit) is when the previous answer arrived.

Scheduling is fair (Celery's `-O fair`) without paying a parent-child round trip per task: a child with
nothing to do gets the next job; a busy child gets more only while the estimated work it holds stays under
`QUEUE_BUDGET` (2 ms). Estimates are per task name, from the runtimes children report: a task never seen
yet, or one that recently ran long, is estimated long, so it only goes to an idle child and nothing is
queued behind it. A long task therefore delays at most ~2 ms of short work that was queued before it was
known to be long, while a stream of short tasks keeps every child busy without waiting for the parent.
One exception saves wake-ups: very short work (`FILL_BUDGET`, 0.4 ms in all) goes to a child that already
has some and is answering (its current job has run less than `QUEUE_BUDGET`) before an idle child is woken
for it; waking a child costs the parent's writing thread ~25 µs and the child its own, more than a no-op
task's run. A drain of such tasks then wakes one child per window instead of every child, and more work
than one child keeps up with still spills over to the others.

When a child dies, the jobs it had started and not answered are reported lost (the worker decides between
WorkerLostError, a requeue with `reject_on_worker_lost`, or TimeLimitExceeded when the pool killed it), and
the jobs queued behind them go back to the worker's ready queue untouched. Which jobs had started is exact:
each child counts the jobs it starts in a word of memory shared with the parent (`_progress`), written before
a job runs, so answers may be batched (the parent then lags behind the child) without an early-acked task
ever being requeued after it started. The same memory holds, for each child, the number of jobs the parent
has written to it, so a child looks for more between jobs only when there are more (see child.py).
"""

from __future__ import annotations

import contextlib
import logging
import marshal
import mmap
import os
import signal
import socket
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from fastq import _ipc, signals
from fastq.states import SUCCESS
from fastq.worker.pool.base import Pool
from fastq.worker.pool.child import EX_RECYCLE, JOB, JOB_SHORT, READY, RESULT, STOP, SUCCEEDED, child_main
from fastq.worker.pool.lent import LEND, RECALL, RELEASED, TAG_BYTES, TOOK, loan_memory
from fastq.worker.pool.zygote import Zygote
from fastq.worker.trace import Outcome

if TYPE_CHECKING:
    from fastq.worker.job import Job

logger = logging.getLogger('celery.worker.pool')
#: Where Celery's prefork pool logs a child that never said it was up (a log filter may look for it there).
asynpool_logger = logging.getLogger('celery.concurrency.asynpool')

SPAWN_TIMEOUT = 30.0
#: Estimated seconds of work a busy child may hold (running and queued) before it gets more.
QUEUE_BUDGET = 0.002
#: Jobs estimated to run at most this long (and without a hard time limit) have their answers batched.
SHORT_RUNTIME = QUEUE_BUDGET / 4
#: Estimated seconds of short work given to a busy child before an idle one is woken (see the module): on the
#: project's 2-core VM a drain of no-op tasks went 44.7-45.6k -> 47.8-48.5k tasks/s with it, the children
#: 11.5 -> 10.3 us of CPU per task, and e2e with results 22.3-22.8k -> 23.5-24.4k (benches/README.md).
FILL_BUDGET = QUEUE_BUDGET / 5
#: Jobs one child may hold at most, however short they are.
MAX_JOBS_PER_CHILD = 64
#: Estimate for a task name never run here yet: long, so it is sent to an idle child only.
UNKNOWN_RUNTIME = 1.0
#: Why a child was killed when the worker asked for it on purpose (revoke with terminate, a cold shutdown's
#: cancel): billiard's terminate_job, whose child's exit it does not log.
_CONTROLLED = frozenset({'revoked', 'cancelled'})
#: Children (by index) whose started-job count is shared with the parent; beyond it answers are not batched
#: for early-acked jobs, and the broker's lead is not lent to them. 8 bytes each, three regions (see below).
PROGRESS_SLOTS = 1024
# After the three regions of counts, TAG_BYTES per child: the tag of the task it took from the broker and has
# not reported yet (a length byte, then the tag), so that a child dying meanwhile does not leave it unknown.


def _log_time_limit_error(limit: float) -> None:
    """Celery's first words on a hard time limit, before 'Hard time limit (Xs) exceeded': the error its request
    handler got, with a traceback, from the logger that writes it (a user's log filters may look for it)."""
    from fastq.exceptions import TimeLimitExceeded

    try:
        raise TimeLimitExceeded(limit)
    except TimeLimitExceeded as exc:
        logging.getLogger('celery.worker.request').error('Task handler raised error: %r', exc, exc_info=True)


def human_status(status: int) -> str:
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        try:
            name = signal.Signals(sig).name
        except ValueError:
            name = str(sig)
        return f'signal {sig} ({name})'
    return f'exitcode {os.WEXITSTATUS(status)}'


class _Child:
    __slots__ = (
        'answered',
        'chan',
        'costs',
        'exit_status',
        'finalized',
        'index',
        'jobs',
        'load',
        'number',
        'outbox',
        'killed_for',
        'pid',
        'ready',
        'retiring',
        'sent',
        'timer',
        'took_tag',
    )

    def __init__(self, index: int, pid: int, chan: _ipc.Channel, number: int = 0) -> None:
        self.index = index
        self.number = number or index  # ForkPoolWorker-<number>: billiard's counter, never reused
        self.pid = pid
        self.chan = chan
        self.jobs: deque[Job] = deque()
        self.costs: deque[float] = deque()  # estimated runtime of each job in `jobs`
        self.load = 0.0  # sum of `costs`
        self.outbox: list[tuple[int, int, bytes]] = []  # frames submitted in this dispatch pass
        self.sent = 0
        self.answered = 0
        self.retiring = False  # no more jobs: reached max tasks, asked to stop, or announced its exit
        self.ready = False
        self.killed_for: str | None = None
        self.exit_status: int | None = None
        self.finalized = False
        self.timer: Any = None
        self.took_tag: str | None = None  # the last task it took from the broker itself and reported (TOOK)

    @property
    def name(self) -> str:
        return f'ForkPoolWorker-{self.number}'


class PreforkPool(Pool):
    name = 'prefork'

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.children: dict[int, _Child] = {}  # by channel fd
        self._by_pid: dict[int, _Child] = {}
        self._exit_statuses: dict[int, int] = {}
        self._free_indexes: list[int] = []
        self._sent_by_gone: dict[int, int] = {}  # index -> jobs sent to its children gone (`writes`)
        self._spawned_count = 0
        self._spawning = 0
        self._dying: dict[int, _Child] = {}  # closed channel, waiting for the fork server's exit status
        self._stopping = False
        self._started = False  # start() returned: children spawned from now on must say they are up in time
        # `worker_proc_alive_timeout`: seconds a child started after start() has to send READY (its
        # worker_process_init receivers run before it does) before it is killed and replaced, as Celery's.
        alive = self.app.conf.get('worker_proc_alive_timeout')
        self._alive_timeout = 4.0 if alive is None else float(alive)
        self.zygote: Zygote | None = None
        self._estimates: dict[str, float] = {}  # task name -> estimated runtime (s)
        self._chosen: _Child | None = None
        self._chosen_cost = 0.0
        self._dirty: list[_Child] = []
        self.processes = self.concurrency  # children to keep running (the asyncio pool sets its own)
        # Jobs started by the child of each index, written by the child (see the module docstring), then
        # (from PROGRESS_SLOTS on) jobs written to it, written by this process, then (from 2 * PROGRESS_SLOTS
        # on) the generation of the broker's lead lent to it, 0 for none (lent.py).
        self._progress: memoryview | None = None
        self.replaced = 0  # children replaced after they exited (recycled or died): a metric
        self.lent_to: _Child | None = None  # the child holding the broker's lead (fastq.worker.lending)
        self.loans = 0  # times the lead was lent: a metric
        # Set by the worker when it lends the lead (fastq.worker.lending): what a child took, released, lost.
        self.on_taken: Callable[[_Child, int, bytes], None] | None = None
        self.on_released: Callable[[_Child, int, bytes], None] | None = None
        self.on_taken_lost: Callable[[_Child, str, str], None] | None = None

    # --- lifecycle ----------------------------------------------------------------------------------------

    def _child_main(self) -> Callable[[socket.socket, int, int], int]:
        """What a forked child runs (the asyncio pool runs an event loop instead)."""
        app, accept = self.app, self.accept
        max_tasks, max_memory = self.max_tasks_per_child, self.max_memory_per_child
        progress = self._progress

        def main(sock: socket.socket, index: int, number: int) -> int:
            return child_main(app, sock, index, accept, max_tasks, max_memory, progress, number)

        return main

    tracks_progress = True  # its children write `_progress` (the asyncio pool's do not)

    def start(self) -> None:
        if self.tracks_progress:  # before the zygote forks: anonymous shared memory is inherited
            memory = mmap.mmap(-1, (8 * 3 + TAG_BYTES) * PROGRESS_SLOTS)  # (tag bytes: lent.loan_memory)
            self._progress = memoryview(memory)[: 8 * 3 * PROGRESS_SLOTS].cast('Q')
        self.zygote = Zygote(self._child_main())
        self.loop.add_reader(self.zygote.fileno(), self._on_zygote)
        self._free_indexes = list(range(self.processes, 0, -1))
        for _ in range(self.processes):
            self._spawn()
        deadline = time.monotonic() + SPAWN_TIMEOUT
        while self._spawning and time.monotonic() < deadline:
            for event in self.zygote.wait_spawned(deadline - time.monotonic()):
                self._handle_zygote_event(event)
        if self._spawning:
            raise RuntimeError(f'pool children did not start within {SPAWN_TIMEOUT}s')
        self._started = True

    def _spawn(self) -> None:
        assert self.zygote is not None
        index = self._free_indexes.pop() if self._free_indexes else len(self.children) + self._spawning + 1
        signals.worker_before_create_process.send(sender=self)
        if self._progress is not None and index < PROGRESS_SLOTS:  # its previous child is gone
            self._progress[index] = self._progress[PROGRESS_SLOTS + index] = 0
            generation, tag = loan_memory(self._progress, index)
            generation[0] = tag[0] = 0
        self._spawning += 1
        self.zygote.request_spawn(index)

    def _on_zygote(self) -> None:
        assert self.zygote is not None
        try:
            events = self.zygote.read_events()
        except EOFError:
            self.loop.remove(self.zygote.fileno())
            if not self._stopping:
                logger.critical('The pool fork server exited; no more child processes can be started')
            return
        for event in events:
            self._handle_zygote_event(event)

    def _handle_zygote_event(self, event: tuple[str, int, int, int | None]) -> None:
        kind, a, b, fd = event
        if kind == 'spawned':
            self._spawning -= 1
            assert fd is not None
            self._spawned_count += 1  # (the zygote's count: its spawns come in the order asked)
            child = _Child(a, b, _ipc.Channel(fd), self._spawned_count)
            if self._stopping:
                child.retiring = True
                with contextlib.suppress(OSError):
                    child.chan.send(0, STOP, b'')
            self.children[child.chan.fileno()] = child
            self._by_pid[child.pid] = child
            self.loop.add_reader(child.chan.fileno(), lambda c=child: self._on_readable(c))  # type: ignore[misc]
            if self._started and self._alive_timeout > 0:
                self.loop.call_later(self._alive_timeout, lambda c=child: self._check_alive(c))  # type: ignore[misc]
        else:
            pid, status = a, b
            gone = self._by_pid.get(pid)
            if gone is None:
                return
            gone.exit_status = status
            if pid in self._dying:
                self._finalize(gone)

    def _check_alive(self, child: _Child) -> None:
        """`worker_proc_alive_timeout` after a child was forked: kill it if it has not said it is up (READY), as
        Celery's asynpool does; it is then replaced like any child that died. Celery times only the children
        it starts once the worker runs (replacements, pool_grow, pool_restart), not the first ones, which take
        no task until they are up either way; so does this pool (a slow worker_process_init then delays the
        first children, as in Celery, instead of getting them killed). Until it is up a child gets no job
        (`can_take`), so the kill loses nothing. A timeout of 0 or less turns the check off (in Celery it
        would kill every new child)."""
        if child.ready or child.finalized or child.killed_for is not None or self._stopping:
            return
        asynpool_logger.error(
            'Timed out waiting for UP message from %s', f'<ForkProcess({child.name}, started daemon)>'
        )
        child.killed_for = 'not up'
        with contextlib.suppress(ProcessLookupError):
            os.kill(child.pid, signal.SIGKILL)

    def _log_exit(self, pid: int, status: int, child: _Child | None) -> None:
        expected = child is not None and (child.retiring or child.killed_for is not None)
        if os.WIFEXITED(status) and os.WEXITSTATUS(status) in (0, EX_RECYCLE) and (expected or self._stopping):
            return  # (a child recycled for max tasks or memory exits EX_RECYCLE, as billiard's)
        if child is not None and child.killed_for in _CONTROLLED:
            return  # (billiard's terminate_job marks the child a controlled termination: its exit is not logged)
        name = child.name if child else 'ForkPoolWorker'
        # A child killed for its task's hard time limit is an error too, as billiard logs every exit it did not
        # ask for with terminate_job; one retired or stopped by the pool is not.
        quiet = (child is not None and child.retiring) or self._stopping
        log = logger.info if quiet else logger.error
        log('Process %r pid:%r exited with %r', name, pid, human_status(status))

    # --- dispatch -----------------------------------------------------------------------------------------

    def free_slots(self) -> int:
        return sum(1 for c in self.children.values() if not c.retiring and not c.jobs)

    def can_take(self, job: Job) -> bool:
        cost = self._estimates.get(job.request.task, UNKNOWN_RUNTIME)
        if cost <= FILL_BUDGET:
            filled = self._filling(cost)
            if filled is not None:
                self._chosen, self._chosen_cost = filled, cost
                return True
        best: _Child | None = None
        for child in self.children.values():
            if child.retiring or child is self.lent_to:
                continue
            if not child.jobs:
                if not child.ready:  # still in its worker_process_init receivers: not before it is up
                    continue
                best = child
                break
            if len(child.jobs) < MAX_JOBS_PER_CHILD and child.load + cost <= QUEUE_BUDGET:
                if best is None or child.load < best.load:
                    best = child
        self._chosen = best
        self._chosen_cost = cost
        return best is not None

    def _filling(self, cost: float) -> _Child | None:
        """A busy child that can take `cost` more of short work without waking an idle one (see the module)."""
        now = 0.0
        for child in self.children.values():
            jobs = child.jobs
            if (
                not jobs
                or child.retiring
                or child.load + cost > FILL_BUDGET
                or len(jobs) >= MAX_JOBS_PER_CHILD
                or child is self.lent_to
            ):
                continue
            started = jobs[0].started
            if started is not None:
                now = now or time.monotonic()
                if now - started > QUEUE_BUDGET:  # its job runs long, or it stopped answering: wake another
                    continue
            return child
        return None

    def submit(self, job: Job) -> None:
        child = self._chosen
        if child is None or child.retiring:  # submit without can_take: pick now
            if not self.can_take(job) or self._chosen is None:
                raise RuntimeError('no pool child can take a job now')
            child = self._chosen
        self._chosen = None
        if not child.jobs:
            job.started = time.monotonic()
        job.pid = child.pid
        child.jobs.append(job)
        child.costs.append(self._chosen_cost)
        child.load += self._chosen_cost
        child.sent += 1
        if self.max_tasks_per_child and child.sent >= self.max_tasks_per_child:
            child.retiring = True
        if not child.outbox:
            self._dirty.append(child)
        # Batched answers are lost with the child if it dies. Where the child's started count is shared, the
        # parent still knows which jobs ran; elsewhere it requeues jobs that may have run: at-least-once, fine
        # for acks_late tasks only (an early-acked task must never run twice).
        short = self._chosen_cost <= SHORT_RUNTIME and not job.time_limit and (job.acks_late or self._tracked(child))
        child.outbox.append((job.id, JOB_SHORT if short else JOB, job.payload()))

    def commit(self) -> None:
        dirty, self._dirty = self._dirty, []
        progress = self._progress
        # One job to a child that had none (an idle worker's task): see below.
        lone = len(dirty) == 1 and len(dirty[0].outbox) == 1 and len(dirty[0].jobs) == 1
        for child in dirty:
            frames, child.outbox = child.outbox, []
            try:
                child.chan.send_many(frames)
            except (BrokenPipeError, ValueError):
                continue  # the EOF handler will requeue its jobs
            if progress is not None and child.index < PROGRESS_SLOTS:
                progress[PROGRESS_SLOTS + child.index] = child.sent  # (after the write: see child.py)
            if child.chan.pending_output:
                self._want_write(child)
        if lone:
            # Let the child run before this thread goes on. The write woke it as a sync wake-up, so the kernel
            # tends to put it on this CPU, where it would wait for this thread to re-arm its fetch and sleep
            # (~30-40 µs on the project's 2-vCPU VM); a yield starts the task first. With nothing to yield to
            # (the child went to the other CPU) it returns at once. On the VM, rounds of `delay().get()` placed
            # the fast way went 0.315-0.343 -> 0.297-0.311 ms p50 (benches/README.md).
            # Not for batches: a drain's parent must keep feeding its children.
            os.sched_yield()

    def _want_write(self, child: _Child) -> None:
        fd = child.chan.fileno()

        def reader() -> None:
            self._on_readable(child)

        def writer() -> None:
            try:
                if child.chan.flush():
                    self.loop.set_writer(fd, None, reader)
            except BrokenPipeError:
                self.loop.set_writer(fd, None, reader)

        self.loop.set_writer(fd, writer, reader)

    def active(self) -> list[Job]:
        return [job for c in self.children.values() for job in c.jobs]

    # --- the broker's lead, lent to a child (fastq.worker.lending) -----------------------------------------

    def lendable_child(self) -> _Child | None:
        """An idle child that can wait in the broker (it shares its progress with this process)."""
        if self._stopping:
            return None
        for child in self.children.values():
            if child.ready and not child.jobs and not child.retiring and self._tracked(child):
                return child
        return None

    def lend(self, child: _Child, gen: int, payload: bytes) -> bool:
        """Send the lead to `child` (generation `gen`, a LEND payload); False if its channel is gone."""
        assert self._progress is not None
        generation, _ = loan_memory(self._progress, child.index)
        generation[0] = gen  # before the frame: the child checks it
        try:
            child.chan.send(gen, LEND, payload)
        except (BrokenPipeError, ValueError):
            generation[0] = 0
            return False
        if child.chan.pending_output:
            self._want_write(child)
        self.lent_to = child
        self.loans += 1
        return True

    def recall(self, child: _Child) -> None:
        """Take the lead back from `child`: it stops waiting and hands over what it reserved meanwhile."""
        if self.lent_to is child:
            self.lent_to = None
        if self._tracked(child):
            assert self._progress is not None
            loan_memory(self._progress, child.index)[0][0] = 0
        with contextlib.suppress(BrokenPipeError, ValueError):
            child.chan.send(0, RECALL, b'')
            if child.chan.pending_output:
                self._want_write(child)

    def adopt(self, child: _Child, job: Job) -> None:
        """`job` runs in `child`, which took it from the broker itself (TOOK): track it as if sent there.

        It goes first: a child takes from the broker only once it has answered every job it had read, so the
        jobs still listed here are ones it had not read yet (sent after the lead came back), which run after.
        """
        cost = self._estimates.get(job.request.task, UNKNOWN_RUNTIME)
        if child.jobs:
            child.jobs[0].started = None  # not yet: it starts once this one is answered
        job.started = time.monotonic()
        job.pid = child.pid
        child.jobs.appendleft(job)
        child.costs.appendleft(cost)
        child.load += cost
        child.sent += 1
        if self._progress is not None and child.index < PROGRESS_SLOTS:
            self._progress[PROGRESS_SLOTS + child.index] = child.sent
        if self.max_tasks_per_child and child.sent >= self.max_tasks_per_child:
            child.retiring = True

    def started_unreported(self, child: _Child) -> int | None:
        """If `child` has started a job this process has not heard of (one it took from the broker): how many
        jobs it has started in all (which tells one such job from the next); else None."""
        if self._progress is None or not self._tracked(child):
            return None
        started = int(self._progress[child.index])
        return started if started > child.answered + len(child.jobs) else None

    def known_short(self, name: str) -> bool:
        """Whether tasks of this name are known to run short (their answers then come soon)."""
        estimate = self._estimates.get(name)
        return estimate is not None and estimate <= SHORT_RUNTIME

    # --- results ------------------------------------------------------------------------------------------

    def _on_readable(self, child: _Child) -> None:
        try:
            frames = child.chan.recv()
        except (EOFError, ValueError, OSError):
            frames = None
        for job_id, kind, payload in frames or ():
            if kind == SUCCEEDED:
                self._on_succeeded(child, payload)
            elif kind == RESULT:
                self._on_result(child, job_id, payload)
            elif kind == READY:
                child.ready = True
            elif kind == TOOK and self.on_taken is not None:
                self.on_taken(child, job_id, payload)
            elif kind == RELEASED and self.on_released is not None:
                self.on_released(child, job_id, payload)
        if frames is None:
            self._on_child_gone(child)

    def _on_result(self, child: _Child, job_id: int, payload: bytes) -> None:
        *wire, exiting = marshal.loads(payload)
        job = self._answered(child, job_id, exiting)
        if job is not None:
            outcome = Outcome.from_wire(tuple(wire))
            self._learn(job.request.task, outcome.runtime)
            self.on_result(job, outcome)

    def _on_succeeded(self, child: _Child, payload: bytes) -> None:
        """A SUCCEEDED frame: the plain successes of several short jobs, in the order they ran."""
        ids, runtimes, reprs = marshal.loads(payload)
        on_successes = self.on_successes
        jobs: list[Job] = []
        taken: list[float] = []
        taken_reprs: list[str] = []
        for job_id, runtime, retval_repr in zip(ids, runtimes, reprs, strict=True):
            job = self._answered(child, job_id, False)
            if job is None:
                continue
            self._learn(job.request.task, runtime)
            if on_successes is None:
                self.on_result(job, Outcome(SUCCESS, runtime, retval_repr))
            else:
                jobs.append(job)
                taken.append(runtime)
                taken_reprs.append(retval_repr)
        if on_successes is not None:
            on_successes(jobs, taken, taken_reprs)

    def _answered(self, child: _Child, job_id: int, exiting: bool) -> Job | None:
        """The child's oldest job, which `job_id` must be, taken off its queue; None (logged) if it is not."""
        if not child.jobs or child.jobs[0].id != job_id:
            logger.error('%s answered job %d out of order; ignoring it', child.name, job_id)
            return None
        job = child.jobs.popleft()
        child.answered += 1
        child.load -= child.costs.popleft()
        if not child.jobs:
            child.load = 0.0  # no drift from float sums
        if exiting:
            child.retiring = True  # what it still holds never started: requeued when it is gone
        elif child.jobs:
            child.jobs[0].started = time.monotonic()
        return job

    def _learn(self, name: str, runtime: float) -> None:
        """Update the runtime estimate of a task name: up at once after a long run, down gradually."""
        old = self._estimates.get(name)
        self._estimates[name] = runtime if old is None else max(runtime, 0.7 * old + 0.3 * runtime)

    def _on_child_gone(self, child: _Child) -> None:
        """Its channel closed: wait (briefly) for the fork server's exit status, so the reason is exact."""
        if child is self.lent_to:
            if self.on_released is not None:
                self.on_released(child, -1, b'')  # (the lender takes the lead back for its fetcher)
            self.lent_to = None
        fd = child.chan.fileno()
        self.loop.remove(fd)
        self.children.pop(fd, None)
        child.chan.close()
        self._dying[child.pid] = child
        if child.exit_status is not None:
            self._finalize(child)
        else:
            child.timer = self.loop.call_later(2.0, lambda: self._finalize(child))

    def _finalize(self, child: _Child) -> None:
        if child.finalized:
            return
        child.finalized = True
        if child.timer is not None:
            child.timer.cancel()
        self._dying.pop(child.pid, None)
        jobs = list(child.jobs)
        child.jobs.clear()
        child.costs.clear()
        child.load = 0.0
        # A child that died by itself: its exit is logged before what it lost, as billiard's supervisor reaps
        # it before the jobs are marked lost; one the pool killed (a hard time limit, a revoke) had its job
        # settled when it was killed in Celery, so its exit comes after.
        died = child.killed_for is None
        if died:
            self._log_gone(child)
        if jobs:
            self._orphaned(child, jobs)
        tag = self._taken_unreported(child)
        if tag is not None and self.on_taken_lost is not None:
            self.on_taken_lost(child, tag, child.killed_for or self._exit_reason(child))
        if not died:
            self._log_gone(child)
        self._by_pid.pop(child.pid, None)
        self._free_indexes.append(child.index)
        self._sent_by_gone[child.index] = self._sent_by_gone.get(child.index, 0) + child.sent
        if not self._stopping and self._live() < self.processes:  # not when it left because the pool shrank
            self.replaced += 1
            self._spawn()

    def _log_gone(self, child: _Child) -> None:
        if child.exit_status is not None:
            self._log_exit(child.pid, child.exit_status, child)
        elif child.killed_for is None and not child.retiring and not self._stopping:
            logger.error('Process %r pid:%r exited unexpectedly', child.name, child.pid)

    def _taken_unreported(self, child: _Child) -> str | None:
        """(The child is gone) the tag of a task it took from the broker and had not reported, if any."""
        if not self._tracked(child):
            return None
        assert self._progress is not None
        _, slot = loan_memory(self._progress, child.index)
        n = slot[0]
        tag = bytes(slot[1 : 1 + n]).decode() if n else None
        slot[0] = 0
        return tag if tag != child.took_tag else None

    def _tracked(self, child: _Child) -> bool:
        return self._progress is not None and child.index < PROGRESS_SLOTS

    def _started_count(self, child: _Child, jobs: Sequence[Job]) -> int | None:
        """How many of `jobs` (the child's unanswered ones, in order) it had started, by the count it keeps in
        the memory it shares with us; None where that count is not shared."""
        if self._progress is None or not self._tracked(child):
            return None
        return min(max(self._progress[child.index] - child.answered, 0), len(jobs))

    def _orphaned(self, child: _Child, jobs: list[Job]) -> None:
        """Settle the jobs a gone child held: those it started are lost, those queued behind are requeued."""
        running = jobs[0]
        if running.started is not None:  # it ran this long at least: a killed task is estimated long
            self._learn(running.request.task, time.monotonic() - running.started)
        started = self._started_count(child, jobs)
        if started is None:  # unknown: the first unanswered job is taken as the running one
            started = 1 if running.started is not None else 0
        if child.killed_for is not None:
            started = max(started, 1)
        for i, job in enumerate(jobs[:started]):
            self.on_lost(job, child.killed_for if i == 0 and child.killed_for else self._exit_reason(child, job))
        if jobs[started:]:
            self.on_requeue(jobs[started:])

    @staticmethod
    def _exit_reason(child: _Child, job: Job | None = None) -> str:
        """The WorkerLostError message for `job`, lost with `child`: billiard's words, its job number then
        being this worker's own (its count of deliveries, from 1; billiard counts jobs from 0)."""
        status = human_status(child.exit_status) if child.exit_status is not None else 'unknown status'
        return (
            f'Worker exited prematurely: {status} Job: {job.id}.'
            if job is not None
            else f'Worker exited prematurely: {status}.'
        )

    # --- limits -------------------------------------------------------------------------------------------

    def supports_hard_time_limit(self) -> bool:
        return True

    def check_time_limits(self, now: float) -> None:
        for child in list(self.children.values()):
            if not child.jobs or child.killed_for is not None:
                continue
            job = child.jobs[0]
            if job.started is None or not job.time_limit:
                continue
            if now - job.started > job.time_limit:
                _log_time_limit_error(job.time_limit)
                logger.error('Hard time limit (%ss) exceeded for %s[%s]', job.time_limit, job.name, job.request.id)
                child.killed_for = f'time-limit:{job.time_limit}'
                with contextlib.suppress(ProcessLookupError):
                    os.kill(child.pid, signal.SIGKILL)

    def kill_job(self, job: Job, reason: str, sig: int = signal.SIGTERM) -> bool:
        """Kill the child running `job` (revoke with terminate); its queued jobs are requeued."""
        for child in self.children.values():
            if child.jobs and child.jobs[0] is job:
                child.killed_for = reason
                with contextlib.suppress(ProcessLookupError):
                    os.kill(child.pid, sig)
                return True
        return False

    # --- shutdown -----------------------------------------------------------------------------------------

    def stop(self) -> None:
        self._stopping = True
        for child in self.children.values():
            child.retiring = True
            with contextlib.suppress(BrokenPipeError, ValueError):
                child.chan.send(0, STOP, b'')
                if child.chan.pending_output:
                    self._want_write(child)

    def idle(self) -> bool:
        return not self.children and not self._spawning and not self._dying

    # --- resizing (pool_grow / pool_shrink / pool_restart / the autoscaler) --------------------------------

    def _live(self) -> int:
        return sum(1 for c in self.children.values() if not c.retiring) + self._spawning

    def _retire(self, child: _Child) -> None:
        """Ask a child to finish what it holds and exit (what it holds is answered, never requeued)."""
        child.retiring = True
        with contextlib.suppress(BrokenPipeError, ValueError):
            child.chan.send(0, STOP, b'')
            if child.chan.pending_output:
                self._want_write(child)

    def grow(self, n: int = 1) -> int:
        n = max(0, int(n))
        self.processes += n
        self.concurrency = self.processes
        for _ in range(self.processes - self._live()):
            self._spawn()
        return n

    def shrink(self, n: int = 1) -> int:
        """Retire up to `n` children (idle ones first), never the last one; the number retired."""
        n = max(0, min(int(n), self.processes - 1))
        self.processes -= n
        self.concurrency = self.processes
        live = sorted((c for c in self.children.values() if not c.retiring), key=lambda c: len(c.jobs))
        for child in live[: max(0, self._live() - self.processes)]:
            self._retire(child)
        return n

    def restart(self) -> None:
        """Replace every child (each finishes what it holds first), e.g. to load changed code."""
        for child in [c for c in self.children.values() if not c.retiring]:
            self._retire(child)

    def terminate(self) -> list[Job]:
        """Kill every child (cold shutdown); the jobs they held, each with `started` set only if it had started
        by the count the child keeps in shared memory (read once they are killed), so the dispatcher can tell
        the jobs cut short from those still queued in a child, which never ran."""
        self._stopping = True
        children = list(self.children.values())
        for child in children:
            child.killed_for = 'terminated'
            with contextlib.suppress(ProcessLookupError):
                os.kill(child.pid, signal.SIGKILL)
        held: list[Job] = []
        for child in children:
            jobs = list(child.jobs)
            started = self._started_count(child, jobs) if jobs else None
            if started is not None:
                for i, job in enumerate(jobs):
                    job.started = (job.started or time.monotonic()) if i < started else None
            held.extend(jobs)
            child.jobs.clear()
            self.loop.remove(child.chan.fileno())
            child.chan.close()
        self.children.clear()
        self.close()
        return held

    def close(self) -> None:
        if self.zygote is not None:
            self.loop.remove(self.zygote.fileno())
            self.zygote.close()
            self.zygote = None

    def _writes(self) -> dict[str, object]:
        """Celery's prefork `writes` stats: the jobs sent to the children of each index over the pool's life,
        their shares, and the children (inqueues) with a write still going."""
        sent = dict(self._sent_by_gone)
        for child in self.children.values():
            if not child.finalized and child.sent:
                sent[child.index] = sent.get(child.index, 0) + child.sent
        counts = [sent[index] for index in sorted(sent) if sent[index]]
        total = sum(counts)

        def share(value: float) -> str:
            return f'{(float(value) / total) if value else 0:.2f}'

        return {
            'total': total,
            'avg': share(total / len(counts) if total else 0),
            'all': ', '.join(share(v) for v in counts),
            'raw': ', '.join(map(str, counts)),
            'strategy': 'fair',  # (Celery's default -O fair: a job goes to a child that is free)
            'inqueues': {
                'total': len(self.children),
                'active': sum(1 for c in self.children.values() if c.chan.pending_output),
            },
        }

    def info(self) -> dict[str, object]:
        return {
            'max-concurrency': self.concurrency,
            'processes': sorted(c.pid for c in self.children.values()),
            'max-tasks-per-child': self.max_tasks_per_child or 'N/A',
            'put-guarded-by-semaphore': False,
            'timeouts': [],
            'writes': self._writes(),
            'implementation': 'fastq.worker.pool.prefork:PreforkPool',
            'lead-loans': self.loans,
            'lead-holder': self.lent_to.pid if self.lent_to is not None else None,
        }
