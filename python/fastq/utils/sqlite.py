"""SQLite plumbing shared by the embedded broker and result backend.

One `Database` per file and process: a connection per thread (sqlite3 connections are not shared between
threads), WAL mode so readers never block the writer, `BEGIN IMMEDIATE` for writes so two writers never
deadlock upgrading a read lock, and a retry with backoff when another process holds the write lock longer
than the busy timeout. After a fork the child opens fresh connections instead of reusing the parent's.
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
import sqlite3
import threading
import time
from collections.abc import Iterator
from urllib.parse import unquote

from fastq.exceptions import BrokerConnectionError, ImproperlyConfigured

logger = logging.getLogger('fastq.sqlite')

BUSY_TIMEOUT_MS = 5000
LOCKED_RETRY_FOR = 60.0  # seconds of "database is locked" tolerated before the error propagates


def path_from_url(url: str, setting: str) -> str:
    """`sqlite:///rel.db` -> `rel.db` (relative to the working directory), `sqlite:////abs.db` -> `/abs.db`."""
    scheme, sep, rest = url.partition('://')
    if not sep or not scheme.split('+')[-1].lower().startswith('sqlite'):
        raise ImproperlyConfigured(f'{setting}: {url!r} is not a sqlite:// URL')
    path = unquote(rest.split('?', 1)[0])
    path = path.removeprefix('/')
    if not path or path == ':memory:':
        raise ImproperlyConfigured(
            f'{setting}: {url!r} names no file; an in-memory SQLite database cannot be shared between '
            f'processes (write sqlite:///fastq.sqlite3, or use memory:// for tests)'
        )
    return os.path.abspath(path)


class Database:
    """A SQLite file used by several threads and processes."""

    def __init__(self, path: str, url: str, schema: str, synchronous: str = 'NORMAL') -> None:
        self.path = path
        self.url = url
        self.schema = schema
        self.synchronous = synchronous
        self._local = threading.local()
        self._pid = os.getpid()
        self._all: list[sqlite3.Connection] = []
        self._all_lock = threading.Lock()

    def _open(self) -> sqlite3.Connection:
        directory = os.path.dirname(self.path)
        try:
            if directory:
                os.makedirs(directory, exist_ok=True)
            conn = sqlite3.connect(
                self.path, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None, check_same_thread=False
            )
            conn.execute('PRAGMA journal_mode=WAL')
            conn.execute(f'PRAGMA synchronous={self.synchronous}')
            conn.execute(f'PRAGMA busy_timeout={BUSY_TIMEOUT_MS}')
        except (sqlite3.Error, OSError) as exc:
            from fastq.utils.text import mask_url

            raise BrokerConnectionError(f'cannot open {mask_url(self.url)} ({self.path}): {exc}') from exc
        return conn

    def connection(self) -> sqlite3.Connection:
        """This thread's connection (opened on first use, and again after a fork)."""
        if self._pid != os.getpid():
            self._local = threading.local()
            self._pid = os.getpid()
            self._all = []
        conn: sqlite3.Connection | None = getattr(self._local, 'conn', None)
        if conn is None:
            conn = self._open()
            self._local.conn = conn
            with self._all_lock:
                self._all.append(conn)
        return conn

    def setup(self) -> None:
        """Create the tables (idempotent); raises BrokerConnectionError if the file cannot be used."""
        with self.write() as conn:
            for statement in filter(None, (s.strip() for s in self.schema.split(';'))):
                conn.execute(statement)

    @contextlib.contextmanager
    def write(self) -> Iterator[sqlite3.Connection]:
        """A write transaction, retried from the start if the write lock stays busy."""
        conn = self.connection()
        deadline = time.monotonic() + LOCKED_RETRY_FOR
        delay = 0.005
        while True:
            try:
                conn.execute('BEGIN IMMEDIATE')
                break
            except sqlite3.OperationalError as exc:
                if 'locked' not in str(exc) and 'busy' not in str(exc):
                    raise
                if time.monotonic() > deadline:
                    raise
                logger.warning('%s is busy; retrying in %.2fs', self.path, delay)
                time.sleep(delay * (1 + random.random()))
                delay = min(delay * 2, 1.0)
        try:
            yield conn
        except BaseException:
            conn.execute('ROLLBACK')
            raise
        else:
            conn.execute('COMMIT')

    def close(self) -> None:
        if self._pid != os.getpid():
            return
        with self._all_lock:
            conns, self._all = self._all, []
        for conn in conns:
            with contextlib.suppress(sqlite3.Error):
                conn.close()
        self._local = threading.local()


def placeholders(n: int) -> str:
    return ','.join('?' * n)


def chunks(items: list[object] | tuple[object, ...], size: int = 500) -> Iterator[list[object]]:
    for i in range(0, len(items), size):
        yield list(items[i : i + size])
