"""Real servers for the test suite, started on free loopback ports in temporary directories.

One redis-server per test session (tests isolate themselves by database number or key prefix); restartable
in place for broker-restart tests. Never binds anything but 127.0.0.1.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(('127.0.0.1', 0))
        return int(s.getsockname()[1])


class RedisServer:
    """A redis-server of our own: `url(db)` for clients, `restart()` / `kill()` for fault tests."""

    def __init__(self, appendonly: bool = False, password: str | None = None) -> None:
        binary = shutil.which('redis-server')
        if binary is None:
            raise RuntimeError('redis-server is not installed (bash ci/install-deps.sh installs it)')
        self.binary = binary
        self.port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix='fastq-redis-'))
        self.appendonly = appendonly
        self.password = password
        self.proc: subprocess.Popen[bytes] | None = None
        self.start()

    def _args(self) -> list[str]:
        args = [
            self.binary,
            '--bind',
            '127.0.0.1',
            '--port',
            str(self.port),
            '--dir',
            str(self.dir),
            '--save',
            '',
            '--databases',
            '64',
            '--protected-mode',
            'yes',
            '--logfile',
            str(self.dir / 'redis.log'),
        ]
        if self.appendonly:
            args += ['--appendonly', 'yes', '--appendfsync', 'always']
        if self.password:
            args += ['--requirepass', self.password]
        return args

    def start(self) -> None:
        self.proc = subprocess.Popen(self._args(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.ping():
                return
            if self.proc.poll() is not None:
                raise RuntimeError(f'redis-server exited: {(self.dir / "redis.log").read_text(errors="replace")}')
            time.sleep(0.02)
        raise RuntimeError('redis-server did not start')

    def ping(self) -> bool:
        try:
            with socket.create_connection(('127.0.0.1', self.port), timeout=0.5) as s:
                if self.password:
                    s.sendall(f'AUTH {self.password}\r\n'.encode())
                    s.recv(64)
                s.sendall(b'PING\r\n')
                return s.recv(64).startswith(b'+PONG')
        except OSError:
            return False

    def url(self, db: int = 0) -> str:
        auth = f':{self.password}@' if self.password else ''
        return f'redis://{auth}127.0.0.1:{self.port}/{db}'

    def kill(self) -> None:
        """SIGKILL: what is not on disk is lost (appendfsync always keeps every write)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)

    def restart(self, down_for: float = 0.0) -> None:
        self.stop()
        if down_for:
            time.sleep(down_for)
        self.start()

    def close(self) -> None:
        self.stop()
        with contextlib.suppress(OSError):
            shutil.rmtree(self.dir)


class DatabasePool:
    """Hands each test its own Redis database number (the session's server has 64)."""

    def __init__(self, server: RedisServer) -> None:
        self.server = server
        self._next = 1

    def take(self) -> int:
        db = self._next
        self._next = self._next % 63 + 1
        with socket.create_connection(('127.0.0.1', self.server.port), timeout=5) as s:
            if self.server.password:
                s.sendall(f'AUTH {self.server.password}\r\n'.encode())
                s.recv(64)
            s.sendall(f'SELECT {db}\r\nFLUSHDB\r\n'.encode())
            time.sleep(0.01)
            s.recv(64)
        return db


def kill_process_group(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGKILL)
