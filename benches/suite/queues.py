"""What the broker holds, seen from outside either engine: counts, pre-filling, releasing, completion.

Both engines store a waiting task as kombu's JSON envelope: on Redis in the list named after the queue
(`celery`, pushed on the left, consumed from the right) and, once a worker has reserved it, in the `unacked`
hash (field: the envelope's delivery tag) until it is acknowledged; on fastq's SQLite broker as a row of
`messages` (owner NULL while waiting, set while reserved, deleted on ack). On RabbitMQ a task is an AMQP
message on the durable queue `celery` (task id in the headers and correlation_id); the node counts it as
ready, then unacknowledged once delivered to a consumer, until the worker acks it.

Pre-filling (`stage` + `release`): the queue is filled while a worker already runs and sits idle, so neither
the fill nor the worker's start-up is timed. Copies of one envelope that the engine's own client published are
written under a staging name the worker does not read, then moved onto the queue in one atomic step (Redis:
RENAMENX, which wakes a worker blocked on the queue as a push does; SQLite: one UPDATE, then the broker's
doorbell is rung as a publish rings it). Each copy gets its own task id and delivery tag (`clone`), so the
`unacked` hash and the results never collide.

RabbitMQ has no atomic move of a queue's messages: the queue is filled before the worker starts (`prefilled`)
and the drain is timed by the pool children's own clocks instead (see benches/README.md); `release` does
nothing there.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import time
import uuid
from collections.abc import Iterator
from typing import Any
from urllib.parse import unquote, urlsplit

__all__ = ['AmqpQueues', 'Drained', 'RedisQueues', 'SqliteQueues', 'clone', 'queues_for']

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

    prefilled = False  # staged, then released onto the queue of an idle worker

    def settled(self, expected: int) -> int:
        """Tasks on the queue once every publish has landed (on Redis: when the call returned)."""
        return self.ready()

    def clear(self) -> None:
        self.client.delete(QUEUE, 'unacked', 'unacked_index', 'fastq.holds', STAGING)

    def copies(self, template: Any, count: int) -> Iterator[bytes]:
        return clone(template, count)

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
        """(waiting, reserved, clients blocked in Redis), all read in one MULTI/EXEC: a consistent instant.
        Reserved counts fastq's holds (a batch moved off the queue, recorded in `unacked` a write later)."""
        pipe = self.client.pipeline(transaction=True)
        pipe.llen(QUEUE)
        pipe.hlen('unacked')
        pipe.zcard('fastq.holds')
        pipe.info('clients')
        ready, reserved, holds, clients = pipe.execute()
        return int(ready), int(reserved) + int(holds), int(clients.get('blocked_clients', 0))

    def drained(self, consumer_blocks: bool) -> bool:
        """Every task handed to the pool: nothing waiting, nothing reserved and unacknowledged.

        Celery's worker (kombu) pops a message with BRPOP and records it in `unacked` in a second command, so
        for a moment a message is in neither place. The worker issues its next BRPOP only after recording
        the last delivery, so `consumer_blocks` also requires a client blocked in Redis in the same instant:
        then nothing is in transit. fastq's fetch is one script that pops and records atomically, or moves
        a batch into a hold list that `fastq.holds` lists until the batch is recorded or acked.
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

    prefilled = False

    def settled(self, expected: int) -> int:
        return self.ready()

    def clear(self) -> None:
        self.db.execute('DELETE FROM messages WHERE queue IN (?, ?)', (QUEUE, STAGING))

    def copies(self, template: Any, count: int) -> Iterator[bytes]:
        return clone(template, count)

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


class AmqpQueues:
    """The `celery` queue on a RabbitMQ vhost, seen with py-amqp (counts, fill) and rabbitmqctl (unacked).

    `node` is the node name for rabbitmqctl: AMQP itself tells a client how many messages are ready
    (queue.declare passive) but not how many are delivered and unacknowledged."""

    prefilled = True  # filled before the worker starts: no atomic move on RabbitMQ

    def __init__(self, url: str, node: str) -> None:
        import amqp

        parts = urlsplit(url)
        self.vhost = unquote(parts.path[1:]) or '/'
        self.node = node
        self.conn = amqp.Connection(
            f'{parts.hostname}:{parts.port}',
            userid=unquote(parts.username or 'guest'),
            password=unquote(parts.password or 'guest'),
            virtual_host=self.vhost,
        )
        self.conn.connect()
        self.channel = self.conn.channel()

    def _declare(self) -> tuple[int, int]:
        """(ready, consumers) of the queue; (0, 0) when it does not exist (yet)."""
        import amqp

        try:
            _, ready, consumers = self.channel.queue_declare(QUEUE, passive=True)
        except amqp.exceptions.NotFound:
            self.channel = self.conn.channel()  # a 404 closes the channel
            return 0, 0
        return int(ready), int(consumers)

    def ready(self) -> int:
        return self._declare()[0]

    def settled(self, expected: int, timeout: float = 60) -> int:
        """Ready tasks once every publish has landed: without publisher confirms a task may still be on its
        way when delay() returns, so wait until the count reaches `expected` and then holds still."""
        deadline = time.monotonic() + timeout
        last = self.ready()
        while time.monotonic() < deadline:
            if last >= expected:
                time.sleep(0.1)
                now = self.ready()
                if now == last:
                    return now
                last = now
            else:
                time.sleep(0.01)
                last = self.ready()
        return last

    def _ctl_counts(self) -> tuple[int, int, int]:
        """(ready, unacknowledged, consumers) of the queue as the node reports them, one rabbitmqctl call."""
        out = subprocess.run(
            ['rabbitmqctl', '-n', self.node, '-q', 'list_queues', '-p', self.vhost, '--no-table-headers',
             'name', 'messages_ready', 'messages_unacknowledged', 'consumers'],
            capture_output=True, text=True, timeout=60, check=True,
        ).stdout  # fmt: skip
        for line in out.splitlines():
            parts = line.split('\t')
            if len(parts) == 4 and parts[0] == QUEUE:
                return int(parts[1]), int(parts[2]), int(parts[3])
        return 0, 0, 0

    def reserved(self) -> int:
        return self._ctl_counts()[1]

    def clear(self) -> None:
        import amqp

        try:
            self.channel.queue_purge(QUEUE)
        except amqp.exceptions.NotFound:
            self.channel = self.conn.channel()

    def pop_template(self) -> Any:
        found = self.settled(1)
        if found != 1:
            raise RuntimeError(f'expected exactly the template on {QUEUE!r}, found {found}')
        message = self.channel.basic_get(QUEUE, no_ack=True)
        if message is None:
            raise RuntimeError('basic.get found no template')
        return message

    def copies(self, template: Any, count: int) -> Iterator[tuple[bytes, dict[str, Any]]]:
        """`count` copies of a task message as (body, properties): the same body and properties, each with
        a fresh task id (headers id and root_id, correlation_id). RabbitMQ assigns delivery tags itself."""
        properties = dict(template.properties)
        headers = dict(properties.get('application_headers') or {})
        task_id = headers.get('id')
        if not task_id or properties.get('correlation_id') != task_id:
            raise ValueError('template: no task id in the headers, or correlation_id is not the task id')
        body = template.body if isinstance(template.body, bytes) else template.body.encode()
        for _ in range(count):
            new_id = str(uuid.uuid4())
            copy_headers = dict(headers, id=new_id)
            if headers.get('root_id') == task_id:
                copy_headers['root_id'] = new_id
            yield body, dict(properties, application_headers=copy_headers, correlation_id=new_id)

    def stage(self, payloads: Iterator[tuple[bytes, dict[str, Any]]]) -> int:
        """Publish the copies straight onto the queue (no worker runs yet); returns the count on the node."""
        import amqp

        sent = 0
        for body, properties in payloads:
            self.channel.basic_publish(amqp.Message(body, **properties), exchange='', routing_key=QUEUE)
            sent += 1
        return self.settled(sent)

    def release(self) -> float:
        raise RuntimeError('RabbitMQ: the queue is filled before the worker starts; nothing to release')

    def drained(self, consumer_blocks: bool = False) -> bool:
        """Nothing ready, nothing delivered and unacknowledged, the worker still consuming: every task has
        been handed to the pool (both engines ack early, when a pool child takes the task). The cheap AMQP
        count first; the node's own counts (rabbitmqctl, ~0.4 s) only once nothing is ready."""
        if self.ready():
            return False
        time.sleep(0.05)  # the last prefetched tasks take milliseconds: let them finish before rabbitmqctl starts
        ready, unacked, consumers = self._ctl_counts()
        return ready == 0 and unacked == 0 and consumers > 0

    def parked(self) -> tuple[int, int]:
        ready, unacked, _ = self._ctl_counts()
        return ready, unacked

    def close(self) -> None:
        self.conn.close()


def queues_for(kind: str, location: str) -> RedisQueues | SqliteQueues | AmqpQueues:
    if kind == 'redis':
        return RedisQueues(location)
    if kind == 'amqp':
        return AmqpQueues(location, os.environ['FASTQ_BENCH_RABBIT_NODE'])
    return SqliteQueues(location)


def wait_until(predicate: Any, timeout: float, interval: float = 0.005, what: str = 'condition') -> float:
    """Poll `predicate` until true; the perf_counter time of the first poll that saw it true."""
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return time.perf_counter()
        if time.monotonic() > deadline:
            raise Drained(f'timed out after {timeout:.0f}s waiting for {what}')
        time.sleep(interval)
