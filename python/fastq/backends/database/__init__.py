"""Celery's "Database" result backend (SQLAlchemy), on Celery's tables, so Celery and fastq read each other's results.

URL: `db+<SQLAlchemy URL>`: `db+postgresql://user:pw@host/db`, `db+mysql://...`, `db+sqlite:///results.db`
(any dialect and driver SQLAlchemy knows, e.g. `db+postgresql+psycopg2://`). `result_backend = 'database'`
(or 'db') takes the URL from `database_url`, as in Celery. Needs SQLAlchemy and the database's driver
(`pip install "fastq[database]"` brings SQLAlchemy and psycopg, SQLAlchemy 2.1's PostgreSQL default).

Settings: `database_engine_options` (passed to `create_engine`; Celery's default pre-pings and recycles
connections hourly), `database_engine_callback`, `database_table_schemas` and `database_table_names` (keys
'task' and 'group'), `database_create_tables_at_setup` (create the tables when the backend is made rather than
at first use), `result_extended`, `result_expires` (what `celery.backend_cleanup` deletes),
`result_backend_always_retry` and `result_backend_max_retries` (unset, they retry 3 times, as Celery's database
backend does), and `result_backend_transport_options['native_join']` (see Mixed fleets).
`database_short_lived_sessions` is accepted and has nothing to do: fastq uses no ORM sessions.
`result_compression` is ignored with Celery's warning (Celery 5.7 stores database results uncompressed).

Layout (models.py): a row of `celery_taskmeta` per task: `status`, `result` (the return value or the exception
document, serialized with `result_serializer`, as Celery 5.7 stores it), `date_done` (UTC, set in ready states
only), `traceback`, `children`, and with `result_extended` the task's `name`, `args` and `kwargs` (serialized),
`worker`, `retries`, `queue` and `stamps`. A saved group is a row of `celery_tasksetmeta` holding
`GroupResult.as_tuple()`, serialized. Rows have no expiry of their own: `cleanup()` (the `celery.backend_cleanup`
task, which Celery's beat schedules) deletes those older than `result_expires`.

Supports: a stored SUCCESS is never overwritten (the condition is in the UPDATE and the upsert, not a read
before them); `get()` polls with a backoff from 5 ms up to its `interval`, where Celery polls every
`interval`; chords join natively (chords.py); pool children open their own connections after fork.

Mixed fleets: Celery's database backend joins chords with `celery.chord_unlock`, which fastq workers run, so
a chord sent by a Celery client completes whichever workers run it. A chord sent by a fastq client is joined by
the worker that finishes its last header task; a Celery worker does not take part in that join (its database
backend ignores chord parts), so such a chord's header tasks must run on fastq workers, unless
`result_backend_transport_options = {'native_join': False}` makes fastq clients send `celery.chord_unlock` too
(and fastq workers skip the chord tables), as Celery does.
"""

from __future__ import annotations

import pickle
import time
import warnings
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import TYPE_CHECKING, Any, TypeVar

from fastq import states
from fastq.backends.polling import PollingBackend
from fastq.exceptions import BackendGetMetaError, BackendStoreError, ImproperlyConfigured

try:
    import sqlalchemy as sa
except ImportError as exc:  # pragma: no cover - the message is the point
    raise ImproperlyConfigured(
        'The database result backend (db+...://) requires SQLAlchemy: pip install sqlalchemy '
        '(or pip install "fastq[database]", which adds the PostgreSQL driver)'
    ) from exc

from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection, Row
from sqlalchemy.exc import IntegrityError

from fastq.backends.database.chords import UPSERT_ATTEMPTS, DatabaseChordStore, transaction, update_or_insert
from fastq.backends.database.engine import RETRYABLE_ERRORS, Engines, retrying, sqlalchemy_url
from fastq.backends.database.models import build_tables, prepare

if TYPE_CHECKING:
    from fastq.app import Fastq
    from fastq.result import GroupResult

__all__ = ['DatabaseBackend']

T = TypeVar('T')

