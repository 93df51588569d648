"""Celery and fastq side by side on one real redis-server: the same queues, results and pidbox."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.harness import WorkerProcess, settings_kept

HERE = Path(__file__).resolve().parent
INTEGRATION = HERE.parent / 'integration'

pytest.importorskip('celery')


@pytest.fixture
def url(redis_url: str) -> str:
    return redis_url


@pytest.fixture
def backend_url(url: str) -> str:
    """Where results go: the broker's Redis unless a test module says otherwise."""
    return url


def _env(url: str, backend: str, extra: dict[str, str] | None) -> dict[str, str]:
    env = dict(os.environ)
    env.pop('PYTEST_CURRENT_TEST', None)
    env.update(
        PYTHONPATH=os.pathsep.join([str(HERE), str(INTEGRATION), env.get('PYTHONPATH', '')]),
        FASTQ_BROKER_URL=url,
        FASTQ_RESULT_BACKEND=backend,
        CELERY_BROKER_URL=url,
        CELERY_RESULT_BACKEND=backend,
        FASTQ_ACCEPT_CONTENT='json,msgpack',
    )
    env.update(extra or {})
    return env


@pytest.fixture
def workers(tmp_path: Path, url: str, backend_url: str) -> Iterator[Callable[..., WorkerProcess]]:
    """`workers('fastq', '-n', 'f1@%h')` or `workers('celery', ...)`: started, ready, stopped at teardown."""
    started: list[WorkerProcess] = []

    def start(
        kind: str, *args: str, extra_env: dict[str, str] | None = None, wait: bool = True, mingle: bool = False
    ) -> WorkerProcess:
        if kind == 'celery':
            command = [sys.executable, '-m', 'celery', '-A', 'celery_side', 'worker']
            base = ['-l', 'info', '-c', '2', '-P', 'prefork', '--without-gossip']
            if not mingle:
                base.append('--without-mingle')
        else:
            command = [sys.executable, '-m', 'fastq', '-A', 'worker_tasks', 'worker']
            base = ['-l', 'info', '-c', '2']
        w = WorkerProcess(tmp_path, _env(url, backend_url, extra_env), [*base, *args], f'{kind}{len(started)}', command)
        started.append(w)
        return w.start(wait=wait)

    yield start
    for w in started:
        if w.proc is not None and w.proc.poll() is None:
            try:
                w.stop(30)
            except AssertionError:
                w.kill()


@pytest.fixture
def celery_client(monkeypatch: pytest.MonkeyPatch, url: str, backend_url: str) -> Iterator[Any]:
    """A Celery app (the real package) used as a client: send_task by name, AsyncResult, control."""
    from celery import Celery

    app = Celery('client', broker=url, backend=backend_url, set_as_current=False)
    app.conf.accept_content = ['json', 'msgpack']
    _confirm_subscriptions(monkeypatch)
    yield app
    backend = getattr(app._local, 'backend', None)
    consumer = getattr(backend, 'result_consumer', None)
    if getattr(consumer, '_connection', None) is not None:  # rpc://: its own connection, not in app's pool
        consumer.stop()
    if getattr(consumer, '_pubsub', None) is not None:  # redis://: its pubsub connection
        consumer.stop()
    pool = getattr(getattr(backend, 'client', None), 'connection_pool', None)
    if pool is not None:  # redis://: the backend's own pool is not the app's either; a socket left for the
        pool.disconnect()  # garbage collector to close can be finalized before its connection (a ResourceWarning)
    app.close()


def _confirm_subscriptions(monkeypatch: pytest.MonkeyPatch) -> None:
    """Work around a race in Celery 5.7's Redis result consumer, so a test waits for the workers, not for it.

    `get()` sends SUBSCRIBE on the pub/sub connection, then GETs the result key on another connection without
    waiting for the subscription to be confirmed. Redis may run the GET first: a result stored between the two
    is neither read nor published to the client, which then waits for its whole timeout (seen with redis
    MONITOR: GET, the worker's SET and PUBLISH, then SUBSCRIBE, within 0.2 ms). It shows about once in a
    thousand chains run by a fastq worker, which finishes a chain before the client's two commands land.
    Here the poll waits until the server counts the subscription. fastq's own listener does this itself.
    """
    from celery.backends.redis import ResultConsumer

    poll = ResultConsumer.on_wait_for_pending

    def on_wait_for_pending(self: Any, result: Any, **kwargs: Any) -> Any:
        nodes = getattr(result, 'results', None) or [result]
        keys = [self._get_key_for_task(node.id) for node in nodes if getattr(node, 'id', None)]
        keys = [key for key in keys if key in self.subscribed_to and key not in self._pending_unsubscribe]
        deadline = time.monotonic() + 5.0
        while keys and time.monotonic() < deadline:
            if all(count for _, count in self.backend.client.pubsub_numsub(*keys)):
                break
            time.sleep(0.001)
        return poll(self, result, **kwargs)

    monkeypatch.setattr(ResultConsumer, 'on_wait_for_pending', on_wait_for_pending)


@pytest.fixture
def fastq_client(monkeypatch: pytest.MonkeyPatch, url: str, backend_url: str) -> Iterator[Any]:
    """fastq's `worker_tasks` module, its app on the same Redis."""
    monkeypatch.syspath_prepend(str(INTEGRATION))
    import worker_tasks

    worker_tasks.app.close()
    with settings_kept(worker_tasks.app):
        worker_tasks.app.conf.update(broker_url=url, result_backend=backend_url, accept_content=['json', 'msgpack'])
        yield worker_tasks
        worker_tasks.app.close()
