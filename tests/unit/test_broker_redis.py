"""The Redis broker beyond the shared SPI contract: its key layout, options, URLs and scale of parked ETAs."""

from __future__ import annotations

import contextlib
import json
import logging
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
import redis

from fastq import Fastq, protocol
from fastq.brokers.base import Outgoing
from fastq.brokers.redis import RedisBroker
from fastq.exceptions import BrokerConnectionError, ImproperlyConfigured
from tests.harness import wait_until
from tests.servers import RedisServer, free_port
from tests.unit.test_backend_redis import _make_certificates, _pong, _tcp_ping, spawn_redis


def message(task_id: str) -> Any:
    return protocol.build_task_message(
        task_id=task_id, name='t.add', args=(1, 2), kwargs={}, embed={}, serializer='json', compression=None,
        eta=None, expires=None, reply_to='r', origin='gen1@host',
    )  # fmt: skip


def make(url: str, **options: Any) -> Fastq:
    app = Fastq('t', broker=url, backend='memory://', set_as_current=False)
    if options:
        app.conf.broker_transport_options = options
    return app


@pytest.fixture
def raw(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()


def round_trip(app: Fastq) -> None:
    broker = app.broker
    broker.connect()
    broker.publish([Outgoing(message('rt'), 'celery')])
    consumer = broker.consumer(['celery'], owner='w')
    (d,) = consumer.fetch(1, 5.0)
    assert d.task_id == 'rt'
    consumer.ack([d.tag])
    consumer.close()
    app.close()


def test_kombu_layout_on_the_wire(redis_url: str, raw: redis.Redis) -> None:
    app = make(redis_url)
    broker = app.broker
    assert isinstance(broker, RedisBroker)
    broker.publish([Outgoing(message('a'), 'celery', priority=5)])
    assert raw.smembers('_kombu.binding.celery') == {b'celery\x06\x16\x06\x16celery'}
    assert raw.llen('celery\x06\x163') == 1  # priority 5 -> step 3, kombu's key
    envelope = json.loads(raw.lindex('celery\x06\x163', 0))
    assert envelope['properties']['delivery_info'] == {'exchange': '', 'routing_key': 'celery'}
    consumer = broker.consumer(['celery'], owner='w')
    before = time.time()
    (d,) = consumer.fetch(1, 1.0)
    stored = json.loads(raw.hget('unacked', d.tag))
    assert stored == [envelope, '', 'celery']  # kombu's record: [envelope, exchange, routing_key]
    score = raw.zscore('unacked_index', d.tag)
    # the reservation time in whole seconds, rounded up: never restored before its visibility timeout
    assert score is not None and score == int(score) and before <= score <= time.time() + 1
    consumer.ack([d.tag])
    assert raw.hlen('unacked') == 0 and raw.zcard('unacked_index') == 0
    consumer.close()
    app.close()


def test_global_keyprefix_custom_steps_and_sep(redis_url: str, raw: redis.Redis) -> None:
    app = make(redis_url, global_keyprefix='pfx:', priority_steps=list(range(10)), sep=':')
    broker = app.broker
    broker.publish([Outgoing(message('a'), 'q', priority=7)])
    assert raw.llen('pfx:q:7') == 1 and raw.exists('pfx:_kombu.binding.q')
    consumer = broker.consumer(['q'], owner='w')
    (d,) = consumer.fetch(1, 1.0)
    assert raw.hexists('pfx:unacked', d.tag) and not raw.exists('unacked')
    consumer.close()  # hands it back: served next
    assert raw.llen('pfx:q:7') == 1
    app.close()


def _envelope(tag: str, exchange: str = '', routing_key: str = 'celery', **extra_headers: Any) -> dict[str, Any]:
    body = json.loads(message('x').to_envelope('', 'celery', 0, 2, None, 't'))
    body['headers'].update(extra_headers)
    body['properties']['delivery_tag'] = tag
    body['properties']['delivery_info'] = {'exchange': exchange, 'routing_key': routing_key}
    return dict(body)


@pytest.mark.parametrize(
    ('document', 'tag', 'exchange', 'routing_key'),
    [
        (json.dumps(_envelope('plain')), 'plain', '', 'celery'),
        # a header with the same name: the plain search cannot tell which is the property, so it decodes
        (json.dumps(_envelope('real', delivery_tag='a header')), 'real', '', 'celery'),
        (json.dumps(_envelope('info', delivery_info={'exchange': 'no'})), 'info', '', 'celery'),
        # properties first (another producer's key order)
        (json.dumps(dict(reversed(list(_envelope('first').items())))), 'first', '', 'celery'),
        # escapes in the values
        (json.dumps(_envelope('esc', exchange='ex"q', routing_key='r\\k')), 'esc', 'ex"q', 'r\\k'),
        # plain values written back as they are: a slash (cjson.encode would escape it) and UTF-8 text
        (json.dumps(_envelope('sl', exchange='a/b', routing_key='ключ'), ensure_ascii=False), 'sl', 'a/b', 'ключ'),
        # the searched tail of a key ('very_tag": "') inside another key: taken as a second key, decoded
        (json.dumps(_envelope('tail', xdelivery_tag='x')), 'tail', '', 'celery'),
        (json.dumps(_envelope('tail2', **{'not_delivery_info': {'a': 1}})), 'tail2', '', 'celery'),
    ],
)
def test_the_fetch_script_finds_tag_and_route_in_any_envelope(
    redis_url: str, raw: redis.Redis, document: str, tag: str, exchange: str, routing_key: str
) -> None:
    """kombu's record in `unacked` ([envelope, exchange, routing_key]) under the envelope's delivery tag,
    whether the script finds them with its plain searches or has to decode the envelope."""
    app = make(redis_url)
    consumer = app.broker.consumer(['celery'], owner='w')
    try:
        raw.lpush('celery', document)
        (d,) = consumer.fetch(4, 1.0)
        assert d.tag == tag
        assert json.loads(raw.hget('unacked', tag)) == [json.loads(document), exchange, routing_key]  # type: ignore[arg-type]
    finally:
        consumer.close()
        app.close()


def test_the_fetch_script_keeps_a_payload_that_is_not_json(redis_url: str, raw: redis.Redis) -> None:
    app = make(redis_url)
    consumer = app.broker.consumer(['celery'], owner='w')
    try:
        raw.lpush('celery', b'not json at all')
        (d,) = consumer.fetch(4, 1.0)
        assert str(d.tag).startswith('fastq-malformed-') and d.message is None and d.raw == b'not json at all'
        assert json.loads(raw.hget('unacked', d.tag)) == ['not json at all', '', '']  # type: ignore[arg-type]
    finally:
        consumer.close()
        app.close()


def test_a_message_no_queue_is_bound_to_take_is_dropped_or_dead_lettered(redis_url: str, raw: redis.Redis) -> None:
    """kombu's `_lookup`: a message to an exchange without a matching binding is dropped (a Celery client's is
    not put in its routed queue), or goes to the `deadletter_queue` transport option with UndeliverableWarning;
    a queue `task_queues` binds to the exchange gets it even before any worker declared it."""
    from fastq import Queue
    from fastq.exceptions import UndeliverableWarning

    app = make(redis_url)
    app.conf.task_queues = [Queue('bound', routing_key='bound.key', exchange='ex2')]

    @app.task
    def add(x: int, y: int) -> int:
        return x + y

    add.apply_async((1, 2), exchange='ex', routing_key='rkey')
    assert raw.llen('celery') == 0 and not raw.keys('*ex*')
    add.apply_async((1, 2), queue='bound', exchange='ex2', routing_key='bound.key')
    assert raw.llen('bound') == 1
    app.close()
    app = make(redis_url, deadletter_queue='undelivered')
    add = app.task(name=add.name)(lambda x, y: x + y)
    with pytest.warns(UndeliverableWarning, match="No queues bound to exchange 'ex' using binding key 'rkey'"):
        add.apply_async((1, 2), exchange='ex', routing_key='rkey')
    assert raw.llen('undelivered') == 1 and raw.llen('celery') == 0
    app.close()


def test_round_robin_between_queues(redis_url: str) -> None:
    app = make(redis_url)
    broker = app.broker
    broker.publish(
        [Outgoing(message(f'a{i}'), 'a') for i in range(3)] + [Outgoing(message(f'b{i}'), 'b') for i in range(3)]
    )
    consumer = broker.consumer(['a', 'b'], owner='w')
    got = [consumer.fetch(1, 1.0)[0].queue for _ in range(4)]
    assert got.count('a') == 2 and got.count('b') == 2  # alternates instead of draining one queue first
    consumer.close()
    app.close()


def test_round_robin_takes_turns_as_kombus_cycle(redis_url: str) -> None:
    # kombu's round_robin_cycle: the queue that delivered goes to the back, so with -Q c,b,a and c empty a
    # worker fetching one at a time (prefetch 1) serves b, a, b, a, ... as a Celery worker does
    app = make(redis_url)
    broker = app.broker
    broker.publish([Outgoing(message(f'{q}{i}'), q) for i in range(3) for q in 'ab'])
    consumer = broker.consumer(['c', 'b', 'a'], owner='w')
    got = [consumer.fetch(1, 1.0)[0].queue for _ in range(6)]
    assert got == ['b', 'a', 'b', 'a', 'b', 'a']
    consumer.close()
    app.close()


def _carrying(consumer: Any) -> tuple[list[Any], list[tuple[list[Any], bool]]]:
    """`carry_acks` on `consumer`: tags put in the first list are acked with its next write to Redis; what it
    reports back (tags, sent) is appended to the second."""
    waiting: list[Any] = []
    reports: list[tuple[list[Any], bool]] = []

    def take() -> list[Any]:
        tags, waiting[:] = list(waiting), []
        return tags

    assert consumer.carry_acks(take, lambda tags, sent: reports.append((tags, sent)))
    return waiting, reports


def test_acks_ride_with_the_next_fetch(redis_url: str, raw: redis.Redis) -> None:
    """`carry_acks`: the acks waiting are sent in the fetch's write (MULTI/HDEL/ZREM/EXEC, then the script),
    reported back as sent; a fetch that cannot reach Redis reports them unsent, to be acked another way."""
    app = make(redis_url)
    broker = app.broker
    broker.publish([Outgoing(message(f'c{i}'), 'celery') for i in range(6)])
    consumer = broker.consumer(['celery'], owner='w')
    try:
        waiting, reports = _carrying(consumer)
        first = consumer.fetch(3, 1.0)
        assert len(first) == 3 and reports == []  # nothing waited: a plain fetch
        raw.script_flush()  # and a script Redis lost is loaded on the way
        waiting.extend(d.tag for d in first)
        second = consumer.fetch(3, 1.0)
        assert len(second) == 3
        assert reports == [([d.tag for d in first], True)]
        assert raw.hlen('unacked') == 3 and raw.zcard('unacked_index') == 3
        assert not raw.hexists('unacked', first[0].tag)
        waiting.extend(d.tag for d in second)
        consumer._fetch_link._drop()  # the next write reconnects, to a port nobody listens on
        consumer._fetch_link._pool = redis.Redis(port=free_port(), socket_connect_timeout=0.5).connection_pool
        with pytest.raises(redis.exceptions.ConnectionError):
            consumer._reserve(3)
        assert reports[-1] == ([d.tag for d in second], False)
        assert raw.hlen('unacked') == 3  # still reserved: nothing was sent
    finally:
        consumer.carry_acks(None, None)
        consumer.close()
        app.close()


def test_acks_ride_ahead_of_a_waiting_fetch(redis_url: str, raw: redis.Redis, monkeypatch: pytest.MonkeyPatch) -> None:
    """An idle worker's acks go in the write that arms the lead, ahead of its BLMOVE: Redis runs them at
    once (the fetch still waiting), they are reported sent, and a wake-up that ends the wait first settles
    any whose replies were still to be read."""
    from fastq.brokers.redis import consumer as consumer_module

    monkeypatch.setattr(consumer_module, 'WAIT_TIMEOUT', 60)
    app = make(redis_url, visibility_timeout=3600)
    broker = app.broker
    broker.publish([Outgoing(message(f'a{i}'), 'celery') for i in range(3)])
    consumer = broker.consumer(['celery'], owner='w')
    try:
        waiting, reports = _carrying(consumer)
        first = consumer.fetch(4, 1.0)  # fewer than it asked for: the next fetch waits at once, arming the lead
        assert len(first) == 3
        waiting.extend(d.tag for d in first)
        thread, got = _fetch_in_thread(consumer, 3, 20.0)
        wait_until(lambda: bool(reports), message='the acks sent ahead reported')
        assert reports == [([d.tag for d in first], True)]
        assert raw.hlen('unacked') == 0 and raw.zcard('unacked_index') == 0 and thread.is_alive()
        broker.publish([Outgoing(message('next'), 'celery')])
        thread.join()
        assert [d.task_id for d in got] == ['next']

        tag = got[0].tag
        waiting.append(tag)
        thread, got = _fetch_in_thread(consumer, 3, 20.0)
        _armed(consumer)
        consumer.wakeup()
        thread.join()
        assert got == [] and reports[1:] == [([tag], True)]  # settled before the fetch returned
        assert not raw.hexists('unacked', tag)
    finally:
        consumer.carry_acks(None, None)
        consumer.close()
        app.close()


def _fetch_in_thread(consumer: Any, limit: int, timeout: float) -> tuple[threading.Thread, list[Any]]:
    got: list[Any] = []
    thread = threading.Thread(target=lambda: got.extend(consumer.fetch(limit, timeout)))
    thread.start()
    return thread, got


def _armed(consumer: Any) -> None:
    """Until the consumer's lead watch has its BLMOVE and fetch script queued in Redis."""
    lead = consumer._watches[0]
    wait_until(lambda: bool(lead.fetching and lead.client_id is not None), message='the lead watch armed')


def test_waiting_fetch_reserves_within_the_window_from_any_key(
    redis_url: str, raw: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The lead's queued script takes a task the moment it arrives, never more than the window; a task on
    another key (a priority step) unblocks it. BLMOVEs wait 60 s here, so only that unblocking can answer
    within the fetch's 20 s."""
    from fastq.brokers.redis import consumer as consumer_module

    monkeypatch.setattr(consumer_module, 'WAIT_TIMEOUT', 60)
    app = make(redis_url, visibility_timeout=3600)
    broker = app.broker
    consumer = broker.consumer(['celery'], owner='w')
    try:
        thread, got = _fetch_in_thread(consumer, 2, 20.0)
        _armed(consumer)
        broker.publish([Outgoing(message(f'm{i}'), 'celery') for i in range(5)])
        thread.join()
        assert [d.task_id for d in got] == ['m0', 'm1']  # the window: 2 of the 5
        assert raw.hlen('unacked') == 2 and raw.llen('celery') == 3
        consumer.ack([d.tag for d in got])
        assert [d.task_id for d in consumer.fetch(10, 1.0)] == ['m2', 'm3', 'm4']

        thread, got = _fetch_in_thread(consumer, 4, 20.0)
        _armed(consumer)
        broker.publish([Outgoing(message('urgent'), 'celery', priority=9)])
        thread.join()
        assert [d.task_id for d in got] == ['urgent']
    finally:
        consumer.close()
        app.close()


def test_a_flushed_fetch_script_is_loaded_again_by_a_waiting_fetch(redis_url: str, raw: redis.Redis) -> None:
    """Redis restarted or SCRIPT FLUSH while the lead waits: its queued script answers NOSCRIPT, the script is
    loaded and the task fetched all the same."""
    app = make(redis_url, visibility_timeout=3600)
    broker = app.broker
    consumer = broker.consumer(['celery'], owner='w')
    try:
        assert consumer.fetch(4, 0.1) == []  # loads the script, then waits
        thread, got = _fetch_in_thread(consumer, 4, 20.0)
        _armed(consumer)
        raw.script_flush()
        broker.publish([Outgoing(message('after-flush'), 'celery')])
        thread.join()
        assert [d.task_id for d in got] == ['after-flush']
        assert raw.hlen('unacked') == 1
    finally:
        consumer.close()
        app.close()


def _reserved_after_the_fetch_stopped(consumer: Any, raw: redis.Redis, task_id: str) -> None:
    """A fetch waits (its script queued behind the lead's BLMOVE) and is woken without a task; then `task_id`
    is published, and the queued script reserves it with no fetch running."""
    thread, got = _fetch_in_thread(consumer, 8, 20.0)
    _armed(consumer)
    consumer.wakeup()
    thread.join()
    assert got == [] and consumer._watches[0].fetching == 8  # stopped waiting; the script still queued
    consumer.broker.publish([Outgoing(message(task_id), 'celery')])
    wait_until(lambda: raw.hlen('unacked') == 1, message='the queued script reserved it')


def test_a_reservation_made_after_the_last_fetch_is_handed_back_at_close(redis_url: str, raw: redis.Redis) -> None:
    """A task that arrives after the fetcher stopped waiting is reserved by the lead's queued script all the
    same: closing collects it and puts it back, rather than leaving it to the visibility timeout."""
    app = make(redis_url, visibility_timeout=3600)
    broker = app.broker
    consumer = broker.consumer(['celery'], owner='w')
    try:
        _reserved_after_the_fetch_stopped(consumer, raw, 'late')
        assert raw.hlen('unacked') == 1 and raw.llen('celery') == 0
    finally:
        consumer.close()
    assert raw.hlen('unacked') == 0 and raw.llen('celery') == 1
    assert json.loads(raw.lindex('celery', 0))['headers']['id'] == 'late'  # type: ignore[arg-type]
    app.close()


def test_changing_queues_hands_back_what_the_lead_reserved(redis_url: str, raw: redis.Redis) -> None:
    app = make(redis_url, visibility_timeout=3600)
    broker = app.broker
    consumer = broker.consumer(['celery'], owner='w')
    try:
        _reserved_after_the_fetch_stopped(consumer, raw, 'before')
        consumer.set_queues(['other'])
        assert consumer.fetch(8, 0.2) == []  # applies the change: the reservation goes back to 'celery'
        assert raw.hlen('unacked') == 0 and raw.llen('celery') == 1
        broker.publish([Outgoing(message('o'), 'other')])
        assert [d.task_id for d in consumer.fetch(8, 5.0)] == ['o']
    finally:
        consumer.close()
        app.close()


def test_without_the_client_command_a_waiting_fetch_still_gets_tasks(redis_url: str, raw: redis.Redis) -> None:
    """An ACL user denied CLIENT (ID, UNBLOCK) waits as before, on plain BLMOVEs, and fetches in a second
    round trip."""
    raw.acl_setuser('nocli', enabled=True, passwords=['+pw'], keys=['*'], channels=['*'], commands=['+@all', '-client'])
    try:
        url = redis_url.replace('redis://', 'redis://nocli:pw@')
        app = make(url)
        consumer = app.broker.consumer(['celery'], owner='w')
        try:
            thread, got = _fetch_in_thread(consumer, 4, 20.0)
            lead = consumer._watches[0]
            wait_until(lambda: not lead.can_fetch and lead.pending, message='waiting without a queued fetch')
            app.broker.publish([Outgoing(message('x'), 'celery')])
            thread.join()
            assert [d.task_id for d in got] == ['x']
        finally:
            consumer.close()
            app.close()
    finally:
        raw.acl_deluser('nocli')


def test_ten_thousand_etas_parked_not_held(redis_url: str, raw: redis.Redis) -> None:
    app = make(redis_url)
    broker = app.broker
    assert isinstance(broker, RedisBroker)
    broker.publish([Outgoing(message(f'eta{i}'), 'celery') for i in range(10_000)])
    consumer = broker.consumer(['celery'], owner='w')
    eta = time.time() + 3600
    parked = 0
    while parked < 10_000:
        batch = consumer.fetch(1000, 1.0)
        for d in batch:
            consumer.defer(d.tag, eta)
        parked += len(batch)
    assert raw.llen('celery') == 0 and raw.hlen('unacked') == 10_000
    scores = {s for _, s in raw.zrange('unacked_index', 0, -1, withscores=True)}
    assert all(abs(s - (eta - broker.visibility_timeout)) < 1 for s in scores)
    broker.maintenance()  # not due: nothing restored
    assert raw.llen('celery') == 0
    consumer.close()
    app.close()


def test_a_due_eta_comes_back_quietly_and_a_dead_reservation_is_announced(
    redis_url: str, raw: redis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    """A parked countdown task back on its queue when due is routine (Celery's worker says nothing when an ETA
    it holds comes): DEBUG; a reservation restored after the visibility timeout (a dead worker's) is the INFO
    'Restored N unacknowledged message(s)'. fastq said the latter for every countdown task."""
    app = make(redis_url, visibility_timeout=1)
    broker = app.broker
    assert isinstance(broker, RedisBroker)
    timed = protocol.build_task_message(
        task_id='timed', name='t.add', args=(1, 2), kwargs={}, embed={}, serializer='json', compression=None,
        eta='2026-01-01T00:00:00+00:00', expires=None, reply_to='r', origin='gen1@host',
    )  # fmt: skip
    broker.publish([Outgoing(timed, 'celery'), Outgoing(message('plain'), 'celery')])
    consumer = broker.consumer(['celery'], owner='w')
    taken = {d.task_id: d for d in consumer.fetch(2, 5.0)}
    consumer.defer(taken['timed'].tag, time.time() - 5)  # (due now)
    consumer._record([taken['plain'].tag])  # (the reservation written, as a worker's next write does)
    wait_until(lambda: raw.hexists('unacked', str(taken['plain'].tag)), message='the reservation recorded')
    raw.zadd('unacked_index', {str(taken['plain'].tag): time.time() - 100})  # (a worker that died long ago)
    with caplog.at_level(logging.DEBUG, logger='fastq.brokers.redis'):
        broker.maintenance()
    said = [(r.levelname, r.getMessage()) for r in caplog.records if r.name == 'fastq.brokers.redis']
    assert ('INFO', 'Restored 1 unacknowledged message(s)') in said
    assert ('DEBUG', 'Restored 1 ETA message(s) now due') in said
    assert raw.llen('celery') == 2
    consumer.close()
    app.close()


def test_unreachable_broker_names_the_masked_url() -> None:
    port = free_port()
    app = make(f'redis://:s3cret@127.0.0.1:{port}/0', socket_connect_timeout=1)
    with pytest.raises(BrokerConnectionError) as info:
        app.broker.connect()
    assert f'redis://:**@127.0.0.1:{port}/0' in str(info.value) and 's3cret' not in str(info.value)
    app.close()


def test_password_url(tmp_path: Path) -> None:
    server = RedisServer(password='s3cret')
    try:
        round_trip(make(server.url(3)))
    finally:
        server.close()


def test_unix_socket(tmp_path: Path) -> None:
    path = tmp_path / 'redis.sock'

    def ready() -> bool:
        try:
            with socket.socket(socket.AF_UNIX) as sock:
                sock.settimeout(1)
                sock.connect(str(path))
                return _pong(sock)
        except OSError:
            return False

    with spawn_redis(tmp_path, ['--port', '0', '--unixsocket', str(path), '--save', ''], ready):
        round_trip(make(f'redis+socket://{path}?virtual_host=2'))


@contextlib.contextmanager
def _tls_redis(tmp_path: Path) -> Iterator[tuple[int, Path]]:
    """A redis-server answering TLS only, with a certificate of a CA of our own: (port, CA file)."""
    ca, cert, key_file = _make_certificates(tmp_path)
    port = free_port()

    def ready() -> bool:
        import ssl

        context = ssl.create_default_context(cafile=str(ca))
        try:
            with socket.create_connection(('127.0.0.1', port), timeout=1) as plain:
                with context.wrap_socket(plain, server_hostname='127.0.0.1') as sock:
                    return _pong(sock)
        except OSError:
            return False

    args = ['--port', '0', '--tls-port', str(port), '--bind', '127.0.0.1', '--save', '']
    args += ['--tls-cert-file', str(cert), '--tls-key-file', str(key_file), '--tls-ca-cert-file', str(ca)]
    args += ['--tls-auth-clients', 'no']
    with spawn_redis(tmp_path, args, ready):
        yield port, ca


def test_tls(tmp_path: Path) -> None:
    with _tls_redis(tmp_path) as (port, ca):
        url = f'rediss://127.0.0.1:{port}/0?ssl_cert_reqs=CERT_REQUIRED&ssl_ca_certs={quote(str(ca), safe="")}'
        round_trip(make(url))


def test_tls_options_as_kombu_reads_them(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """kombu: rediss:// with no ssl options connects without verifying (and warns); a `broker_use_ssl` dict
    turns TLS on for a redis:// URL too; the URL's ssl_* parameters replace `broker_use_ssl` as a whole."""
    import ssl

    with _tls_redis(tmp_path) as (port, ca):
        with caplog.at_level('WARNING', 'fastq.brokers.redis'):
            round_trip(make(f'rediss://127.0.0.1:{port}/0'))  # a certificate of an unknown CA: not verified
        assert 'Secure redis scheme specified (rediss) with no ssl options' in caplog.text

        app = make(f'redis://127.0.0.1:{port}/0')
        app.conf.broker_use_ssl = {'ssl_cert_reqs': ssl.CERT_REQUIRED, 'ssl_ca_certs': str(ca)}
        round_trip(app)

        app = make(f'rediss://127.0.0.1:{port}/0?ssl_cert_reqs=none')
        app.conf.broker_use_ssl = {'ssl_cert_reqs': ssl.CERT_REQUIRED}  # (no CA: would fail to verify)
        round_trip(app)


def test_tls_url_parameters_checked_and_passed_through() -> None:
    import ssl

    def kwargs(url: str, use_ssl: Any = None) -> dict[str, Any]:
        app = make(url)
        app.conf.broker_use_ssl = use_ssl
        return dict(app.broker.client.connection_pool.connection_kwargs)  # type: ignore[attr-defined]

    with pytest.raises(ImproperlyConfigured, match='ssl_cert_reqs'):
        kwargs('rediss://127.0.0.1/0?ssl_cert_reqs=bogus')  # kombu: KeyError
    assert kwargs('rediss://127.0.0.1/0?ssl_cert_reqs=required&ssl_check_hostname=false')['ssl_check_hostname'] is False
    passed = kwargs('rediss://127.0.0.1/0', {'ssl_cert_reqs': 'required', 'ssl_min_version': ssl.TLSVersion.TLSv1_3})
    assert passed['ssl_min_version'] == ssl.TLSVersion.TLSv1_3  # kombu hands redis-py the whole dict
    assert passed['ssl_cert_reqs'] == ssl.CERT_REQUIRED


def test_sentinel(redis_server: RedisServer, redis_url: str, tmp_path: Path) -> None:
    port = free_port()
    config = tmp_path / 'sentinel.conf'
    config.write_text(f'port {port}\nbind 127.0.0.1\nsentinel monitor fastqbroker 127.0.0.1 {redis_server.port} 1\n')
    with spawn_redis(tmp_path, [str(config), '--sentinel'], lambda: _tcp_ping(port)):
        db = int(redis_url.rsplit('/', 1)[1])
        round_trip(make(f'sentinel://127.0.0.1:{port}/{db}', master_name='fastqbroker'))
        # The URL's user and password are the master's (kombu hands them to redis-py's Sentinel as the master's
        # connection arguments): an ACL user of its own (the password alone logs in as the default user).
        admin = redis.Redis(host='127.0.0.1', port=redis_server.port)
        admin.acl_setuser(
            'fastq-sentinel-user', enabled=True, passwords=['+s3cret'], keys=['*'], channels=['*'], commands=['+@all']
        )
        try:
            app = make(
                f'sentinel://fastq-sentinel-user:s3cret@127.0.0.1:{port}/{db}',
                master_name='fastqbroker',
                min_other_sentinels=0,
            )
            round_trip(app)
            assert app.broker.client.acl_whoami() == 'fastq-sentinel-user'
        finally:
            admin.acl_deluser('fastq-sentinel-user')
            admin.close()


def test_pack_is_resp_with_large_arguments_passed_through() -> None:
    """`pack` writes what hiredis would, whatever the sizes; large arguments are sent as their own buffer."""
    import hiredis

    from fastq.brokers.redis.connection import PACK_BUFFER, PASS_THROUGH, pack

    big = bytes(range(256)) * (PASS_THROUGH // 256 + 3)
    commands = [
        ('LPUSH', 'q', b'x' * 100),
        ('PUBLISH', '/0.celeryev/task.multi', big),
        ('PUBLISH', '/0.celeryev/task.multi', big + b'!'),
        ('SET', 'k', 12, 'v\u2603'),
        *[('LPUSH', 'q', b'y' * 1000)] * (PACK_BUFFER // 1000 + 5),
    ]
    buffers = pack(commands)
    expected = b''.join(hiredis.pack_command(tuple(str(v) if isinstance(v, int) else v for v in c)) for c in commands)
    assert b''.join(buffers) == expected
    assert any(buffer is big for buffer in buffers)  # not copied
    assert max(len(buffer) for buffer in buffers if len(buffer) < PASS_THROUGH * 2) <= PACK_BUFFER + 1100
