"""A prefork child's answers and the parent reading them, over a real channel, without processes: plain
successes of short jobs travel as one SUCCEEDED frame, in their place among the other answers, and the parent
settles every job in the order it ran with the same outcome a RESULT frame would have given."""

from __future__ import annotations

import logging
import marshal
import socket
from collections.abc import Callable, Iterator
from types import SimpleNamespace

import pytest

from fastq import Fastq, _ipc, states
from fastq.worker.job import Job
from fastq.worker.pool import create_pool
from fastq.worker.pool.child import RESULT, SUCCEEDED, _Answers
from fastq.worker.pool.prefork import PreforkPool, _Child
from fastq.worker.trace import Outcome


@pytest.fixture
def channels() -> Iterator[tuple[_ipc.Channel, _ipc.Channel]]:
    a, b = socket.socketpair()
    parent, child = _ipc.Channel(a.detach()), _ipc.Channel(b.detach())
    yield parent, child
    parent.close()
    child.close()


def _failure(runtime: float) -> bytes:
    outcome = Outcome(states.FAILURE, runtime, exc_repr="KeyError('k')", traceback='Traceback ...')
    return marshal.dumps((*outcome.to_wire(), False))


def _read(chan: _ipc.Channel, count: int) -> list[tuple[int, int, bytes]]:
    frames: list[tuple[int, int, bytes]] = []
    while len(frames) < count:
        chan.wait(5.0)
        frames += chan.recv()
    return frames


def test_successes_share_a_frame_in_their_place(channels: tuple[_ipc.Channel, _ipc.Channel]) -> None:
    parent, child = channels
    answers = _Answers(child)
    answers.succeeded(1, 0.25, '3')
    answers.succeeded(2, 0.5, "'x'")
    answers.add(3, _failure(0.75), True)
    answers.succeeded(4, 1.0, 'None')
    assert parent.recv() == []  # batched: nothing written before `write`
    answers.write()
    frames = _read(parent, 3)
    assert [(job_id, kind) for job_id, kind, _ in frames] == [(1, SUCCEEDED), (3, RESULT), (4, SUCCEEDED)]
    assert marshal.loads(frames[0][2]) == ([1, 2], [0.25, 0.5], ['3', "'x'"])
    assert marshal.loads(frames[2][2]) == ([4], [1.0], ['None'])
    answers.write()  # nothing waiting: nothing written
    parent.wait(0.05)
    assert parent.recv() == []


def test_an_unbatched_answer_writes_what_waits_before_it(channels: tuple[_ipc.Channel, _ipc.Channel]) -> None:
    parent, child = channels
    answers = _Answers(child)
    answers.succeeded(1, 0.1, '1')
    answers.add(2, _failure(0.2), False)
    frames = _read(parent, 2)
    assert [(job_id, kind) for job_id, kind, _ in frames] == [(1, SUCCEEDED), (2, RESULT)]


def test_successes_are_written_at_the_batch_limit(channels: tuple[_ipc.Channel, _ipc.Channel]) -> None:
    from fastq.worker.pool.child import MAX_ANSWERS

    parent, child = channels
    answers = _Answers(child)
    for job_id in range(1, MAX_ANSWERS + 1):
        answers.succeeded(job_id, 0.0, 'None')
    (frame,) = _read(parent, 1)
    assert marshal.loads(frame[2])[0] == list(range(1, MAX_ANSWERS + 1))


def test_an_outcome_is_answered_by_its_kind(channels: tuple[_ipc.Channel, _ipc.Channel]) -> None:
    """`answer`: only a short job's plain success joins the batched successes; held results are stored before
    anything is written, and `store_now` stores them without writing."""
    parent, child = channels
    stores: list[str] = []
    answers = _Answers(child, lambda between: stores.append('flush'))
    answers.answer(1, Outcome(states.SUCCESS, 0.1, retval_repr='2'), True, False)
    answers.answer(2, Outcome(states.SUCCESS, 0.1, retval_repr='2'), True, True)  # exiting: a RESULT, at once
    frames = _read(parent, 2)
    assert [(job_id, kind) for job_id, kind, _ in frames] == [(1, SUCCEEDED), (2, RESULT)]
    assert stores == ['flush'] and marshal.loads(frames[1][2])[-1] is True
    answers.store_now()
    assert stores == ['flush', 'flush']
    answers.answer(3, Outcome(states.FAILURE, 0.1, exc_repr='E()', traceback='tb'), True, False)  # batched
    answers.answer(4, Outcome(states.SUCCESS, 0.1, retval_repr='1'), False, False)  # not short: at once
    frames = _read(parent, 2)
    assert [(job_id, kind) for job_id, kind, _ in frames] == [(3, RESULT), (4, RESULT)]


