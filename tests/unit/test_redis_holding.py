"""Reserving a busy queue with LMOVEs into holds (fastq.brokers.redis.holding), on a real redis-server.

A message must always be in its queue, a hold, or kombu's `unacked`: these tests follow messages through
every way out of a hold (recorded, acked, parked, requeued, dead-lettered, a dead consumer's hold swept back,
a write whose replies were lost) and count that none is lost or handed out twice.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from fastq.brokers.base import Outgoing
from fastq.brokers.redis.holding import MALFORMED, Holding, record_of, tag_of
from fastq.brokers.redis.layout import DELIVERIES_HEADER, Layout
from tests.unit.test_broker_redis import make, message


@pytest.fixture
def raw(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()


@pytest.fixture(autouse=True)
def small_windows(monkeypatch: pytest.MonkeyPatch) -> None:
    """These tests fetch a few messages at a time: let windows of 3 move into holds (MOVING_MIN is 8)."""
    from fastq.brokers.redis import consumer as consumer_module

    monkeypatch.setattr(consumer_module, 'MOVING_MIN', 3)


def _publish(app: Any, n: int, queue: str = 'celery', prefix: str = 'm') -> list[str]:
    ids = [f'{prefix}{i}' for i in range(n)]
    app.broker.publish([Outgoing(message(task_id), queue) for task_id in ids])
    return ids


def _ids(deliveries: list[Any]) -> list[str]:
    return [json.loads(d.raw)['headers']['id'] for d in deliveries]


def _holds(raw: redis.Redis) -> list[bytes]:
    return list(raw.zrange('fastq.holds', 0, -1))


def test_a_full_window_moves_the_next_batch_into_a_hold_that_the_write_after_records(
    redis_url: str, raw: redis.Redis
) -> None:
    app = make(redis_url)
    ids = _publish(app, 10)
    consumer = app.broker.consumer(['celery'], owner='w')
    try:
        first = consumer.fetch(3, 1.0)  # the script: recorded at once
        assert raw.hlen('unacked') == 3 and _holds(raw) == []
        second = consumer.fetch(3, 1.0)  # a whole window came: LMOVEs into a hold
        assert raw.hlen('unacked') == 3
        (hold,) = _holds(raw)
        assert raw.llen(hold) == 3
        assert app.broker.layout.hold_source(hold.decode()) == 'celery'
        third = consumer.fetch(3, 1.0)  # its write records the second batch and drops its hold
        assert _ids(first + second + third) == ids[:9]  # in queue order
        assert raw.hlen('unacked') == 6 and raw.zcard('unacked_index') == 6
        assert not raw.exists(hold) and hold not in _holds(raw)
        for d in second:  # kombu's record: the envelope as taken, the default exchange, the queue it came from
            envelope, exchange, routing_key = json.loads(raw.hget('unacked', d.tag))
            assert envelope == json.loads(d.raw) and (exchange, routing_key) == ('', 'celery')
        consumer.ack([d.tag for d in first + second + third])
        assert raw.hlen('unacked') == 0
        rest = consumer.fetch(3, 1.0)  # one left: the window was not filled, back to the script
        assert _ids(rest) == ids[9:]
        consumer.ack([d.tag for d in rest])
        consumer.fetch(3, 0.05)
        assert raw.hlen('unacked') == 0 and raw.zcard('unacked_index') == 0
        assert _holds(raw) == [] and raw.llen('celery') == 0
    finally:
        consumer.close()
        app.close()


def test_a_message_acked_before_the_next_write_is_never_recorded(redis_url: str, raw: redis.Redis) -> None:
    app = make(redis_url)
    _publish(app, 9)
    consumer = app.broker.consumer(['celery'], owner='w')
    try:
        first = consumer.fetch(3, 1.0)
        consumer.ack([d.tag for d in first])
        second = consumer.fetch(3, 1.0)
        consumer.ack([d.tag for d in second])  # acked while held: settled without a round trip
        (hold,) = _holds(raw)
        third = consumer.fetch(3, 1.0)
        assert not raw.exists(hold)
        consumer.ack([d.tag for d in third])
        consumer.fetch(3, 0.05)  # the last hold goes with the next write
        assert raw.hlen('unacked') == 0 and _holds(raw) == [] and raw.llen('celery') == 0
    finally:
        consumer.close()
        app.close()


def test_records_are_written_before_waiting_and_before_anything_reads_them(redis_url: str, raw: redis.Redis) -> None:
    """Park, requeue and dead-letter read a reservation's record: a held message gets its record first."""
    app = make(redis_url)
    ids = _publish(app, 9)
    consumer = app.broker.consumer(['celery'], owner='w')
    try:
        consumer.ack([d.tag for d in consumer.fetch(3, 1.0)])
        held = consumer.fetch(3, 1.0)
        assert raw.hlen('unacked') == 0 and len(_holds(raw)) == 1
        consumer.defer(held[0].tag, time.time() + 3600)  # parked in unacked, scored at its ETA
        assert raw.hexists('unacked', held[0].tag)
        consumer.reject([held[1].tag], requeue=True)  # back on its queue, last (kombu's requeue)
        assert json.loads(raw.lindex('celery', 0))['headers']['id'] == ids[4]
        letter = consumer.dead_letter(held[2], 'testing')
        assert letter.reason == 'testing' and not raw.hexists('unacked', held[2].tag)
        assert _holds(raw) == []  # the write that recorded them dropped their hold
        assert raw.hlen('unacked') == 1  # the parked one
        late = consumer.fetch(3, 1.0)
        consumer.before_wait(brief=True)  # records owed: written even before a short wait
        assert {d.tag for d in late} <= {t.decode() for t in raw.hkeys('unacked')}
        consumer.ack([d.tag for d in late])
        consumer.before_wait(brief=False)  # only deletes and a hold owed: a long wait writes them too
        assert _holds(raw) == [] and raw.hlen('unacked') == 1
    finally:
        consumer.close()
        app.close()


