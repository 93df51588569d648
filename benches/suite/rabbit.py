"""A RabbitMQ node of the bench's own, started fresh for one invocation and stopped at its end.

Own node name, loopback ports (AMQP and Erlang distribution) and data directory, so it never meets another
node on the machine; the Debian wrapper runs the node as user `rabbitmq`, so its directories are handed to
that user. One vhost per engine (`bench-<engine>`), emptied of queues before every workload, so each workload
starts from the same state and the engines' declarations never meet. Only 127.0.0.1 is ever used.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from urllib.parse import quote

__all__ = ['RabbitNode', 'free_port']


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(('127.0.0.1', 0))
        return int(s.getsockname()[1])


class RabbitNode:
    def __init__(self) -> None:
        if shutil.which('rabbitmq-server') is None:
            raise RuntimeError('rabbitmq-server is not installed (bash ci/install-deps.sh installs it)')
        self.port = free_port()
        self.dist_port = free_port()
        self.node = f'fastq-bench-{os.urandom(3).hex()}@localhost'
        self.dir = Path(tempfile.mkdtemp(prefix='fastq-bench-rabbit-'))
        for sub in ('mnesia', 'log'):
            (self.dir / sub).mkdir()
        (self.dir / 'rabbitmq.conf').write_text(
            f'loopback_users = none\nlisteners.tcp.default = 127.0.0.1:{self.port}\n'
        )
        subprocess.run(['chown', '-R', 'rabbitmq:rabbitmq', str(self.dir)], check=False)
        self.dir.chmod(0o755)
        self.started = False
        self.start()

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            RABBITMQ_NODENAME=self.node,
            RABBITMQ_NODE_PORT=str(self.port),
            RABBITMQ_NODE_IP_ADDRESS='127.0.0.1',
            RABBITMQ_DIST_PORT=str(self.dist_port),
            RABBITMQ_MNESIA_BASE=str(self.dir / 'mnesia'),
            RABBITMQ_LOG_BASE=str(self.dir / 'log'),
            RABBITMQ_CONFIG_FILE=str(self.dir / 'rabbitmq'),
            RABBITMQ_ENABLED_PLUGINS_FILE=str(self.dir / 'enabled_plugins'),
            RABBITMQ_PID_FILE=str(self.dir / 'mnesia' / 'node.pid'),
            ERL_EPMD_ADDRESS='127.0.0.1',  # an epmd started for this node listens on loopback only
        )
        return env

    def ctl(self, *args: str, check: bool = True, timeout: float = 60) -> str:
        done = subprocess.run(
            ['rabbitmqctl', '-n', self.node, *args],
            env=self.env(),
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if check and done.returncode != 0:
            raise RuntimeError(f'rabbitmqctl {" ".join(args)}: {(done.stderr or done.stdout).strip()}')
        return done.stdout

    def start(self) -> None:
        subprocess.run(['rabbitmq-server', '-detached'], env=self.env(), capture_output=True, check=False)
        self.started = True
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            # `ping` answers as soon as the Erlang node is up; await_startup waits for the rabbit app itself
            done = subprocess.run(
                ['rabbitmqctl', '-n', self.node, '-t', '5', 'await_startup'],
                env=self.env(),
                capture_output=True,
                timeout=60,
                check=False,
            )
            if done.returncode == 0 and self._listening():
                return
            time.sleep(0.5)
        logs = '\n'.join(p.read_text(errors='replace')[-3000:] for p in (self.dir / 'log').glob('*.log'))
        raise RuntimeError(f'rabbitmq-server did not start:\n{logs}')

    def _listening(self) -> bool:
        with contextlib.suppress(OSError), socket.create_connection(('127.0.0.1', self.port), timeout=1):
            return True
        return False

    def version(self) -> str:
        for line in self.ctl('status', check=False).splitlines():
            if line.startswith('RabbitMQ version:'):
                return line.split(':', 1)[1].strip()
        return 'unknown'

    def add_vhost(self, name: str) -> str:
        """Create vhost `name` for user guest; returns its AMQP URL."""
        self.ctl('add_vhost', name)
        self.ctl('set_permissions', '-p', name, 'guest', '.*', '.*', '.*')
        return self.url(name)

    def url(self, vhost: str = '/') -> str:
        return f'amqp://guest:guest@127.0.0.1:{self.port}/{quote(vhost, safe="")}'

    def queues(self, vhost: str) -> list[tuple[str, int, int, int]]:
        """(name, ready, unacknowledged, consumers) of every queue in `vhost`, read from the node."""
        out = self.ctl(
            '-q', 'list_queues', '-p', vhost, '--no-table-headers',
            'name', 'messages_ready', 'messages_unacknowledged', 'consumers',
        )  # fmt: skip
        rows = []
        for line in out.splitlines():
            parts = line.split('\t')
            if len(parts) == 4:
                rows.append((parts[0], int(parts[1]), int(parts[2]), int(parts[3])))
        return rows

    def clear(self, vhost: str) -> None:
        """Delete every queue of `vhost` (exchanges stay: declared identically by the next run)."""
        names = [name for name, *_ in self.queues(vhost)]
        if not names:
            return
        import amqp

        conn = amqp.Connection(f'127.0.0.1:{self.port}', virtual_host=vhost)
        conn.connect()
        try:
            channel = conn.channel()
            for name in names:
                channel.queue_delete(name)
        finally:
            conn.close()
        left = self.queues(vhost)
        if left:
            raise RuntimeError(f'queues left in vhost {vhost!r} after deleting them: {left}')

    def stop(self) -> None:
        if not self.started:
            return
        self.ctl('stop', check=False, timeout=120)
        self.started = False
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and self._listening():
            time.sleep(0.2)

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)
