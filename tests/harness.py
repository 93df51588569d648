"""Processes under test: real workers (fastq's or Celery's) started as subprocesses, and waiting helpers."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

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
