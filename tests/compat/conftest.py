"""Celery and fastq side by side on one real redis-server: the same queues, results and pidbox."""

from __future__ import annotations

import os
import sys
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
def celery_client(url: str, backend_url: str) -> Iterator[Any]:
    """A Celery app (the real package) used as a client: send_task by name, AsyncResult, control."""
    from celery import Celery

    app = Celery('client', broker=url, backend=backend_url, set_as_current=False)
    app.conf.accept_content = ['json', 'msgpack']
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
