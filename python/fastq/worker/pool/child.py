"""A prefork child: receive jobs over its channel, run them in order, answer each with its outcome."""

from __future__ import annotations

import logging
import marshal
import multiprocessing
import os
import resource
import signal
import socket
import time
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from fastq import _ipc, _state, signals
from fastq.states import SUCCESS
from fastq.utils.log import MP_LOGGER, process_logfile
from fastq.utils.platforms import install_rdb_handler
from fastq.worker.job import run_payload
from fastq.worker.pool.lent import LEND, Borrower

if TYPE_CHECKING:
    from fastq.app import Fastq
    from fastq.worker.trace import Outcome

# Frame kinds on a child's channel (job id in the frame header says which job a frame is about).
JOB = 1  # parent -> child: marshalled job payload
RESULT = 2  # child -> parent: marshalled (outcome..., exiting)
STOP = 3  # parent -> child: finish queued jobs, then exit
READY = 4  # child -> parent: initialised; payload is the pid
JOB_SHORT = 5  # parent -> child: short, acks_late, no hard time limit: its answer may be batched
CANCEL = 6  # parent -> child (asyncio pool): cancel the running job with this id
SUCCEEDED = 7  # child -> parent: short jobs that succeeded, in order: marshalled (job ids, runtimes, retval reprs)
# LEND, RECALL, TOOK, RELEASED (8-11): the broker's lead lent to a child, see lent.py.

logger = logging.getLogger('fastq.worker.pool')


#: Answers to short jobs are written when this many wait, or when the oldest waited this long (seconds).
#: Only while more short jobs are queued in the child: one that runs out writes everything at once, so an
#: idle or lightly loaded worker answers within the task's own time. Under a backlog, 2 ms instead of 0.5
#: made the results' store round trips and the answers' writes ~4x fewer: e2e with results 16.1k -> 17.3k
#: tasks/s, CPU per task 110 -> 100 us on this project's 2-core VM (benches/README.md); a result then waits
#: at most 2 ms behind tasks that were queued before it anyway.
MAX_ANSWERS = 32
MAX_ANSWER_DELAY = 0.002
#: With fewer jobs than this queued locally, look for more from the parent between jobs.
REFILL_BELOW = 8
#: Exit code of a child that leaves because it reached `--max-tasks-per-child` or `--max-memory-per-child`:
#: billiard's EX_RECYCLE, which Celery's `worker_process_shutdown` receivers get as `exitcode` (a receiver may
#: tell a recycled child from one stopped with the worker, which exits 0). The parent does not log it.
EX_RECYCLE = 0x9B


def _rss_kib() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


