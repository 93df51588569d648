"""The task trace (fastq/worker/trace.py) run in-process on the memory transport: what a run stores, and in
which order relative to the messages it sends."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import pytest

from fastq import Fastq, signals, states
from fastq.exceptions import EncodeError, MaxRetriesExceededError
from fastq.worker.trace import execute


@pytest.fixture
def app() -> Iterator[Fastq]:
    app = Fastq('trace', broker='memory://', backend='memory://', set_as_current=False)
    yield app
    app.close()


def _request(task_id: str, name: str, retries: int = 0) -> dict[str, Any]:
    return {
        'id': task_id,
        'task': name,
        'retries': retries,
        'delivery_info': {'routing_key': 'celery'},
        'root_id': task_id,
        'hostname': 'test@host',
    }


def _states_at_publish(app: Fastq, monkeypatch: pytest.MonkeyPatch, task_id: str) -> list[str]:
    """Record the stored state of `task_id` each time a message is published."""
    seen: list[str] = []
    publish = app.broker.publish

    def spy(batch: Sequence[Any]) -> None:
        seen.append(app.AsyncResult(task_id).state)
        publish(batch)

    monkeypatch.setattr(app.broker, 'publish', spy)
    return seen


@pytest.mark.parametrize('with_exc', [True, False])
def test_retry_state_is_stored_before_the_next_run_is_sent(
    app: Fastq, monkeypatch: pytest.MonkeyPatch, with_exc: bool
) -> None:
    # The next run may fail on another worker before this one returns: a RETRY stored after the message
    # went out could then replace that FAILURE, and the caller's get() would wait forever.
    @app.task(bind=True, max_retries=1)
    def give_up(self: Any) -> None:
        try:
            raise KeyError('original')
        except KeyError as exc:
            raise self.retry(exc=exc if with_exc else None, countdown=0) from None

    seen = _states_at_publish(app, monkeypatch, 'r1')
    outcome = execute(give_up, [], {}, _request('r1', give_up.name))
    assert outcome.state == states.RETRY
    assert seen == [states.RETRY]
    meta = app.backend.get_task_meta('r1')
    assert meta['status'] == states.RETRY
    result = app.AsyncResult('r1').result  # (the retry's exc, None without one: Celery's)
    assert isinstance(result, KeyError) if with_exc else result is None

    # The last run's outcome is what stays stored.
    outcome = execute(give_up, [], {}, _request('r1', give_up.name, retries=1))
    assert outcome.state == states.FAILURE
    with pytest.raises(KeyError if with_exc else MaxRetriesExceededError):
        app.AsyncResult('r1').get(timeout=1)


def test_retry_is_sent_when_the_retry_state_cannot_be_stored(
    app: Fastq, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    calls: list[str] = []

    def down(*args: Any, **kwargs: Any) -> None:
        calls.append('store')
        if len(calls) == 1:
            raise ConnectionError('backend down')

    monkeypatch.setattr(app.backend, 'mark_as_retry', down)

    @app.task(bind=True)
    def again(self: Any) -> None:
        raise self.retry(countdown=0)

    seen = _states_at_publish(app, monkeypatch, 'r2')
    outcome = execute(again, [], {}, _request('r2', again.name))
    assert outcome.state == states.RETRY
    assert len(seen) == 1  # the next run was sent
    assert calls == ['store', 'store']  # and the state stored after it, as before
    assert 'could not store its RETRY state yet' in caplog.text


def test_retry_state_is_stored_once(app: Fastq, monkeypatch: pytest.MonkeyPatch) -> None:
    stored: list[str] = []
    mark_as_retry = app.backend.mark_as_retry

    def count(task_id: str, *args: Any, **kwargs: Any) -> Any:
        stored.append(task_id)
        return mark_as_retry(task_id, *args, **kwargs)

    monkeypatch.setattr(app.backend, 'mark_as_retry', count)

    @app.task(bind=True)
    def again(self: Any) -> None:
        raise self.retry(countdown=0)

    assert execute(again, [], {}, _request('r3', again.name)).state == states.RETRY
    assert stored == ['r3']


@pytest.fixture
def lifecycle() -> Iterator[list[tuple[str, Any]]]:
    seen: list[tuple[str, Any]] = []
    receivers = []
    for name in ('task_postrun', 'task_failure', 'task_success', 'task_internal_error'):

        def receiver(sender: Any = None, _name: str = name, **kwargs: Any) -> None:
            seen.append((_name, kwargs['state'] if _name == 'task_postrun' else type(kwargs['exception']).__name__))

        getattr(signals, name).connect(receiver)
        receivers.append((getattr(signals, name), receiver))
    yield seen
    for signal, receiver in receivers:
        signal.disconnect(receiver)


def test_a_return_value_the_serializer_cannot_write_fails_the_task(
    app: Fastq, lifecycle: list[tuple[str, Any]], caplog: pytest.LogCaptureFixture
) -> None:
    """As Celery 5.7's tracer: an EncodeError storing the result is the task's failure (stored, `on_failure`,
    `task_failure`, `task_postrun` FAILURE), not an internal error; the stored error wraps the serializer's."""
    failures: list[Any] = []

    class Noted(app.Task):  # type: ignore[name-defined,misc]
        def on_failure(self, exc: Any, task_id: str, args: Any, kwargs: Any, einfo: Any) -> None:
            failures.append(exc)

    @app.task(base=Noted)
    def unwritable() -> object:
        return object()

    outcome = execute(unwritable, [], {}, _request('e1', unwritable.name))
    assert outcome.state == states.FAILURE and isinstance(outcome.exception, EncodeError)
    assert lifecycle == [('task_failure', 'EncodeError'), ('task_postrun', states.FAILURE)]
    assert [type(e) for e in failures] == [EncodeError]
    assert isinstance(failures[0].args[0], TypeError)  # (kombu's EncodeError: the original as its argument)
    stored = app.AsyncResult('e1')
    assert stored.state == states.FAILURE and isinstance(stored.result, EncodeError)
    assert 'not JSON serializable' in str(stored.result)
    assert 'raised unexpected: EncodeError(TypeError(' in caplog.text


