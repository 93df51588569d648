"""fastq._amqp (rabbitmq-c bound in Cython) through its Python surface, against the session's RabbitMQ node."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import unquote, urlsplit

import pytest

from fastq import _amqp
from fastq.exceptions import AMQPChannelError, BrokerConnectionError


def _connect(url: str, heartbeat: int = 0, password: str = 'guest') -> _amqp.Connection:
    parts = urlsplit(url)
    assert parts.port is not None
    return _amqp.Connection(
        '127.0.0.1', parts.port, unquote(parts.path[1:]), 'guest', password, heartbeat, 131072, 5.0, 10.0, None
    )


@pytest.fixture
def conn(amqp_url: str) -> Iterator[_amqp.Connection]:
    c = _connect(amqp_url)
    c.open_channel(1)
    yield c
    c.close()


def _drain(conn: _amqp.Connection, want: int, kind: str = _amqp.DELIVER) -> list[tuple[Any, ...]]:
    got: list[tuple[Any, ...]] = []
    deadline = time.monotonic() + 10
    while len(got) < want and time.monotonic() < deadline:
        got += [e for e in conn.wait(0.5, -1) if e[0] == kind]
    return got


def test_publish_confirm_consume_ack(conn: _amqp.Connection) -> None:
    assert conn.queue_declare(1, 'q', False, True, False, False, {}) == ('q', 0, 0)
    conn.confirm_select(1)
    for i in range(5):
        conn.publish(1, '', 'q', b'body%d' % i, {'delivery_mode': 2}, False)
    acks = _drain(conn, 1, _amqp.CONFIRM_ACK)
    assert acks and max(e[2] for e in acks) <= 5
    assert conn.queue_declare(1, 'q', True, True, False, False, {})[1] == 5
    assert conn.consume(1, 'q', 'tag1', False, {}) == 'tag1'
    deliveries = _drain(conn, 5)
    assert [e[8] for e in deliveries] == [b'body%d' % i for i in range(5)]
    assert [e[3] for e in deliveries] == [1, 2, 3, 4, 5]
    conn.ack(1, 5, True)
    conn.cancel(1, 'tag1')
    assert conn.queue_declare(1, 'q', True, True, False, False, {})[1] == 0


def test_properties_and_header_tables_round_trip(conn: _amqp.Connection) -> None:
    conn.queue_declare(1, 'p', False, False, False, True, {'x-max-priority': 10})
    headers = {
        'str': 'é', 'int': -(2**40), 'float': 1.5, 'true': True, 'none': None, 'bytes': b'\x00\xff',
        'list': [1, 'a', None, [2.5]], 'dict': {'nested': {'deep': [False]}}, 'empty': [],
    }  # fmt: skip
    props = {
        'content_type': 'application/json', 'content_encoding': 'utf-8', 'headers': headers, 'delivery_mode': 2,
        'priority': 7, 'correlation_id': 'cid', 'reply_to': 'rq', 'expiration': '60000', 'message_id': 'mid',
        'timestamp': 1234567890, 'type': 't', 'user_id': 'guest', 'app_id': 'app',
    }  # fmt: skip
    conn.publish(1, '', 'p', b'x' * 300_000, props, False)  # larger than a frame: several body frames
    got = None
    deadline = time.monotonic() + 5
    while got is None and time.monotonic() < deadline:
        got = conn.get(1, 'p', True)
    assert got is not None
    _, redelivered, exchange, routing_key, left, properties, body = got
    assert (redelivered, exchange, routing_key, left, body) == (False, '', 'p', 0, b'x' * 300_000)
    assert properties == props
    assert conn.get(1, 'p', True) is None


def test_redeclare_with_other_arguments_closes_only_the_channel(conn: _amqp.Connection) -> None:
    conn.queue_declare(1, 'celery', False, True, False, False, {})
    with pytest.raises(AMQPChannelError) as info:
        conn.queue_declare(1, 'celery', False, True, False, False, {'x-max-priority': 10})
    assert (info.value.reply_code, info.value.channel) == (406, 1)
    assert conn.is_open
    conn.open_channel(1)
    assert conn.queue_declare(1, 'celery', True, True, False, False, {})[0] == 'celery'
    conn.open_channel(2)
    with pytest.raises(AMQPChannelError, match='404') as info:
        conn.queue_purge(2, 'missing')
    assert info.value.channel == 2
    assert conn.queue_declare(1, 'celery', True, True, False, False, {})[0] == 'celery'  # 1 is still open


def test_channel_closed_event_for_asynchronous_errors(conn: _amqp.Connection) -> None:
    conn.publish(1, 'no-such-exchange', 'x', b'', {}, False)
    events = _drain(conn, 1, _amqp.CHANNEL_CLOSED)
    assert events[0][1:3] == (1, 404)


def test_wait_returns_on_the_wakeup_descriptor(conn: _amqp.Connection) -> None:
    r, w = os.pipe()
    try:
        threading.Timer(0.2, os.write, (w, b'!')).start()
        started = time.monotonic()
        assert conn.wait(30.0, r) == []
        assert time.monotonic() - started < 20  # returned on the pipe, not after 30 s
    finally:
        os.close(r)
        os.close(w)


def test_heartbeats_are_answered_inside_wait(amqp_url: str) -> None:
    c = _connect(amqp_url, heartbeat=2)
    try:
        c.open_channel(1)
        deadline = time.monotonic() + 7  # several heartbeat intervals: the node would close a silent peer
        while time.monotonic() < deadline:
            c.wait(0.5, -1)
        assert c.is_open
        assert c.queue_declare(1, 'hb', False, False, False, True, {})[0] == 'hb'
    finally:
        c.close()


def test_connection_errors(amqp_url: str) -> None:
    with pytest.raises(BrokerConnectionError, match='refused the login'):
        _connect(amqp_url, password='wrong')
    from tests.servers import free_port

    with pytest.raises(BrokerConnectionError, match='cannot connect'):
        _amqp.Connection('127.0.0.1', free_port(), '/', 'guest', 'guest', 0, 131072, 2.0, 2.0, None)
    with pytest.raises(TypeError, match='AMQP field table'):
        c = _connect(amqp_url)
        try:
            c.open_channel(1)
            c.publish(1, '', 'x', b'', {'headers': {'bad': object()}}, False)
        finally:
            c.close()


def test_closed_connection_raises(conn: _amqp.Connection) -> None:
    conn.close()
    assert not conn.is_open and conn.fileno() == -1
    with pytest.raises(BrokerConnectionError):
        conn.queue_declare(1, 'x', False, False, False, False, {})


def test_server_properties(conn: _amqp.Connection) -> None:
    props = conn.server_properties
    assert props['product'] == 'RabbitMQ' and props['capabilities']['publisher_confirms'] is True
