"""Real worker processes on the SQLite broker, started and stopped by the tests.

`worker` starts `python -m fastq -A worker_tasks worker ...` in the test's temporary directory with the
test's broker and backend URLs in its environment, waits for "ready.", and stops it at the end (SIGTERM,
then SIGKILL if it hangs). Its log is kept in a file and shown when a test fails.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.harness import WorkerProcess, settings_kept

HERE = Path(__file__).resolve().parent


@pytest.fixture(params=['sqlite', 'redis'])
def broker_kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def urls(tmp_path: Path, broker_kind: str, request: pytest.FixtureRequest) -> dict[str, str]:
    """Broker and backend URLs for this test: SQLite files, or a Redis database of its own (results in Redis
    too once the Redis backend exists, else in SQLite)."""
    if broker_kind == 'redis':
        url = request.getfixturevalue('redis_url')
        from fastq.backends import BACKENDS

        backend = url if 'redis' in BACKENDS else f'sqlite:///{tmp_path}/results.sqlite3'
        return {'FASTQ_BROKER_URL': url, 'FASTQ_RESULT_BACKEND': backend}
    return {
        'FASTQ_BROKER_URL': f'sqlite:///{tmp_path}/broker.sqlite3',
        'FASTQ_RESULT_BACKEND': f'sqlite:///{tmp_path}/results.sqlite3',
    }


@pytest.fixture
def tasks(monkeypatch: pytest.MonkeyPatch, urls: dict[str, str]) -> Iterator[Any]:
    """The `worker_tasks` module, its app pointed at this test's SQLite files."""
    monkeypatch.syspath_prepend(str(HERE))
    import worker_tasks

    worker_tasks.app.close()
    with settings_kept(worker_tasks.app):
        worker_tasks.app.conf.update(broker_url=urls['FASTQ_BROKER_URL'], result_backend=urls['FASTQ_RESULT_BACKEND'])
        yield worker_tasks
        worker_tasks.app.close()


@pytest.fixture
def worker(
    tmp_path: Path, urls: dict[str, str], request: pytest.FixtureRequest
) -> Iterator[Callable[..., WorkerProcess]]:
    """A factory: `worker('-c', '2')` starts a worker and returns its handle; all are stopped at teardown."""
    started: list[WorkerProcess] = []
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(HERE), os.environ.get('PYTHONPATH', '')]), **urls)
    env.pop('PYTEST_CURRENT_TEST', None)

    def start(*args: str, wait: bool = True, extra_env: dict[str, str] | None = None) -> WorkerProcess:
        base = ['-l', 'info', '-c', '2']
        w = WorkerProcess(tmp_path, {**env, **(extra_env or {})}, [*base, *args], f'worker{len(started)}')
        started.append(w)
        return w.start(wait=wait)

    yield start
    failed = getattr(request.node, 'rep_call', None)
    for w in started:
        if w.proc is not None and w.proc.poll() is None:
            try:
                w.stop(30)
            except AssertionError:
                pass
        if failed is not None and failed.failed:
            print(f'--- {w.logfile.name} ---\n{w.log}')


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    rep = yield
    setattr(item, f'rep_{rep.when}', rep)
    return rep
