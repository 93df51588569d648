"""What the broker holds, seen from outside either engine: counts, pre-filling, releasing, completion.

Both engines store a waiting task as kombu's JSON envelope: on Redis in the list named after the queue
(`celery`, pushed on the left, consumed from the right) and, once a worker has reserved it, in the `unacked`
hash (field: the envelope's delivery tag) until it is acknowledged; on fastq's SQLite broker as a row of
`messages` (owner NULL while waiting, set while reserved, deleted on ack).

Pre-filling (`stage` + `release`): the queue is filled while a worker already runs and sits idle, so neither
the fill nor the worker's start-up is timed. Copies of one envelope that the engine's own client published are
written under a staging name the worker does not read, then moved onto the queue in one atomic step (Redis:
RENAMENX, which wakes a worker blocked on the queue as a push does; SQLite: one UPDATE, then the broker's
doorbell is rung as a publish rings it). Each copy gets its own task id and delivery tag (`clone`), so the
`unacked` hash and the results never collide.
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
import uuid
from collections.abc import Iterator
from typing import Any

__all__ = ['Drained', 'RedisQueues', 'SqliteQueues', 'clone', 'queues_for']

QUEUE = 'celery'
STAGING = 'bench:staging'
CHUNK = 5000


class Drained(Exception):
    """A completion wait gave up."""


def clone(template: bytes, count: int) -> Iterator[bytes]:
    """`count` copies of a task envelope, each with a fresh task id (id, root_id, correlation_id) and tag.

    Plain byte replacement of the two UUIDs: the body (base64 of args, kwargs, embed) does not contain them.
    The first copy is parsed back to prove the replacement hit the right fields.
    """
    envelope = json.loads(template)
    task_id = envelope['headers']['id']
    tag = envelope['properties']['delivery_tag']
    if envelope['properties'].get('correlation_id') != task_id:
        raise ValueError('template: correlation_id is not the task id')
    if template.count(tag.encode()) != 1:
        raise ValueError('template: the delivery tag must occur exactly once')
    old_id, old_tag = task_id.encode(), tag.encode()
    for i in range(count):
        new_id, new_tag = str(uuid.uuid4()).encode(), str(uuid.uuid4()).encode()
        out = template.replace(old_id, new_id).replace(old_tag, new_tag)
        if i == 0:
            check = json.loads(out)
            if (
                check['headers']['id'] != new_id.decode()
                or check['properties']['correlation_id'] != new_id.decode()
                or check['properties']['delivery_tag'] != new_tag.decode()
                or check['body'] != envelope['body']
            ):
                raise ValueError('template: cloning did not replace the id and tag where expected')
        yield out


class RedisQueues:
    """The `celery` queue on Redis in kombu's layout (fastq uses the same keys)."""

    def __init__(self, url: str) -> None:
        import redis

        self.client = redis.Redis.from_url(url)

    def ready(self) -> int:
        return int(self.client.llen(QUEUE))

    def reserved(self) -> int:
        return int(self.client.hlen('unacked'))

    def clear(self) -> None:
        self.client.delete(QUEUE, 'unacked', 'unacked_index', STAGING)

    def pop_template(self) -> bytes:
        if self.ready() != 1:
            raise RuntimeError(f'expected exactly the template on {QUEUE!r}, found {self.ready()}')
        raw = self.client.rpop(QUEUE)
        assert isinstance(raw, bytes)
        return raw

    def stage(self, payloads: Iterator[bytes]) -> int:
        staged = 0
        batch: list[bytes] = []
        for payload in payloads:
            batch.append(payload)
            if len(batch) == CHUNK:
                staged = int(self.client.lpush(STAGING, *batch))
                batch = []
        if batch:
            staged = int(self.client.lpush(STAGING, *batch))
        return staged

    def release(self) -> float:
        """Move the staged tasks onto the queue in one step (the queue must be empty: it does not exist).

        Returns the perf_counter time from which a worker can see them: just before the command (O(1))."""
        visible = time.perf_counter()
        if not self.client.renamenx(STAGING, QUEUE):
            raise RuntimeError(f'{QUEUE!r} was not empty when the staged tasks were released')
        return visible

    def snapshot(self) -> tuple[int, int, int]:
        """(waiting, reserved, clients blocked in Redis), all read in one MULTI/EXEC: a consistent instant."""
        pipe = self.client.pipeline(transaction=True)
        pipe.llen(QUEUE)
        pipe.hlen('unacked')
        pipe.info('clients')
        ready, reserved, clients = pipe.execute()
        return int(ready), int(reserved), int(clients.get('blocked_clients', 0))

    def drained(self, consumer_blocks: bool) -> bool:
        """Every task handed to the pool: nothing waiting, nothing reserved and unacknowledged.

        Celery's worker (kombu) pops a message with BRPOP and records it in `unacked` in a second command, so
        for a moment a message is in neither place. The worker issues its next BRPOP only after recording
        the last delivery, so `consumer_blocks` also requires a client blocked in Redis in the same instant:
        then nothing is in transit. fastq's fetch is one script that pops and records atomically.
        """
        ready, reserved, blocked = self.snapshot()
        return ready == 0 and reserved == 0 and (blocked > 0 or not consumer_blocks)

    def parked(self) -> tuple[int, int]:
        """(waiting, reserved): ETA tasks a worker holds stay in `unacked` (Celery in memory, fastq parked)."""
        return self.ready(), self.reserved()

    def close(self) -> None:
        self.client.close()


