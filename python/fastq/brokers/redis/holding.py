"""A busy queue reserved without the fetch script: LMOVE into a hold list, recorded in `unacked` one write later.

The fetch script (scripts/fetch.lua) costs Redis 9-10 µs per message on the benchmark host, most of it Lua
copying and hashing each ~1 KB envelope twice (the RPOP's result, and kombu's record made from it); a plain
`LMOVE queue hold RIGHT LEFT` costs ~2 µs. So while one queue keeps filling whole windows, the consumer
reserves a window with one LMOVE per message into a hold list of that batch's own, in the same write as
everything the previous batch still needs:

    MULTI; HSET unacked <records of the last batch's messages not acked yet>; ZADD unacked_index ...;
           HDEL/ZREM <acks of recorded messages>; DEL <last hold>; ZREM fastq.holds <last hold>; EXEC
    ZADD fastq.holds <now> <new hold>;  LMOVE <queue key> <new hold> RIGHT LEFT  (x the window)

A message is always in its queue, in a hold, or in kombu's `unacked`: the hold is its reservation until the
next write records it (kombu's record, so Celery's restore and fastq's read it as their own) and drops the
hold in the same transaction. A message acked before that write (a drain's early acks, at dispatch) is never
recorded at all. Drain of no-op tasks on the benchmark host: Redis 13-14 → ~5 µs per task, 42k → 54k tasks/s.

The state here is shared by the fetching thread and any thread that acks, rejects or parks. A tag is
*unrecorded* (in a hold, no record written), *in flight* (its record is in a write not answered yet), or
neither (recorded, or never held here). An ack of an unrecorded tag drops it from the next write; an ack of a
tag in flight is deleted in the write after (its HDEL must follow its HSET, and only one connection orders
them); whatever reads a record (park, restore, dead-letter) has the holds written first (`Consumer.record`).

A write that fails has unknown effects: its records are written again (HSET is idempotent), its deletes sent
again, and the hold it was filling, whose messages this consumer never saw, is put back on its queue
(`orphans`, `RedisBroker.unhold`). A consumer that dies leaves its last hold registered in `fastq.holds`; the
broker's sweep puts holds older than the visibility timeout back on their queues (a delivery counted), as it
restores unacked reservations. Celery's sweep does not know holds: a fastq worker killed in the millisecond
between a batch and its record has that batch restored by fastq workers only.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from fastq import _core

if TYPE_CHECKING:
    from collections.abc import Iterable

    from fastq.brokers.base import Tag
    from fastq.brokers.redis.layout import Layout

MALFORMED = 'fastq-malformed-'
CHUNK = 500  # values per HDEL/ZREM/HSET command


def tag_of(envelope: bytes) -> str:
    """The delivery tag of an envelope whose tag is not plainly there (`_core.moved_deliveries` reads the plain
    ones, as the fetch script does): decoded whole; a message without one gets a tag of its own
    (`fastq-malformed-<sha1>`), to be dead-lettered."""
    try:
        props = _core.json_loads(envelope, None).get('properties')
        tag = props.get('delivery_tag')
    except (ValueError, TypeError, AttributeError):
        tag = None
    if isinstance(tag, str) and tag:
        return tag
    return MALFORMED + hashlib.sha1(envelope).hexdigest()


def record_of(tag: str, envelope: bytes, queue: str) -> bytes:
    """kombu's `[envelope, exchange, routing_key]` for a held message: the default exchange and the queue it
    came from, which kombu's restore and fastq's read as "back to that queue". A malformed message is kept as
    a JSON string, as the fetch script keeps it."""
    route = json.dumps(queue).encode()
    if tag.startswith(MALFORMED):
        body = json.dumps(envelope.decode('utf-8', 'surrogateescape')).encode('utf-8', 'surrogateescape')
    else:
        body = envelope
    return b'[' + body + b', "", ' + route + b']'


@dataclass
class Write:
    """What one write carried, to settle once its reply is in (or put back when it failed)."""

    records: dict[str, tuple[bytes, str]] = field(default_factory=dict)
    deletes: list[str] = field(default_factory=list)
    spent: list[str] = field(default_factory=list)
    hold: str | None = None


class Holding:
    def __init__(self, layout: Layout) -> None:
        self.layout = layout
        self.token = secrets.token_hex(8)
        self.seq = 0
        self.lock = threading.Lock()  # the state below
        self.writing = threading.Lock()  # one write with hold commands at a time: their order is the state's
        self.unrecorded: dict[str, tuple[bytes, str]] = {}  # tag -> (envelope, queue)
        self.inflight: set[str] = set()
        self.uncertain: set[str] = set()  # in a write that failed: maybe recorded, so deleted when acked
        self.deletes: list[str] = []  # acks of recorded tags, for the next write
        self.spent: list[str] = []  # holds whose messages the next write records or has seen acked
        self.orphans: list[str] = []  # holds a failed write may have filled: back to their queues

    def pending(self) -> bool:
        """Whether a write is owed (records, deletes or holds to drop)."""
        return bool(self.unrecorded or self.deletes or self.spent)

    def settle(self, tags: Iterable[Tag]) -> list[Tag]:
        """Acks: the tags still to be deleted from `unacked` the usual way (the rest are this module's)."""
        with self.lock:
            if not (self.unrecorded or self.inflight):
                return list(tags)
            return self._settle(tags)

    def _settle(self, tags: Iterable[Tag]) -> list[Tag]:
        rest = []
        for tag in tags:
            key = str(tag)
            if self.unrecorded.pop(key, None) is not None:
                if key in self.uncertain:
                    self.deletes.append(key)
            elif key in self.inflight:
                self.deletes.append(key)
            else:
                rest.append(tag)
        return rest

    def holds_any(self, tags: Iterable[Tag]) -> bool:
        """Whether any of `tags` has no record yet (or one not answered for)."""
        with self.lock:
            if not (self.unrecorded or self.inflight):
                return False
            return any(str(t) in self.unrecorded or str(t) in self.inflight for t in tags)

    def begin(self, acks: Iterable[Tag], now: int) -> tuple[list[Any], Write]:
        """The transaction the next write opens with (none when nothing is owed), carrying `acks`, and what it
        carries. Under `writing`."""
        with self.lock:
            rest = self._settle(acks) if self.unrecorded else list(acks)
            write = Write(self.unrecorded, self.deletes + [str(t) for t in rest], self.spent)
            self.unrecorded, self.deletes, self.spent = {}, [], []
            self.inflight = set(write.records)
        if not (write.records or write.deletes or write.spent):
            return [], write
        layout = self.layout
        commands: list[Any] = [('MULTI',)]
        items = list(write.records.items())
        for i in range(0, len(items), CHUNK):
            part = items[i : i + CHUNK]
            records: list[Any] = []
            scores: list[Any] = []
            for tag, (envelope, queue) in part:
                records += (tag, record_of(tag, envelope, queue))
                scores += (now, tag)
            commands.append(('HSET', layout.unacked, *records))
            commands.append(('ZADD', layout.unacked_index, *scores))
        for i in range(0, len(write.deletes), CHUNK):
            chunk = write.deletes[i : i + CHUNK]
            commands.append(('HDEL', layout.unacked, *chunk))
            commands.append(('ZREM', layout.unacked_index, *chunk))
        if write.spent:
            commands.append(('DEL', *write.spent))
            commands.append(('ZREM', layout.holds, *write.spent))
        commands.append(('EXEC',))
        return commands, write

    def fill(self, write: Write, key: str, limit: int, now: int) -> list[Any]:
        """The commands that move up to `limit` messages from `key` into a new hold (registered first)."""
        self.seq += 1
        hold = write.hold = self.layout.hold(self.token, self.seq, key)
        move = ('LMOVE', key, hold, 'RIGHT', 'LEFT')
        return [('ZADD', self.layout.holds, now, hold), *[move] * limit]

    def done(self, write: Write, ok: bool, got: dict[str, tuple[bytes, str]] | None = None) -> None:
        """The write's reply is in (`ok`), with what its hold got; or it failed (`ok` False, `got` None)."""
        with self.lock:
            self.inflight = set()
            if ok:
                self.uncertain.difference_update(write.records)
                self.uncertain.difference_update(write.deletes)
            else:
                acked = set(self.deletes)
                for tag, value in write.records.items():
                    if tag not in acked:
                        self.unrecorded.setdefault(tag, value)
                        self.uncertain.add(tag)
                self.deletes = write.deletes + self.deletes
                self.spent = write.spent + self.spent
            if write.hold is not None:
                if got is None:
                    self.orphans.append(write.hold)
                else:
                    self.unrecorded.update(got)
                    self.spent.append(write.hold)

    def take_orphans(self) -> list[str]:
        with self.lock:
            orphans, self.orphans = self.orphans, []
            return orphans