class _Answers:
    """Results on their way to the parent, written in batches where that is safe.

    Batching saves a write and a parent wake-up per task, but an answer must not wait behind a long task:
    the parent acks from answers, refills the child from them, and times the running job's hard limit from
    the previous answer. The parent knows which jobs are short (it estimates runtimes per task name) and
    sends those as JOB_SHORT; only their answers wait, and only while more short jobs run (at most 32 of
    them, or 2 ms). Before any other job starts, and after it ends, everything waiting is written. So the
    job the parent believes is running is the one running, unless a task known to be short runs long; a job
    with a hard time limit is never sent as short. If the child dies with answers unwritten, the parent
    reads how many jobs it had started from memory they share (see prefork.py), so a started job is never
    requeued as if it had not run; where that count is not shared, only acks_late jobs are sent as short.

    Results of short tasks are held too (the backend's `store_success_later`) and stored in one round trip
    right before the answers are written, so a result is always stored before the parent hears of it. When
    the child's queue runs out they are stored as the last job returns (`store_now`), before this bookkeeping:
    a caller may be waiting on that result, and nothing would join the round trip by waiting.
    """

    def __init__(
        self, chan: _ipc.Channel, flush_stores: Callable[[Callable[[], None] | None], None] | None = None
    ) -> None:
        self.chan = chan
        self.flush_stores = flush_stores
        self.waiting: list[tuple[int, int, bytes]] = []
        # Short jobs that succeeded since the last frame in `waiting`: one SUCCEEDED frame for all of them
        # (a RESULT frame each cost the child a marshal of its outcome and the parent an unmarshal and an
        # Outcome rebuilt from it, ~1.4 us per task, for the usual answer: success, nothing else to say).
        self.ids: list[int] = []
        self.runtimes: list[float] = []
        self.reprs: list[str] = []
        self.count = 0
        self.since = 0.0

    def store_now(self, between: Callable[[], None] | None = None) -> None:
        """The results held so far, stored now (they would be at the next `write`); `between` runs once their
        write is out, before its reply is read."""
        if self.flush_stores is not None:
            self.flush_stores(between)
        elif between is not None:
            between()

    def answer(self, job_id: int, outcome: Outcome, short: bool, exiting: bool) -> None:
        """A job's outcome: a plain success of a short job joins the batched successes (`succeeded`); anything
        else is a RESULT frame (`add`), batched only for a short job of a child that is not exiting."""
        if short and not exiting and outcome.state == SUCCESS and not outcome.exc_repr and outcome.traceback is None:
            self.succeeded(job_id, outcome.runtime, outcome.retval_repr)
        else:
            self.add(job_id, marshal.dumps((*outcome.to_wire(), exiting)), short and not exiting)

    def add(self, job_id: int, payload: bytes, batch: bool) -> None:
        """A RESULT answer (marshalled outcome); written now unless `batch` (see the class docstring)."""
        self._close_successes()
        self.waiting.append((job_id, RESULT, payload))
        self._added(batch)

    def succeeded(self, job_id: int, runtime: float, retval_repr: str) -> None:
        """A short job's plain success (no exception, requeue or traceback to report), batched as `add`'s."""
        self.ids.append(job_id)
        self.runtimes.append(runtime)
        self.reprs.append(retval_repr)
        self._added(True)

    def _added(self, batch: bool) -> None:
        self.count += 1
        if not batch:
            self.write()
            return
        now = time.monotonic()
        if self.count == 1:
            self.since = now
        elif self.count >= MAX_ANSWERS or now - self.since >= MAX_ANSWER_DELAY:
            self.write()

    def _close_successes(self) -> None:
        """The successes gathered so far as one frame, in their place among the other answers."""
        if self.ids:
            self.waiting.append((self.ids[0], SUCCEEDED, marshal.dumps((self.ids, self.runtimes, self.reprs))))
            self.ids, self.runtimes, self.reprs = [], [], []

    def report(self, frame: tuple[int, int, bytes]) -> None:
        """A frame to go with the answers, after those given so far (a TOOK: see lent.py)."""
        self._close_successes()
        self.waiting.append(frame)

    def due_in(self) -> float | None:
        """Seconds until the answers waiting must be written (0: now), None if none wait."""
        if not self.count:
            return None
        if self.count >= MAX_ANSWERS:
            return 0.0
        return max(0.0, self.since + MAX_ANSWER_DELAY - time.monotonic())

    def write(self) -> None:
        if self.count:
            self._close_successes()
            self.store_now()  # results first: an answer may make the parent ack the task
            frames, self.waiting, self.count = self.waiting, [], 0
            self.chan.send_many(frames)
            self.chan.flush_blocking()


def _take(
    chan: _ipc.Channel, queue: deque[tuple[int, int, bytes]], lends: list[tuple[int, bytes]] | None = None
) -> bool:
    """Queue the jobs the parent has sent (and in `lends` the leads it lent); True when it asked this child to
    stop. Raises EOFError."""
    stop = False
    for job_id, kind, payload in chan.recv():
        if kind == JOB or kind == JOB_SHORT:
            queue.append((job_id, kind, payload))
        elif kind == STOP:
            stop = True
        elif kind == LEND and lends is not None:
            lends.append((job_id, payload))
    return stop