def test_a_dead_consumers_hold_goes_back_to_its_queue_counted(redis_url: str, raw: redis.Redis) -> None:
    app = make(redis_url, visibility_timeout=1)
    ids = _publish(app, 6)
    consumer = app.broker.consumer(['celery'], owner='w')
    consumer.fetch(3, 1.0)
    consumer.fetch(3, 1.0)  # into a hold, never recorded: the consumer "dies" here
    assert raw.llen('celery') == 0 and raw.hlen('unacked') == 3 and len(_holds(raw)) == 1
    consumer._closed = True  # abandoned, not closed: nothing written or handed back
    consumer._fetch_link.close()
    app.broker.maintenance()  # too early: held less than the visibility timeout
    assert raw.llen('celery') == 0
    time.sleep(2.1)
    app.broker.maintenance()
    assert _holds(raw) == [] and raw.hlen('unacked') == 0
    back = [json.loads(m) for m in reversed(raw.lrange('celery', 0, -1))]  # in the order they are served
    assert sorted(e['headers']['id'] for e in back) == ids
    assert [e['headers']['id'] for e in back if e['headers']['id'] in ids[3:]] == ids[3:]  # the hold's in order
    assert all(e['headers'][DELIVERIES_HEADER] == 1 and e['headers']['redelivered'] for e in back)
    app.broker.maintenance()  # nothing twice
    assert raw.llen('celery') == 6
    app.close()


