"""A task's own result backend (`@app.task(backend=...)`), as Celery has it: `task.backend` is where the worker
stores that task's results, states and retries, and where the results of its `apply_async` read from; a task
without one uses the app's. (tests/integration/test_worker_redis_backend.py runs it on a real worker.)"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from fastq import Fastq, Task, group, states
from fastq.backends.memory import MemoryBackend
from fastq.worker.trace import execute


@pytest.fixture
def app() -> Iterator[Fastq]:
    app = Fastq('own', broker='memory://', backend='memory://', set_as_current=False)
    yield app
    app.close()


def _run(task: Any, *args: Any, task_id: str = 'id-1', **fields: Any) -> str:
    """Run `task` as a worker does; the outcome's state."""
    request = {'id': task_id, 'task': task.name, 'retries': 0, 'delivery_info': {}, **fields}
    return execute(task, list(args), {}, request).state


def _status(backend: Any, task_id: str) -> str:
    return str(backend.get_task_meta(task_id)['status'])


def test_backend_given_as_url_class_or_instance_is_made_once(app: Fastq) -> None:
    @app.task(backend='memory://')
    def by_url() -> None: ...

    @app.task(backend=MemoryBackend)
    def by_class() -> None: ...

    instance = MemoryBackend(app, 'memory://')

    @app.task(backend=instance)
    def by_instance() -> None: ...

    class ClassBased(Task[Any, Any]):
        backend = 'memory://'  # type: ignore[assignment]  # (a URL in a class body: made on first use)

        def run(self) -> None: ...

    @app.task
    def plain() -> None: ...

    based = app.register_task(ClassBased)
    for task in (by_url, by_class, based):
        assert isinstance(task.backend, MemoryBackend) and task.backend is not app.backend
        assert task.backend is task.backend  # (made on first use, then kept)
        assert task.backend.app is app
    assert by_instance.backend is instance
    assert plain.backend is app.backend and plain._backend is None


def test_the_worker_stores_in_the_tasks_backend(app: Fastq) -> None:
    @app.task(backend='memory://', track_started=True, bind=True)
    def own(self: Any, fail: bool) -> int:
        assert _status(self.backend, self.request.id) == states.STARTED
        self.update_state(state='PROGRESS', meta={'step': 1})
        assert self.backend.get_task_meta(self.request.id)['result'] == {'step': 1}
        if fail:
            raise KeyError('own')
        return 1

    @app.task
    def plain() -> int:
        return 2

    assert _run(own, False, task_id='ok') == states.SUCCESS
    assert _run(own, True, task_id='failed') == states.FAILURE
    assert _run(plain, task_id='plain') == states.SUCCESS
    assert own.backend.get_task_meta('ok')['result'] == 1
    assert _status(own.backend, 'failed') == states.FAILURE
    assert _status(app.backend, 'ok') == _status(app.backend, 'failed') == states.PENDING
    assert _status(app.backend, 'plain') == states.SUCCESS and _status(own.backend, 'plain') == states.PENDING


def test_a_retry_is_stored_in_the_tasks_backend(app: Fastq) -> None:
    @app.task(backend='memory://', bind=True, default_retry_delay=60)
    def retried(self: Any) -> None:
        raise self.retry(exc=ValueError('later'))

    assert _run(retried, task_id='r') == states.RETRY
    assert _status(retried.backend, 'r') == states.RETRY
    assert _status(app.backend, 'r') == states.PENDING


def test_chord_parts_go_to_the_tasks_backend(app: Fastq, monkeypatch: pytest.MonkeyPatch) -> None:
    # As Celery's `task.backend.mark_as_done` does: the header task's backend counts its chord part.
    @app.task(backend='memory://')
    def part() -> int:
        return 1

    seen: list[Any] = []
    monkeypatch.setattr(part.backend, 'on_chord_part_return', lambda ctx, state, value: seen.append(state))
    monkeypatch.setattr(app.backend, 'on_chord_part_return', lambda *a: pytest.fail('the app backend was told'))
    assert _run(part, chord={'task': 'body'}, group='g') == states.SUCCESS
    assert seen == [states.SUCCESS]