def _exiting(done: int, max_tasks: int | None, max_memory_kib: int | None) -> bool:
    """Whether this child exits after `done` jobs (`--max-tasks-per-child`, `--max-memory-per-child`)."""
    if max_memory_kib and _rss_kib() > max_memory_kib:
        logging.getLogger(MP_LOGGER).warning(
            'child process exiting after exceeding memory limit (%sKiB / %sKiB)', _rss_kib(), max_memory_kib
        )
        return True
    return bool(max_tasks and done >= max_tasks)


def child_main(
    app: Fastq,
    sock: socket.socket,
    index: int,
    accept: frozenset[str],
    max_tasks: int | None,
    max_memory_kib: int | None,
    progress: memoryview | None = None,
    number: int | None = None,
) -> int:
    """Main function of a pool child; returns the exit code. Named ForkPoolWorker-<number> (the pool's count
    of its children, as billiard's), the index otherwise."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole group; the parent decides
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    multiprocessing.current_process().name = f'ForkPoolWorker-{number or index}'
    install_rdb_handler()  # CELERY_RDBSIG: SIGUSR2 opens a debugger session where this child is
    process_logfile(index)  # `--logfile=%n%I.log`: a file of its own
    chan = _ipc.Channel(sock.detach())
    signals.worker_process_init.send(sender=_state.worker_hostname)
    chan.send(0, READY, str(os.getpid()).encode())
    chan.flush_blocking()
    queue: deque[tuple[int, int, Any]] = deque()
    backend = app.backend if app.conf.result_backend else None
    answers = _Answers(chan, backend.flush_stores if backend is not None and backend.defer_stores() else None)
    # `progress` (prefork.py): this child's count of jobs started at `index`, and the parent's count of jobs
    # written to it at `sent`.
    if progress is not None and index >= len(progress) // 3:
        progress = None
    sent = len(progress) // 3 + index if progress is not None else 0
    received = 0
    done = 0
    stopping = False
    exitcode = 0
    borrower = Borrower(app, accept, chan, progress, index)  # the broker's lead, when the parent lends it
    lends: list[tuple[int, bytes]] = []
    try:
        while True:
            took = False
            if not queue:
                borrower.before_waiting(answers, stopping)  # everything done so far reaches the parent first
                if stopping:
                    break
                took = borrower.wait(queue, answers)  # took a task: run it (the parent's count may lag)
                received += took
            if not took and (
                not queue or (len(queue) < REFILL_BELOW and (progress is None or progress[sent] != received))
            ):
                # Take what the parent sent meanwhile (a non-blocking read), so a short queue is refilled
                # before it runs dry rather than after. Not while the parent's count says it sent nothing
                # new: that read found nothing most times (0.38 system calls per task in a drain). The count
                # is written after the jobs, so a stale one only defers them until the queue runs out; a STOP
                # is not counted, and is read when the queue has run out.
                before = len(queue)
                try:
                    stopping = _take(chan, queue, lends) or stopping
                except EOFError:
                    break  # the parent is gone
                received += len(queue) - before
                if lends:
                    borrower.take_up(lends)
                if not queue:
                    continue
            job_id, kind, payload = queue.popleft()
            short = kind == JOB_SHORT
            if not short:
                answers.write()
            if progress is not None:  # before it runs: a job counted here is never requeued (see prefork.py)
                progress[index] = done + 1
            outcome = run_payload(app, payload, accept)
            if not queue:  # (a child holding the lead waits in the broker again while Redis stores)
                answers.store_now(None if stopping else borrower.rearm)
            done += 1
            exiting = _exiting(done, max_tasks, max_memory_kib)
            answers.answer(job_id, outcome, short, exiting)
            if exiting:
                exitcode = EX_RECYCLE
                break
    finally:
        borrower.give_back()
        signals.worker_process_shutdown.send(sender=_state.worker_hostname, pid=os.getpid(), exitcode=exitcode)
        chan.close()
    return exitcode
