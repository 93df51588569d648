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
from collections.abc import Callable, Iterator, Sequence
from typing import Any, TypeVar
from urllib.parse import unquote

from fastq.exceptions import BrokerConnectionError, ImproperlyConfigured

logger = logging.getLogger('fastq.sqlite')
T = TypeVar('T')

LOCKED_RETRY_FOR = 60.0  # seconds of "database is locked" tolerated before the error propagates
# SQLite's own busy handler sleeps 1 ms, then 2, 5, 10 ... while another process holds the write lock for a
# few dozen microseconds; we wait ourselves instead, starting at 50 us, so contention costs microseconds.
AUTOCHECKPOINT_PAGES = 20000
JOURNAL_SIZE_LIMIT = 64 * 1024 * 1024
FIRST_BACKOFF = 0.00005
MAX_BACKOFF = 0.005


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
        self._all: list[tuple[threading.Thread, sqlite3.Connection]] = []
        self._all_lock = threading.Lock()

    def _open(self) -> sqlite3.Connection:
        directory = os.path.dirname(self.path)
        try:
            if directory:
                os.makedirs(directory, exist_ok=True)
            conn = sqlite3.connect(self.path, timeout=LOCKED_RETRY_FOR, isolation_level=None, check_same_thread=False)
            # Switching a new file to WAL needs an exclusive lock, and SQLite answers "locked" at once (no busy
            # wait, to avoid a deadlock) while another process holds a write transaction: creating the tables.
            self._retry(lambda: conn.execute('PRAGMA journal_mode=WAL'))
            conn.execute(f'PRAGMA synchronous={self.synchronous}')
            conn.execute('PRAGMA busy_timeout=0')
            # With readers always present (workers), an automatic checkpoint cannot finish and is retried,
            # with an fsync, on every commit past the threshold. Workers checkpoint in the background instead
            # (`checkpoint`); the high threshold only bounds the WAL when no worker runs.
            conn.execute(f'PRAGMA wal_autocheckpoint={AUTOCHECKPOINT_PAGES}')
            conn.execute(f'PRAGMA journal_size_limit={JOURNAL_SIZE_LIMIT}')
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
                self._all.append((threading.current_thread(), conn))
        return conn

    def setup(self) -> None:
        """Create the tables (idempotent); raises BrokerConnectionError if the file cannot be used."""
        with self.write() as conn:
            for statement in filter(None, (s.strip() for s in self.schema.split(';'))):
                conn.execute(statement)

    def _retry(self, run: Callable[[], T]) -> T:
        """Run `run`, retrying with a short backoff while another connection holds the lock."""
        delay = FIRST_BACKOFF
        deadline = 0.0
        while True:
            try:
                return run()
            except sqlite3.OperationalError as exc:
                if not _is_busy(exc):
                    raise
                now = time.monotonic()
                if not deadline:
                    deadline = now + LOCKED_RETRY_FOR
                elif now > deadline:
                    raise
                if delay >= MAX_BACKOFF and int(now) != int(now - delay):
                    logger.debug('%s is busy; still retrying', self.path)
                time.sleep(delay * (0.5 + random.random()))
                delay = min(delay * 2, MAX_BACKOFF)

    def query(self, sql: str, params: Sequence[object] = ()) -> list[Any]:
        """Rows of a read statement (retried while the database is busy)."""
        conn = self.connection()
        return self._retry(lambda: conn.execute(sql, params).fetchall())

    @contextlib.contextmanager
    def write(self) -> Iterator[sqlite3.Connection]:
        """A write transaction; waits for the write lock with a short backoff instead of SQLite's."""
        conn = self.connection()
        self._retry(lambda: conn.execute('BEGIN IMMEDIATE'))
        try:
            yield conn
        except BaseException:
            conn.execute('ROLLBACK')
            raise
        else:
            conn.execute('COMMIT')

    def checkpoint(self) -> None:
        """Copy committed pages from the WAL into the database without blocking anyone (a worker calls this
        every second); restart the WAL from the beginning when no reader needs its older frames."""
        conn = self.connection()
        try:
            busy, wal_pages, done = conn.execute('PRAGMA wal_checkpoint(PASSIVE)').fetchone()
            if not busy and wal_pages > 0 and wal_pages == done:
                conn.execute('PRAGMA wal_checkpoint(TRUNCATE)')
        except sqlite3.OperationalError as exc:
            if not _is_busy(exc):
                raise

    def close(self) -> None:
        if self._pid != os.getpid():
            return
        with self._all_lock:
            conns, self._all = self._all, []
        for thread, conn in conns:
            # Another live thread may be inside a query on its connection: closing it under that thread
            # crashes the process (SIGSEGV). Dropping our reference closes it once that thread lets go too.
            if thread is threading.current_thread() or not thread.is_alive():
                with contextlib.suppress(sqlite3.Error):
                    conn.close()
        self._local = threading.local()


def _is_busy(exc: sqlite3.OperationalError) -> bool:
    text = str(exc)
    return 'locked' in text or 'busy' in text


def placeholders(n: int) -> str:
    return ','.join('?' * n)


def chunks(items: list[object] | tuple[object, ...], size: int = 500) -> Iterator[list[object]]:
    for i in range(0, len(items), size):
        yield list(items[i : i + size])