class SqliteQueues:
    """The `celery` queue of fastq's SQLite broker (table `messages`)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.db = sqlite3.connect(path, timeout=30, isolation_level=None)
        self.db.execute('PRAGMA busy_timeout = 30000')

    def _count(self, sql: str, *args: Any) -> int:
        return int(self.db.execute(sql, args).fetchone()[0])

    def ready(self) -> int:
        return self._count('SELECT count(*) FROM messages WHERE queue = ? AND owner IS NULL', QUEUE)

    def reserved(self) -> int:
        return self._count('SELECT count(*) FROM messages WHERE queue = ? AND owner IS NOT NULL', QUEUE)

    def clear(self) -> None:
        self.db.execute('DELETE FROM messages WHERE queue IN (?, ?)', (QUEUE, STAGING))

    def pop_template(self) -> bytes:
        rows = self.db.execute('DELETE FROM messages WHERE queue = ? RETURNING payload', (QUEUE,)).fetchall()
        if len(rows) != 1:
            raise RuntimeError(f'expected exactly the template on {QUEUE!r}, found {len(rows)}')
        return bytes(rows[0][0])

    def stage(self, payloads: Iterator[bytes]) -> int:
        self.db.execute('BEGIN IMMEDIATE')
        self.db.executemany('INSERT INTO messages (queue, payload) VALUES (?, ?)', ((STAGING, p) for p in payloads))
        self.db.execute('COMMIT')
        return self._count('SELECT count(*) FROM messages WHERE queue = ?', STAGING)

    def release(self) -> float:
        """One UPDATE (its own transaction), then the doorbell; returns the time the rows became visible:
        when the UPDATE has committed (rewriting N rows takes a while, and no worker sees any before)."""
        self.db.execute('UPDATE messages SET queue = ? WHERE queue = ?', (QUEUE, STAGING))
        visible = time.perf_counter()
        ring = f'{self.path}-ring'  # fastq's doorbell: waiters wake when its mtime changes
        with open(ring, 'a'):
            pass
        os.utime(ring)
        return visible

    def drained(self, consumer_blocks: bool) -> bool:
        """No row left for the queue: acknowledging a task deletes its row (an early ack, at hand-over).

        EXISTS stops at the first row, so a poll costs next to nothing while the queue is long."""
        return self._count('SELECT EXISTS (SELECT 1 FROM messages WHERE queue = ?)', QUEUE) == 0

    def parked(self) -> tuple[int, int]:
        return self.ready(), self.reserved()

    def close(self) -> None:
        self.db.close()


def queues_for(kind: str, location: str) -> RedisQueues | SqliteQueues:
    return RedisQueues(location) if kind == 'redis' else SqliteQueues(location)


def wait_until(predicate: Any, timeout: float, interval: float = 0.005, what: str = 'condition') -> float:
    """Poll `predicate` until true; the perf_counter time of the first poll that saw it true."""
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return time.perf_counter()
        if time.monotonic() > deadline:
            raise Drained(f'timed out after {timeout:.0f}s waiting for {what}')
        time.sleep(interval)