def test_an_internal_error_is_reported_as_celerys(
    app: Fastq, monkeypatch: pytest.MonkeyPatch, lifecycle: list[tuple[str, Any]]
) -> None:
    """The result store raising something else: `task_postrun` with the state reached (SUCCESS, from the
    tracer's `finally`), `task_internal_error`, the "raised outside body" warning, then the task failed as any
    failure (FAILURE stored once the store works, `task_failure`), as Celery 5.7 does."""

    @app.task
    def add(x: int, y: int) -> int:
        return x + y

    calls = 0
    store = app.backend.store_result

    def flaky(*args: Any, **kwargs: Any) -> Any:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError('store broke')
        return store(*args, **kwargs)

    monkeypatch.setattr(app.backend, 'store_result', flaky)
    with pytest.warns(RuntimeWarning, match=r"Exception raised outside body: RuntimeError\('store broke'\)"):
        outcome = execute(add, [1, 2], {}, _request('i1', add.name))
    assert outcome.state == states.FAILURE and isinstance(outcome.exception, RuntimeError)
    assert lifecycle == [
        ('task_postrun', states.SUCCESS),
        ('task_internal_error', 'RuntimeError'),
        ('task_failure', 'RuntimeError'),
    ]
    assert app.AsyncResult('i1').state == states.FAILURE
    assert add.request.id is None  # (the request was popped)


def test_an_internal_error_in_an_eager_call_is_raised(app: Fastq, monkeypatch: pytest.MonkeyPatch) -> None:
    @app.task(store_eager_result=True)
    def add(x: int, y: int) -> int:
        return x + y

    def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError('store broke')

    monkeypatch.setattr(app.backend, 'store_result', broken)
    with pytest.raises(RuntimeError, match='store broke'):
        add.apply((1, 2))


def test_task_prerun_runs_before_started_is_stored(app: Fastq) -> None:
    """Celery's tracer sends task_prerun, then stores STARTED (track_started), then runs the task."""
    seen: list[tuple[str, str]] = []

    @app.task(track_started=True)
    def tracked() -> None:
        seen.append(('run', app.AsyncResult('s1').state))

    def prerun(task_id: str, **kwargs: Any) -> None:
        seen.append(('prerun', app.AsyncResult(task_id).state))

    signals.task_prerun.connect(prerun)
    try:
        outcome = execute(tracked, [], {}, _request('s1', tracked.name))
    finally:
        signals.task_prerun.disconnect(prerun)
    assert outcome.state == states.SUCCESS
    assert seen == [('prerun', states.PENDING), ('run', states.STARTED)]


def test_a_task_rejected_for_good_is_recorded_after_task_postrun(app: Fastq, lifecycle: list[tuple[str, Any]]) -> None:
    """Celery 5.7 records Reject(requeue=False) in the worker's parent once the child has answered: its
    receivers see `task_postrun` (REJECTED), then `task_failure`, with FAILURE stored by then; errbacks too."""
    from fastq.exceptions import Reject

    stored_at_postrun: list[str] = []

    def at_postrun(sender: Any = None, task_id: str = '', **kwargs: Any) -> None:
        stored_at_postrun.append(app.AsyncResult(task_id).state)

    @app.task
    def rejected() -> None:
        raise Reject('no', requeue=False)

    signals.task_postrun.connect(at_postrun)
    try:
        outcome = execute(rejected, [], {}, _request('rj1', rejected.name))
    finally:
        signals.task_postrun.disconnect(at_postrun)
    assert outcome.state == states.REJECTED and outcome.traceback  # (the parent's task-failed carries it)
    assert lifecycle == [('task_postrun', states.REJECTED), ('task_failure', 'Reject')]
    assert stored_at_postrun == [states.PENDING]
    assert app.AsyncResult('rj1').state == states.FAILURE
