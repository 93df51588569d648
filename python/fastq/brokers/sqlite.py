"""Embedded broker on a SQLite file: the default, so `Fastq('tasks')` runs with no server.

URL: `sqlite:///relative/path.db` or `sqlite:////absolute/path.db`. Any number of producer and worker
processes on one machine share the file (WAL mode). Not for network file systems.

Transport options (`broker_transport_options`):
    visibility_timeout  seconds a reservation lasts without renewal (default 300); live workers renew theirs,
                        so a long task is never handed out twice, and a hung worker loses its tasks after it.
    synchronous         SQLite's `synchronous` pragma (default NORMAL: commits survive a process crash;
                        use FULL to also survive power loss, at an fsync per commit).

Features: priorities (0-255, higher first, like RabbitMQ; FIFO within a priority), ETA/countdown messages
held in the database until due (`inspect scheduled` lists them under one worker per queue), leases renewed
by live workers, dead owners detected at once through a per-consumer lock file (the kernel releases it when
the process dies, even on SIGKILL), delivery counts, fanout (for remote control and events), a dead-letter
table, claims and named leases (beat's run claims and leader lock; a lease whose holder's process died is
free at once, through the same lock files).

Layout: table `messages` (one row per message, the payload is kombu's JSON envelope, exactly what kombu's
Redis transport stores), `dead_letters`, `fanout`, `queues`, `claims`, `leases`; next to the file,
`<file>-ring` (the doorbell rung after each publish) and `<file>-owners/` (one lock file per live consumer
and lease holder).
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import threading
import time
import uuid
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from fastq import _core
from fastq.brokers.base import (
    Broker,
    BrokerFeatures,
    Consumer,
    DeadLetter,
    DeadLetterStore,
    Delivery,
    Outgoing,
    Subscription,
    Tag,
)
from fastq.utils.doorbell import Doorbell
from fastq.utils.sqlite import Database, chunks, path_from_url, placeholders

if TYPE_CHECKING:
    from fastq.config import Settings

logger = logging.getLogger('fastq.brokers.sqlite')

SCHEMA = """
CREATE TABLE IF NOT EXISTS messages (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    queue TEXT NOT NULL,
    priority INTEGER NOT NULL DEFAULT 0,
    not_before REAL NOT NULL DEFAULT 0,
    owner TEXT,
    lease_until REAL NOT NULL DEFAULT 0,
    deliveries INTEGER NOT NULL DEFAULT 0,
    payload BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS messages_ready ON messages (queue, priority DESC, id) WHERE owner IS NULL;
CREATE INDEX IF NOT EXISTS messages_owner ON messages (owner, lease_until) WHERE owner IS NOT NULL;
CREATE TABLE IF NOT EXISTS queues (name TEXT PRIMARY KEY);
CREATE TABLE IF NOT EXISTS dead_letters (
    id TEXT PRIMARY KEY,
    queue TEXT NOT NULL,
    reason TEXT NOT NULL,
    task_id TEXT,
    task_name TEXT,
    deliveries INTEGER NOT NULL DEFAULT 0,
    created REAL NOT NULL,
    payload BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS dead_letters_task ON dead_letters (task_id);
CREATE TABLE IF NOT EXISTS rates (key TEXT PRIMARY KEY, tat REAL NOT NULL);
CREATE TABLE IF NOT EXISTS revoked (task_id TEXT PRIMARY KEY, expires REAL NOT NULL);
CREATE TABLE IF NOT EXISTS claims (key TEXT PRIMARY KEY, expires REAL NOT NULL);
CREATE TABLE IF NOT EXISTS leases (name TEXT PRIMARY KEY, holder TEXT NOT NULL, expires REAL NOT NULL);
CREATE TABLE IF NOT EXISTS fanout (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    exchange TEXT NOT NULL,
    routing_key TEXT NOT NULL,
    created REAL NOT NULL,
    payload BLOB NOT NULL
);
"""

SWEEP_INTERVAL = 1.0  # seconds between checks for dead owners and expired leases
FANOUT_KEEP = 60.0  # seconds fanout rows are kept for subscribers
CLAIM_CLEANUP_INTERVAL = 60.0  # seconds between deletions of expired claims
LISTING_LEASE = 300.0  # seconds a worker stays the one listing a queue's ETA messages unless asked again


def _first(rows: list[Any]) -> Any:
    return rows[0] if rows else None


class _OwnerLocks:
    """Liveness of consumers through POSIX locks on `<db>-owners/<owner>.lock`.

    A live consumer holds an exclusive lock on its file for its whole life. POSIX locks belong to the process
    (not inherited by forked children, released by the kernel when the process dies), which is exactly
    "this consumer's process is alive". Locks never conflict within one process, so owners of this process
    are known from `_local` and never probed.
    """

    _local: set[str] = set()

    def __init__(self, db_path: str) -> None:
        self.directory = f'{db_path}-owners'

    def _path(self, owner: str) -> str:
        return os.path.join(self.directory, f'{owner}.lock')

    def acquire(self, owner: str) -> int:
        os.makedirs(self.directory, exist_ok=True)
        fd = os.open(self._path(owner), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        os.write(fd, f'{os.getpid()}\n'.encode())
        self._local.add(owner)
        return fd

    def release(self, owner: str, fd: int) -> None:
        self._local.discard(owner)
        with contextlib.suppress(OSError):
            os.unlink(self._path(owner))
        with contextlib.suppress(OSError):
            os.close(fd)

    def is_dead(self, owner: str) -> bool:
        if owner in self._local and os.getpid() == _OWNER_PID[0]:
            return False
        try:
            fd = os.open(self._path(owner), os.O_RDWR | os.O_CLOEXEC)
        except FileNotFoundError:
            return True
        except OSError:
            return False
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            return False  # someone holds it: alive
        else:
            with contextlib.suppress(OSError):
                os.unlink(self._path(owner))
            return True
        finally:
            os.close(fd)  # also drops our probe lock


_OWNER_PID = [os.getpid()]


def _reset_owner_registry_after_fork() -> None:
    _OwnerLocks._local = set()
    _OWNER_PID[0] = os.getpid()


os.register_at_fork(after_in_child=_reset_owner_registry_after_fork)


class SQLiteDeadLetters(DeadLetterStore):
    def __init__(self, db: Database) -> None:
        self._db = db

    @staticmethod
    def _row(row: tuple[object, ...]) -> DeadLetter:
        ident, queue, reason, task_id, task_name, deliveries, created, payload = row
        return DeadLetter(
            id=str(ident),
            queue=str(queue),
            reason=str(reason),
            payload=bytes(payload),  # type: ignore[call-overload]
            created=float(created),  # type: ignore[arg-type]
            task_id=task_id,  # type: ignore[arg-type]
            task_name=task_name,  # type: ignore[arg-type]
            deliveries=int(deliveries),  # type: ignore[call-overload]
        )

    _COLUMNS = 'id, queue, reason, task_id, task_name, deliveries, created, payload'

    def add(self, letter: DeadLetter) -> None:
        with self._db.write() as conn:
            insert_dead_letter(conn, letter)

    def list(self, limit: int = 100) -> list[DeadLetter]:
        rows = self._db.query(f'SELECT {self._COLUMNS} FROM dead_letters ORDER BY created DESC LIMIT ?', (limit,))
        return [self._row(r) for r in rows]

    def get(self, ident: str) -> DeadLetter | None:
        row = _first(
            self._db.query(
                f'SELECT {self._COLUMNS} FROM dead_letters WHERE id = ? OR task_id = ? '
                'ORDER BY id = ? DESC, created DESC LIMIT 1',
                (ident, ident, ident),
            )
        )
        return self._row(row) if row else None

    def remove(self, ident: str) -> DeadLetter | None:
        letter = self.get(ident)
        if letter is not None:
            with self._db.write() as conn:
                conn.execute('DELETE FROM dead_letters WHERE id = ?', (letter.id,))
        return letter

    def purge(self) -> int:
        with self._db.write() as conn:
            return conn.execute('DELETE FROM dead_letters').rowcount

    def count(self) -> int:
        return int(self._db.query('SELECT COUNT(*) FROM dead_letters')[0][0])


def _lease_owner(holder: str) -> str:
    """The owner lock file name of a lease holder (holder names come from callers: keep them file-safe)."""
    return 'lease.' + ''.join(c if c.isalnum() or c in '-_.' else '_' for c in holder)[:100]


def insert_dead_letter(conn: object, letter: DeadLetter) -> None:
    conn.execute(  # type: ignore[attr-defined]
        'INSERT OR REPLACE INTO dead_letters (id, queue, reason, task_id, task_name, deliveries, created, payload) '
        'VALUES (?, ?, ?, ?, ?, ?, ?, ?)',
        (
            letter.id,
            letter.queue,
            letter.reason,
            letter.task_id,
            letter.task_name,
            letter.deliveries,
            letter.created,
            letter.payload,
        ),
    )


class SQLiteBroker(Broker):
    scheme = 'sqlite'
    features = BrokerFeatures(
        priorities=True,
        delayed=True,
        delayed_publish=True,
        leases=True,
        dead_owner_detection=True,
        delivery_count=True,
        fanout=True,
        shared=True,
    )

    def __init__(self, url: str, conf: Settings) -> None:
        super().__init__(url, conf)
        self.path = path_from_url(url, 'broker_url')
        synchronous = str(self.transport_options.get('synchronous', 'NORMAL')).upper()
        self.db = Database(self.path, url, SCHEMA, synchronous)
        self.doorbell = Doorbell(f'{self.path}-ring')
        self.fanout_bell = Doorbell(f'{self.path}-fanout')
        self.owners = _OwnerLocks(self.path)
        self._dead = SQLiteDeadLetters(self.db)
        self._known_queues: set[str] = set()
        self._connected = False
        self._last_fanout_cleanup = 0.0
        self._last_claim_cleanup = 0.0
        self._lease_locks: dict[str, int] = {}  # holder -> fd of its owner lock (liveness of lease holders)

    def connect(self) -> None:
        if not self._connected:
            self.db.setup()
            self.doorbell = Doorbell(f'{self.path}-ring')
            self.fanout_bell = Doorbell(f'{self.path}-fanout')
            self._connected = True

    def publish(self, batch: Sequence[Outgoing]) -> None:
        if not batch:
            return
        self.connect()
        rows = []
        new_queues = set()
        for out in batch:
            payload = out.to_envelope()
            rows.append((out.queue, out.priority, out.eta or 0.0, payload))
            if out.queue not in self._known_queues:
                new_queues.add(out.queue)
        with self.db.write() as conn:
            if new_queues:
                conn.executemany('INSERT OR IGNORE INTO queues (name) VALUES (?)', [(q,) for q in new_queues])
            conn.executemany('INSERT INTO messages (queue, priority, not_before, payload) VALUES (?, ?, ?, ?)', rows)
        self._known_queues |= new_queues
        self.doorbell.ring()

    def _publish_raw(self, queue: str, payload: bytes) -> None:
        self.connect()
        with self.db.write() as conn:
            conn.execute('INSERT OR IGNORE INTO queues (name) VALUES (?)', (queue,))
            conn.execute('INSERT INTO messages (queue, payload) VALUES (?, ?)', (queue, payload))
        self.doorbell.ring()

    def consumer(self, queues: Sequence[str], owner: str) -> Consumer:
        self.connect()
        return SQLiteConsumer(self, list(queues), owner)

    def purge(self, queue: str) -> int:
        self.connect()
        with self.db.write() as conn:
            return conn.execute('DELETE FROM messages WHERE queue = ? AND owner IS NULL', (queue,)).rowcount

    def qsize(self, queue: str) -> int:
        self.connect()
        row = _first(self.db.query('SELECT COUNT(*) FROM messages WHERE queue = ? AND owner IS NULL', (queue,)))
        return int(row[0])

    def known_queues(self) -> list[str]:
        self.connect()
        return [r[0] for r in self.db.query('SELECT name FROM queues ORDER BY name')]

    @property
    def dead_letters(self) -> DeadLetterStore:
        self.connect()
        return self._dead

    def acquire_rate(self, key: str, rate: float) -> float:
        self.connect()
        with self.db.write() as conn:
            now = time.time()
            row = conn.execute('SELECT tat FROM rates WHERE key = ?', (key,)).fetchone()
            tat = max(float(row[0]) if row else 0.0, now)
            if tat > now:
                return tat - now
            conn.execute('INSERT OR REPLACE INTO rates (key, tat) VALUES (?, ?)', (key, tat + 1.0 / rate))
        return 0.0

    def revoke(self, task_ids: Sequence[str], ttl: float) -> None:
        self.connect()
        until = time.time() + ttl
        with self.db.write() as conn:
            conn.executemany(
                'INSERT OR REPLACE INTO revoked (task_id, expires) VALUES (?, ?)', [(t, until) for t in task_ids]
            )
            conn.execute('DELETE FROM revoked WHERE expires < ?', (time.time(),))

    def revoked(self) -> set[str]:
        self.connect()
        return {row[0] for row in self.db.query('SELECT task_id FROM revoked WHERE expires > ?', (time.time(),))}

    def pop(self, queue: str, timeout: float) -> list[bytes]:
        self.connect()
        deadline = time.monotonic() + timeout
        while True:
            generation = self.doorbell.generation()
            with self.db.write() as conn:
                rows = conn.execute(
                    'DELETE FROM messages WHERE queue = ? AND owner IS NULL AND not_before <= ? RETURNING id, payload',
                    (queue, time.time()),
                ).fetchall()
            if rows:
                return [bytes(p) for _, p in sorted(rows)]
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return []
            self.doorbell.wait(generation, remaining)

    def fanout_publish(self, exchange: str, payload: bytes, routing_key: str = '') -> None:
        self.connect()
        now = time.time()
        with self.db.write() as conn:
            conn.execute(
                'INSERT INTO fanout (exchange, routing_key, created, payload) VALUES (?, ?, ?, ?)',
                (exchange, routing_key, now, payload),
            )
            if now - self._last_fanout_cleanup > FANOUT_KEEP / 4:
                conn.execute('DELETE FROM fanout WHERE created < ?', (now - FANOUT_KEEP,))
                self._last_fanout_cleanup = now
        self.fanout_bell.ring()

    def subscribe(self, exchange: str) -> Subscription:
        self.connect()
        return _SQLiteSubscription(self, exchange)

    def claim(self, key: str, ttl: float) -> bool:
        self.connect()
        now = time.time()
        with self.db.write() as conn:
            conn.execute('DELETE FROM claims WHERE key = ? AND expires <= ?', (key, now))
            taken = conn.execute('INSERT OR IGNORE INTO claims (key, expires) VALUES (?, ?)', (key, now + ttl))
            if now - self._last_claim_cleanup > CLAIM_CLEANUP_INTERVAL:
                conn.execute('DELETE FROM claims WHERE expires <= ?', (now,))
                self._last_claim_cleanup = now
        return taken.rowcount == 1

    def lease(self, name: str, holder: str, ttl: float) -> bool:
        """A row per lease; a holder also holds an owner lock file, so its lease is free the moment its process
        dies (as reservations of dead consumers are), without waiting for the row to expire."""
        self.connect()
        now = time.time()
        with self.db.write() as conn:
            row = conn.execute('SELECT holder, expires FROM leases WHERE name = ?', (name,)).fetchone()
            if row is not None and row[0] != holder and row[1] > now and not self._lease_holder_dead(row[0]):
                return False
            if holder not in self._lease_locks:
                self._lease_locks[holder] = self.owners.acquire(_lease_owner(holder))
            conn.execute(
                'INSERT OR REPLACE INTO leases (name, holder, expires) VALUES (?, ?, ?)', (name, holder, now + ttl)
            )
        return True

    def _lease_holder_dead(self, holder: str) -> bool:
        return holder not in self._lease_locks and self.owners.is_dead(_lease_owner(holder))

    def release_lease(self, name: str, holder: str) -> None:
        self.connect()
        with self.db.write() as conn:
            conn.execute('DELETE FROM leases WHERE name = ? AND holder = ?', (name, holder))
        fd = self._lease_locks.pop(holder, None)
        if fd is not None:
            self.owners.release(_lease_owner(holder), fd)

    def lease_holder(self, name: str) -> str | None:
        self.connect()
        row = _first(self.db.query('SELECT holder, expires FROM leases WHERE name = ?', (name,)))
        if row is None or row[1] <= time.time() or self._lease_holder_dead(row[0]):
            return None
        return str(row[0])

    def maintenance(self) -> None:
        self.db.checkpoint()

    def close(self) -> None:
        for holder, fd in list(self._lease_locks.items()):
            self.owners.release(_lease_owner(holder), fd)
        self._lease_locks.clear()
        self.db.close()


class _SQLiteSubscription(Subscription):
    def __init__(self, broker: SQLiteBroker, exchange: str) -> None:
        self.broker = broker
        self.exchange = exchange
        row = broker.db.query('SELECT COALESCE(MAX(id), 0) FROM fanout')[0]
        self._seen = int(row[0])

    def get(self, timeout: float) -> list[tuple[str, bytes]]:
        deadline = time.monotonic() + timeout
        bell = self.broker.fanout_bell
        while True:
            generation = bell.generation()
            rows = self.broker.db.query(
                'SELECT id, routing_key, payload FROM fanout WHERE exchange = ? AND id > ? ORDER BY id',
                (self.exchange, self._seen),
            )
            if rows:
                self._seen = rows[-1][0]
                return [(rk, bytes(p)) for _, rk, p in rows]
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return []
            bell.wait(generation, remaining)

    def close(self) -> None:
        return None


class SQLiteConsumer(Consumer):
    def __init__(self, broker: SQLiteBroker, queues: list[str], owner: str) -> None:
        self.broker = broker
        self.db = broker.db
        self.queues = queues
        # The owner name is also a file name: keep the caller's name readable but make it unique and safe.
        safe = ''.join(c if c.isalnum() or c in '-_.' else '_' for c in owner)[:64]
        self.owner = f'{safe}.{uuid.uuid4().hex[:12]}'
        self._lock_fd = broker.owners.acquire(self.owner)
        self._woken = threading.Event()
        self._last_sweep = 0.0
        self._closed = False
        self._queue_sql = (queues, placeholders(len(queues)))  # replaced together, read once per query

    def set_queues(self, queues: Sequence[str]) -> None:
        queues = list(queues)
        self.queues = queues
        self._queue_sql = (queues, placeholders(len(queues)))
        self.wakeup()

    # --- fetching -----------------------------------------------------------------------------------------

    def fetch(self, limit: int, timeout: float) -> list[Delivery]:
        deadline = time.monotonic() + timeout
        bell = self.broker.doorbell
        while True:
            generation = bell.generation()
            if time.monotonic() - self._last_sweep >= SWEEP_INTERVAL:
                self._sweep()
            now = time.time()
            deliveries = self._reserve(limit, now) if limit > 0 else []
            if deliveries:
                return deliveries
            remaining = deadline - time.monotonic()
            if remaining <= 0 or self._woken.is_set():
                self._woken.clear()
                return []
            next_due = self._next_due(now)
            if next_due is not None:
                remaining = min(remaining, max(next_due - now, 0.0005))
            bell.wait(generation, min(remaining, SWEEP_INTERVAL))
            if self._woken.is_set():
                self._woken.clear()
                return []

    def _reserve(self, limit: int, now: float) -> list[Delivery]:
        until = now + self.broker.visibility_timeout
        queues, sql = self._queue_sql
        with self.db.write() as conn:
            rows = conn.execute(
                'UPDATE messages SET owner = ?, lease_until = ?, deliveries = deliveries + 1 '
                'WHERE id IN (SELECT id FROM messages WHERE owner IS NULL AND queue IN '
                f'({sql}) AND not_before <= ? ORDER BY priority DESC, id LIMIT ?) '
                'RETURNING id, queue, priority, deliveries, payload',
                (self.owner, until, *queues, now, limit),
            ).fetchall()
        rows.sort(key=lambda r: (-r[2], r[0]))
        return [self._delivery(r[0], r[1], r[3], bytes(r[4])) for r in rows]

    @staticmethod
    def _delivery(tag: int, queue: str, deliveries: int, payload: bytes) -> Delivery:
        try:
            message = _core.Message.from_envelope(payload, None)
        except ValueError as exc:
            return Delivery(tag, queue, None, payload, deliveries > 1, deliveries, error=str(exc))
        return Delivery(tag, queue, message, payload, deliveries > 1, deliveries)

    def _next_due(self, now: float) -> float | None:
        queues, sql = self._queue_sql
        row = _first(
            self.db.query(
                f'SELECT MIN(not_before) FROM messages WHERE owner IS NULL AND queue IN ({sql}) AND not_before > ?',
                (*queues, now),
            )
        )
        return float(row[0]) if row and row[0] is not None else None

    def _sweep(self) -> None:
        """Return the reservations of dead owners, and of live ones that stopped renewing, to their queues."""
        self._last_sweep = time.monotonic()
        now = time.time()
        owners = [
            r[0]
            for r in self.db.query(
                'SELECT DISTINCT owner FROM messages WHERE owner IS NOT NULL AND owner != ?', (self.owner,)
            )
        ]
        dead = [o for o in owners if self.broker.owners.is_dead(o)]
        expired = self.db.query('SELECT COUNT(*) FROM messages WHERE owner IS NOT NULL AND lease_until < ?', (now,))[0][
            0
        ]
        if not dead and not expired:
            return
        with self.db.write() as wconn:
            restored = 0
            for owner in dead:
                restored += wconn.execute(
                    'UPDATE messages SET owner = NULL, lease_until = 0 WHERE owner = ?', (owner,)
                ).rowcount
            restored += wconn.execute(
                'UPDATE messages SET owner = NULL, lease_until = 0 WHERE owner IS NOT NULL AND lease_until < ?',
                (now,),
            ).rowcount
        if restored:
            logger.warning(
                'Restored %d unacknowledged message(s) from %s',
                restored,
                f'{len(dead)} dead worker(s)' if dead else 'expired reservations',
            )
            self.broker.doorbell.ring()

    def wakeup(self) -> None:
        self._woken.set()
        self.broker.doorbell.interrupt()

    # --- settling -----------------------------------------------------------------------------------------

    def _update(self, sql: str, tags: Sequence[Tag], *params: object) -> int:
        count = 0
        with self.db.write() as conn:
            for chunk in chunks(list(tags)):
                count += conn.execute(sql.format(ids=placeholders(len(chunk))), (*params, self.owner, *chunk)).rowcount
        return count

    def ack(self, tags: Sequence[Tag]) -> None:
        if tags:
            self._update('DELETE FROM messages WHERE owner = ? AND id IN ({ids})', tags)

    def reject(self, tags: Sequence[Tag], requeue: bool) -> None:
        if not tags:
            return
        if requeue:
            self._update('UPDATE messages SET owner = NULL, lease_until = 0 WHERE owner = ? AND id IN ({ids})', tags)
            self.broker.doorbell.ring()
        else:
            self.ack(tags)

    def release(self, tags: Sequence[Tag]) -> None:
        if not tags:
            return
        self._update(
            'UPDATE messages SET owner = NULL, lease_until = 0, deliveries = MAX(deliveries - 1, 0) '
            'WHERE owner = ? AND id IN ({ids})',
            tags,
        )
        self.broker.doorbell.ring()

    def defer(self, tag: Tag, eta: float) -> None:
        self._update(
            'UPDATE messages SET owner = NULL, lease_until = 0, not_before = ?, '
            'deliveries = MAX(deliveries - 1, 0) WHERE owner = ? AND id IN ({ids})',
            [tag],
            eta,
        )
        self.broker.doorbell.ring()

    def parked(self, limit: int) -> list[_core.Message]:
        """The messages of our queues not due yet, whether sent with an ETA (they wait here, unseen by any
        worker) or deferred by one: listed by one consumer per queue, the holder of the lease
        `scheduled.<queue>`, which it keeps while it is asked within `LISTING_LEASE` and loses when its
        process dies, so each task is listed once and a restart does not hide it."""
        queues = [q for q in self.queues if self.broker.lease(f'scheduled.{q}', self.owner, LISTING_LEASE)]
        if not queues:
            return []
        rows = self.db.query(
            f'SELECT payload FROM messages WHERE owner IS NULL AND queue IN ({placeholders(len(queues))}) '
            'AND not_before > ? ORDER BY not_before, id LIMIT ?',
            (*queues, time.time(), limit),
        )
        messages = []
        for row in rows:
            try:
                messages.append(_core.Message.from_envelope(bytes(row[0]), None))
            except ValueError:  # dead-lettered when it comes due; nothing to list
                continue
        return messages

    def renew(self) -> None:
        until = time.time() + self.broker.visibility_timeout
        with self.db.write() as conn:
            conn.execute('UPDATE messages SET lease_until = ? WHERE owner = ?', (until, self.owner))

    def dead_letter(self, delivery: Delivery, reason: str) -> DeadLetter:
        letter = DeadLetter.of(delivery, reason)
        with self.db.write() as conn:
            insert_dead_letter(conn, letter)
            conn.execute('DELETE FROM messages WHERE id = ?', (delivery.tag,))
        return letter

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        with contextlib.suppress(Exception):
            with self.db.write() as conn:
                released = conn.execute(
                    'UPDATE messages SET owner = NULL, lease_until = 0, deliveries = MAX(deliveries - 1, 0) '
                    'WHERE owner = ?',
                    (self.owner,),
                ).rowcount
            if released:
                self.broker.doorbell.ring()
        self.broker.owners.release(self.owner, self._lock_fd)
