"""One SQLAlchemy engine per process, and the retry loop Celery's database backend runs around every call.

A forked pool child inherits its parent's engine and the sockets in its pool; two processes talking over
one socket corrupt each other's conversations. So the first use in a new process drops the inherited pool
without closing those sockets (`dispose(close=False)`, SQLAlchemy's recipe for fork) and opens its own,
which is what Celery's `SessionManager` gets by switching engines after fork.
"""

from __future__ import annotations

import logging
import os
import random
import threading
import time
import weakref
from collections.abc import Callable
from typing import Any, TypeVar

import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlalchemy.exc import DBAPIError, InterfaceError, InvalidRequestError, NoSuchModuleError, OperationalError
from sqlalchemy.orm.exc import StaleDataError

from fastq.exceptions import ImproperlyConfigured
from fastq.utils.imports import symbol_by_name

__all__ = ['RETRYABLE_ERRORS', 'Engines', 'sqlalchemy_url']

T = TypeVar('T')

logger = logging.getLogger('fastq.backends.database')

#: Celery's `RETRYABLE_DB_ERRORS` (DatabaseError and InterfaceError are both DBAPIError).
RETRYABLE_ERRORS = (DBAPIError, InvalidRequestError, StaleDataError)

#: The package that provides a missing driver module (SQLAlchemy 2.1 drives PostgreSQL with psycopg 3).
DRIVERS = {
    'psycopg': 'psycopg[binary]',
    'psycopg2': 'psycopg2-binary',
    'MySQLdb': 'mysqlclient',
    'pymysql': 'pymysql',
    'pyodbc': 'pyodbc',
    'oracledb': 'oracledb',
}


#: Every Engines object, so a forked child can replace locks another thread of its parent may have held.
_LIVE: weakref.WeakSet[Engines] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for engines in list(_LIVE):
        engines._lock = threading.Lock()
        engines.setup_lock = threading.Lock()


os.register_at_fork(after_in_child=_after_fork_in_child)


def sqlalchemy_url(url: str | None, database_url: str | None) -> str:
    """The SQLAlchemy URL: `db+postgresql://...` without `db+`; `database_url` when result_backend is only
    'db' or 'database' (as in Celery, a full result_backend URL wins)."""
    if url and '://' in url:
        scheme, _, rest = url.partition('://')
        if scheme.lower().startswith('db+'):
            scheme = scheme[3:]
        return f'{scheme}://{rest}'
    if database_url:
        return database_url
    raise ImproperlyConfigured('Missing connection string! Do you have the database_url setting set to a real value?')


class Engines:
    """The engine for this process, created on first use with `database_engine_options`."""

    def __init__(self, url: str, options: dict[str, Any], callback: Any = None) -> None:
        self.url = url
        self.options = options
        if isinstance(callback, str):
            callback = symbol_by_name(callback)
        if callback is not None and not callable(callback):
            raise ImproperlyConfigured(f'database_engine_callback must be callable, got {callback!r}')
        self.callback: Callable[[Engine], Any] | None = callback
        self._engine: Engine | None = None
        self._pid = 0
        self._lock = threading.Lock()
        #: The backend's one-time table setup (network round trips, held meanwhile): replaced in a forked child
        #: like `_lock`, or a child forked while a thread of its parent set up would wait for it forever.
        self.setup_lock = threading.Lock()
        _LIVE.add(self)

    def get(self) -> Engine:
        engine = self._engine
        if engine is not None and self._pid == os.getpid():
            return engine
        with self._lock:
            if self._engine is None:
                self._engine = self._create()
            elif self._pid != os.getpid():  # forked: leave the parent's connections to the parent
                self._engine.dispose(close=False)
            self._pid = os.getpid()
            return self._engine

    def _create(self) -> Engine:
        options = dict(self.options)
        if self.url.startswith('sqlite'):
            # Writers of several processes queue for SQLite's lock; pysqlite's 5 s can be short under load.
            options['connect_args'] = {'timeout': 30, **(options.get('connect_args') or {})}
        try:
            engine = sa.create_engine(self.url, **options)
        except (ImportError, NoSuchModuleError) as exc:
            package = DRIVERS.get(getattr(exc, 'name', None) or '')
            extra = f' (pip install "{package}"; "fastq[database]" brings PostgreSQL\'s)' if package else ''
            raise ImproperlyConfigured(f'result_backend: no database driver for {self.url!r}: {exc}{extra}') from exc
        if self.callback is not None:
            self.callback(engine)
        return engine

    def invalidate(self) -> None:
        """After a retryable error: close every pooled connection, so the retry opens a fresh one."""
        engine = self._engine
        if engine is not None and self._pid == os.getpid():
            engine.dispose()

    def close(self) -> None:
        engine, self._engine = self._engine, None
        if engine is not None:
            engine.dispose(close=self._pid == os.getpid())


def retrying(
    fn: Callable[[], T],
    engines: Engines,
    max_retries: float,
    base_ms: float,
    max_ms: float,
    what: str,
) -> T:
    """Celery's `_ensure_retryable`: on a database error, drop the pool and try again after an exponential,
    fully jittered pause, up to `max_retries` times."""
    retries = 0
    while True:
        try:
            return fn()
        except RETRYABLE_ERRORS as exc:
            if retries >= max_retries:
                raise
            retries += 1
            logger.warning('Failed to %s (%s). Retrying %s more times.', what, _short(exc), max_retries - retries)
            engines.invalidate()
            time.sleep(random.randrange(int(min(max_ms, base_ms * 2**retries)) + 1) / 1000)


def _short(exc: BaseException) -> str:
    if isinstance(exc, OperationalError | InterfaceError):
        return str(exc.orig).strip().splitlines()[0] if exc.orig is not None else type(exc).__name__
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__