_ids = iter(range(1, 1_000_000))


def prefork_pool(app: Fastq, concurrency: int, on_result: Callable[[Job, Outcome], None]) -> PreforkPool:
    """A prefork pool not started: children are added by hand, as bookkeeping over real channels."""
    pool = create_pool(
        'prefork',
        app=app,
        concurrency=concurrency,
        loop=None,
        accept=frozenset({'application/json'}),
        on_result=on_result,
        on_lost=lambda job, reason: None,
        on_requeue=lambda jobs: None,
    )
    assert isinstance(pool, PreforkPool)
    return pool


def make_job(name: str) -> Job:
    job_id = next(_ids)
    request = SimpleNamespace(task=name, id=f't{job_id}', display_name=name)
    delivery = SimpleNamespace(raw=b'{}', queue='celery', redelivered=False, tag=job_id)
    return Job(job_id, delivery, request, False, False, None, None, 'h', 0.0)  # type: ignore[arg-type]


@pytest.mark.parametrize('batched', [False, True], ids=['on_result', 'on_successes'])
def test_the_parent_settles_each_job_as_from_its_own_answer(
    memory_app: Fastq, channels: tuple[_ipc.Channel, _ipc.Channel], caplog: pytest.LogCaptureFixture, batched: bool
) -> None:
    """Whether the worker takes plain successes in a batch (`on_successes`, as it does) or each through
    `on_result`, every job is settled in order with the outcome its own RESULT frame would have carried."""
    parent_end, child_end = channels
    settled: list[tuple[int, Outcome]] = []
    batches: list[int] = []
    pool = prefork_pool(memory_app, 1, lambda job, outcome: settled.append((job.id, outcome)))
    if batched:

        def on_successes(jobs: list[Job], runtimes: list[float], reprs: list[str]) -> None:
            batches.append(len(jobs))
            for job, runtime, retval_repr in zip(jobs, runtimes, reprs, strict=True):
                settled.append((job.id, Outcome(states.SUCCESS, runtime, retval_repr)))

        pool.on_successes = on_successes
    child = _Child(1, 4242, parent_end)
    pool.children[parent_end.fileno()] = child
    jobs = [make_job('a'), make_job('a'), make_job('b'), make_job('a')]
    for job in jobs:
        child.jobs.append(job)
        child.costs.append(0.001)
        child.load += 0.001

    answers = _Answers(child_end)
    answers.succeeded(jobs[0].id, 0.25, '3')
    answers.succeeded(jobs[1].id, 0.5, "'x'")
    answers.add(jobs[2].id, _failure(0.75), True)
    answers.succeeded(jobs[3].id, 1.0, 'None')
    answers.write()
    parent_end.wait(5.0)
    while len(settled) < 4:
        pool._on_readable(child)
        if len(settled) < 4:
            parent_end.wait(5.0)

    assert [job_id for job_id, _ in settled] == [job.id for job in jobs]
    assert [(o.state, o.runtime, o.retval_repr) for _, o in settled] == [
        (states.SUCCESS, 0.25, '3'),
        (states.SUCCESS, 0.5, "'x'"),
        (states.FAILURE, 0.75, ''),
        (states.SUCCESS, 1.0, 'None'),
    ]
    # the same outcome a RESULT frame carries for a success
    assert settled[0][1].to_wire() == Outcome(states.SUCCESS, 0.25, retval_repr='3').to_wire()
    assert settled[2][1].exc_repr == "KeyError('k')"
    assert not child.jobs and child.load == 0.0 and child.answered == 4
    assert pool._estimates['a'] >= 1.0  # learnt from the batched answers too

    # an answer for a job the child does not hold first is reported and ignored, the rest still settle
    late = [make_job('a'), make_job('a')]
    for job in late:
        child.jobs.append(job)
        child.costs.append(0.001)
    answers.succeeded(999_999_999, 0.1, 'None')
    answers.write()
    answers.succeeded(late[0].id, 0.2, '2')
    answers.succeeded(999_999_998, 0.3, '3')  # a stray among good answers in one frame
    answers.succeeded(late[1].id, 0.4, '4')
    answers.write()
    with caplog.at_level(logging.ERROR, logger='celery.worker.pool'):
        while len(settled) < 6:
            parent_end.wait(5.0)
            pool._on_readable(child)
    assert 'answered job 999999999 out of order' in caplog.text
    assert 'answered job 999999998 out of order' in caplog.text
    assert [(job_id, o.runtime, o.retval_repr) for job_id, o in settled[4:]] == [
        (late[0].id, 0.2, '2'),
        (late[1].id, 0.4, '4'),
    ]
    assert not child.jobs and child.answered == 6
    assert batches == ([2, 1, 0, 2] if batched else [])
