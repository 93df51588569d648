"""Which prefork child gets a job (`PreforkPool.can_take`): an idle child, except that very short work fills a
busy child that is answering, up to `FILL_BUDGET`, before an idle one is woken. No processes: children are
bookkeeping over real channels."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from types import SimpleNamespace

import pytest

from fastq import Fastq, _ipc
from fastq.worker.job import Job
from fastq.worker.pool import create_pool
from fastq.worker.pool.prefork import FILL_BUDGET, QUEUE_BUDGET, PreforkPool, _Child

_ids = iter(range(1, 1_000_000))


def _job(name: str) -> Job:
    job_id = next(_ids)
    request = SimpleNamespace(task=name, id=f't{job_id}', display_name=name)
    delivery = SimpleNamespace(raw=b'{}', queue='celery', redelivered=False, tag=job_id)
    return Job(job_id, delivery, request, True, False, True, None, None, 'h', 0.0)  # type: ignore[arg-type]


@pytest.fixture
def pool(memory_app: Fastq) -> Iterator[PreforkPool]:
    pool = create_pool(
        'prefork',
        app=memory_app,
        concurrency=2,
        loop=None,
        accept=frozenset({'application/json'}),
        on_result=lambda job, outcome: None,
        on_lost=lambda job, reason: None,
        on_requeue=lambda jobs: None,
    )
    assert isinstance(pool, PreforkPool)
    ends = []
    for index in (1, 2):
        a, b = socket.socketpair()
        parent, child = _ipc.Channel(a.detach()), _ipc.Channel(b.detach())
        ends += [parent, child]
        pool.children[parent.fileno()] = _Child(index, 4000 + index, parent)
    pool._estimates.update({'short': 0.00001, 'medium': FILL_BUDGET * 1.25})
    yield pool
    for end in ends:
        end.close()


def _give(pool: PreforkPool, name: str) -> _Child:
    job = _job(name)
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
    second.jobs.append(_job('short'))
    second.costs.append(0.0)
    assert not pool.can_take(_job('short'))
