"""End to end with results in Redis: real `fastq worker` processes (SQLite broker) store, the client waits on pub/sub."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from fastq import states
from fastq.backends.redis import RedisBackend
from tests.harness import wait_until

pytestmark = pytest.mark.slow


@pytest.fixture
def urls(tmp_path: Path, redis_url: str) -> dict[str, str]:
    return {'FASTQ_BROKER_URL': f'sqlite:///{tmp_path}/broker.sqlite3', 'FASTQ_RESULT_BACKEND': redis_url}


def test_worker_results_in_redis(tasks: Any, worker: Any, urls: dict[str, str]) -> None:
    w = worker()
    assert '.> results:     ' + urls['FASTQ_RESULT_BACKEND'] in w.log
    assert isinstance(tasks.app.backend, RedisBackend)
    results = [tasks.add.delay(i, i) for i in range(50)]
    assert [r.get(timeout=30) for r in results] == [i + i for i in range(50)]
    assert results[0].state == states.SUCCESS and results[0].date_done is not None
    failed = tasks.fail_custom.delay('boom')
    with pytest.raises(tasks.CustomError, match='boom'):
        failed.get(timeout=30)
    assert 'CustomError: boom' in (failed.traceback or '')


def test_a_task_with_a_backend_of_its_own_keeps_its_results_there(
    tasks: Any, worker: Any, urls: dict[str, str], redis_server: Any
) -> None:
    # Celery's `@app.task(backend=...)`: the worker stores the task's results, states and retries in the task's
    # backend (another Redis database here), and its results read from there; other tasks keep the app's.
    import redis

    own_url = redis_server.url(redis_server._pool.take())
    task = tasks.own_backend
    task.backend = own_url  # (the worker's is given by its environment)
    try:
        worker(extra_env={'WORKER_TASKS_OWN_BACKEND': own_url})
        done = task.delay('done')
        assert done.backend is task.backend and done.backend.url == own_url
        assert done.get(timeout=30) == 'done'
        progress = task.delay('progress', 1.0)
        wait_until(lambda: progress.state == 'PROGRESS', message='PROGRESS in the task backend')
        retried = task.delay('retry', 1.0)
        wait_until(lambda: retried.state == states.RETRY, message='RETRY in the task backend')
        failed = task.delay('fail')
        with pytest.raises(tasks.CustomError, match='own backend'):
            failed.get(timeout=30)
        assert progress.get(timeout=30) == 'progress' and retried.get(timeout=30) == 'retry'
        plain = tasks.add.delay(1, 2)
        assert plain.get(timeout=30) == 3
        ids = [done.id, progress.id, retried.id, failed.id]
        assert task.AsyncResult(done.id).get(timeout=5) == 'done'
        assert tasks.app.AsyncResult(done.id).state == states.PENDING  # (the app's backend never had it)

        def stored(url: str) -> set[str]:
            client = redis.Redis.from_url(url, decode_responses=True)
            return {str(key).removeprefix('celery-task-meta-') for key in client.keys()}

        own, apps = stored(own_url), stored(urls['FASTQ_RESULT_BACKEND'])
        assert set(ids) <= own and not set(ids) & apps
        assert plain.id in apps and plain.id not in own
    finally:
        own_backend = task.backend
        task.backend = None
        own_backend.close()


def test_get_on_message_hears_the_progress(tasks: Any, worker: Any) -> None:
    # Celery's progress-bar pattern: update_state(PROGRESS) in the task, get(on_message=...) in the caller
    worker()
    heard: list[tuple[str, Any]] = []
    result = tasks.progress.delay(3, 0.3)
    assert result.get(timeout=30, on_message=lambda meta: heard.append((meta['status'], meta['result']))) == 3
    assert heard[-1] == ('SUCCESS', 3)
    assert ('PROGRESS', {'step': 2}) in heard  # (the first may come before the caller listens)
    # Celery listens from the moment it sends: a progress stored before `get()` listens is heard too
    heard.clear()
    result = tasks.progress.delay(2, 1.0)
    wait_until(lambda: result.state == 'PROGRESS', message='first progress stored')
    assert result.get(timeout=30, on_message=lambda meta: heard.append((meta['status'], meta['result']))) == 2
    assert heard == [('PROGRESS', {'step': 0}), ('PROGRESS', {'step': 1}), ('SUCCESS', 2)]


def test_a_chord_result_raises_the_failed_header_tasks_error(tasks: Any, worker: Any) -> None:
    # Canvas guide, Error handling: on Redis Celery's `get()` looks at the parents once the body's ChordError
    # arrives, so the header task's own exception is raised; the body's stored result stays the ChordError.
    from fastq import chord
    from fastq.exceptions import ChordError

    worker()
    result = chord([tasks.add.s(4, 4), tasks.fail.s('in the header'), tasks.add.s(8, 8)], tasks.tsum.s()).delay()
    assert result.parent is not None and result.parent.supports_native_join is True
    with pytest.raises(ValueError, match='in the header'):
        result.get(timeout=30)
    # (the parent's error can be raised before the body's ChordError is stored: a moment later it is)
    wait_until(lambda: result.state == states.FAILURE, message='the chord body failed')
    assert isinstance(result.result, ChordError)
    with pytest.raises(ChordError, match=r"Dependency .* raised ValueError\('in the header'\)"):
        result.get(timeout=30, follow_parents=False)


def test_collect_the_tasks_a_task_sent(tasks: Any, worker: Any) -> None:
    # Celery's `collect()`: a task's children are stored with its result, and their values gathered from there
    worker()
    result = tasks.fan_out.delay(3)
    assert result.get(timeout=30) == 3
    collected = list(result.collect(timeout=30))
    assert collected[0] == (result, 3)
    assert sorted(value for _, value in collected[1:]) == [0, 2, 4]
    assert {node.id for node in result.graph} == {node.id for node, _ in collected}
    assert result.get_leaf() in (0, 2, 4)
    assert result.then(lambda r: r.get() * 10).result(timeout=30) == 30


def test_link_callbacks_and_the_next_chain_step_are_children(tasks: Any, worker: Any) -> None:
    # The Canvas guide: `add.apply_async((2, 2), link=mul.s(16)); res.children[0].get()` -> 64
    from fastq import chain
    from fastq.result import GroupResult

    worker()
    res = tasks.add.apply_async((2, 2), link=tasks.mul.s(16))
    assert res.get(timeout=30) == 4
    assert res.children is not None and len(res.children) == 1
    assert res.children[0].get(timeout=30) == 64
    two = tasks.add.apply_async((1, 1), link=[tasks.mul.s(2), tasks.mul.s(3)])
    assert two.get(timeout=30) == 2
    assert len(two.children or []) == 1 and isinstance(two.children[0], GroupResult)  # several: one group
    assert sorted(two.children[0].get(timeout=30)) == [4, 6]
    last = chain(tasks.add.s(4, 4), tasks.mul.s(8), tasks.mul.s(10))()
    assert last.get(timeout=30) == 640
    first = last.parent.parent
    assert [node.id for node in first.children or []] == [last.parent.id]
    assert first.get_leaf() == 640


def test_stamps_reach_the_task_the_result_and_revoke_by_stamped_headers(tasks: Any, worker: Any) -> None:
    # Canvas guide, Stamping: stamps in the task's request, in extended results, and revoking by them
    from fastq import group

    worker('-c', '1', extra_env={'FASTQ_RESULT_EXTENDED': 'true'})
    sig = tasks.stamps_of.s()
    sig.stamp(mystamp='S1', other='o')
    result = sig.apply_async()
    assert result.get(timeout=30) == {
        'stamps': {'mystamp': 'S1', 'other': 'o'},
        'stamped_headers': ['mystamp', 'other'],
    }
    meta = tasks.app.backend.get_task_meta(result.id)
    assert meta['mystamp'] == 'S1' and sorted(meta['stamped_headers']) == ['mystamp', 'other']

    busy = tasks.long.delay(2)  # the one slot taken: what follows waits in the worker
    later = group(tasks.add.s(i, i) for i in range(3))
    later.stamp(batch='b-42')
    held = later.apply_async()
    kept = tasks.add.s(1, 1).stamp(batch='b-7').apply_async()
    replies = tasks.app.control.revoke_by_stamped_headers({'batch': 'b-42'}, reply=True, timeout=1)
    assert replies and 'flagged as revoked' in next(iter(replies[0].values()))['ok']
    for r in held.results:
        with pytest.raises(Exception, match='revoked'):
            r.get(timeout=30)
        assert r.state == states.REVOKED
    assert kept.get(timeout=30) == 2 and busy.get(timeout=30)
