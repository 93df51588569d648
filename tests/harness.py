"""Processes under test: real workers (fastq's or Celery's) started as subprocesses, waiting helpers, and the
fault scenarios that tests/reliability runs on each broker."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

READY_TIMEOUT = 60.0


class WorkerProcess:
    def __init__(
        self, cwd: Path, env: dict[str, str], args: list[str], name: str, command: list[str] | None = None
    ) -> None:
        self.cwd = cwd
        self.logfile = cwd / f'{name}.log'
        self.args = args
        self.env = env
        self.command = command or [sys.executable, '-m', 'fastq', '-A', 'worker_tasks', 'worker']
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, wait: bool = True) -> WorkerProcess:
        log = open(self.logfile, 'ab')
        self.proc = subprocess.Popen(
            [*self.command, *self.args],
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


def lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


def wait_until(predicate: Callable[[], bool], timeout: float = 30.0, message: str = 'condition') -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.02)
    raise AssertionError(f'{message} not met within {timeout}s')


# --- fault scenarios (client: tests/integration/worker_tasks.py, its app on the test's broker) ---------------


def send_through_restart(
    client: Any, out: Path, count: int, restart_after: int, restart: Callable[[], None]
) -> list[str]:
    """Send `count` `record` tasks from a thread and call `restart()` once `restart_after` of them were sent,
    then wait until every task whose `apply_async` returned has run (at least once). Returns those tasks'
    arguments; every other one raised."""
    sent: list[str] = []
    failed: list[str] = []

    def produce() -> None:
        for i in range(count):
            try:
                client.record.apply_async((str(out), str(i)), ignore_result=True)
            except Exception:
                failed.append(str(i))
            else:
                sent.append(str(i))

    producer = threading.Thread(target=produce)
    producer.start()
    wait_until(lambda: len(sent) >= restart_after, timeout=60, message='first tasks sent')
    restart()
    producer.join(300)
    assert len(sent) + len(failed) == count
    wait_until(
        lambda: set(sent) <= {line.split()[1] for line in lines(out)},
        timeout=240,
        message=f'all {len(sent)} sent tasks executed',
    )
    return sent


def check_acks_late_survive_sigkill(client: Any, start_worker: Callable[..., WorkerProcess], out: Path) -> None:
    """acks_late tasks running when their worker is SIGKILLed are delivered again: a second worker completes all."""
    worker = start_worker('-c', '2')
    results = [client.slow_record.delay(str(out), str(i), 2) for i in range(4)]
    wait_until(lambda: len([x for x in lines(out) if x.startswith('start')]) >= 2, message='two running')
    os.killpg(worker.pid, signal.SIGKILL)
    assert worker.proc is not None
    worker.proc.wait(10)
    start_worker(name='second')
    assert sorted(r.get(timeout=120) for r in results) == ['0', '1', '2', '3']
    done = {line.split()[1] for line in lines(out) if line.startswith('done')}
    assert done == {'0', '1', '2', '3'}


@contextlib.contextmanager
def settings_kept(app: Any) -> Iterator[None]:
    """Put back the settings a test changed on a module-level app shared by the tests of one process (with
    pytest-xdist a test's leftovers would reach whichever test that process runs next)."""
    conf = app.conf
    saved = dict(conf._changes)
    try:
        yield
    finally:
        conf._changes.clear()
        conf._changes.update(saved)
        conf._invalidate()