def test_a_write_whose_replies_are_lost_loses_nothing_and_hands_out_nothing_twice(
    redis_url: str, raw: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The connection drops after Redis ran the write (records, deletes, LMOVEs) and before its replies came:
    the hold it filled is put back on the queue, the records and deletes are written again."""
    app = make(redis_url)
    ids = _publish(app, 20)
    consumer = app.broker.consumer(['celery'], owner='w')
    got: list[Any] = []
    try:
        got += consumer.fetch(4, 1.0)
        got += consumer.fetch(4, 1.0)  # held
        consumer.ack([d.tag for d in got[:2] + got[4:6]])  # two recorded ones, two held ones
        link = consumer._fetch_link
        real = link.execute

        def lost(commands: Any) -> Any:
            real(commands)
            link._drop()
            raise redis.exceptions.ConnectionError('replies lost')

        monkeypatch.setattr(link, 'execute', lost)
        with pytest.raises(redis.exceptions.ConnectionError):
            consumer.fetch(4, 1.0)
        monkeypatch.setattr(link, 'execute', real)
        while len(batch := consumer.fetch(4, 0.2)):
            got += batch
        assert sorted(_ids(got)) == sorted(ids)  # every message once: the lost batch came back, unseen before
        assert len(set(_ids(got))) == len(got)
        unacked = {t.decode() for t in raw.hkeys('unacked')}
        assert unacked == {d.tag for d in got[2:4] + got[6:]}  # acked ones gone, the rest recorded
        consumer.ack([d.tag for d in got])
        consumer.fetch(4, 0.05)
        assert raw.hlen('unacked') == 0 and raw.zcard('unacked_index') == 0
        assert _holds(raw) == [] and raw.llen('celery') == 0
    finally:
        consumer.close()
        app.close()


def test_closing_hands_held_messages_back_to_their_queue(redis_url: str, raw: redis.Redis) -> None:
    app = make(redis_url)
    ids = _publish(app, 6)
    consumer = app.broker.consumer(['celery'], owner='w')
    first = consumer.fetch(3, 1.0)
    consumer.ack([d.tag for d in first])
    consumer.fetch(3, 1.0)  # held, not acked
    consumer.close()
    assert raw.hlen('unacked') == 0 and _holds(raw) == []
    assert sorted(json.loads(m)['headers']['id'] for m in raw.lrange('celery', 0, -1)) == ids[3:]
    app.close()


def test_small_windows_keep_the_script(redis_url: str, raw: redis.Redis, monkeypatch: pytest.MonkeyPatch) -> None:
    """A window of one or two is "full" at every fetch: its holds would each need a write of their own."""
    from fastq.brokers.redis import consumer as consumer_module

    monkeypatch.setattr(consumer_module, 'MOVING_MIN', 8)
    app = make(redis_url)
    _publish(app, 6)
    consumer = app.broker.consumer(['celery'], owner='w')
    try:
        got = [d for _ in range(3) for d in consumer.fetch(2, 1.0)]
        assert len(got) == 6 and raw.hlen('unacked') == 6 and _holds(raw) == []
    finally:
        consumer.close()
        app.close()


def test_several_queues_keep_the_script(redis_url: str, raw: redis.Redis) -> None:
    """Round robin between queues (and their priorities) is the script's: no holds for a multi-queue consumer."""
    app = make(redis_url)
    _publish(app, 8, 'a', 'a')
    _publish(app, 8, 'b', 'b')
    consumer = app.broker.consumer(['a', 'b'], owner='w')
    try:
        got = consumer.fetch(4, 1.0) + consumer.fetch(4, 1.0) + consumer.fetch(4, 1.0)
        assert len(got) == 12 and raw.hlen('unacked') == 12 and _holds(raw) == []
        assert {i[0] for i in _ids(got)} == {'a', 'b'}  # the queues take turns
    finally:
        consumer.close()
        app.close()


def test_a_malformed_message_in_a_hold_is_recorded_and_dead_lettered(redis_url: str, raw: redis.Redis) -> None:
    app = make(redis_url)
    _publish(app, 3)
    raw.lpush('celery', b'not json \xff')
    _publish(app, 2, prefix='n')
    consumer = app.broker.consumer(['celery'], owner='w')
    try:
        consumer.ack([d.tag for d in consumer.fetch(3, 1.0)])
        held = consumer.fetch(3, 1.0)
        bad = [d for d in held if d.error]
        assert len(bad) == 1 and bad[0].tag.startswith(MALFORMED)
        consumer.dead_letter(bad[0], 'malformed')
        assert not raw.hexists('unacked', bad[0].tag)
        assert [letter.payload for letter in app.broker.dead_letters.list()] == [b'not json \xff']
    finally:
        consumer.close()
        app.close()


def test_tags_are_read_as_the_fetch_script_reads_them() -> None:
    envelope = json.dumps({'headers': {'id': 'x'}, 'properties': {'delivery_tag': 'abc-1'}}).encode()
    assert tag_of(envelope) == 'abc-1'
    compact = json.dumps({'properties': {'delivery_tag': 'abc-2'}}, separators=(',', ':')).encode()
    assert tag_of(compact) == 'abc-2'  # another spelling: found by the full decode
    escaped = json.dumps({'properties': {'delivery_tag': 'a"b'}}).encode()
    assert tag_of(escaped) == 'a"b'
    twice = json.dumps({'headers': {'argsrepr': '"delivery_tag": "fake"'}, 'properties': {'delivery_tag': 't'}})
    assert tag_of(twice.encode()) == 't'
    for malformed in (b'[1, 2]', b'{"properties": {"delivery_tag": 5}}', b'\xff\xfe'):
        assert tag_of(malformed).startswith(MALFORMED)
    assert json.loads(record_of('t', envelope, 'q\u00e9')) == [json.loads(envelope), '', 'q\u00e9']
    text = json.loads(record_of(MALFORMED + '0', b'not json \xff', 'q'))
    assert text[0] == 'not json \udcff' and text[1:] == ['', 'q']


def test_an_ack_of_a_record_on_its_way_is_deleted_by_the_write_after() -> None:
    holding = Holding(Layout())
    holding.unrecorded = {'a': (b'{}', 'q'), 'b': (b'{}', 'q')}
    holding.spent = ['h1']
    commands, write = holding.begin([], 100)
    assert [c[0] for c in commands] == ['MULTI', 'HSET', 'ZADD', 'DEL', 'ZREM', 'EXEC']
    assert holding.settle(['a', 'c']) == ['c']  # `a`'s record is in flight: its delete waits for the next write
    holding.done(write, True)
    commands, write = holding.begin([], 100)
    assert commands[1] == ('HDEL', 'unacked', 'a') and commands[2] == ('ZREM', 'unacked_index', 'a')
    holding.done(write, True)
    assert not holding.pending()


def test_a_failed_write_owes_everything_again() -> None:
    holding = Holding(Layout())
    holding.unrecorded = {'a': (b'{}', 'q'), 'b': (b'{}', 'q')}
    holding.spent = ['h1']
    _, write = holding.begin(['x'], 100)
    fill = holding.fill(write, 'q', 2, 100)
    assert fill[0][0] == 'ZADD' and fill[1] == ('LMOVE', 'q', write.hold, 'RIGHT', 'LEFT')
    holding.settle(['b'])  # acked while the write was out
    holding.done(write, False)
    assert set(holding.unrecorded) == {'a'} and holding.uncertain == {'a'}
    assert holding.deletes == ['b', 'x'] or sorted(holding.deletes) == ['b', 'x']
    assert holding.spent == ['h1'] and holding.orphans == [write.hold]
    assert holding.settle(['a']) == []  # acked: maybe recorded by the failed write, so deleted all the same
    assert 'a' in holding.deletes


def _held_batch(redis_url: str) -> tuple[Any, Any, list[Any]]:
    app = make(redis_url)
    app.broker.publish([Outgoing(message(f'm{i}'), 'celery') for i in range(20)])
    consumer = app.broker.consumer(['celery'], owner='w')
    consumer.ack([d.tag for d in consumer.fetch(8, 1.0)])  # the script
    held = consumer.fetch(8, 1.0)  # into a hold, unrecorded
    assert len(held) == 8 and not consumer._holding.inflight and consumer._holding.unrecorded
    return app, consumer, held


def _stall_records(link: Any) -> tuple[threading.Event, threading.Event]:
    """Hold the next write that records something until `go` is set (`sent` once it is on its way)."""
    real = link.execute
    sent, go = threading.Event(), threading.Event()

    def slow(commands: Any) -> Any:
        if any(command[0] == 'HSET' for command in commands):
            sent.set()
            go.wait(5)
        return real(commands)

    link.execute = slow
    return sent, go


def test_a_record_reader_waits_for_a_record_on_its_way(redis_url: str, raw: redis.Redis) -> None:
    """Parking a held message while the fetching thread's write carries its record: the park waits for that
    write (else it finds no record, and the task would run at the next sweep instead of at its ETA)."""
    app, consumer, held = _held_batch(redis_url)
    sent, go = _stall_records(consumer._fetch_link)
    fetching = threading.Thread(target=lambda: consumer.fetch(8, 0.2))
    fetching.start()
    assert sent.wait(2)
    eta = time.time() + 7200
    parking = threading.Thread(target=lambda: consumer.defer(held[0].tag, eta))
    parking.start()
    parking.join(0.3)
    assert parking.is_alive()  # waiting for the write on its way
    go.set()
    fetching.join()
    parking.join()
    assert raw.zscore('unacked_index', held[0].tag) == pytest.approx(eta - app.broker.visibility_timeout, abs=1)
    assert raw.zrange(app.broker.layout.parked('w'), 0, -1) == [held[0].tag.encode()]
    consumer.close()
    app.close()


def test_an_ack_riding_with_the_lead_never_overtakes_a_record(redis_url: str, raw: redis.Redis) -> None:
    """The lead's write carries acks too: one of a held message is settled by the holding, not sent ahead of
    the record another thread's write is carrying (which would leave the acked message's record behind)."""
    app, consumer, held = _held_batch(redis_url)
    early = [held[0].tag]
    reports: list[tuple[list[Any], bool]] = []
    consumer.carry_acks(lambda: [early.pop()] if early else [], lambda tags, ok: reports.append((tags, ok)))
    sent, go = _stall_records(consumer._fetch_link)
    lettering = threading.Thread(target=lambda: consumer.dead_letter(held[1], 'x'))
    lettering.start()  # the loop thread's write: records the batch
    assert sent.wait(2)
    consumer._drained = True
    waiting = threading.Thread(target=lambda: consumer.fetch(8, 0.3))  # arms the lead with the acks ahead
    waiting.start()
    time.sleep(0.1)
    go.set()
    lettering.join()
    waiting.join()
    consumer.carry_acks(None, None)
    consumer.fetch(8, 0.05)
    assert reports == [([held[0].tag], True)]
    assert not raw.hexists('unacked', held[0].tag) and not raw.zscore('unacked_index', held[0].tag)
    consumer.close()
    app.close()
