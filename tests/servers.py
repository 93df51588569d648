"""Real servers for the test suite, started on free loopback ports in temporary directories.

One redis-server per test session (tests isolate themselves by database number or key prefix); restartable
in place for broker-restart tests. A RabbitMQ node, a PostgreSQL cluster and a memcached likewise, started on
first use.
Never binds anything but 127.0.0.1.
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
        if self.proc is not None and self.proc.poll() is None:
            return  # (already running: the constructor starts it; a second server would leak the first)
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


#: What boto3 sees in the tests: dummy credentials and no config files, so nothing can reach AWS (every client
#: is also given the moto server's endpoint).
AWS_TEST_ENV = {
    'AWS_ACCESS_KEY_ID': 'testing',
    'AWS_SECRET_ACCESS_KEY': 'testing',
    'AWS_SESSION_TOKEN': 'testing',
    'AWS_DEFAULT_REGION': 'us-east-1',
    'AWS_CONFIG_FILE': os.devnull,
    'AWS_SHARED_CREDENTIALS_FILE': os.devnull,
    'AWS_EC2_METADATA_DISABLED': 'true',
}


class SQSServer:
    """moto's standalone server (`python -m moto.server`) as a local SQS: `url()` for brokers, `client()` to look.

    One per session; tests keep apart by `queue_name_prefix` (`prefix()`). Credentials are dummies (moto takes
    any): the URL's host is the endpoint, so boto3 never resolves an AWS one.
    """

    def __init__(self) -> None:
        import sys

        self.port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix='fastq-sqs-'))
        with open(self.dir / 'moto.log', 'wb') as log:
            self.proc = subprocess.Popen(
                [sys.executable, '-m', 'moto.server', '-H', '127.0.0.1', '-p', str(self.port)],
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, **AWS_TEST_ENV},
            )
        self._count = 0
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.ping():
                return
            if self.proc.poll() is not None:
                raise RuntimeError(f'moto server exited: {(self.dir / "moto.log").read_text(errors="replace")}')
            time.sleep(0.05)
        raise RuntimeError('moto server did not start')

    @property
    def endpoint(self) -> str:
        return f'http://127.0.0.1:{self.port}'

    def ping(self) -> bool:
        try:
            with socket.create_connection(('127.0.0.1', self.port), timeout=0.5):
                return True
        except OSError:
            return False

    def url(self) -> str:
        return f'sqs://testing:testing@127.0.0.1:{self.port}'

    def prefix(self) -> str:
        """A queue-name prefix no other test uses."""
        self._count += 1
        return f't{os.getpid()}-{self._count}-'

    def client(self) -> object:
        import boto3

        return boto3.client(
            'sqs',
            region_name='us-east-1',
            endpoint_url=self.endpoint,
            aws_access_key_id='testing',
            aws_secret_access_key='testing',
        )

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        shutil.rmtree(self.dir, ignore_errors=True)


class MemcachedServer:
    """A memcached of our own on a free loopback port (`-U 0`: no UDP). `url()` is the result backend URL;
    `flush()` empties it between tests. As root, memcached wants a user to run as: `-u root` keeps it ours."""

    def __init__(self, memory_mb: int = 64) -> None:
        binary = shutil.which('memcached')
        if binary is None:
            raise RuntimeError('memcached is not installed (bash ci/install-deps.sh installs it)')
        self.port = free_port()
        args = [binary, '-l', '127.0.0.1', '-p', str(self.port), '-U', '0', '-m', str(memory_mb)]
        if os.getuid() == 0:
            args += ['-u', 'root']
        self.proc: subprocess.Popen[bytes] | None = subprocess.Popen(
            args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self._command(b'version\r\n').startswith(b'VERSION'):
                return
            if self.proc.poll() is not None:
                err = self.proc.stderr.read() if self.proc.stderr else b''
                raise RuntimeError(f'memcached exited: {err.decode(errors="replace")}')
            time.sleep(0.02)
        raise RuntimeError('memcached did not start')

    def _command(self, line: bytes) -> bytes:
        try:
            with socket.create_connection(('127.0.0.1', self.port), timeout=2) as s:
                s.sendall(line)
                return s.recv(256)
        except OSError:
            return b''

    def url(self) -> str:
        return f'cache+memcached://127.0.0.1:{self.port}/'

    def flush(self) -> None:
        if not self._command(b'flush_all\r\n').startswith(b'OK'):
            raise RuntimeError('memcached did not flush')

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        if self.proc is not None and self.proc.stderr is not None:
            self.proc.stderr.close()


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


class RabbitServer:
    """A RabbitMQ node of our own (own node name, ports and data directory), restartable in place.

    The Debian wrapper runs the node as user `rabbitmq`, so its directories are handed to that user. Tests
    isolate themselves by vhost (`vhost()` creates a fresh one). Starting takes a few seconds: one node per
    test session, and one of their own for the few tests that need other settings (`extra_config`: lines added
    to rabbitmq.conf; `advanced`: the node's advanced.config, an Erlang term list). The benchmarks start theirs
    from here too (`name` tells the nodes apart; `tls=False` skips the certificate and the TLS listener they do
    not use).
    """

    def __init__(
        self, name: str = 'fastq', tls: bool = True, extra_config: str = '', advanced: str | None = None
    ) -> None:
        if shutil.which('rabbitmq-server') is None:
            raise RuntimeError('rabbitmq-server is not installed (bash ci/install-deps.sh installs it)')
        self.port = free_port()
        self.dist_port = free_port()
        self.tls_port = free_port()
        self.node = f'{name}-{os.urandom(4).hex()}@localhost'
        self.dir = Path(tempfile.mkdtemp(prefix=f'{name}-rabbit-'))
        for sub in ('mnesia', 'log'):
            (self.dir / sub).mkdir()
        config = f'loopback_users = none\nlisteners.tcp.default = 127.0.0.1:{self.port}\n'
        self.cert = self._make_certificate() if tls else None
        if self.cert is not None:  # a TLS listener too, with a self-signed certificate for localhost
            key = self.dir / 'key.pem'
            config += (
                f'listeners.ssl.default = 127.0.0.1:{self.tls_port}\nssl_options.cacertfile = {self.cert}\n'
                f'ssl_options.certfile = {self.cert}\nssl_options.keyfile = {key}\n'
                'ssl_options.verify = verify_none\nssl_options.fail_if_no_peer_cert = false\n'
            )
        (self.dir / 'rabbitmq.conf').write_text(config + extra_config)
        self.advanced = advanced
        if advanced is not None:
            (self.dir / 'advanced.config').write_text(advanced)
        subprocess.run(['chown', '-R', 'rabbitmq:rabbitmq', str(self.dir)], check=False)
        self.dir.chmod(0o755)
        self._vhosts = 0
        self.start()

    def _make_certificate(self) -> Path | None:
        if shutil.which('openssl') is None:
            return None
        cert, key = self.dir / 'cert.pem', self.dir / 'key.pem'
        done = subprocess.run(
            ['openssl', 'req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-days', '2', '-subj', '/CN=localhost',
             '-addext', 'subjectAltName=DNS:localhost,IP:127.0.0.1', '-keyout', str(key), '-out', str(cert)],
            capture_output=True, check=False,
        )  # fmt: skip
        return cert if done.returncode == 0 else None

    def _env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            RABBITMQ_NODENAME=self.node,
            RABBITMQ_NODE_PORT=str(self.port),
            RABBITMQ_NODE_IP_ADDRESS='127.0.0.1',
            ERL_EPMD_ADDRESS='127.0.0.1',  # an epmd started for this node listens on loopback only
            RABBITMQ_DIST_PORT=str(self.dist_port),
            RABBITMQ_MNESIA_BASE=str(self.dir / 'mnesia'),
            RABBITMQ_LOG_BASE=str(self.dir / 'log'),
            RABBITMQ_CONFIG_FILE=str(self.dir / 'rabbitmq'),
            RABBITMQ_ENABLED_PLUGINS_FILE=str(self.dir / 'enabled_plugins'),
            RABBITMQ_PID_FILE=str(self.dir / 'mnesia' / 'node.pid'),
        )
        if self.advanced is not None:
            env['RABBITMQ_ADVANCED_CONFIG_FILE'] = str(self.dir / 'advanced.config')
        return env

    def ctl(self, *args: str, check: bool = True, timeout: float = 60) -> str:
        done = subprocess.run(
            ['rabbitmqctl', '-n', self.node, *args],
            env=self._env(),
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if check and done.returncode != 0:
            raise RuntimeError(f'rabbitmqctl {" ".join(args)}: {(done.stderr or done.stdout).strip()}')
        return done.stdout

    def ping(self) -> bool:
        """Whether the node is ready: the rabbit app started (not only the Erlang node, which is all
        `rabbitmq-diagnostics ping` waits for) and its AMQP port accepting connections."""
        done = subprocess.run(
            ['rabbitmqctl', '-n', self.node, '-t', '5', 'await_startup'],
            env=self._env(),
            capture_output=True,
            timeout=60,
            check=False,
        )
        return done.returncode == 0 and self._listening()

    def _listening(self) -> bool:
        with contextlib.suppress(OSError), socket.create_connection(('127.0.0.1', self.port), timeout=1):
            return True
        return False

    def start(self) -> None:
        subprocess.run(['rabbitmq-server', '-detached'], env=self._env(), capture_output=True, check=False)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if self.ping():
                return
            time.sleep(0.5)
        logs = '\n'.join(p.read_text(errors='replace')[-3000:] for p in (self.dir / 'log').glob('*.log'))
        raise RuntimeError(f'rabbitmq-server did not start:\n{logs}')

    def stop(self) -> None:
        self.ctl('stop', check=False, timeout=120)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and self._listening():
            time.sleep(0.2)

    def restart(self, down_for: float = 0.0) -> None:
        self.stop()
        if down_for:
            time.sleep(down_for)
        self.start()

    def vhost(self, name: str | None = None) -> str:
        """A vhost that user guest may use, `name` or a fresh one (tests keep their queues apart this way)."""
        if name is None:
            self._vhosts += 1
            name = f't{self._vhosts}-{os.urandom(2).hex()}'
        self.ctl('add_vhost', name)
        self.ctl('set_permissions', '-p', name, 'guest', '.*', '.*', '.*')
        return name

    def url(self, vhost: str = '/', tls: bool = False) -> str:
        from urllib.parse import quote

        if tls:
            return f'amqps://guest:guest@localhost:{self.tls_port}/{quote(vhost, safe="")}'
        return f'amqp://guest:guest@127.0.0.1:{self.port}/{quote(vhost, safe="")}'

    def close(self) -> None:
        self.stop()
        with contextlib.suppress(OSError):
            shutil.rmtree(self.dir)


def postgres_bindir() -> Path | None:
    """Where initdb and postgres are: on PATH, else Debian's /usr/lib/postgresql/<version>/bin (newest)."""
    found = shutil.which('initdb')
    if found is not None and shutil.which('postgres') is not None:
        return Path(found).resolve().parent
    versions = sorted(Path('/usr/lib/postgresql').glob('*/bin/postgres'), key=lambda p: int(p.parent.parent.name))
    return versions[-1].parent if versions else None


class PostgresServer:
    """A PostgreSQL cluster of our own: initdb in a temp dir, trust auth, listening on 127.0.0.1 only (its Unix
    socket in that dir), durability off for speed. `database()` creates a fresh database for a test.

    PostgreSQL refuses to run as root, so as root the cluster belongs to the `postgres` user Debian's package
    creates, as RabbitServer's node belongs to `rabbitmq`.
    """

    def __init__(self) -> None:
        bindir = postgres_bindir()
        if bindir is None:
            raise RuntimeError('PostgreSQL is not installed (bash ci/install-deps.sh installs it)')
        self.bindir = bindir
        self.port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix='fastq-pg-'))
        self.data = self.dir / 'data'
        self.logfile = self.dir / 'postgres.log'
        self.user = 'postgres' if os.getuid() == 0 else None
        if self.user is not None:
            subprocess.run(['chown', '-R', f'{self.user}:', str(self.dir)], check=True)
        self._databases = 0
        self.proc: subprocess.Popen[bytes] | None = None
        self._run(
            [str(bindir / 'initdb'), '-D', str(self.data), '-U', 'postgres', '--auth=trust', '-E', 'UTF8',
             '--locale=C', '--no-sync', '--no-instructions'],
        )  # fmt: skip
        self.start()

    def _run(self, args: list[str]) -> None:
        done = subprocess.run(args, cwd=self.dir, user=self.user, capture_output=True, check=False)
        if done.returncode != 0:
            raise RuntimeError(f'{args[0]} failed: {(done.stderr or done.stdout).decode(errors="replace")}')

    def start(self) -> None:
        settings = {
            'listen_addresses': '127.0.0.1',
            'port': str(self.port),
            'unix_socket_directories': str(self.dir),
            'fsync': 'off',
            'synchronous_commit': 'off',
            'full_page_writes': 'off',
            'max_connections': '300',
            'timezone': 'UTC',
        }
        args = [str(self.bindir / 'postgres'), '-D', str(self.data)]
        for name, value in settings.items():
            args += ['-c', f'{name}={value}']
        with open(self.logfile, 'ab') as log:
            self.proc = subprocess.Popen(args, cwd=self.dir, user=self.user, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.ping():
                return
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        raise RuntimeError(f'postgres did not start:\n{self.logfile.read_text(errors="replace")[-3000:]}')

    def ping(self) -> bool:
        done = subprocess.run(
            [str(self.bindir / 'pg_isready'), '-q', '-h', '127.0.0.1', '-p', str(self.port), '-U', 'postgres'],
            capture_output=True,
            check=False,
        )
        return done.returncode == 0

    def url(self, database: str = 'postgres', scheme: str = 'postgresql') -> str:
        return f'{scheme}://postgres@127.0.0.1:{self.port}/{database}'

    def execute(self, sql: str, database: str = 'postgres') -> None:
        import psycopg

        with psycopg.connect(
            host='127.0.0.1', port=self.port, user='postgres', dbname=database, autocommit=True
        ) as conn:
            conn.execute(sql)

    def database(self) -> str:
        """A new empty database's name."""
        self._databases += 1
        name = f't{self._databases}_{os.urandom(3).hex()}'
        self.execute(f'CREATE DATABASE {name}')
        return name

    def stop(self) -> None:
        """Fast shutdown (SIGINT: clients are disconnected), SIGKILL if it hangs."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)

    def close(self) -> None:
        self.stop()
        with contextlib.suppress(OSError):
            shutil.rmtree(self.dir)
