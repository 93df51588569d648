"""The task trace (fastq/worker/trace.py) run in-process on the memory transport: what a run stores, and in
which order relative to the messages it sends."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import pytest

from fastq import Fastq, states
from fastq.exceptions import MaxRetriesExceededError
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
    assert isinstance(app.AsyncResult('r1').result, KeyError if with_exc else Exception)

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
