"""`Dispatcher.on_successes`: the prefork pool's batched plain successes settle exactly as `on_result` of each
with `Outcome(SUCCESS, runtime, retval_repr)` would: counts, late acks in order, observers told."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from fastq import Fastq, states
from fastq.worker.dispatcher import Dispatcher
from fastq.worker.job import Job
from fastq.worker.loop import Loop
from fastq.worker.trace import Outcome


class _Pool:
    name = 'stub'


class _Observer:
    def __init__(self) -> None:
        self.seen: list[tuple[int, tuple[Any, ...]]] = []

    def finished(self, job: Job, outcome: Outcome) -> None:
        self.seen.append((job.id, outcome.to_wire()))


def _dispatcher(app: Fastq) -> Dispatcher:
    broker = app.broker
    consumer = broker.consumer(['celery'], 'test@host')
    return Dispatcher(app, broker, consumer, _Pool(), Loop(), 8, frozenset({'json'}), 'test@host')  # type: ignore[arg-type]


def _jobs() -> list[Job]:
    jobs = []
    for job_id, (name, acks_late) in enumerate([('a', True), ('b', False), ('a', True), ('a', False)], 1):
        request = SimpleNamespace(task=name, id=f't{job_id}', display_name=name)
        delivery = SimpleNamespace(raw=b'{}', queue='celery', redelivered=False, tag=f'tag{job_id}')
        job = Job(job_id, delivery, request, acks_late, False, None, None, 'h', 0.0)  # type: ignore[arg-type]
        job.acked = not acks_late
        jobs.append(job)
    return jobs


@pytest.mark.parametrize('observed', [False, True])
def test_successes_settle_as_each_result_would(memory_app: Fastq, observed: bool) -> None:
    runtimes, reprs = [0.1, 0.2, 0.3, 0.4], ['1', "'b'", 'None', '[]']
    settled = {}
    for batched in (False, True):
        d = _dispatcher(memory_app)
        observer = _Observer() if observed else None
        d.events = d.metrics = observer  # type: ignore[assignment]
        jobs = _jobs()
        d.running = {job.id: job for job in jobs}
        if batched:
            d.on_successes(jobs, runtimes, reprs)
        else:
            for job, runtime, retval_repr in zip(jobs, runtimes, reprs, strict=True):
                d.on_result(job, Outcome(states.SUCCESS, runtime, retval_repr))
        settled[batched] = (
            d.running,
            d.processed,
            dict(d.totals),
            list(d._late_acks),
            observer.seen if observer is not None else None,
        )
    assert settled[True] == settled[False]
    running, processed, totals, late, finished = settled[True]
    assert running == {} and processed == 4 and totals == {'a': 3, 'b': 1}
    assert late == ['tag1', 'tag3']  # the acks_late ones, in order; the others were acked when they started
    if observed:  # events and metrics (the same observer here) each told of every job, with its outcome
        assert [job_id for job_id, _ in finished] == [1, 1, 2, 2, 3, 3, 4, 4]
        assert finished[2][1] == Outcome(states.SUCCESS, 0.2, "'b'").to_wire()