def test_results_read_from_the_tasks_backend(app: Fastq) -> None:
    @app.task(backend='memory://')
    def own(x: int) -> int:
        return x

    assert own.delay(1).backend is own.backend
    assert own.AsyncResult('some-id').backend is own.backend
    assert own.s(1).freeze().backend is own.backend
    assert all(r.backend is own.backend for r in group(own.s(i) for i in range(3)).apply_async().results)
    assert app.send_task(own.name, (1,)).backend is app.backend  # by name: the app's (Celery's send_task)
    own.backend = None  # (Celery's setter; the cached send plan follows)
    assert own.delay(1).backend is app.backend


def test_eager_results_are_stored_in_the_tasks_backend(app: Fastq) -> None:
    @app.task(backend='memory://', store_eager_result=True)
    def own() -> int:
        return 3

    result = own.apply()
    assert result.get() == 3
    assert own.backend.get_task_meta(result.id)['result'] == 3
    assert _status(app.backend, result.id) == states.PENDING


def test_the_worker_parent_stores_in_the_tasks_backend(app: Fastq) -> None:
    """What the worker's parent stores for a task that never reached, or never left, its executor (REVOKED, a
    hard time limit, the RETRY of `retry_on_worker_lost`) goes to the task's backend, as Celery's request
    handling stores it (`request.task.backend`)."""
    import signal

    from fastq.worker.dispatcher import Dispatcher
    from fastq.worker.loop import Loop

    @app.task(backend='memory://', acks_late=True, retry_on_worker_lost=True, time_limit=5)
    def own() -> None: ...

    consumer = app.broker.consumer(['celery'], 'test@host')
    pool = type('Pool', (), {'name': 'stub', 'can_take': lambda self, job: False, 'kill_job': lambda *a: True})()
    accept = frozenset({'application/json'})
    dispatcher = Dispatcher(app, app.broker, consumer, pool, Loop(), 4, accept, 'test@host')  # type: ignore[arg-type]
    revoked, timed_out, lost = (own.apply_async(task_id=name) for name in ('revoked', 'timed-out', 'lost'))
    deliveries = consumer.fetch(3, 1.0)
    dispatcher.revoke({revoked.id})
    dispatcher.on_deliveries(deliveries)
    assert dispatcher.running == {} and len(dispatcher.ready) == 2
    jobs = {job.request.id: job for job in dispatcher.ready}
    dispatcher.on_lost(jobs[timed_out.id], 'time-limit:5')
    dispatcher.on_lost(jobs[lost.id], f'Worker exited prematurely: signal {int(signal.SIGKILL)} (SIGKILL).')
    assert _status(own.backend, revoked.id) == states.REVOKED
    assert _status(own.backend, timed_out.id) == states.FAILURE
    assert _status(own.backend, lost.id) == states.RETRY
    assert {_status(app.backend, task_id) for task_id in ('revoked', 'timed-out', 'lost')} == {states.PENDING}


def test_a_lost_acks_late_task_not_acked_on_failure_is_rejected_for_good(app: Fastq) -> None:
    """Celery's request handler, for an acks_late task whose child was lost (no reject_on_worker_lost) and
    `acks_on_failure_or_timeout=False`: FAILURE stored, the message rejected without requeue (dead-lettered
    here, as a failure the task answered itself), not acked."""
    import signal

    from fastq.worker.dispatcher import Dispatcher
    from fastq.worker.loop import Loop

    @app.task(acks_late=True, acks_on_failure_or_timeout=False)
    def kept() -> None: ...

    consumer = app.broker.consumer(['celery'], 'test@host')
    pool = type('Pool', (), {'name': 'stub', 'can_take': lambda self, job: False})()
    accept = frozenset({'application/json'})
    dispatcher = Dispatcher(app, app.broker, consumer, pool, Loop(), 4, accept, 'test@host')  # type: ignore[arg-type]
    lost = kept.apply_async(task_id='lost-for-good')
    dispatcher.on_deliveries(consumer.fetch(1, 1.0))
    (job,) = dispatcher.ready
    dispatcher.on_lost(job, f'Worker exited prematurely: signal {int(signal.SIGKILL)} (SIGKILL) Job: 1.')
    assert _status(app.backend, lost.id) == states.FAILURE
    assert dispatcher._late_acks == []
    assert app.broker.dead_letters.get(lost.id) is not None
