"""Chord joins: exactly one body per chord, whatever the duplicates, races and mix of Celery and fastq workers.

The store tests drive each backend's `ChordStore` directly (memory: a lock; SQLite: one write transaction;
Redis: Celery 5.7's Lua script; the database backend: the chord row's lock); the part-return tests go through `Backend.on_chord_part_return`, as the worker
calls it, and count the bodies that reach the broker. On Redis, Celery's own backend returns some of the parts
of the same chord, so the join is checked against the real thing.
"""

from __future__ import annotations

import base64
import json
import random
import sqlite3
import threading
import uuid
import warnings
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from fastq import Fastq, states
from fastq.canvas import Signature
from fastq.exceptions import ChordError
from fastq.task import Context


@pytest.fixture(params=['memory', 'sqlite', 'redis', 'db+sqlite', 'db+postgresql'])
def app(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Fastq]:
    if request.param == 'redis':
        url = request.getfixturevalue('redis_url')
        app = Fastq('j', broker=url, backend=url, set_as_current=False)
    elif request.param.startswith('db+'):  # Celery's SQLAlchemy backend, with fastq's chord tables beside it
        pytest.importorskip('sqlalchemy')
        sqlite_url = f'sqlite:///{tmp_path}/r.db'
        url = request.getfixturevalue('postgres_url') if 'postgres' in request.param else sqlite_url
        app = Fastq('j', broker='memory://', backend=f'db+{url}', set_as_current=False)
    elif request.param == 'sqlite':
        app = Fastq(
            'j',
            broker=f'sqlite:///{tmp_path}/b.sqlite3',
            backend=f'sqlite:///{tmp_path}/r.sqlite3',
            set_as_current=False,
        )
    else:
        app = Fastq('j', broker='memory://', backend='memory://', set_as_current=False)
    yield app
    app.close()


def test_store_records_each_part_once_and_claims_once(app: Fastq) -> None:
    store = app.backend.chord_store
    assert store is not None
    gid = str(uuid.uuid4())
    store.set_size(gid, 3)
    assert store.record(gid, 't2', 2, b'p2') is None
    assert store.record(gid, 't0', 0, b'p0') is None
    assert store.record(gid, 't0', 0, b'p0 again') is None  # redelivered: counted once, first value kept
    claim = store.record(gid, 't1', 1, b'p1')
    assert claim is not None
    assert store.parts(gid, claim) == [b'p0', b'p1', b'p2']  # group_index order, not arrival order
    assert store.record(gid, 't1', 1, b'p1') is None  # complete, but claimed: one sender only
    assert store.extend(gid, claim, 30)
    assert store.release(gid, claim)
    assert store.record(gid, 't1', 1, b'p1') is None  # done: a late duplicate cannot start it again
    assert not store.release(gid, claim)


def test_store_size_can_arrive_after_parts_and_grow(app: Fastq) -> None:
    store = app.backend.chord_store
    assert store is not None
    gid = str(uuid.uuid4())
    assert store.record(gid, 'a', 0, b'a') is None  # finished before the last header task was even sent
    store.set_size(gid, 2)
    store.add(gid, 1)
    assert store.record(gid, 'b', 1, b'b') is None
    claim = store.record(gid, 'c', 2, b'c')
    assert claim is not None and store.parts(gid, claim) == [b'a', b'b', b'c']


