"""A prefork child: receive jobs over its channel, run them in order, answer each with its outcome."""

from __future__ import annotations

import logging
import marshal
import multiprocessing
import os
import resource
import signal
import socket
import threading
import time
from collections import deque
from typing import TYPE_CHECKING

from fastq import _ipc, signals
from fastq.worker.job import run_payload

if TYPE_CHECKING:
    from fastq.app import Fastq

# Frame kinds on a child's channel (job id in the frame header says which job a frame is about).
JOB = 1  # parent -> child: marshalled job payload
RESULT = 2  # child -> parent: marshalled (outcome..., exiting)
STOP = 3  # parent -> child: finish queued jobs, then exit
READY = 4  # child -> parent: initialised; payload is the pid

logger = logging.getLogger('fastq.worker.pool')

#: Answers are written when this many are waiting, or when the oldest waited this long (seconds).
MAX_ANSWERS = 32
MAX_ANSWER_DELAY = 0.0005
#: A task that runs long while answers wait: a helper thread writes them after this long (seconds).
BACKSTOP_DELAY = 0.002
#: The backstop thread sleeps for good after this many ticks with nothing waiting (so it is not woken, at
#: the cost of an Event.set, for every batch while the child is busy).
BACKSTOP_IDLE_TICKS = 50
#: With fewer jobs than this queued locally, look for more from the parent between jobs.
REFILL_BELOW = 8


def _rss_kib() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


class _Answers:
    """Results on their way to the parent, written in batches.

    Batching saves a write and a parent wake-up per task, but an answer must not wait behind a long task:
    the parent acks from answers, refills the child from them, and times the running job's hard limit from
    the previous answer. So the run loop writes whenever the queue runs dry, 32 answers wait, or the oldest
    waited 0.5 ms, and a backstop thread writes answers that waited 2 ms (a task started while they waited
    and is still running: with the GIL held by the task, within one switch interval, 5 ms).
    """

    def __init__(self, chan: _ipc.Channel) -> None:
        self.chan = chan
        self.lock = threading.Lock()
        self.waiting: list[tuple[int, int, bytes]] = []
        self.since = 0.0
        self.wanted = threading.Event()
        self.closed = False
        self.thread = threading.Thread(target=self._backstop, name='fastq-answers', daemon=True)
        self.thread.start()

    def add(self, job_id: int, payload: bytes, now: float) -> None:
        with self.lock:
            if not self.waiting:
                self.since = now
                if not self.wanted.is_set():
                    self.wanted.set()
            self.waiting.append((job_id, RESULT, payload))
            if len(self.waiting) >= MAX_ANSWERS or now - self.since >= MAX_ANSWER_DELAY:
                self._write()

    def write(self) -> None:
        with self.lock:
            self._write()

    def _write(self) -> None:
        if self.waiting:
            frames, self.waiting = self.waiting, []
            self.chan.send_many(frames)
            self.chan.flush_blocking()

    def _backstop(self) -> None:
        while not self.closed:
            self.wanted.wait()
            idle_ticks = 0
            while not self.closed:
                time.sleep(BACKSTOP_DELAY)
                with self.lock:
                    if not self.waiting:
                        idle_ticks += 1
                        if idle_ticks >= BACKSTOP_IDLE_TICKS:  # quiet for a while: sleep until wanted again
                            self.wanted.clear()
                            break
                        continue
                    idle_ticks = 0
                    if time.monotonic() - self.since >= BACKSTOP_DELAY:
                        try:
                            self._write()
                        except OSError:  # the parent is gone; the run loop finds out too
                            self.closed = True

    def close(self) -> None:
        self.closed = True
        self.wanted.set()


def child_main(
    app: Fastq,
    sock: socket.socket,
    index: int,
    accept: frozenset[str],
    max_tasks: int | None,
    max_memory_kib: int | None,
) -> int:
    """Main function of a pool child; returns the exit code."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole group; the parent decides
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    multiprocessing.current_process().name = f'ForkPoolWorker-{index}'
    chan = _ipc.Channel(sock.detach())
    signals.worker_process_init.send(sender=None)
    chan.send(0, READY, str(os.getpid()).encode())
    chan.flush_blocking()
    queue: deque[tuple[int, bytes]] = deque()
    answers = _Answers(chan)
    done = 0
    stopping = False
    exitcode = 0
    try:
        while True:
            if not queue:
                answers.write()  # about to wait: everything done so far must reach the parent first
                if stopping:
                    break
                chan.wait(None)
            if len(queue) < REFILL_BELOW:
                # Take what the parent sent meanwhile (a non-blocking read), so a short queue is refilled
                # before it runs dry rather than after.
                try:
                    frames = chan.recv()
                except EOFError:
                    break  # the parent is gone
                for job_id, kind, payload in frames:
                    if kind == JOB:
                        queue.append((job_id, payload))
                    elif kind == STOP:
                        stopping = True
                if not queue:
                    continue
            job_id, payload = queue.popleft()
            outcome = run_payload(app, payload, accept)
            done += 1
            over_memory = bool(max_memory_kib and _rss_kib() > max_memory_kib)
            exiting = bool((max_tasks and done >= max_tasks) or over_memory)
            answers.add(job_id, marshal.dumps((*outcome.to_wire(), exiting)), time.monotonic())
            if exiting:
                answers.write()
                if over_memory:
                    logger.warning(
                        'child process exiting after exceeding memory limit (%sKiB / %sKiB)', _rss_kib(), max_memory_kib
                    )
                break
    finally:
        signals.worker_process_shutdown.send(sender=None, pid=os.getpid(), exitcode=exitcode)
        answers.close()
        with answers.lock:
            chan.close()
    return exitcode
