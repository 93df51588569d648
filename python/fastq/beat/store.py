"""The schedule file (`-s`, `beat_schedule_filename`): when each entry last ran, so restarts neither repeat nor
forget runs.

A SQLite file in WAL mode, written once per run *before* the task is sent: a beat killed at any moment
restarts knowing every run it sent (at worst one run it was about to send is lost, never one sent twice).
Like Celery's shelve file, the stored times are dropped when `timezone` or `enable_utc` change, and a file
that is not a SQLite database (Celery's own shelve file, say) is replaced with a warning.

    meta     key -> value           version, tz, utc_enabled
    entries  name -> last_run_at    (ISO-8601, UTC) and total_run_count
"""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
from datetime import UTC, datetime

from fastq import __version__
from fastq.exceptions import BrokerConnectionError
from fastq.utils.sqlite import Database

__all__ = ['ScheduleStore']

logger = logging.getLogger('celery.beat')

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS entries (
    name TEXT PRIMARY KEY,
    last_run_at TEXT NOT NULL,
    total_run_count INTEGER NOT NULL DEFAULT 0
);
"""
_SQLITE_MAGIC = b'SQLite format 3\x00'
_SIDE_FILES = ('', '-wal', '-shm')


class ScheduleStore:
    """Last runs by entry name, in one SQLite file."""

    def __init__(self, path: str) -> None:
        self.filename = path  # as given, as Celery's banner shows it
        self.path = os.path.abspath(path)
        self.db = Database(self.path, f'sqlite:///{self.path}', SCHEMA)

    def open(self, tz: str | None, utc_enabled: bool) -> None:
        """Create or check the file; forget stored runs if the time zone settings changed since they were kept.

        As Celery's: a `timezone` set where none was (stored as '') keeps them, one changed or unset drops them.
        """
        if not self._is_sqlite():
            logger.error('Removing corrupted schedule file %r: not a fastq schedule database', self.path)
            self._remove()
        try:
            self.db.setup()
        except (BrokerConnectionError, sqlite3.DatabaseError) as exc:
            raise BrokerConnectionError(f'cannot use the schedule file {self.path}: {exc}') from exc
        meta = dict(self.db.query('SELECT key, value FROM meta'))
        utc = 'enabled' if utc_enabled else 'disabled'
        stored_tz, stored_utc = meta.get('tz'), meta.get('utc_enabled')
        with self.db.write() as conn:
            if stored_tz and stored_tz != (tz or ''):
                logger.warning('Reset: Timezone changed from %r to %r', stored_tz, tz or None)
                conn.execute('DELETE FROM entries')
            elif stored_utc is not None and stored_utc != utc:
                logger.warning('Reset: UTC changed from %s to %s', stored_utc, utc)
                conn.execute('DELETE FROM entries')
            conn.executemany(
                'INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)',
                [('version', __version__), ('tz', tz or ''), ('utc_enabled', utc)],
            )

    def _is_sqlite(self) -> bool:
        try:
            with open(self.path, 'rb') as f:
                head = f.read(len(_SQLITE_MAGIC))
        except FileNotFoundError:
            return True
        return head in (b'', _SQLITE_MAGIC)

    def _remove(self) -> None:
        for suffix in _SIDE_FILES:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path + suffix)

    def load(self) -> dict[str, tuple[datetime, int]]:
        """`{name: (last_run_at, total_run_count)}` as stored."""
        out = {}
        for name, last_run_at, count in self.db.query('SELECT name, last_run_at, total_run_count FROM entries'):
            with contextlib.suppress(ValueError):
                out[str(name)] = (datetime.fromisoformat(last_run_at), int(count))
        return out

    def save(self, name: str, last_run_at: datetime, total_run_count: int) -> None:
        with self.db.write() as conn:
            conn.execute(
                'INSERT OR REPLACE INTO entries (name, last_run_at, total_run_count) VALUES (?, ?, ?)',
                (name, last_run_at.astimezone(UTC).isoformat(), total_run_count),
            )

    def keep_only(self, names: set[str]) -> None:
        """Forget entries no longer in the schedule (as Celery drops them from its file)."""
        stored = {name for (name,) in self.db.query('SELECT name FROM entries')}
        gone = stored - names
        if gone:
            with self.db.write() as conn:
                conn.executemany('DELETE FROM entries WHERE name = ?', [(n,) for n in gone])

    def close(self) -> None:
        self.db.close()
