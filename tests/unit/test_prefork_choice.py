"""Which prefork child gets a job (`PreforkPool.can_take`): an idle child, except that very short work fills a
busy child that is answering, up to `FILL_BUDGET`, before an idle one is woken. No processes: children are
bookkeeping over real channels."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator

import pytest

from fastq import Fastq, _ipc
from fastq.worker.pool import prefork
from fastq.worker.pool.prefork import FILL_BUDGET, QUEUE_BUDGET, PreforkPool, _Child
from tests.unit.test_prefork_answers import make_job, prefork_pool


@pytest.fixture
def pool(memory_app: Fastq, monkeypatch: pytest.MonkeyPatch) -> Iterator[PreforkPool]:
    # The clock stands still: a job given a moment ago must not read as overdue (`QUEUE_BUDGET`) because this
    # process was descheduled between two lines (a loaded machine: a CI failure).
    monkeypatch.setattr(prefork.time, 'monotonic', lambda: 1000.0)
    pool = prefork_pool(memory_app, 2, lambda job, outcome: None)
    ends = []
    for index in (1, 2):
        a, b = socket.socketpair()
        parent, child = _ipc.Channel(a.detach()), _ipc.Channel(b.detach())
        ends += [parent, child]
        pool.children[parent.fileno()] = up = _Child(index, 4000 + index, parent)
        up.ready = True  # (it sent READY: its worker_process_init receivers have run)
    pool._estimates.update({'short': 0.00001, 'medium': FILL_BUDGET * 1.25})
    yield pool
    for end in ends:
        end.close()


def _give(pool: PreforkPool, name: str) -> _Child:
    job = make_job(name)
    assert pool.can_take(job)
    child = pool._chosen
    assert child is not None
    pool.submit(job)
    return child


def test_short_work_fills_the_busy_child_before_an_idle_one_is_woken(pool: PreforkPool) -> None:
    first, second = pool.children.values()
    assert _give(pool, 'short') is first  # nobody busy: an idle child
    assert {_give(pool, 'short') for _ in range(10)} == {first}  # short work joins it
    assert not second.jobs


def test_an_idle_child_is_woken_once_the_busy_one_holds_its_fill(pool: PreforkPool) -> None:
    first, second = pool.children.values()
    _give(pool, 'short')
    first.load = FILL_BUDGET - 0.000005
    assert _give(pool, 'short') is second
    assert _give(pool, 'short') is second  # and fills in turn


@pytest.mark.parametrize('name', ['medium', 'never seen'])
def test_work_that_is_not_very_short_goes_to_an_idle_child(pool: PreforkPool, name: str) -> None:
    first, second = pool.children.values()
    _give(pool, 'short')
    assert _give(pool, name) is second


def test_no_filling_behind_a_job_that_has_run_long(pool: PreforkPool) -> None:
    """A job estimated short that runs long (no answer for `QUEUE_BUDGET`) gets nothing more queued behind it
    while another child is idle."""
    first, second = pool.children.values()
    _give(pool, 'short')
    first.jobs[0].started = time.monotonic() - 2 * QUEUE_BUDGET
    assert _give(pool, 'short') is second


def test_with_every_child_busy_the_queue_budget_still_applies(pool: PreforkPool) -> None:
    first, second = pool.children.values()
    _give(pool, 'short')
    first.load = second.load = QUEUE_BUDGET  # full
    second.jobs.append(make_job('short'))
    second.costs.append(0.0)
    assert not pool.can_take(make_job('short'))


def test_a_child_not_up_yet_gets_no_job(pool: PreforkPool) -> None:
    """Celery's asynpool writes to a child only once it has sent WORKER_UP: a task does not wait behind a child
    still in its worker_process_init receivers (which `worker_proc_alive_timeout` may yet kill)."""
    first, second = pool.children.values()
    first.ready = False
    assert _give(pool, 'never seen') is second
    second.ready = False
    assert not pool.can_take(make_job('never seen'))
    first.ready = True
    assert _give(pool, 'never seen') is first
