"""Result backend on a SQLite file: the default next to the embedded broker.

URL: `sqlite:///results.db` (`db+sqlite:///...` is Celery's database backend, on Celery's tables:
backends/database). Results are Celery meta documents keyed by task id, expiring after `result_expires`
(expired rows are invisible at once and deleted by a periodic sweep in writers). A waiting `get()` wakes on the
doorbell `<file>-ring`, rung after each commit, so it sees a result within milliseconds without polling.

Groups saved with `GroupResult.save()` live in `groups`. A chord joins in `chords` (size, claim, done marker)
and `chord_parts` (one row per header task and index): recording a part, counting, and claiming the right to
send the body happen in one write transaction, so exactly one worker sends it, whatever the redeliveries.
"""

from __future__ import annotations

import math
import sqlite3
import time
from typing import TYPE_CHECKING, Any

from fastq import states
from fastq.backends.base import Backend
from fastq.backends.chords import ChordStore, Claim, claim_seconds, done_seconds, new_claim_token
from fastq.utils.doorbell import Doorbell
from fastq.utils.sqlite import Database, path_from_url
from fastq.utils.time import seconds

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
CREATE TABLE IF NOT EXISTS groups (
    group_id TEXT PRIMARY KEY,
    expires REAL,
    payload BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS chords (
    group_id TEXT PRIMARY KEY,
    size INTEGER,
    diff INTEGER NOT NULL DEFAULT 0,
    claim TEXT,
    claim_until REAL,
    done INTEGER NOT NULL DEFAULT 0,
    expires REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS chord_parts (
    group_id TEXT NOT NULL,
    member TEXT NOT NULL,
    idx REAL NOT NULL,
    payload BLOB NOT NULL,
    PRIMARY KEY (group_id, member)
);
"""
# chords.size: parts that complete it (NULL until the last header task is sent, and after a ChordError);
# diff: parts added to the running chord; claim/claim_until: who sends the body, until when; done: joined
# (kept until `expires` so late duplicates are ignored). chord_parts.member is 'task_id:group_index'.
DEFAULT_CHORD_EXPIRES = 86400.0

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
        self.chord_store = SQLiteChordStore(self)

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

    def _set_group(self, group_id: str, payload: bytes, expires: float | None) -> None:
        self._setup()
        with self.db.write() as conn:
            conn.execute(
                'INSERT OR REPLACE INTO groups (group_id, expires, payload) VALUES (?, ?, ?)',
                (group_id, time.time() + expires if expires else None, payload),
            )

    def _get_group(self, group_id: str) -> bytes | None:
        self._setup()
        row = _first(
            self.db.query(
                'SELECT payload FROM groups WHERE group_id = ? AND (expires IS NULL OR expires > ?)',
                (group_id, time.time()),
            )
        )
        return bytes(row[0]) if row else None

    def _delete_group(self, group_id: str) -> None:
        self._setup()
        with self.db.write() as conn:
            conn.execute('DELETE FROM groups WHERE group_id = ?', (group_id,))

    def _change_marker(self) -> int:
        return self.doorbell.generation()

    def _wait_for_change_since(self, marker: int, timeout: float) -> None:
        self.doorbell.wait(marker, timeout)

    def cleanup(self) -> None:
        self._setup()
        now = time.time()
        with self.db.write() as conn:
            conn.execute('DELETE FROM results WHERE expires IS NOT NULL AND expires < ?', (now,))
            conn.execute('DELETE FROM groups WHERE expires IS NOT NULL AND expires < ?', (now,))
            conn.execute(
                'DELETE FROM chord_parts WHERE group_id IN (SELECT group_id FROM chords WHERE expires < ?)', (now,)
            )
            conn.execute('DELETE FROM chords WHERE expires < ?', (now,))

    def maintenance(self) -> None:
        if self._ready:
            self.db.checkpoint()

    def close(self) -> None:
        self.db.close()


class SQLiteChordStore(ChordStore):
    """Each step is one write transaction (`BEGIN IMMEDIATE`), so steps of different workers never interleave."""

    def __init__(self, backend: SQLiteBackend) -> None:
        self.backend = backend
        conf = backend.app.conf
        expires = conf.result_chord_expires or backend.expires
        self.expires = seconds(expires) or DEFAULT_CHORD_EXPIRES

    def _write(self) -> Any:
        self.backend._setup()
        return self.backend.db.write()

    def set_size(self, group_id: str, size: int) -> None:
        with self._write() as conn:  # a re-sent frozen chord (same group id) is a new run
            conn.execute(
                'INSERT INTO chords (group_id, size, expires) VALUES (?, ?, ?) ON CONFLICT (group_id) DO UPDATE '
                'SET size = excluded.size, claim = NULL, claim_until = NULL, done = 0, expires = excluded.expires',
                (group_id, size, time.time() + self.expires),
            )

    def add(self, group_id: str, count: int = 1) -> None:
        with self._write() as conn:
            self._ensure(conn, group_id)
            conn.execute('UPDATE chords SET diff = diff + ? WHERE group_id = ?', (count, group_id))

    def _ensure(self, conn: sqlite3.Connection, group_id: str) -> None:
        conn.execute(
            'INSERT OR IGNORE INTO chords (group_id, expires) VALUES (?, ?)', (group_id, time.time() + self.expires)
        )

    def record(self, group_id: str, task_id: str, index: int | None, part: bytes) -> Claim | None:
        member = f'{task_id}:{index if index is not None else "+inf"}'
        now = time.time()
        with self._write() as conn:
            self._ensure(conn, group_id)
            size, diff, claim, claim_until, done = conn.execute(
                'SELECT size, diff, claim, claim_until, done FROM chords WHERE group_id = ?', (group_id,)
            ).fetchone()
            if done:
                return None
            conn.execute(
                'INSERT OR IGNORE INTO chord_parts (group_id, member, idx, payload) VALUES (?, ?, ?, ?)',
                (group_id, member, math.inf if index is None else float(index), part),
            )
            conn.execute('UPDATE chords SET expires = ? WHERE group_id = ?', (now + self.expires, group_id))
            if size is None or (claim is not None and claim_until > now):
                return None
            (count,) = conn.execute('SELECT COUNT(*) FROM chord_parts WHERE group_id = ?', (group_id,)).fetchone()
            if count != size + diff:
                return None
            token = new_claim_token()
            conn.execute(
                'UPDATE chords SET claim = ?, claim_until = ? WHERE group_id = ?',
                (token, now + claim_seconds(self.backend.app), group_id),
            )
            rows = conn.execute(
                'SELECT payload FROM chord_parts WHERE group_id = ? ORDER BY idx, member', (group_id,)
            ).fetchall()
        return Claim(token, [bytes(row[0]) for row in rows])

    def extend(self, group_id: str, claim: Claim, seconds: int) -> bool:
        now = time.time()
        with self._write() as conn:
            cursor = conn.execute(
                'UPDATE chords SET claim = ?, claim_until = ? WHERE group_id = ? AND done = 0 AND '
                '(claim = ? OR ((claim IS NULL OR claim_until <= ?) AND size IS NOT NULL))',
                (claim.token, now + seconds, group_id, claim.token, now),
            )
            return bool(cursor.rowcount == 1)

    def release(self, group_id: str, claim: Claim) -> bool:
        with self._write() as conn:
            cursor = conn.execute(
                'UPDATE chords SET done = 1, size = NULL, claim = NULL, claim_until = NULL, expires = ? '
                'WHERE group_id = ? AND claim = ?',
                (time.time() + done_seconds(self.backend.app), group_id, claim.token),
            )
            if cursor.rowcount != 1:
                return False
            conn.execute('DELETE FROM chord_parts WHERE group_id = ?', (group_id,))
            return True

    def forget_size(self, group_id: str) -> None:
        with self._write() as conn:
            conn.execute('UPDATE chords SET size = NULL WHERE group_id = ?', (group_id,))
