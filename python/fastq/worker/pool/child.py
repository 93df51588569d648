"""A prefork child: receive jobs over its channel, run them in order, answer each with its outcome."""

from __future__ import annotations

import logging
import marshal
import multiprocessing
import os
import resource
import signal
import socket
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


def _rss_kib() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


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
    done = 0
    stopping = False
    exitcode = 0
    try:
        while True:
            if not queue:
                if stopping:
                    break
                chan.wait(None)
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
            exiting = bool((max_tasks and done >= max_tasks) or (max_memory_kib and _rss_kib() > max_memory_kib))
            chan.send(job_id, RESULT, marshal.dumps((*outcome.to_wire(), exiting)))
            chan.flush_blocking()
            if exiting:
                if max_memory_kib and _rss_kib() > max_memory_kib:
                    logger.warning(
                        'child process exiting after exceeding memory limit (%sKiB / %sKiB)', _rss_kib(), max_memory_kib
                    )
                break
    finally:
        signals.worker_process_shutdown.send(sender=None, pid=os.getpid(), exitcode=exitcode)
        chan.close()
    return exitcode
