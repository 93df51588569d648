"""The hot paths' Redis connections (`Link`, and `Commands`, a stack of them), against a real redis-server.

Plain sockets are written with os.write and read with os.read (or MSG_DONTWAIT); these check the cases that
path must still get right: a socket without a timeout (blocking underneath), a write larger than the socket's
buffer, error replies, a fork, and a pool whose max_connections the links must not use up.
"""

from __future__ import annotations

import os
import select
import time
from collections.abc import Iterator

import pytest
import redis

from fastq.brokers.redis.connection import Commands
from fastq.utils.rediswire import Link


@pytest.fixture
def raw(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()


@pytest.mark.parametrize('timeout', [30.0, None], ids=['timeout', 'blocking'])
def test_replies_never_wait(redis_url: str, timeout: float | None) -> None:
    """`replies()` returns what has arrived, on a socket with a timeout (non-blocking underneath) and on a
    blocking one (no timeout) alike; a blocked BLMOVE's reply comes once the list fills."""
    client = redis.Redis.from_url(redis_url, socket_timeout=timeout)
    link = Link(client)
    try:
        key = f'wire-{timeout}'
        link.send_all([('DEL', key), ('BLMOVE', key, key, 'RIGHT', 'RIGHT', 5)])
        deadline = time.monotonic() + 5
        got: list[object] = []
        while not got and time.monotonic() < deadline:
            select.select([link.fileno()], [], [], 1)
            got += link.replies()
        assert got == [0]  # the DEL; the BLMOVE is blocked in Redis
        assert link.replies() == []  # had it waited, the BLMOVE's nil would be here, 5 s later
        client.lpush(key, b'v')
        while len(got) < 2 and time.monotonic() < deadline:
            select.select([link.fileno()], [], [], 1)
            got += link.replies()
        assert got == [0, b'v']
    finally:
        link.close()
        client.close()


def test_a_write_larger_than_the_socket_buffer_is_sent_whole(raw: redis.Redis) -> None:
    link = Link(raw)
    try:
        value = os.urandom(1 << 20) * 12  # 12 MiB: more than a socket buffer holds
        assert link.execute([('SET', 'wire-big', value), ('STRLEN', 'wire-big')]) == [b'OK', len(value)]
        assert raw.get('wire-big') == value
    finally:
        link.close()


def test_error_replies_come_back_in_place_and_the_connection_stays_usable(raw: redis.Redis) -> None:
    link = Link(raw)
    try:
        raw.set('wire-str', 'x')
        first, second = link.execute([('LPUSH', 'wire-str', 'v'), ('GET', 'wire-str')])
        assert isinstance(first, redis.exceptions.ResponseError) and 'WRONGTYPE' in str(first)
        assert second == b'x'
        assert link.call('PING') in (b'PONG', 'PONG', True)
    finally:
        link.close()


def test_a_closed_server_connection_is_a_connection_error_and_the_next_call_reconnects(raw: redis.Redis) -> None:
    link = Link(raw)
    try:
        client_id = link.call('CLIENT', 'ID')
        raw.client_kill_filter(_id=client_id)
        with pytest.raises(redis.exceptions.ConnectionError):
            link.call('PING')
        assert link.fileno() == -1
        assert link.call('CLIENT', 'ID') != client_id
    finally:
        link.close()


def test_commands_raise_an_error_reply_and_keep_the_connection(raw: redis.Redis) -> None:
    commands = Commands(raw)
    try:
        raw.set('wire-str2', 'x')
        with pytest.raises(redis.exceptions.ResponseError, match='WRONGTYPE'):
            commands.execute([('LPUSH', 'wire-str2', 'v')])
        assert commands.execute([('GET', 'wire-str2')]) == [b'x']
        assert len(commands._idle) == 1  # the one connection, put back after both calls
    finally:
        commands.close()


def test_links_do_not_use_up_the_pools_max_connections(redis_url: str) -> None:
    """Links own their connections: made and dropped many times, they leave the pool's limit to redis-py."""
    client = redis.Redis.from_url(redis_url, max_connections=2)
    try:
        for _ in range(5):
            link = Link(client)
            assert link.call('PING')
            link.close()
        commands = Commands(client)
        assert commands.execute([('PING',)])
        commands.close()
        assert client.ping()
    finally:
        client.close()


def test_commands_in_a_forked_child_use_connections_of_their_own(raw: redis.Redis) -> None:
    commands = Commands(raw)
    try:
        parent_id = commands.execute([('CLIENT', 'ID')])[0]
        read, write = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child: a new connection, and the parent's is left alone
            try:
                child_id = commands.execute([('CLIENT', 'ID')])[0]
                os.write(write, b'1' if child_id != parent_id else b'0')
            finally:
                os._exit(0)
        os.close(write)
        assert os.read(read, 1) == b'1'
        os.waitpid(pid, 0)
        os.close(read)
        assert commands.execute([('CLIENT', 'ID')])[0] == parent_id
    finally:
        commands.close()
