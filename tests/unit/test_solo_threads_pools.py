"""`-P solo` (tasks run one at a time in the worker loop's own thread) and `-P threads`, with an in-process worker
on the in-memory broker."""

from __future__ import annotations

import contextlib
import os
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from fastq import Fastq, states
from fastq.worker.inspect import _jobs, request_info
from fastq.worker.worker import WorkController
from tests.harness import wait_until


@contextlib.contextmanager
def _running(worker: WorkController, release: threading.Event | None = None) -> Iterator[WorkController]:
    """`worker` started in a thread of this process; at the end `release` set (a task blocked on it returns),
    the worker stopped, and its thread gone."""
    thread = threading.Thread(target=worker.start, daemon=True)
    thread.start()
    try:
        yield worker
    finally:
        if release is not None:
            release.set()
        worker.stop()
        thread.join(30)
    assert not thread.is_alive()


def test_a_task_revoked_before_the_solo_pool_began_it_is_discarded(memory_app: Fastq) -> None:
    """The solo pool takes a task in one pass of the loop and runs it in the next, and a revoke read in
    between came before the task began: Celery's solo pool, which runs a task as it takes it, discards such a
    task ('Discarding revoked task', REVOKED stored). fastq's ran it (and, with terminate, also warned that a
    running task cannot be terminated)."""
    release = threading.Event()

    @memory_app.task
    def blocker() -> str:
        release.wait(30)
        return 'done'

    @memory_app.task
    def victim() -> str:
        return 'ran'

    worker = WorkController(memory_app, pool='solo', concurrency=1, quiet=True)
    with _running(worker, release):
        first = blocker.delay()
        second = victim.delay()
        third = victim.delay()
        # `first` runs in the loop's thread; the others wait in the worker, not yet handed to the pool
        wait_until(lambda: worker.dispatcher is not None and len(worker.dispatcher.ready) == 2, message='both fetched')
        dispatcher = worker.dispatcher
        assert dispatcher is not None
        # read by the loop's pass after the one that hands `second` to the pool, before the pool begins it
        worker.loop.call_soon_threadsafe(lambda: dispatcher.revoke({second.id}))
        worker.loop.call_soon_threadsafe(lambda: dispatcher.revoke({third.id}, terminate=True))
        release.set()
        assert first.get(timeout=30) == 'done'
        wait_until(lambda: second.state == states.REVOKED and third.state == states.REVOKED, message='both revoked')
        assert victim.delay().get(timeout=30) == 'ran'  # the worker goes on


@pytest.mark.parametrize('pool', ['solo', 'threads'])
def test_inspect_active_names_the_worker_process_as_celerys(memory_app: Fastq, pool: str) -> None:
    """`inspect active` gives a running task's worker_pid: under Celery's solo and thread pools the worker's own
    process (fastq's gave None, so Flower and scripts reading it found no process)."""
    release = threading.Event()

    @memory_app.task
    def blocker() -> str:
        release.wait(30)
        return 'done'

    worker = WorkController(memory_app, pool=pool, concurrency=1, quiet=True)
    with _running(worker, release):
        result = blocker.delay()
        wait_until(
            lambda: worker.dispatcher is not None and worker.pool is not None and worker.pool.active(), message='start'
        )
        (job,) = _jobs(worker)[0]
        assert request_info(job, worker.hostname, worker.accept)['worker_pid'] == os.getpid()
        release.set()
        assert result.get(timeout=30) == 'done'


@pytest.mark.parametrize('pool', ['solo', 'threads'])
def test_pool_restart_imports_modules_in_the_workers_process(
    memory_app: Fastq, pool: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With worker_pool_restarts, Celery's `pool_restart` on a pool without children imports the modules in the
    worker's process (re-imports them with reload=True) and answers 'reload started'; fastq's refused ('the
    threads pool has no child processes to restart')."""
    from fastq.worker.autoscale import _pool_restart

    marks = tmp_path / 'marks.txt'
    name = f'fq_restart_probe_{pool}'
    (tmp_path / f'{name}.py').write_text(f'with open({str(marks)!r}, "a") as f:\n    f.write("imported\\n")\n')
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, name, raising=False)
    memory_app.conf.worker_pool_restarts = True
    worker = WorkController(memory_app, pool=pool, concurrency=1, quiet=True)
    try:
        with _running(worker):
            wait_until(lambda: worker.loop.running, message='the loop')
            assert _pool_restart(worker, modules=[name]) == {'ok': 'reload started'}
            assert _pool_restart(worker, modules=[name]) == {'ok': 'reload started'}  # imported already: not again
            assert marks.read_text() == 'imported\n'
            assert _pool_restart(worker, modules=[name], reload=True) == {'ok': 'reload started'}
            assert marks.read_text() == 'imported\n' * 2
    finally:
        sys.modules.pop(name, None)


def test_a_command_waits_for_the_solo_pools_task(memory_app: Fastq) -> None:
    """A remote control command that reads the worker's state (`inspect active`) while the solo pool runs a task
    in the loop's thread is answered once the task returns, as Celery's solo worker answers; fastq's gave up
    after a few seconds, logging 'pidbox command error: TimeoutError(...)' with its traceback, each time a
    monitor polled it while a long task ran."""
    from fastq.worker.control import on_loop

    release = threading.Event()

    @memory_app.task
    def blocker() -> str:
        release.wait(30)
        return 'done'

    worker = WorkController(memory_app, pool='solo', concurrency=1, quiet=True)
    answers: list[Any] = []
    with _running(worker, release):
        result = blocker.delay()
        wait_until(lambda: worker.pool is not None and getattr(worker.pool, 'busy', bool)(), message='the task started')
        asker = threading.Thread(target=lambda: answers.append(_ask(on_loop, worker)), daemon=True)
        asker.start()
        asker.join(0.5)  # (several of its 0.05s waits, all while the task runs)
        release.set()
        asker.join(30)
        assert answers == ['answered']
        assert result.get(timeout=30) == 'done'


def _ask(on_loop: Any, worker: WorkController) -> str:
    try:
        return str(on_loop(worker, lambda: 'answered', timeout=0.05))
    except TimeoutError:
        return 'timed out'
