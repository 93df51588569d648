"""Worker processes and the client for the fault tests, on the servers each test module names.

A module defines `worker_env`: the workers' environment (FASTQ_BROKER_URL, FASTQ_RESULT_BACKEND and any other
setting); the client app sends to the same broker and backend. `start_worker('-c', '1')` starts
`python -m fastq -A worker_tasks worker` (tests/integration/worker_tasks.py) in the test's temporary
directory and waits for "ready."; every worker still running at teardown is stopped (SIGKILLed if it hangs).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.harness import WorkerProcess

INTEGRATION = Path(__file__).resolve().parent.parent / 'integration'


@pytest.fixture
def publish_retries() -> int:
    """How often the client retries a publish while the server is down (a module may ask for more)."""
    return 30


@pytest.fixture
def client(monkeypatch: pytest.MonkeyPatch, worker_env: dict[str, str], publish_retries: int) -> Iterator[Any]:
    """The `worker_tasks` module, its app pointed at this test's broker and backend."""
    monkeypatch.syspath_prepend(str(INTEGRATION))
    import worker_tasks

    worker_tasks.app.close()
    worker_tasks.app.conf.update(
        broker_url=worker_env['FASTQ_BROKER_URL'],
        result_backend=worker_env['FASTQ_RESULT_BACKEND'],
        task_publish_retry_policy={
            'max_retries': publish_retries, 'interval_start': 0.1, 'interval_step': 0.2, 'interval_max': 1,
        },
    )  # fmt: skip
    yield worker_tasks
    worker_tasks.app.close()


@pytest.fixture
def start_worker(tmp_path: Path, worker_env: dict[str, str]) -> Iterator[Callable[..., WorkerProcess]]:
    """A factory: `start_worker(*args, name='worker')` starts a worker and returns its handle."""
    started: list[WorkerProcess] = []
    env = dict(os.environ, PYTHONPATH=str(INTEGRATION), **worker_env)
    env.pop('PYTEST_CURRENT_TEST', None)

    def start(*args: str, name: str = 'worker') -> WorkerProcess:
        w = WorkerProcess(tmp_path, env, ['-l', 'info', '-c', '2', *args], name)
        started.append(w)
        return w.start()

    yield start
    while started:
        w = started.pop()
        if w.proc is not None and w.proc.poll() is None:
            try:
                w.stop(30)
            except AssertionError:
                w.kill()
