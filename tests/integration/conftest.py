"""Real worker processes on the SQLite broker, started and stopped by the tests.

`worker` starts `python -m fastq -A worker_tasks worker ...` in the test's temporary directory with the
test's broker and backend URLs in its environment, waits for "ready.", and stops it at the end (SIGTERM,
then SIGKILL if it hangs). Its log is kept in a file and shown when a test fails.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

HERE = Path(__file__).resolve().parent
READY_TIMEOUT = 60.0


class WorkerProcess:
    def __init__(self, cwd: Path, env: dict[str, str], args: list[str], name: str) -> None:
        self.cwd = cwd
        self.logfile = cwd / f'{name}.log'
        self.args = args
        self.env = env
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, wait: bool = True) -> WorkerProcess:
        log = open(self.logfile, 'ab')
        self.proc = subprocess.Popen(
            [sys.executable, '-m', 'fastq', '-A', 'worker_tasks', 'worker', *self.args],
            cwd=self.cwd,
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        if wait:
            self.wait_for('ready.', READY_TIMEOUT)
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    @property
    def log(self) -> str:
        return self.logfile.read_text(errors='replace') if self.logfile.exists() else ''

    def wait_for(self, text: str, timeout: float = 30.0, count: int = 1) -> None:
        """Wait until `text` appears `count` times in the log (fails with the log if the worker exits)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.log.count(text) >= count:
                return
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError(f'worker exited ({self.proc.returncode}) before {text!r}:\n{self.log}')
            time.sleep(0.02)
        raise AssertionError(f'{text!r} not seen in {timeout}s:\n{self.log}')

    def signal(self, signum: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(signum)

    def stop(self, timeout: float = 60.0) -> int:
        """Warm shutdown; returns the exit code."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(f'worker did not stop within {timeout}s:\n{self.log}') from None

    def kill(self) -> None:
        """SIGKILL the worker's whole process group (parent, fork server, children)."""
        assert self.proc is not None
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(30)

    def children(self) -> list[int]:
        out = subprocess.run(['pgrep', '-g', str(self.pid)], capture_output=True, text=True).stdout.split()
        return [int(p) for p in out if int(p) != self.pid]


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


def lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


def wait_until(predicate: Callable[[], bool], timeout: float = 30.0, message: str = 'condition') -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.02)
    raise AssertionError(f'{message} not met within {timeout}s')
