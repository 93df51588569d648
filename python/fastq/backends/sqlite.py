"""Result backend on a SQLite file: the default next to the embedded broker.

URL: `sqlite:///results.db` (also `db+sqlite:///...`, the spelling Celery configs use). Results are Celery
meta documents keyed by task id, expiring after `result_expires` (expired rows are invisible at once and
deleted by a periodic sweep in writers). A waiting `get()` wakes on the doorbell `<file>-ring`, rung after
each commit, so it sees a result within milliseconds without polling the table.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from fastq import states
from fastq.backends.base import Backend
from fastq.utils.doorbell import Doorbell
from fastq.utils.sqlite import Database, path_from_url

if TYPE_CHECKING:
    from fastq.app import Fastq

SCHEMA = """
CREATE TABLE IF NOT EXISTS results (
    task_id TEXT PRIMARY KEY,
    status TEXT NOT NULL,
    expires REAL,
    payload BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS results_expires ON results (expires) WHERE expires IS NOT NULL;
"""

CLEANUP_EVERY = 60.0


def _first(rows: list[Any]) -> Any:
    return rows[0] if rows else None


class SQLiteBackend(Backend):
    polling = False

    def __init__(self, app: Fastq, url: str | None = None) -> None:
        super().__init__(app, url)
        assert url is not None
        self.path = path_from_url(url, 'result_backend')
        options = app.conf.result_backend_transport_options or {}
        self.db = Database(self.path, url, SCHEMA, str(options.get('synchronous', 'NORMAL')).upper())
        self.doorbell = Doorbell(f'{self.path}-ring')
        self._ready = False
        self._last_cleanup = time.monotonic()

    def _setup(self) -> None:
        if not self._ready:
            self.db.setup()
            self._ready = True

    def _store(self, task_id: str, payload: bytes, state: str, expires: float | None) -> None:
        # One statement: never replaces a stored SUCCESS (a redelivered duplicate cannot undo it).
        self._setup()
        until = time.time() + expires if expires else None
        with self.db.write() as conn:
            conn.execute(
                'INSERT INTO results (task_id, status, expires, payload) VALUES (?, ?, ?, ?) '
                'ON CONFLICT (task_id) DO UPDATE SET status = excluded.status, expires = excluded.expires, '
                'payload = excluded.payload WHERE results.status != ?',
                (task_id, state, until, payload, states.SUCCESS),
            )
            if time.monotonic() - self._last_cleanup > CLEANUP_EVERY:
                self._last_cleanup = time.monotonic()
                conn.execute('DELETE FROM results WHERE expires IS NOT NULL AND expires < ?', (time.time(),))
        self.doorbell.ring()

    def _set(self, task_id: str, payload: bytes, state: str, expires: float | None) -> None:
        self._setup()
        until = time.time() + expires if expires else None
        with self.db.write() as conn:
            conn.execute(
                'INSERT OR REPLACE INTO results (task_id, status, expires, payload) VALUES (?, ?, ?, ?)',
                (task_id, state, until, payload),
            )
        self.doorbell.ring()

    def _get(self, task_id: str) -> bytes | None:
        self._setup()
        row = _first(
            self.db.query(
                'SELECT payload FROM results WHERE task_id = ? AND (expires IS NULL OR expires > ?)',
                (task_id, time.time()),
            )
        )
        return bytes(row[0]) if row else None

    def _delete(self, task_id: str) -> None:
        self._setup()
        with self.db.write() as conn:
            conn.execute('DELETE FROM results WHERE task_id = ?', (task_id,))

    def _change_marker(self) -> int:
        return self.doorbell.generation()

    def _wait_for_change_since(self, marker: int, timeout: float) -> None:
        self.doorbell.wait(marker, timeout)

    def cleanup(self) -> None:
        self._setup()
        with self.db.write() as conn:
            conn.execute('DELETE FROM results WHERE expires IS NOT NULL AND expires < ?', (time.time(),))

    def maintenance(self) -> None:
        if self._ready:
            self.db.checkpoint()

    def close(self) -> None:
        self.db.close()
