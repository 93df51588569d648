"""fastq's chord join in two tables of its own, with the claim made atomic by the chord's row lock.

Every step that reads and then changes a chord starts its transaction by writing the chord's row (an UPDATE,
or the INSERT that creates it). On PostgreSQL and MySQL that takes the row's lock until commit; SQLite has
one writer at a time, and a transaction that starts with a write waits for it instead of failing on an
upgrade. Either way the steps of two workers for one chord run one after the other: the part is recorded once
per `task_id:group_index`, the count is exact, and exactly one caller takes the claim. MySQL runs these
transactions in READ COMMITTED, so each statement sees the parts other workers committed before the lock was
granted (PostgreSQL's default already does).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection
from sqlalchemy.exc import IntegrityError

from fastq.backends.chords import ChordStore, Claim, claim_seconds, done_seconds, new_claim_token
from fastq.utils.time import seconds

if TYPE_CHECKING:
    from fastq.backends.database import DatabaseBackend

__all__ = ['DatabaseChordStore', 'transaction', 'update_or_insert']

#: How long a chord's rows stay without `result_chord_expires` or `result_expires`.
DEFAULT_CHORD_EXPIRES = 86400.0
#: `idx` of a part without a group index: after every indexed one.
LAST_INDEX = 2**62
#: Rounds of "update, else insert" before an IntegrityError is taken for a real one.
UPSERT_ATTEMPTS = 5


@contextmanager
def transaction(backend: DatabaseBackend) -> Iterator[Connection]:
    """A transaction on a connection of this process's pool (the tables created first, if need be)."""
    backend.ensure_tables()
    engine = backend.engines.get()
    with engine.connect() as conn:
        if engine.dialect.name in ('mysql', 'mariadb'):
            conn.execution_options(isolation_level='READ COMMITTED')
        with conn.begin():
            yield conn


def update_or_insert(conn: Connection, table: sa.Table, key: dict[str, Any], values: dict[str, Any]) -> bool:
    """UPDATE the row of `key`, or INSERT it when there is none: False if it was updated."""
    where = [table.c[k] == v for k, v in key.items()]
    if conn.execute(sa.update(table).where(*where).values(**values)).rowcount:
        return False
    conn.execute(sa.insert(table).values(**key, **values))
    return True