def test_store_racing_parts_claim_once(app: Fastq) -> None:
    """Eight threads (think: workers) return every part of one chord, redeliveries included, in random
    orders; one claim in all. SQLite threads use connections of their own; Redis, one pool."""
    store = app.backend.chord_store
    assert store is not None
    gid, size = str(uuid.uuid4()), 20
    store.set_size(gid, size)
    claims: list[Any] = []
    start = threading.Barrier(8)

    def run() -> None:
        order = list(range(size))
        random.shuffle(order)
        start.wait()
        for i in order:
            claim = store.record(gid, f't{i}', i, f'p{i:02}'.encode())
            if claim is not None:
                claims.append(claim)

    threads = [threading.Thread(target=run) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert len(claims) == 1
    assert store.parts(gid, claims[0]) == [f'p{i:02}'.encode() for i in range(size)]


# --- through on_chord_part_return, as the worker calls it -----------------------------------------------


def _chord(app: Fastq, size: int) -> tuple[str, Signature[Any]]:
    """The state a chord is in once sent: a frozen body and the size, as `chord.run` leaves them."""
    gid = str(uuid.uuid4())
    body = app.signature('j.xsum')
    body.freeze(str(uuid.uuid4()), group_id=gid)
    app.backend.set_chord_size(gid, size)
    return gid, body


def _part(gid: str, body: Signature[Any], index: int, task_id: str | None = None) -> Context:
    return Context(id=task_id or f'{gid}-{index}', group=gid, group_index=index, chord=dict(body))


def _sent_bodies(app: Fastq) -> list[Any]:
    """Args of every message on the default queue (the bodies sent), read without consuming on Redis."""
    from fastq.brokers.memory import MemoryBroker

    broker = app.broker
    if isinstance(broker, MemoryBroker):
        payloads = [m.payload for m in broker._state.messages.values()]
    elif app.conf.broker_url.startswith('redis'):
        import redis

        payloads = redis.Redis.from_url(app.conf.broker_url).lrange('celery', 0, -1)
    else:
        try:
            rows = broker.db.query('SELECT payload FROM messages ORDER BY id')  # type: ignore[attr-defined]
        except sqlite3.OperationalError:  # no table: nothing was ever sent
            rows = []
        payloads = [bytes(row[0]) for row in rows]
    return [json.loads(base64.b64decode(json.loads(p)['body']))[0] for p in payloads]


def test_duplicate_part_returns_send_one_body(app: Fastq) -> None:
    gid, body = _chord(app, 3)
    backend = app.backend
    for index, value in [(2, 30), (0, 10), (0, 10), (1, 20), (1, 20), (2, 30)]:
        backend.on_chord_part_return(_part(gid, body, index), states.SUCCESS, value)
    assert _sent_bodies(app) == [[[10, 20, 30]]]


def test_failed_part_fails_the_body_deterministically(app: Fastq) -> None:
    gid, body = _chord(app, 3)
    backend = app.backend
    backend.on_chord_part_return(_part(gid, body, 2), states.FAILURE, KeyError('late index'))
    backend.on_chord_part_return(_part(gid, body, 1), states.FAILURE, ValueError('early index'))
    backend.on_chord_part_return(_part(gid, body, 0), states.SUCCESS, 1)
    backend.on_chord_part_return(_part(gid, body, 1), states.FAILURE, ValueError('again'))  # no second error
    assert _sent_bodies(app) == []
    meta = backend.get_task_meta(body.id or '')
    assert meta['status'] == states.FAILURE and isinstance(meta['result'], ChordError)
    assert str(meta['result']) == f"Dependency {gid}-1 raised ValueError('early index')"


# --- Redis: Celery's backend and fastq's join the same chord ----------------------------------------------


@pytest.mark.parametrize('completer', ['celery', 'fastq'])
def test_redis_chord_joined_by_celery_and_fastq(redis_url: str, completer: str) -> None:
    celery = pytest.importorskip('celery')
    from celery.app.task import Context as CeleryContext

    app = Fastq('j', broker=redis_url, backend=redis_url, set_as_current=False)
    capp = celery.Celery('j', broker=redis_url, backend=redis_url, set_as_current=False)
    try:
        gid, body = _chord(app, 4)

        def celery_part(index: int, value: int) -> None:
            request = CeleryContext(id=f'{gid}-{index}', group=gid, group_index=index, chord=dict(body))
            capp.backend.on_chord_part_return(request, states.SUCCESS, value)

        def fastq_part(index: int, value: int) -> None:
            app.backend.on_chord_part_return(_part(gid, body, index), states.SUCCESS, value)

        last, other = (celery_part, fastq_part) if completer == 'celery' else (fastq_part, celery_part)
        celery_part(2, 30)
        fastq_part(0, 10)
        celery_part(0, 10)  # the same header task again, on the other side: counted once
        other(3, 40)
        last(1, 20)  # completes the chord: this side claims and sends the body
        other(1, 20)  # a late redelivery: the done marker turns it away
        assert _sent_bodies(app) == [[[10, 20, 30, 40]]]
        keys = {k.decode() for k in app.backend.client.keys(f'celery-taskset-meta-{gid}*')}  # type: ignore[union-attr]
        assert keys == {f'celery-taskset-meta-{gid}.c'}  # only the done marker is left
        assert app.backend.client.get(f'celery-taskset-meta-{gid}.c') == b'done'  # type: ignore[attr-defined]
    finally:
        capp.close()
        app.close()


def test_redis_group_results_saved_by_either_side(redis_url: str) -> None:
    """`celery-taskset-meta-<id>` = `{"result": as_tuple()}`: what fastq saves, Celery's backend reads, and
    the reverse. (Celery's result objects register with its backend for life, so the test avoids them.)"""
    celery = pytest.importorskip('celery')
    from fastq.result import GroupResult

    app = Fastq('j', broker=redis_url, backend=redis_url, set_as_current=False)
    capp = celery.Celery('j', broker=redis_url, backend=redis_url, set_as_current=False)
    try:
        ours = app.GroupResult(str(uuid.uuid4()), [app.AsyncResult(str(uuid.uuid4())) for _ in range(3)])
        ours.save()
        stored = capp.backend.decode(capp.backend.get(capp.backend.get_key_for_group(ours.id)))
        assert stored['result'] == json.loads(json.dumps(ours.as_tuple()))
        gid, ids = str(uuid.uuid4()), [str(uuid.uuid4()) for _ in range(2)]
        theirs = SimpleNamespace(as_tuple=lambda: ((gid, None), [((i, None), None) for i in ids]))
        with warnings.catch_warnings():
            warnings.simplefilter('ignore', DeprecationWarning)  # Celery's save uses redis-py's setex
            capp.backend._save_group(gid, theirs)
        back = GroupResult.restore(gid, app=app)
        assert back is not None and back.id == gid and [r.id for r in back.results] == ids
        back.delete()
        assert capp.backend.get(capp.backend.get_key_for_group(gid)) is None
    finally:
        capp.close()
        app.close()
