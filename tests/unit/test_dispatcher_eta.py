"""Tasks held in the worker until their ETA: released by the wall clock even when it steps back."""

from __future__ import annotations

import time
from types import SimpleNamespace
from typing import Any

import pytest

from fastq import Fastq
from fastq.worker import dispatcher as dispatcher_module
from fastq.worker.dispatcher import Dispatcher
from fastq.worker.loop import Loop


class _Pool:
    """Takes nothing: released jobs stay in the dispatcher's ready queue, where the test looks for them."""

    name = 'stub'

    def can_take(self, job: Any) -> bool:
        return False


def _held_job(eta: float, job_id: int) -> Any:
    request = SimpleNamespace(task='t.noop', id=f'id-{job_id}', eta=eta)
    return SimpleNamespace(id=job_id, request=request, name='t.noop')


@pytest.fixture
def dispatcher(memory_app: Fastq) -> Dispatcher:
    broker = memory_app.broker
    consumer = broker.consumer(['celery'], 'test@host')
    return Dispatcher(memory_app, broker, consumer, _Pool(), Loop(), 4, frozenset({'json'}), 'test@host')  # type: ignore[arg-type]


def _run_until(loop: Loop, done: Any, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not done() and time.monotonic() < deadline:
        loop.run_once(0.05)


def test_held_tasks_are_released_after_the_wall_clock_steps_back(
    dispatcher: Dispatcher, monkeypatch: pytest.MonkeyPatch
) -> None:
    now = time.time()
    dispatcher.held = [(now + 0.2, 1, _held_job(now + 0.2, 1)), (now + 0.3, 2, _held_job(now + 0.3, 2))]
    # The jobs' own timers fire (here: now) while the wall clock reads half a second earlier than when
    # they were held: nothing is due yet.
    monkeypatch.setattr(dispatcher_module.time, 'time', lambda: now - 0.5)
    dispatcher._release_due()
    assert [entry[1] for entry in dispatcher.held] == [1, 2]
    assert not dispatcher.ready
    monkeypatch.undo()
    # No other timer is left to fire; the dispatcher looks again when the earliest ETA is due by the clock.
    _run_until(dispatcher.loop, lambda: not dispatcher.held)
    assert [job.id for job in dispatcher.ready] == [1, 2]


def test_one_pending_look_at_a_time(dispatcher: Dispatcher) -> None:
    now = time.time()
    dispatcher.held = [(now + 60 + i, i, _held_job(now + 60 + i, i)) for i in range(100)]
    for _ in range(100):
        dispatcher._release_due()
    assert len(dispatcher.loop._timers) == 1


def test_a_task_the_broker_cannot_park_any_more_is_held_not_failed(
    dispatcher: Dispatcher, monkeypatch: pytest.MonkeyPatch
) -> None:
    """RabbitMQ's consumer refuses to park a delivery of a connection it lost (NotImplementedError): the task is
    held in memory (and dropped at dispatch, as not current), not an error that fails its delivery batch."""

    def refuse(tag: Any, eta: float) -> None:
        raise NotImplementedError('no longer held')

    monkeypatch.setattr(dispatcher.broker, 'features', SimpleNamespace(delayed=True))
    monkeypatch.setattr(dispatcher.consumer, 'defer', refuse)
    # (a task_received receiver another test left connected would build a full Request of this stub)
    monkeypatch.setattr(dispatcher, '_announce_received', lambda job: None)
    now = time.time()
    job = _held_job(now + 60, 7)
    job.tag = 'tag-7'
    dispatcher._hold(job, now + 60, now)
    assert [entry[1] for entry in dispatcher.held] == [7]
    assert dispatcher.parked is None or not len(dispatcher.parked)  # nothing claimed as parked


def test_a_cold_shutdown_puts_back_early_acked_jobs_that_never_started(dispatcher: Dispatcher) -> None:
    """Celery acks a task once a pool process accepted it, so its cold shutdown leaves tasks still queued for
    the pool in the broker; fastq acks short jobs as it writes them to a child, so the ones that never started
    are published again (and only those: a started one is never sent twice)."""
    broker = dispatcher.broker

    def job(job_id: int, acked: bool, started: float | None) -> Any:
        delivery = SimpleNamespace(tag=f'tag-{job_id}', queue='celery', raw=f'envelope {job_id}'.encode())
        request = SimpleNamespace(task='t.noop', id=f'id-{job_id}')
        return SimpleNamespace(
            id=job_id, delivery=delivery, request=request, acked=acked, started=started, tag=delivery.tag, name='t.noop'
        )

    published: list[tuple[str, bytes]] = []
    broker._publish_raw = lambda queue, payload: published.append((queue, payload))  # type: ignore[method-assign]
    jobs = [job(1, True, time.monotonic()), job(2, True, None), job(3, True, None), job(4, False, None)]
    dispatcher.abandon(jobs)  # type: ignore[arg-type]
    assert published == [('celery', b'envelope 2'), ('celery', b'envelope 3')]