class DatabaseChordStore(ChordStore):
    def __init__(self, backend: DatabaseBackend) -> None:
        self.backend = backend
        conf = backend.app.conf
        self.expires = seconds(conf.result_chord_expires or backend.expires) or DEFAULT_CHORD_EXPIRES

    @property
    def _chord(self) -> sa.Table:
        return self.backend.tables.chord

    @property
    def _parts(self) -> sa.Table:
        return self.backend.tables.chord_part

    def _run(self, what: str, step: Any) -> Any:
        """`step(conn)` in a transaction; a lost race to create the chord's row runs it again (the row exists now)."""

        def attempt() -> Any:
            for n in range(UPSERT_ATTEMPTS):
                try:
                    with transaction(self.backend) as conn:
                        return step(conn)
                except IntegrityError:
                    if n == UPSERT_ATTEMPTS - 1:
                        raise
            return None

        return self.backend.retrying(attempt, what)

    def set_size(self, group_id: str, size: int) -> None:
        # A re-sent frozen chord (same group id) is a new run; `diff` stays: a header task may have added parts.
        values = dict(size=size, claim=None, claim_until=None, done=0, expires=self._until())
        self._run(
            f'set the size of chord {group_id}',
            lambda conn: update_or_insert(conn, self._chord, {'group_id': group_id}, values),
        )

    def add(self, group_id: str, count: int = 1) -> None:
        def step(conn: Connection) -> None:
            chord = self._chord
            changed = conn.execute(
                sa.update(chord).where(chord.c.group_id == group_id).values(diff=chord.c.diff + count)
            ).rowcount
            if not changed:
                conn.execute(sa.insert(chord).values(group_id=group_id, diff=count, expires=self._until()))

        self._run(f'add to chord {group_id}', step)

    def _until(self) -> float:
        return time.time() + self.expires

    def record(self, group_id: str, task_id: str, index: int | None, part: bytes) -> Claim | None:
        member = f'{task_id}:{index if index is not None else "+inf"}'
        idx = LAST_INDEX if index is None else int(index)
        claim: Claim | None = self._run(
            f'record a part of chord {group_id}', lambda conn: self._record(conn, group_id, member, idx, part)
        )
        return claim

    def _record(self, conn: Connection, group_id: str, member: str, idx: int, part: bytes) -> Claim | None:
        chord, parts = self._chord, self._parts
        now = time.time()
        # The write that locks the chord's row comes first (see the module's docstring).
        update_or_insert(conn, chord, {'group_id': group_id}, {'expires': now + self.expires})
        size, diff, claim, claim_until, done = conn.execute(
            sa.select(chord.c.size, chord.c.diff, chord.c.claim, chord.c.claim_until, chord.c.done).where(
                chord.c.group_id == group_id
            )
        ).one()
        if done:
            return None
        mine = parts.c.group_id == group_id
        seen = conn.execute(sa.select(sa.literal(1)).where(mine, parts.c.member == member)).first()
        if seen is None:
            conn.execute(sa.insert(parts).values(group_id=group_id, member=member, idx=idx, payload=part))
        if size is None or (claim is not None and claim_until > now):
            return None
        count = conn.execute(sa.select(sa.func.count()).select_from(parts).where(mine)).scalar_one()
        if count != size + diff:
            return None
        token = new_claim_token()
        conn.execute(
            sa.update(chord)
            .where(chord.c.group_id == group_id)
            .values(claim=token, claim_until=now + claim_seconds(self.backend.app))
        )
        rows = conn.execute(sa.select(parts.c.payload).where(mine).order_by(parts.c.idx, parts.c.member)).all()
        return Claim(token, [bytes(row[0]) for row in rows])

    def extend(self, group_id: str, claim: Claim, seconds: int) -> bool:
        def step(conn: Connection) -> bool:
            chord, now = self._chord, time.time()
            free = sa.and_(sa.or_(chord.c.claim.is_(None), chord.c.claim_until <= now), chord.c.size.is_not(None))
            changed = conn.execute(
                sa.update(chord)
                .where(chord.c.group_id == group_id, chord.c.done == 0, sa.or_(chord.c.claim == claim.token, free))
                .values(claim=claim.token, claim_until=now + seconds)
            ).rowcount
            return bool(changed == 1)

        return bool(self._run(f'extend the claim on chord {group_id}', step))

    def release(self, group_id: str, claim: Claim) -> bool:
        def step(conn: Connection) -> bool:
            chord = self._chord
            changed = conn.execute(
                sa.update(chord)
                .where(chord.c.group_id == group_id, chord.c.claim == claim.token)
                .values(done=1, size=None, claim=None, claim_until=None, expires=time.time() + done_seconds(app))
            ).rowcount
            if changed != 1:
                return False
            conn.execute(sa.delete(self._parts).where(self._parts.c.group_id == group_id))
            return True

        app = self.backend.app
        return bool(self._run(f'release the claim on chord {group_id}', step))

    def forget_size(self, group_id: str) -> None:
        chord = self._chord
        self._run(
            f'forget the size of chord {group_id}',
            lambda conn: conn.execute(sa.update(chord).where(chord.c.group_id == group_id).values(size=None)),
        )

    def cleanup(self, conn: Connection, now: float) -> None:
        """Delete chords past their expiry, and their parts (called by the backend's `cleanup`)."""
        chord, parts = self._chord, self._parts
        expired = sa.select(chord.c.group_id).where(chord.c.expires < now).scalar_subquery()
        conn.execute(sa.delete(parts).where(parts.c.group_id.in_(expired)))
        conn.execute(sa.delete(chord).where(chord.c.expires < now))