#: `get()` looks again after 5 ms, then twice as long each time, up to its `interval`.
#: What Celery's database backend retries by default (`result_backend_max_retries` unset).
DEFAULT_MAX_RETRIES = 3
#: The columns `result_extended` adds to the meta document, in Celery's order.
EXTENDED = ('name', 'args', 'kwargs', 'worker', 'retries', 'queue')
PICKLE = 'application/x-python-serialize'
#: Celery's warning, word for word.
W_COMPRESSION_UNSUPPORTED = (
    'The DatabaseBackend result backend cannot store compressed payloads, so the\n'
    'result_compression setting is ignored and results are stored uncompressed.\n'
)


class _RowAppeared(Exception):
    """Another writer inserted the row between our UPDATE and INSERT (dialects without an upsert): go again."""


class DatabaseBackend(PollingBackend):
    supports_autoexpire = False  # (rows carry no expiry: beat schedules celery.backend_cleanup, as Celery's)

    def __init__(self, app: Fastq, url: str | None = None) -> None:
        super().__init__(app, url)
        conf = app.conf
        self.extended = bool(conf.result_extended)
        self.engines = Engines(
            sqlalchemy_url(url, conf.database_url),
            dict(conf.database_engine_options or {}),
            conf.database_engine_callback,
        )
        self.tables = build_tables(dict(conf.database_table_schemas or {}), dict(conf.database_table_names or {}))
        always = conf.result_backend_always_retry if conf.value_set_for('result_backend_always_retry') else None
        self.always_retry = True if always is None else bool(always)
        limit = conf.result_backend_max_retries if conf.value_set_for('result_backend_max_retries') else None
        self.max_retries: float = DEFAULT_MAX_RETRIES if limit is None else limit
        self.sleep_ms = (
            float(conf.result_backend_base_sleep_between_retries_ms),
            float(conf.result_backend_max_sleep_between_retries_ms),
        )
        self._prepared = False
        if self.compression:  # as Celery 5.7's: the result column holds the serialized value itself
            warnings.warn(W_COMPRESSION_UNSUPPORTED, UserWarning, stacklevel=2)
            self.compression = None
        self.chords = DatabaseChordStore(self)
        options = conf.result_backend_transport_options or {}
        self.chord_store = self.chords if options.get('native_join', True) else None
        if conf.database_create_tables_at_setup:
            self.prepare()

    def describe(self) -> str:
        from fastq.utils.text import mask_url

        return mask_url(self.url or self.engines.url)

    # --- plumbing ----------------------------------------------------------------------------------------

    def prepare(self) -> None:
        """Create the tables unless done (once per backend; they are there for forked children too)."""
        if not self._prepared:
            self.retrying(self.ensure_tables, 'create the result tables')

    def ensure_tables(self) -> None:
        """`prepare` within an operation (which retries the whole of itself)."""
        if self._prepared:
            return
        with self.engines.setup_lock:  # (not a lock of its own: see `Engines.setup_lock`)
            if not self._prepared:
                prepare(self.engines.get(), self.tables, chords=self.chord_store is not None)
                self._prepared = True

    def retrying(self, fn: Callable[[], T], what: str, fallback: Callable[[str], Exception] | None = None) -> T:
        """`fn()` under Celery's retry policy; once it gives up, `fallback` (Celery's BackendStoreError or
        BackendGetMetaError) is raised from the database's error, or the error itself without one."""
        limit = self.max_retries if self.always_retry else 0
        try:
            return retrying(fn, self.engines, limit, *self.sleep_ms, what=what)
        except RETRYABLE_ERRORS as exc:
            if fallback is None or not self.always_retry:
                raise
            raise fallback(f'failed to {what}: {exc}') from exc

    def close(self) -> None:
        self.engines.close()

    # --- rows and meta documents ----------------------------------------------------------------------------

    def _row(self, meta: dict[str, Any]) -> dict[str, Any]:
        """The task table's values for a meta document (Celery's `_update_result`)."""
        children = meta.get('children')
        date_done = meta.get('date_done')
        row: dict[str, Any] = {
            'status': meta['status'],
            'result': self.encode(meta.get('result')),
            'date_done': datetime.fromisoformat(date_done) if isinstance(date_done, str) else date_done,
            'traceback': meta.get('traceback'),
            'children': self.encode(children) if children else None,
            **{name: meta.get(name) for name in EXTENDED},
        }
        for name in ('args', 'kwargs'):
            if name in meta:
                row[name] = self.encode(meta[name])
        stamped = meta.get('stamped_headers')
        if stamped:  # (else a row's stamps stay as they are, as in Celery)
            stamps = {name: meta[name] for name in stamped if name in meta}
            row['stamps'] = self.encode({'stamped_headers': stamped, 'stamps': stamps})
        columns = self.tables.task_columns
        return {name: value for name, value in row.items() if name in columns}

    def _document(self, task_id: str, row: Row[Any] | None) -> dict[str, Any]:
        """The meta document of a row, as Celery's `_get_task_meta_for` returns it (exceptions still encoded)."""
        if row is None:
            data: dict[str, Any] = {'task_id': task_id, 'status': states.PENDING, 'result': None}
            data.update(traceback=None, date_done=None, children=None)
            if self.extended:
                data.update(dict.fromkeys(EXTENDED))
            return data
        values = row._mapping
        data = {
            'task_id': values['task_id'],
            'status': values['status'],
            'result': self._decode_stored(values['result']),
            'traceback': values['traceback'],
            'date_done': values['date_done'],
            'children': self._decode_stored(values.get('children')),
        }
        if self.extended:
            data.update({name: values.get(name) for name in EXTENDED})
            data['args'] = self._decode_stored(data['args'])
            data['kwargs'] = self._decode_stored(data['kwargs'])
            self._merge_stamps(data, values.get('stamps'))
        return data

    def _merge_stamps(self, data: dict[str, Any], raw: bytes | None) -> None:
        if raw is None:
            return
        try:
            info = self.decode(bytes(raw))
        except Exception:  # as Celery: unreadable stamps do not make the result unreadable
            return
        if isinstance(info, dict):
            if 'stamped_headers' in info:
                data['stamped_headers'] = info['stamped_headers']
            if isinstance(info.get('stamps'), dict):
                data.update(info['stamps'])

    def _decode_stored(self, payload: bytes | None) -> Any:
        """A serialized column; a row from a Celery older than 5.7 (a raw pickle, whatever the serializer) is
        read as pickle only when `result_accept_content` accepts pickle."""
        if payload is None:
            return None
        payload = bytes(payload)
        try:
            return self.decode(payload)
        except Exception:
            if payload[:1] != b'\x80' or PICKLE not in self.accept:
                raise
            return pickle.loads(payload)

    # --- writing -------------------------------------------------------------------------------------------

    def store_result(
        self, task_id: str, result: Any, state: str, traceback: str | None = None, request: Any = None
    ) -> Any:
        """Store a state; a stored SUCCESS is never overwritten (a duplicate delivery cannot undo it)."""
        meta = self._meta(task_id, self.encode_result(result, state), state, traceback, request)
        self._write(task_id, meta, keep_success=True)
        return result

    def _set(self, task_id: str, payload: bytes, state: str, expires: float | None) -> None:
        self._write(task_id, self.decode(payload), keep_success=False)

    def _write(self, task_id: str, meta: dict[str, Any], keep_success: bool) -> None:
        def attempt() -> None:
            self.ensure_tables()
            values = self._row(meta)  # (once the table's columns are known)
            for n in range(UPSERT_ATTEMPTS):
                try:
                    with transaction(self) as conn:
                        return self._upsert(conn, task_id, values, keep_success)
                except (IntegrityError, _RowAppeared):  # another writer inserted the row first: update it now
                    if n == UPSERT_ATTEMPTS - 1:
                        raise

        error = partial(BackendStoreError, task_id=task_id, state=meta['status'])
        self.retrying(attempt, f'store the result of {task_id}', error)

    def _upsert(self, conn: Connection, task_id: str, values: dict[str, Any], keep_success: bool) -> None:
        table = self.tables.task
        guard = sa.or_(table.c.status.is_(None), table.c.status != states.SUCCESS) if keep_success else sa.true()
        updated = conn.execute(sa.update(table).where(table.c.task_id == task_id, guard).values(**values)).rowcount
        if updated:
            return
        dialect = conn.dialect.name
        if dialect in ('postgresql', 'sqlite'):  # one statement, whoever else inserts meanwhile
            insert = (postgresql.insert if dialect == 'postgresql' else sqlite.insert)(table)
            statement = insert.values(task_id=task_id, **values).on_conflict_do_update(
                index_elements=[table.c.task_id], set_=values, where=guard if keep_success else None
            )
            conn.execute(statement)
        else:
            found = conn.execute(sa.select(table.c.status).where(table.c.task_id == task_id)).first()
            if found is None:
                conn.execute(sa.insert(table).values(task_id=task_id, **values))
            elif not keep_success or found[0] != states.SUCCESS:
                raise _RowAppeared(task_id)  # inserted by another writer between our two statements

    def _delete(self, task_id: str) -> None:
        table = self.tables.task

        def attempt() -> None:
            with transaction(self) as conn:
                conn.execute(sa.delete(table).where(table.c.task_id == task_id))

        self.retrying(attempt, f'forget {task_id}')

    # --- reading -------------------------------------------------------------------------------------------

    def _read(self, task_id: str) -> Row[Any] | None:
        self.ensure_tables()
        table = self.tables.task
        columns = [c for c in table.columns if c.name in self.tables.task_columns and c.name != 'id']
        with self.engines.get().connect() as conn:
            return conn.execute(sa.select(*columns).where(table.c.task_id == task_id)).first()

    def get_task_meta(self, task_id: str, cache: bool = True) -> dict[str, Any]:
        error = partial(BackendGetMetaError, task_id=task_id)
        data = self._document(task_id, self.retrying(lambda: self._read(task_id), f'read {task_id}', error))
        if data['status'] in states.EXCEPTION_STATES:
            data['result'] = self.exception_to_python(data['result'])
        return data

    def _get(self, task_id: str) -> bytes | None:
        row = self.retrying(
            lambda: self._read(task_id), f'read {task_id}', partial(BackendGetMetaError, task_id=task_id)
        )
        if row is None:
            return None
        data = self._document(task_id, row)
        if isinstance(data['date_done'], datetime):
            data['date_done'] = data['date_done'].replace(tzinfo=UTC).isoformat()
        return self.encode(data)

    # --- groups --------------------------------------------------------------------------------------------

    def save_group(self, group_id: str, result: GroupResult) -> GroupResult:
        """Celery's `_save_group`: the group's tuple, serialized (saving a group id again replaces it)."""
        table = self.tables.group
        values = {'result': self.encode(result.as_tuple()), 'date_done': datetime.now(UTC)}

        def attempt() -> None:
            for n in range(UPSERT_ATTEMPTS):
                try:
                    with transaction(self) as conn:
                        update_or_insert(conn, table, {'taskset_id': group_id}, values)
                        return
                except IntegrityError:
                    if n == UPSERT_ATTEMPTS - 1:
                        raise

        self.retrying(attempt, f'save group {group_id}', BackendStoreError)
        return result

    def restore_group(self, group_id: str, cache: bool = True) -> GroupResult | None:
        from fastq.result import GroupResult, result_from_tuple

        table = self.tables.group

        def read() -> Any:
            self.ensure_tables()
            with self.engines.get().connect() as conn:
                return conn.execute(sa.select(table.c.result).where(table.c.taskset_id == group_id)).scalar()

        payload = self.retrying(read, f'read group {group_id}', BackendGetMetaError)
        if payload is None:
            return None
        value = self._decode_stored(payload)
        group = value if isinstance(value, GroupResult) else result_from_tuple(value, self.app)
        return group if isinstance(group, GroupResult) else None

    def delete_group(self, group_id: str) -> None:
        table = self.tables.group

        def attempt() -> None:
            with transaction(self) as conn:
                conn.execute(sa.delete(table).where(table.c.taskset_id == group_id))

        self.retrying(attempt, f'delete group {group_id}')

    # --- expiry --------------------------------------------------------------------------------------------

    def cleanup(self) -> None:
        """Celery's `cleanup` (run by `celery.backend_cleanup`): delete results and groups older than
        `result_expires`, and fastq's expired chord rows."""
        tables = self.tables

        def attempt() -> None:
            with transaction(self) as conn:
                if self.expires:
                    before = datetime.now(UTC) - timedelta(seconds=self.expires)
                    conn.execute(sa.delete(tables.task).where(tables.task.c.date_done < before))
                    conn.execute(sa.delete(tables.group).where(tables.group.c.date_done < before))
                if self.tables.chords_ready:  # (none without native joins, or when they could not be created)
                    self.chords.cleanup(conn, time.time())

        self.retrying(attempt, 'delete expired results')
