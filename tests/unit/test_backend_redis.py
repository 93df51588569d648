"""The Redis result backend against a real redis-server, with the real celery package as the other client.

Every test gets its own database (`redis_url`). Waits are bounded (a stuck wait fails the test) but nothing
asserts how long anything took.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import threading
import time
import uuid
import warnings
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any
from urllib.parse import quote

import pytest

redis = pytest.importorskip('redis')
celery = pytest.importorskip('celery')
celery_result = pytest.importorskip('celery.result')

from fastq import Fastq, states  # noqa: E402
from fastq.backends import backend_class  # noqa: E402
from fastq.backends.redis import RedisBackend, SentinelBackend  # noqa: E402
from fastq.backends.redis.params import connection_params, sentinel_params  # noqa: E402
from fastq.exceptions import (  # noqa: E402
    BackendError,
    BackendGetMetaError,
    BackendStoreError,
    ImproperlyConfigured,
    TaskRevokedError,
    TimeoutError,
)
from fastq.result import AsyncResult  # noqa: E402
from tests.servers import RedisServer, free_port  # noqa: E402

LONG = 30.0  # a bound no healthy run comes near

# Celery 5.7's Redis backend writes with redis-py's SETEX, which redis-py 8 deprecates.
pytestmark = pytest.mark.filterwarnings('ignore:Call to deprecated setex:DeprecationWarning')


def wait_until(predicate: Callable[[], Any], timeout: float = LONG) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError('condition not reached')
        time.sleep(0.005)


def task_id() -> str:
    return str(uuid.uuid4())


def key(tid: str, prefix: str = '') -> bytes:
    return f'{prefix}celery-task-meta-{tid}'.encode()


class Waiting(threading.Thread):
    """`AsyncResult.get()` in a thread: `.value` or `.error` once joined."""

    def __init__(self, result: AsyncResult[Any], **kwargs: Any) -> None:
        super().__init__(daemon=True)
        if result.sent_at is None:  # as if just sent (whatever the load): the wait subscribes before its first read
            result.sent_at = time.monotonic() + 3600
        self.result, self.kwargs = result, kwargs
        self.value: Any = None
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self.value = self.result.get(**self.kwargs)
        except BaseException as exc:
            self.error = exc

    def outcome(self) -> Any:
        self.join(LONG)
        assert not self.is_alive(), 'get() did not return'
        if self.error is not None:
            raise self.error
        return self.value


@pytest.fixture
def make_app(redis_url: str) -> Iterator[Callable[..., Fastq]]:
    apps: list[Fastq] = []

    def make(url: str | None = None, **conf: Any) -> Fastq:
        app = Fastq('t', broker='memory://', backend=url or redis_url, set_as_current=False)
        app.conf.update(conf)
        apps.append(app)
        return app

    yield make
    for app in apps:
        app.close()


@pytest.fixture
def app(make_app: Callable[..., Fastq]) -> Fastq:
    return make_app()


@pytest.fixture
def raw(redis_url: str) -> Iterator[Any]:
    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()


@pytest.fixture
def make_celery(redis_url: str) -> Iterator[Callable[..., Any]]:
    apps: list[Any] = []

    def make(**conf: Any) -> Any:
        capp = celery.Celery('c', broker='memory://', backend=redis_url, set_as_current=False)
        capp.conf.update(conf)
        apps.append(capp)
        return capp

    yield make
    for capp in apps:
        with contextlib.suppress(Exception):
            capp.backend.result_consumer.stop()
        capp.backend.client.connection_pool.disconnect()


@pytest.fixture
def listener_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every wait goes through the shared listener, as for the 9th concurrent waiting thread (see inline.py)."""
    monkeypatch.setattr('fastq.backends.redis.MAX_INLINE_WAITERS', 0)


def subscribers(raw: Any, channel: bytes) -> int:
    return int(dict(raw.pubsub_numsub(channel))[channel])


def count_reads(backend: RedisBackend, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Record every completed read of a result key (`_get`, the only way the backend reads one)."""
    calls: list[str] = []
    original = backend._get

    def counted(tid: str) -> bytes | None:
        value = original(tid)
        calls.append(tid)  # after the read: a test that saw it knows what the read could see
        return value

    monkeypatch.setattr(backend, '_get', counted)
    return calls


# --- scheme registry and URL parsing -------------------------------------------------------------------------


def test_schemes_resolve_to_the_redis_backends() -> None:
    for url in ('redis://h/0', 'rediss://h/0', 'redis+socket:///tmp/r.sock'):
        assert backend_class(url) is RedisBackend
    assert backend_class('sentinel://h:26379') is SentinelBackend


def _conf(**values: Any) -> Any:
    app = Fastq('t', broker='memory://', backend='memory://', set_as_current=False)
    app.conf.update(values)
    return app.conf


def test_url_and_settings_to_connection_params() -> None:
    conf = _conf(
        redis_socket_timeout=3.5,
        redis_socket_connect_timeout=2,
        redis_retry_on_timeout=True,
        redis_socket_keepalive=True,
        redis_max_connections=7,
        redis_backend_health_check_interval=15,
    )
    params = connection_params(conf, 'redis://user:p%40ss@example.com:6390/5?socket_timeout=9')
    assert params['host'] == 'example.com' and params['port'] == 6390 and params['db'] == 5
    assert params['username'] == 'user' and params['password'] == 'p@ss'
    assert params['socket_timeout'] == 9.0  # the query overrides the setting
    assert params['socket_connect_timeout'] == 2.0 and params['retry_on_timeout'] is True
    assert params['socket_keepalive'] is True and params['max_connections'] == 7
    assert params['health_check_interval'] == 15
    assert params['decode_responses'] is False
    assert connection_params(_conf(), 'redis://:secret@h')['db'] == 0

    unix = connection_params(_conf(), 'redis+socket:///run/redis/redis.sock?virtual_host=3')
    assert unix['connection_class'] is redis.UnixDomainSocketConnection
    assert unix['path'] == '/run/redis/redis.sock' and unix['db'] == 3 and 'host' not in unix

    with pytest.raises(ImproperlyConfigured, match='bogus'):
        connection_params(_conf(), 'redis://h/0?bogus=1')
    with pytest.raises(ImproperlyConfigured, match='RESP2'):
        connection_params(_conf(), 'redis://h/0?protocol=3')


def test_tls_params_follow_celerys_rules(caplog: pytest.LogCaptureFixture) -> None:
    params = connection_params(_conf(), 'rediss://h:6380/1?ssl_cert_reqs=CERT_REQUIRED&ssl_ca_certs=%2Fca.pem')
    assert params['connection_class'] is redis.SSLConnection
    assert params['ssl_cert_reqs'] == ssl.CERT_REQUIRED and params['ssl_ca_certs'] == '/ca.pem'
    assert connection_params(_conf(), 'rediss://h?ssl_cert_reqs=none')['ssl_cert_reqs'] == ssl.CERT_NONE
    with pytest.raises(ImproperlyConfigured, match='ssl_cert_reqs'):
        connection_params(_conf(), 'rediss://h:6380/1')
    with pytest.raises(ImproperlyConfigured, match='rediss://'):
        connection_params(_conf(), 'redis://h/0?ssl_cert_reqs=CERT_NONE')
    via_setting = connection_params(_conf(redis_backend_use_ssl={'ssl_cert_reqs': 'CERT_OPTIONAL'}), 'redis://h/0')
    assert via_setting['connection_class'] is redis.SSLConnection
    assert via_setting['ssl_cert_reqs'] == ssl.CERT_OPTIONAL
    # Celery warns of each connection setup that may not verify the server (and not of one that does).
    warned = [r.getMessage() for r in caplog.records if r.name == 'fastq.backends.redis']
    assert len(warned) == 2
    assert 'ssl_cert_reqs=CERT_NONE when connecting to redis means that celery will not validate' in warned[0]
    assert 'ssl_cert_reqs=CERT_OPTIONAL when connecting to redis means that celery might not validate' in warned[1]


def test_sentinel_params_and_master_name_required() -> None:
    hosts, params = sentinel_params(_conf(), 'sentinel://:pw@s1:26379/4;sentinel://s2:26380/4')
    assert hosts == [('s1', 26379), ('s2', 26380)]
    assert params['db'] == 4 and params['password'] == 'pw' and 'host' not in params
    app = Fastq('t', broker='memory://', backend='sentinel://s1:26379', set_as_current=False)
    with pytest.raises(ImproperlyConfigured, match='master_name'):
        app.backend  # noqa: B018
    app.close()


def test_describe_masks_the_password(make_app: Callable[..., Fastq]) -> None:
    assert make_app('redis://:hunter2@127.0.0.1:1/0').backend.describe() == 'redis://:**@127.0.0.1:1/0'
    sentinel = make_app(
        'sentinel://:pw@s1:26379;sentinel://:pw@s2:26379', result_backend_transport_options={'master_name': 'm'}
    )
    assert sentinel.backend.describe() == 'sentinel://:**@s1:26379;sentinel://:**@s2:26379'


# --- storing and reading -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ('state', 'value'),
    [
        (states.SUCCESS, {'answer': [42, 'x', None, 1.5]}),
        (states.FAILURE, ValueError('boom', 3)),
        (states.RETRY, KeyError('later')),
        (states.STARTED, {'pid': 1, 'hostname': 'w'}),
        ('PROGRESS', {'done': 3, 'total': 10}),
    ],
)
def test_round_trip_by_state(app: Fastq, state: str, value: Any) -> None:
    tid = task_id()
    app.backend.store_result(tid, value, state)
    result = AsyncResult(tid, app=app)
    assert result.state == state
    if isinstance(value, BaseException):
        assert type(result.result) is type(value) and result.result.args == value.args
    else:
        assert result.result == value
    assert (result.date_done is not None) == (state in states.READY_STATES)


def test_revoked_raises_task_revoked(app: Fastq) -> None:
    tid = task_id()
    app.backend.mark_as_revoked(tid, 'expired')
    with pytest.raises(TaskRevokedError):
        AsyncResult(tid, app=app).get(timeout=LONG)


def test_failure_reraised_with_type_traceback_and_date(app: Fastq) -> None:
    tid = task_id()
    app.backend.mark_as_failure(tid, ZeroDivisionError('division by zero'), traceback='Traceback: line 1')
    result = AsyncResult(tid, app=app)
    with pytest.raises(ZeroDivisionError, match='division by zero'):
        result.get(timeout=LONG)
    assert result.traceback == 'Traceback: line 1'
    assert isinstance(result.date_done, datetime) and result.date_done.tzinfo is not None
    assert result.failed() and not result.successful()


def test_result_extended_fields(make_app: Callable[..., Fastq]) -> None:
    app = make_app(result_extended=True)
    tid = task_id()
    request = SimpleNamespace(
        task='proj.add',
        args=[1, 2],
        kwargs={'z': 3},
        hostname='w1@host',
        retries=2,
        delivery_info={'routing_key': 'fast'},
        group='g1',
        parent_id='p1',
    )
    app.backend.store_result(tid, 3, states.SUCCESS, request=request)
    result = AsyncResult(tid, app=app)
    assert (result.args, result.kwargs, result.worker, result.retries, result.queue) == (
        [1, 2],
        {'z': 3},
        'w1@host',
        2,
        'fast',
    )
    meta = app.backend.get_task_meta(tid)
    assert meta['name'] == 'proj.add' and meta['group_id'] == 'g1' and meta['parent_id'] == 'p1'


def test_result_expires_is_the_key_ttl(make_app: Callable[..., Fastq], raw: Any) -> None:
    default = make_app()
    tid = task_id()
    default.backend.store_result(tid, 1, states.SUCCESS)
    assert 86000 < raw.ttl(key(tid)) <= 86400

    short = make_app(result_expires=timedelta(seconds=120), result_failure_expires=30)
    ok, failed = task_id(), task_id()
    short.backend.store_result(ok, 1, states.SUCCESS)
    short.backend.mark_as_failure(failed, ValueError('x'))
    assert 100 < raw.ttl(key(ok)) <= 120
    assert 0 < raw.ttl(key(failed)) <= 30

    for never in (None, 0):
        forever = make_app(result_expires=never)
        tid = task_id()
        forever.backend.store_result(tid, 1, states.SUCCESS)
        assert raw.ttl(key(tid)) == -1


def test_forget_deletes_the_key(app: Fastq, raw: Any) -> None:
    tid = task_id()
    app.backend.store_result(tid, 1, states.SUCCESS)
    AsyncResult(tid, app=app).forget()
    assert raw.exists(key(tid)) == 0
    assert AsyncResult(tid, app=app).state == states.PENDING


@pytest.mark.parametrize(
    'conf',
    [{}, {'result_serializer': 'msgpack', 'accept_content': ['json', 'msgpack']}, {'result_compression': 'zlib'}],
    ids=['json', 'msgpack', 'zlib'],
)
def test_success_is_never_overwritten_nor_republished(
    make_app: Callable[..., Fastq], raw: Any, conf: dict[str, Any]
) -> None:
    app = make_app(**conf)
    tid = task_id()
    pubsub = raw.pubsub(ignore_subscribe_messages=True)
    pubsub.subscribe(key(tid), 'marker')
    app.backend.mark_as_started(tid, pid=1)
    app.backend.store_result(tid, 'first', states.SUCCESS)
    app.backend.mark_as_failure(tid, ValueError('duplicate delivery'))
    app.backend.mark_as_started(tid, pid=2)
    raw.publish('marker', b'end')  # messages arrive in the order Redis ran the commands
    seen = []
    deadline = time.monotonic() + LONG
    while time.monotonic() < deadline:
        message = pubsub.get_message(timeout=1.0)  # None for the skipped subscribe confirmations, too
        if message is None:
            continue
        if message['channel'] == b'marker':
            break
        seen.append(app.backend.decode(message['data'])['status'])
    pubsub.close()
    assert seen == [states.STARTED, states.SUCCESS]
    assert app.backend.get_task_meta(tid)['result'] == 'first'


def test_global_keyprefix(make_app: Callable[..., Fastq], make_celery: Callable[..., Any], raw: Any) -> None:
    options = {'global_keyprefix': 'myapp'}
    app = make_app(result_backend_transport_options=options)
    tid = task_id()
    app.backend.store_result(tid, 'prefixed', states.SUCCESS)
    assert raw.exists(key(tid, 'myapp_')) == 1 and raw.exists(key(tid)) == 0
    assert AsyncResult(tid, app=app).get(timeout=LONG) == 'prefixed'
    capp = make_celery(result_backend_transport_options=options)
    assert celery_result.AsyncResult(tid, app=capp).get(timeout=LONG) == 'prefixed'


def test_msgpack_serializer(make_app: Callable[..., Fastq], make_celery: Callable[..., Any], raw: Any) -> None:
    import msgpack

    conf = {'result_serializer': 'msgpack', 'accept_content': ['json', 'msgpack']}
    app = make_app(**conf)
    tid = task_id()
    app.backend.store_result(tid, {'x': [1, 2]}, states.SUCCESS)
    assert msgpack.unpackb(raw.get(key(tid)))['result'] == {'x': [1, 2]}
    assert AsyncResult(tid, app=app).get(timeout=LONG) == {'x': [1, 2]}
    assert celery_result.AsyncResult(tid, app=make_celery(**conf)).get(timeout=LONG) == {'x': [1, 2]}


def test_compressed_results(make_app: Callable[..., Fastq], make_celery: Callable[..., Any], raw: Any) -> None:
    app = make_app(result_compression='zlib')
    capp = make_celery(result_compression='zlib')
    ours, theirs = task_id(), task_id()
    app.backend.store_result(ours, 'z' * 1000, states.SUCCESS)
    assert raw.get(key(ours)).startswith(b'\x00celery-compressed\x00')
    assert AsyncResult(ours, app=app).get(timeout=LONG) == 'z' * 1000
    assert celery_result.AsyncResult(ours, app=capp).get(timeout=LONG) == 'z' * 1000
    capp.backend.store_result(theirs, 'y' * 1000, states.SUCCESS)
    assert AsyncResult(theirs, app=app).get(timeout=LONG) == 'y' * 1000


# --- waiting: pub/sub, not polling ---------------------------------------------------------------------------


@pytest.mark.usefixtures('listener_only')
def test_get_wakes_on_publish_without_polling(app: Fastq, raw: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    reads = count_reads(app.backend, monkeypatch)
    tid = task_id()
    waiting = Waiting(AsyncResult(tid, app=app), timeout=LONG, interval=LONG)
    waiting.start()
    wait_until(lambda: subscribers(raw, key(tid)) == 1)
    wait_until(lambda: len(reads) == 1)  # read once the subscription was confirmed
    app.backend.store_result(tid, 'woken', states.SUCCESS)
    assert waiting.outcome() == 'woken'
    assert reads == [tid]  # the document came in the message: no second read, and no polling
    wait_until(lambda: subscribers(raw, key(tid)) == 0)


def test_result_stored_before_the_wait(app: Fastq, monkeypatch: pytest.MonkeyPatch) -> None:
    reads = count_reads(app.backend, monkeypatch)
    tid = task_id()
    app.backend.store_result(tid, 'early', states.SUCCESS)
    # Not sent just now (or not by this process): read first, and a stored result needs no subscription.
    monkeypatch.setattr(app.backend, '_get_listener', lambda: pytest.fail('subscribed for a stored result'))
    assert AsyncResult(tid, app=app).get(timeout=LONG, interval=LONG) == 'early'
    assert reads == [tid]


@pytest.mark.usefixtures('listener_only')
def test_an_older_task_not_ready_is_read_then_waited_for(app: Fastq, raw: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    reads = count_reads(app.backend, monkeypatch)
    tid = task_id()
    result: AsyncResult[Any] = AsyncResult(tid, app=app)
    result.sent_at = time.monotonic() - 60
    waiting = Waiting(result, timeout=LONG, interval=LONG)
    waiting.start()
    wait_until(lambda: subscribers(raw, key(tid)) == 1)
    wait_until(lambda: len(reads) == 2)  # the first read found nothing; read again once subscribed
    app.backend.store_result(tid, 'later', states.SUCCESS)
    assert waiting.outcome() == 'later'
    assert reads == [tid, tid]


@pytest.mark.usefixtures('listener_only')
def test_a_missed_message_delays_the_wait_at_most_an_interval(
    app: Fastq, raw: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    reads = count_reads(app.backend, monkeypatch)
    tid = task_id()
    waiting = Waiting(AsyncResult(tid, app=app), timeout=LONG, interval=0.1)
    waiting.start()
    wait_until(lambda: len(reads) == 1)
    # A writer that does not publish (or a message lost in transit): only the periodic read can see it.
    raw.set(key(tid), app.backend.encode({'status': states.SUCCESS, 'result': 'unannounced', 'task_id': tid}))
    assert waiting.outcome() == 'unannounced'
    assert len(reads) >= 2


@pytest.mark.usefixtures('listener_only')
def test_a_failed_read_does_not_end_the_wait(app: Fastq, raw: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    backend = app.backend
    original = backend._get
    failed: list[str] = []

    def flaky(tid: str) -> bytes | None:
        if not failed:  # the read after subscribing hits a connection that just broke
            failed.append(tid)
            raise BackendGetMetaError('unreachable', task_id=tid) from redis.ConnectionError('reset by peer')
        return original(tid)

    monkeypatch.setattr(backend, '_get', flaky)
    tid = task_id()
    waiting = Waiting(AsyncResult(tid, app=app), timeout=LONG, interval=LONG)
    waiting.start()
    wait_until(lambda: failed)
    backend.store_result(tid, 'still delivered', states.SUCCESS)
    assert waiting.outcome() == 'still delivered'


def test_concurrent_waiters_on_different_tasks(app: Fastq, raw: Any) -> None:
    tids = [task_id() for _ in range(8)]
    waiters = [Waiting(AsyncResult(tid, app=app), timeout=LONG, interval=LONG) for tid in tids]
    both = Waiting(AsyncResult(tids[0], app=app), timeout=LONG, interval=LONG)  # two waiters, one task
    for waiting in [*waiters, both]:
        waiting.start()
    # tids[0] has one subscriber or two: the 9th waiting thread has no inline connection of its own (see
    # MAX_INLINE_WAITERS) and waits through the listener, which may subscribe beside an inline waiter
    wait_until(lambda: all(subscribers(raw, key(tid)) >= 1 for tid in tids))
    for index, tid in reversed(list(enumerate(tids))):
        app.backend.store_result(tid, index, states.SUCCESS)
    assert [waiting.outcome() for waiting in waiters] == list(range(8))
    assert both.outcome() == 0
    wait_until(lambda: all(subscribers(raw, key(tid)) == 0 for tid in tids))


def test_intermediate_states_do_not_end_the_wait(app: Fastq, raw: Any) -> None:
    tid = task_id()
    waiting = Waiting(AsyncResult(tid, app=app), timeout=LONG)
    waiting.start()
    wait_until(lambda: subscribers(raw, key(tid)) == 1)
    app.backend.mark_as_started(tid, pid=1)
    app.backend.store_result(tid, {'done': 1}, 'PROGRESS')
    app.backend.mark_as_failure(tid, KeyError('finally'))
    with pytest.raises(KeyError, match='finally'):
        waiting.outcome()


def test_timeout_raises_and_unsubscribes(app: Fastq, raw: Any) -> None:
    tid = task_id()
    with pytest.raises(TimeoutError):
        AsyncResult(tid, app=app).get(timeout=0.2)
    with pytest.raises(TimeoutError):
        AsyncResult(tid, app=app).get(timeout=0)
    wait_until(lambda: subscribers(raw, key(tid)) == 0)
    app.backend.store_result(tid, 'late', states.SUCCESS)
    assert AsyncResult(tid, app=app).get(timeout=0) == 'late'


@pytest.mark.usefixtures('listener_only')
def test_close_stops_the_listener_thread(make_app: Callable[..., Fastq]) -> None:
    app = make_app()
    tid = task_id()
    first = Waiting(AsyncResult(tid, app=app), timeout=LONG)  # just sent: waits through the listener
    first.start()
    wait_until(lambda: app.backend._listener is not None and app.backend._listener.connected)
    app.backend.store_result(tid, 1, states.SUCCESS)
    assert first.outcome() == 1
    names = {t.name for t in threading.enumerate()}
    assert 'fastq-redis-results' in names
    backend = app.backend
    listener = backend._listener
    assert listener is not None and listener._thread is not None
    backend.close()
    assert not listener._thread.is_alive()
    # A closed backend connects again on next use; a wait cut short by close() fails instead of hanging.
    stranded = Waiting(AsyncResult(task_id(), app=app), timeout=LONG)
    stranded.start()
    wait_until(lambda: backend._listener is not None and backend._listener.connected)
    backend.close()
    with pytest.raises(BackendError, match='closed'):
        stranded.outcome()
    assert AsyncResult(tid, app=app).get(timeout=LONG) == 1
    backend.close()


# --- a waiting thread's own connection (inline.py) ------------------------------------------------------------


def test_inline_wait_needs_no_listener_thread(app: Fastq, raw: Any) -> None:
    tid = task_id()
    waiting = Waiting(AsyncResult(tid, app=app), timeout=LONG, interval=LONG)
    waiting.start()
    wait_until(lambda: subscribers(raw, key(tid)) == 1)
    app.backend.mark_as_started(tid, pid=1)  # not ready: the wait goes on
    app.backend.store_result(tid, 'inline', states.SUCCESS)
    assert waiting.outcome() == 'inline'
    assert app.backend._listener is None
    assert 'fastq-redis-results' not in {t.name for t in threading.enumerate()}
    wait_until(lambda: subscribers(raw, key(tid)) == 0)
    # the same thread's connection serves the next wait, after skipping the last one's unsubscribe reply
    assert AsyncResult(tid, app=app).get(timeout=LONG) == 'inline'


def test_inline_wait_leaves_a_ready_results_channel_in_the_next_wait(app: Fastq, raw: Any) -> None:
    """The UNSUBSCRIBE of a result that came rides with the next wait's SUBSCRIBE: one write per wait."""
    first, second = task_id(), task_id()
    app.backend.store_result(first, 1, states.SUCCESS)
    app.backend.store_result(second, 2, states.SUCCESS)
    for tid, value in ((first, 1), (second, 2)):
        just_sent: AsyncResult[Any] = AsyncResult(tid, app=app)
        just_sent.sent_at = time.monotonic() + 3600  # waited on (subscribed), not just read, whatever the load
        assert just_sent.get(timeout=LONG) == value
    assert subscribers(raw, key(first)) == 0
    assert subscribers(raw, key(second)) == 1  # until this thread waits again
    app.backend.store_result(first, 'again', states.SUCCESS)  # published on a channel left: never taken
    third: AsyncResult[Any] = AsyncResult(task_id(), app=app)
    third.sent_at = time.monotonic() + 3600
    app.backend.store_result(third.id, 3, states.SUCCESS)
    assert third.get(timeout=LONG) == 3
    wait_until(lambda: subscribers(raw, key(second)) == 0)


def test_inline_wait_rereads_a_result_stored_without_a_message(app: Fastq, raw: Any) -> None:
    tid = task_id()
    waiting = Waiting(AsyncResult(tid, app=app), timeout=LONG, interval=0.1)
    waiting.start()
    wait_until(lambda: subscribers(raw, key(tid)) == 1)
    raw.set(key(tid), app.backend.encode({'status': states.SUCCESS, 'result': 'unannounced', 'task_id': tid}))
    assert waiting.outcome() == 'unannounced'


def test_inline_wait_skips_an_earlier_waits_read() -> None:
    from fastq.backends.redis.inline import InlineWait

    inline = InlineWait.__new__(InlineWait)
    inline._pending = collections.deque([b'old', b'new'])
    decode: Callable[[bytes], dict[str, Any]] = lambda payload: {'status': 'SUCCESS', 'result': payload}  # noqa: E731
    assert inline._take(b'{"stale"}', b'new', decode) is None  # the answer to the read for b'old'
    assert inline._take([b'message', b'old', b'x'], b'new', decode) is None
    assert inline._take([b'unsubscribe', b'old', 0], b'new', decode) is None
    assert inline._take(b'fresh', b'new', decode) == {'status': 'SUCCESS', 'result': b'fresh'}
    assert inline._take([b'message', b'new', b'pushed'], b'new', decode) == {'status': 'SUCCESS', 'result': b'pushed'}


def test_more_waiting_threads_than_inline_connections(app: Fastq, raw: Any) -> None:
    from fastq.backends.redis import MAX_INLINE_WAITERS

    tids = [task_id() for _ in range(MAX_INLINE_WAITERS + 4)]
    waiters = [Waiting(AsyncResult(tid, app=app), timeout=LONG, interval=LONG) for tid in tids]
    for waiting in waiters:
        waiting.start()
    wait_until(lambda: all(subscribers(raw, key(tid)) == 1 for tid in tids))
    assert len(app.backend._inline_all) <= MAX_INLINE_WAITERS
    assert app.backend._listener is not None  # the rest wait through it
    for index, tid in enumerate(tids):
        app.backend.store_result(tid, index, states.SUCCESS)
    assert [waiting.outcome() for waiting in waiters] == list(range(len(tids)))


def test_inline_wait_on_a_refused_connection_fails_cleanly(
    make_app: Callable[..., Fastq], redis_server: RedisServer
) -> None:
    app = make_app(redis_server.url(99))  # SELECT fails on the inline connection too: the listener reports it
    just_sent: AsyncResult[Any] = AsyncResult(task_id(), app=app)
    just_sent.sent_at = time.monotonic()
    with pytest.raises(BackendError, match='DB index is out of range'):
        just_sent.get(timeout=LONG)


# --- interop with Celery -------------------------------------------------------------------------------------


def test_celery_reads_what_fastq_stored(app: Fastq, make_celery: Callable[..., Any]) -> None:
    capp = make_celery()
    ok, failed = task_id(), task_id()
    app.backend.store_result(ok, {'sum': 3}, states.SUCCESS)
    app.backend.mark_as_failure(failed, ValueError('from fastq'), traceback='tb')
    assert celery_result.AsyncResult(ok, app=capp).get(timeout=LONG) == {'sum': 3}
    with pytest.raises(ValueError, match='from fastq'):
        celery_result.AsyncResult(failed, app=capp).get(timeout=LONG)
    assert celery_result.AsyncResult(failed, app=capp).traceback == 'tb'


def test_celery_waiting_get_wakes_on_a_fastq_store(app: Fastq, make_celery: Callable[..., Any], raw: Any) -> None:
    capp = make_celery()
    tid = task_id()
    box: dict[str, Any] = {}
    thread = threading.Thread(
        target=lambda: box.update(value=celery_result.AsyncResult(tid, app=capp).get(timeout=LONG)), daemon=True
    )
    thread.start()
    wait_until(lambda: subscribers(raw, key(tid)) == 1)
    app.backend.store_result(tid, 'published', states.SUCCESS)
    thread.join(LONG)
    assert box == {'value': 'published'}


class Unimportable(Exception):
    pass


Unimportable.__module__ = 'no_such_module_for_fastq'


def test_fastq_reads_what_celery_stored(app: Fastq, make_celery: Callable[..., Any]) -> None:
    capp = make_celery()
    ok, builtin, foreign = task_id(), task_id(), task_id()
    capp.backend.store_result(ok, [1, 'two'], states.SUCCESS)
    capp.backend.store_result(builtin, KeyError('missing'), states.FAILURE, traceback='tb')
    capp.backend.store_result(foreign, Unimportable('odd', 7), states.FAILURE)
    assert AsyncResult(ok, app=app).get(timeout=LONG) == [1, 'two']
    with pytest.raises(KeyError, match='missing'):
        AsyncResult(builtin, app=app).get(timeout=LONG)
    assert AsyncResult(builtin, app=app).traceback == 'tb'
    with pytest.raises(Exception) as raised:
        AsyncResult(foreign, app=app).get(timeout=LONG)
    assert type(raised.value).__name__ == 'Unimportable' and type(raised.value) is not Unimportable
    assert type(raised.value).__module__ == 'no_such_module_for_fastq' and raised.value.args == ('odd', 7)


def test_fastq_waiting_get_wakes_on_a_celery_store(app: Fastq, make_celery: Callable[..., Any], raw: Any) -> None:
    capp = make_celery()
    tid = task_id()
    waiting = Waiting(AsyncResult(tid, app=app), timeout=LONG, interval=LONG)
    waiting.start()
    wait_until(lambda: subscribers(raw, key(tid)) == 1)
    capp.backend.store_result(tid, 'from celery', states.SUCCESS)
    assert waiting.outcome() == 'from celery'


def _stored(raw: Any, tid: str) -> dict[str, Any]:
    document: dict[str, Any] = json.loads(raw.get(key(tid)))
    assert document.pop('task_id') == tid
    assert datetime.fromisoformat(document.pop('date_done')).tzinfo is not None
    return document


def test_same_documents_as_celery(make_app: Callable[..., Fastq], make_celery: Callable[..., Any], raw: Any) -> None:
    app, capp = make_app(result_extended=True), make_celery(result_extended=True)
    request = SimpleNamespace(
        task='proj.add',
        args=[1, 2],
        kwargs={},
        hostname='w@h',
        retries=0,
        delivery_info={'routing_key': 'celery'},
        group=None,
        parent_id='p',
        children=[],
    )
    cases: list[tuple[Any, str]] = [
        ({'a': [1, 2.5, None, 'é']}, states.SUCCESS),
        (ValueError('bad', 1), states.FAILURE),
    ]
    for value, state in cases:
        ours, theirs = task_id(), task_id()
        app.backend.store_result(ours, value, state, traceback='tb', request=request)
        capp.backend.store_result(theirs, value, state, traceback='tb', request=request)
        assert _stored(raw, ours) == _stored(raw, theirs)
        assert raw.ttl(key(ours)) > 0 and raw.ttl(key(theirs)) > 0


# --- faults ----------------------------------------------------------------------------------------------------


def test_get_survives_a_server_restart(
    app: Fastq, raw: Any, redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    tid = task_id()
    # interval=LONG: no periodic read, so only the listener's reconnect can bring the result
    waiting = Waiting(AsyncResult(tid, app=app), timeout=LONG, interval=LONG)
    with caplog.at_level('WARNING', logger='fastq.backends.redis'):
        waiting.start()
        wait_until(lambda: subscribers(raw, key(tid)) == 1)
        redis_server.restart()  # nothing persisted; the listener loses its connection
        wait_until(redis_server.ping)
        # Most likely stored while the listener is still reconnecting, so the message is lost: the listener
        # must subscribe again and have the waiter read the key.
        app.backend.store_result(tid, 'after restart', states.SUCCESS)
        assert waiting.outcome() == 'after restart'
    assert any('lost' in record.getMessage() for record in caplog.records)
    # and the backend keeps working
    again = task_id()
    waiting = Waiting(AsyncResult(again, app=app), timeout=LONG)
    waiting.start()
    wait_until(lambda: subscribers(raw, key(again)) == 1)
    app.backend.store_result(again, 'again', states.SUCCESS)
    assert waiting.outcome() == 'again'


@pytest.fixture
def unreachable_url() -> str:
    return f'redis://:s3cret@127.0.0.1:{free_port()}/0'


def _check_message(exc: BaseException, port_url: str) -> None:
    text = str(exc)
    assert 's3cret' not in text
    assert port_url.replace(':s3cret@', ':**@') in text


def test_unreachable_server_raises_backend_errors(make_app: Callable[..., Fastq], unreachable_url: str) -> None:
    app = make_app(unreachable_url, result_backend_transport_options={'retry_policy': {'max_retries': 0}})
    errors: dict[str, BaseException] = {}

    def attempt(name: str, call: Callable[[], Any]) -> None:
        try:
            call()
        except BaseException as exc:
            errors[name] = exc

    calls = {
        'read': lambda: app.backend.get_task_meta('t1'),
        'store': lambda: app.backend.store_result('t1', 1, states.SUCCESS),
        'wait': lambda: AsyncResult('t1', app=app).get(timeout=LONG),
        'forget': lambda: app.backend.forget('t1'),
    }
    threads = [threading.Thread(target=attempt, args=item, daemon=True) for item in calls.items()]
    for thread in threads:  # in parallel: each waits out redis-py's own reconnect backoff
        thread.start()
    for thread in threads:
        thread.join(LONG)
    assert isinstance(errors['read'], BackendGetMetaError)
    assert isinstance(errors['store'], BackendStoreError) and errors['store'].state == states.SUCCESS
    assert isinstance(errors['wait'], BackendError)
    assert isinstance(errors['forget'], BackendError)
    for exc in errors.values():
        _check_message(exc, unreachable_url)


def test_retry_policy_timeout_ends_the_retries(make_app: Callable[..., Fastq], unreachable_url: str) -> None:
    """The "Using Redis" page's `retry_policy: {'timeout': 5.0}`: kombu's retry_over_time retries no more once
    `timeout` seconds have passed, whatever `max_retries` says (here: retry forever)."""
    policy = {'max_retries': None, 'timeout': 0.3, 'interval_start': 0.05, 'interval_step': 0, 'interval_max': 0.05}
    app = make_app(unreachable_url, result_backend_transport_options={'retry_policy': policy})
    errors: list[BaseException] = []

    def store() -> None:
        try:
            app.backend.store_result('t1', 1, states.SUCCESS)
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=store, daemon=True)
    thread.start()
    thread.join(LONG)
    assert not thread.is_alive(), 'still retrying after the retry_policy timeout'
    assert isinstance(errors[0], BackendStoreError)


@pytest.mark.usefixtures('listener_only')
def test_a_refused_connection_fails_the_wait_and_the_listener_survives(
    make_app: Callable[..., Fastq], redis_server: RedisServer
) -> None:
    app = make_app(redis_server.url(99))  # the server has 64 databases: SELECT fails, and retrying cannot help
    just_sent: AsyncResult[Any] = AsyncResult(task_id(), app=app)
    # Sent "just now" whatever the machine's load (an older task is read first, before the listener is made):
    # its wait goes straight to the listener.
    just_sent.sent_at = time.monotonic() + 3600
    with pytest.raises(BackendError, match='DB index is out of range'):
        just_sent.get(timeout=LONG)
    with pytest.raises(BackendGetMetaError, match='DB index is out of range'):
        app.backend.get_task_meta(task_id())
    listener = app.backend._listener
    assert listener is not None and listener._thread is not None and listener._thread.is_alive()


def test_always_retry_retries_stores(
    make_app: Callable[..., Fastq], unreachable_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    app = make_app(
        unreachable_url,
        result_backend_always_retry=True,
        result_backend_max_retries=2,
        result_backend_base_sleep_between_retries_ms=1,
        result_backend_max_sleep_between_retries_ms=2,
        result_backend_transport_options={'retry_policy': {'max_retries': 0}},
    )
    backend = app.backend
    assert isinstance(backend, RedisBackend)
    attempts = []
    monkey = pytest.MonkeyPatch()
    original = backend._store_unless_success

    def failing(*args: Any) -> None:
        attempts.append(args)
        raise redis.ConnectionError('refused')

    monkey.setattr(backend, '_store_unless_success', failing)
    try:
        with caplog.at_level('WARNING', logger='fastq.backends.redis'), pytest.raises(BackendStoreError):
            backend.store_result('t1', 1, states.SUCCESS)
    finally:
        monkey.setattr(backend, '_store_unless_success', original)
    assert len(attempts) == 3
    assert sum('Retrying' in record.getMessage() for record in caplog.records) == 2


@pytest.mark.usefixtures('listener_only')
def test_forked_child_uses_its_own_connections(app: Fastq) -> None:
    _fork_round_trip(app)


def test_forked_child_uses_its_own_inline_connection(app: Fastq) -> None:
    _fork_round_trip(app)


def _fork_round_trip(app: Fastq) -> None:
    parent_tid = task_id()
    app.backend.store_result(parent_tid, 'parent', states.SUCCESS)
    assert AsyncResult(parent_tid, app=app).get(timeout=LONG) == 'parent'  # the listener runs in the parent
    child_tid = task_id()
    with warnings.catch_warnings():
        warnings.simplefilter('ignore', DeprecationWarning)  # fork() with threads running (3.12+)
        pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        code = 1
        try:
            waiting = Waiting(AsyncResult(child_tid, app=app), timeout=LONG)
            waiting.start()
            time.sleep(0.05)
            app.backend.store_result(child_tid, os.getpid(), states.SUCCESS)
            pool = app.backend.client.connection_pool
            # redis-py's pool noticed the fork (pid check) and connected anew; ours started a new listener
            code = 0 if waiting.outcome() == os.getpid() and pool.pid == os.getpid() else 2
        finally:
            os._exit(code)
    deadline = time.monotonic() + LONG
    while True:  # bounded: a child stuck on a lock inherited from the fork must fail the test, not hang it
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            raise AssertionError('the forked child did not finish')
        time.sleep(0.01)
    assert os.waitstatus_to_exitcode(status) == 0
    assert AsyncResult(child_tid, app=app).get(timeout=LONG) == pid  # the parent's connections still work
    other = task_id()
    waiting = Waiting(AsyncResult(other, app=app), timeout=LONG)
    waiting.start()
    app.backend.store_result(other, 'still listening', states.SUCCESS)
    assert waiting.outcome() == 'still listening'


# --- other ways to reach Redis: a unix socket, TLS, Sentinel ---------------------------------------------------


@contextlib.contextmanager
def spawn_redis(directory: Path, args: list[str], ready: Callable[[], bool]) -> Iterator[None]:
    binary = shutil.which('redis-server')
    assert binary is not None
    log = directory / 'redis.log'
    proc = subprocess.Popen(
        [binary, *args, '--dir', str(directory), '--logfile', str(log)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + LONG
        while not ready():
            if proc.poll() is not None:
                raise RuntimeError(f'redis-server exited: {log.read_text(errors="replace") if log.exists() else ""}')
            assert time.monotonic() < deadline, 'redis-server did not start'
            time.sleep(0.02)
        yield
    finally:
        proc.terminate()
        proc.wait(LONG)


def _pong(sock: socket.socket) -> bool:
    sock.sendall(b'PING\r\n')
    return sock.recv(64).startswith(b'+PONG')


def _tcp_ping(port: int) -> bool:
    try:
        with socket.create_connection(('127.0.0.1', port), timeout=1) as sock:
            return _pong(sock)
    except OSError:
        return False


def _round_trip(app: Fastq) -> None:
    tid = task_id()
    waiting = Waiting(AsyncResult(tid, app=app), timeout=LONG)
    waiting.start()
    early = task_id()
    app.backend.store_result(early, 'stored', states.SUCCESS)
    assert AsyncResult(early, app=app).get(timeout=LONG) == 'stored'
    app.backend.store_result(tid, 'published', states.SUCCESS)
    assert waiting.outcome() == 'published'


def test_unix_socket(make_app: Callable[..., Fastq], tmp_path: Path) -> None:
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
        app = make_app(f'redis+socket://{path}?virtual_host=2')
        _round_trip(app)
        assert redis.Redis(unix_socket_path=str(path), db=2).exists(b'celery-task-meta-' + b'x') == 0
        app.close()


def _make_certificates(directory: Path) -> tuple[Path, Path, Path]:
    openssl = shutil.which('openssl')
    if openssl is None:
        pytest.skip('openssl is not installed')
    ca_key, ca, key_file, csr, cert = (directory / name for name in ('ca.key', 'ca.crt', 's.key', 's.csr', 's.crt'))
    ext = directory / 'san.ext'
    ext.write_text('subjectAltName=IP:127.0.0.1\n')
    ec = ['-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes']
    run = lambda *args: subprocess.run([openssl, *args], check=True, capture_output=True)  # noqa: E731
    run('req', '-x509', *ec, '-keyout', str(ca_key), '-out', str(ca), '-days', '1', '-subj', '/CN=fastq test CA')
    run('req', *ec, '-keyout', str(key_file), '-out', str(csr), '-subj', '/CN=127.0.0.1')
    run(
        'x509', '-req', '-in', str(csr), '-CA', str(ca), '-CAkey', str(ca_key), '-CAcreateserial',
        '-out', str(cert), '-days', '1', '-extfile', str(ext),
    )  # fmt: skip
    return ca, cert, key_file


def test_tls(make_app: Callable[..., Fastq], tmp_path: Path) -> None:
    ca, cert, key_file = _make_certificates(tmp_path)
    port = free_port()
    context = ssl.create_default_context(cafile=str(ca))

    def ready() -> bool:
        try:
            with (
                socket.create_connection(('127.0.0.1', port), timeout=1) as plain,
                context.wrap_socket(plain, server_hostname='127.0.0.1') as sock,
            ):
                return _pong(sock)
        except OSError:
            return False

    args = ['--port', '0', '--tls-port', str(port), '--bind', '127.0.0.1', '--save', '']
    args += ['--tls-cert-file', str(cert), '--tls-key-file', str(key_file), '--tls-ca-cert-file', str(ca)]
    args += ['--tls-auth-clients', 'no']
    with spawn_redis(tmp_path, args, ready):
        url = f'rediss://127.0.0.1:{port}/0?ssl_cert_reqs=CERT_REQUIRED&ssl_ca_certs={quote(str(ca), safe="")}'
        app = make_app(url)
        _round_trip(app)
        app.close()


def test_sentinel(make_app: Callable[..., Fastq], redis_server: RedisServer, redis_url: str, tmp_path: Path) -> None:
    port = free_port()
    config = tmp_path / 'sentinel.conf'
    config.write_text(f'port {port}\nbind 127.0.0.1\nsentinel monitor fastqmaster 127.0.0.1 {redis_server.port} 1\n')
    with spawn_redis(tmp_path, [str(config), '--sentinel'], lambda: _tcp_ping(port)):
        db = int(redis_url.rsplit('/', 1)[1])
        url = f'sentinel://127.0.0.1:{port}/{db};sentinel://127.0.0.1:{free_port()}/{db}'
        app = make_app(url, result_backend_transport_options={'master_name': 'fastqmaster'})
        assert isinstance(app.backend, SentinelBackend)
        tid = task_id()
        app.backend.store_result(tid, 'via sentinel', states.SUCCESS)
        assert redis.Redis(port=redis_server.port, db=db).exists(key(tid)) == 1
        _round_trip(app)
        app.close()


# --- the asyncio listener on RESP3: the read behind the subscription (alistener.py) ---------------------------


def _aget_fresh(app: Fastq, tid: str) -> tuple[Any, bool]:
    """`aget()` of a task just sent (so it subscribes before reading), and whether the listener spoke RESP3."""

    async def main() -> tuple[Any, bool]:
        result: AsyncResult[Any] = AsyncResult(tid, app=app)
        result.sent_at = time.monotonic()
        value = await result.aget(timeout=LONG)
        state = await app.backend._async.get()  # type: ignore[attr-defined]
        return value, state.listener._resp3

    return asyncio.run(main())


def _count_reads(app: Fastq, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The keys the waiters read themselves, through the command connection (`_aread`)."""
    reads: list[str] = []
    backend = type(app.backend)
    original = backend._aread

    async def counted(self: Any, state: Any, tid: str) -> Any:
        reads.append(tid)
        return await original(self, state, tid)

    monkeypatch.setattr(backend, '_aread', counted)
    return reads


def test_aget_takes_the_read_written_behind_its_subscription(app: Fastq, monkeypatch: pytest.MonkeyPatch) -> None:
    """RESP3: `SUBSCRIBE key` and `GET key` in one write; a result stored before the wait is in the GET's reply,
    one stored after comes as a message, and the waiter reads nothing itself."""
    reads = _count_reads(app, monkeypatch)
    before, after = task_id(), task_id()
    app.backend.store_result(before, 'stored first', states.SUCCESS)
    assert _aget_fresh(app, before) == ('stored first', True)
    app.backend.mark_as_started(after, pid=1)  # read behind the subscription: not ready, so the wait goes on
    threading.Timer(0.2, lambda: app.backend.store_result(after, 'stored later', states.SUCCESS)).start()
    assert _aget_fresh(app, after) == ('stored later', True)
    assert reads == []


def test_aget_leaves_its_channel_with_the_next_subscription(app: Fastq, raw: Any) -> None:
    """The channel of an `aget()` that ended stays subscribed until the next one's write leaves it."""
    first, second = task_id(), task_id()
    app.backend.store_result(first, 1, states.SUCCESS)
    app.backend.store_result(second, 2, states.SUCCESS)

    async def main() -> None:
        for tid, value in ((first, 1), (second, 2)):
            result: AsyncResult[Any] = AsyncResult(tid, app=app)
            result.sent_at = time.monotonic()
            assert await result.aget(timeout=LONG) == value
            await asyncio.sleep(0.05)  # a pass of the loop: nothing is written for the wait that ended
            assert subscribers(raw, key(tid)) == 1
        wait_until(lambda: subscribers(raw, key(first)) == 0)

    asyncio.run(main())


def test_aget_without_resp3_reads_once_subscribed(
    make_app: Callable[..., Fastq], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A server without HELLO (Redis before 6; here one with the command renamed away): the listener stays on
    RESP2 and the waiter reads the key itself once its subscription is confirmed."""
    port = free_port()
    args = ['--port', str(port), '--bind', '127.0.0.1', '--save', '', '--rename-command', 'HELLO', '']
    with spawn_redis(tmp_path, args, lambda: _tcp_ping(port)):
        app = make_app(f'redis://127.0.0.1:{port}/0')
        reads = _count_reads(app, monkeypatch)
        tid = task_id()
        app.backend.store_result(tid, 'stored first', states.SUCCESS)
        assert _aget_fresh(app, tid) == ('stored first', False)
        assert reads == [tid]
        app.close()


# --- a worker's batch of results: one script call (STORE_RESULTS) ------------------------------------------


def test_a_batch_of_results_is_stored_published_and_never_replaces_a_success(app: Fastq, raw: Any) -> None:
    backend = app.backend
    kept, replaced, fresh, unreadable = task_id(), task_id(), task_id(), task_id()
    backend.store_result(kept, 'first', states.SUCCESS)
    backend.store_result(replaced, None, states.STARTED)
    raw.set(key(unreadable), b'\x00not a document')  # the script cannot decode it: decided in Python
    pubsub = raw.pubsub()
    pubsub.subscribe(key(fresh))
    assert pubsub.get_message(timeout=LONG)['type'] == 'subscribe'
    raw.script_flush()  # and the script is loaded on the way
    assert backend.defer_stores()
    for tid in (kept, replaced, fresh, unreadable):
        backend.store_success_later(tid, f'value of {tid}')
    assert raw.get(key(fresh)) is None  # held until the flush
    backend.flush_stores()
    assert backend.get_task_meta(kept)['result'] == 'first'
    for tid in (replaced, fresh, unreadable):
        meta = backend.get_task_meta(tid)
        assert (meta['status'], meta['result']) == (states.SUCCESS, f'value of {tid}')
    message = pubsub.get_message(timeout=LONG)
    assert message is not None and json.loads(message['data'])['result'] == f'value of {fresh}'
    assert 0 < raw.pttl(key(fresh)) <= 86_400_000  # result_expires: a day by default
    pubsub.close()


def test_a_batch_store_runs_between_once_while_redis_stores(app: Fastq, raw: Any) -> None:
    """A pool child re-arms its wait in the broker while Redis stores its results (`flush_stores(between)`):
    `between` runs once, whether the script had to be loaded first, or nothing was held at all."""
    backend = app.backend
    assert backend.defer_stores()
    calls: list[Any] = []
    backend.flush_stores(lambda: calls.append('nothing held'))
    tid = task_id()
    backend.store_success_later(tid, 'stored')
    raw.script_flush()  # the first EVALSHA meets NOSCRIPT: loaded and run again, `between` not run twice
    backend.flush_stores(lambda: calls.append(raw.get(key(tid)) is None or 'already stored'))
    assert calls == ['nothing held', True] or calls == ['nothing held', 'already stored']
    assert backend.get_task_meta(tid)['result'] == 'stored'
    other = task_id()
    backend.store_success_later(other, 'stored too')
    backend.flush_stores(lambda: calls.append('loaded'))
    assert calls[-1] == 'loaded' and len(calls) == 3
    assert backend.get_task_meta(other)['result'] == 'stored too'


# --- collecting many results: read-ahead (backends/redis/collect.py) -----------------------------------------


def sent_results(app: Fastq, n: int) -> list[AsyncResult[Any]]:
    """AsyncResults as `delay()` returns them (sent by this thread; the broker is in memory), a moment old."""

    @app.task(name='t.add')
    def add(x: int, y: int) -> int:
        return x + y

    results = [add.delay(i, i) for i in range(n)]
    time.sleep(0.02)  # older than FRESH: a get() reads the key first
    return results


def reads_of_keys(raw: Any) -> int:
    stats = raw.info('commandstats')
    return sum(int(stats.get(f'cmdstat_{name}', {}).get('calls', 0)) for name in ('get', 'mget'))


def test_collecting_in_turn_reads_the_next_results_ahead(app: Fastq, raw: Any) -> None:
    results = sent_results(app, 300)
    for i, result in enumerate(results):
        app.backend.store_result(result.id, 2 * i, states.SUCCESS)
    before = reads_of_keys(raw)
    assert [result.get(timeout=LONG) for result in results] == [2 * i for i in range(300)]
    assert reads_of_keys(raw) - before < 60  # one read per result would be 300


def test_a_groups_results_are_read_ahead_too(app: Fastq, raw: Any) -> None:
    """`group(...).apply_async().get()` collects in turn as well: a batch send records its results as sent."""
    from fastq import group

    @app.task(name='t.add')
    def add(x: int, y: int) -> int:
        return x + y

    result = group(add.s(i, i) for i in range(300)).apply_async()
    time.sleep(0.02)
    for i, one in enumerate(result.results):
        app.backend.store_result(one.id, 2 * i, states.SUCCESS)
    before = reads_of_keys(raw)
    assert result.get(timeout=LONG) == [2 * i for i in range(300)]
    assert reads_of_keys(raw) - before < 60


def test_a_result_not_ready_when_read_ahead_is_read_again(app: Fastq) -> None:
    first, second, third = sent_results(app, 3)
    app.backend.store_result(first.id, 'one', states.SUCCESS)
    app.backend.store_result(second.id, None, states.STARTED)  # read along with first: not final, not kept
    app.backend.store_result(third.id, 'three', states.SUCCESS)
    assert first.get(timeout=LONG) == 'one'
    app.backend.store_result(second.id, 'two', states.SUCCESS)
    assert second.get(timeout=LONG) == 'two'
    assert third.get(timeout=LONG) == 'three'


def test_forget_drops_a_result_read_ahead(app: Fastq) -> None:
    first, second = sent_results(app, 2)
    app.backend.store_result(first.id, 'one', states.SUCCESS)
    app.backend.store_result(second.id, 'two', states.SUCCESS)
    assert first.get(timeout=LONG) == 'one'  # read second ahead
    second.forget()
    with pytest.raises(TimeoutError):
        second.get(timeout=0.3)


def test_results_nobody_holds_are_not_read_ahead(app: Fastq) -> None:
    results = sent_results(app, 3)
    dropped_id = results[1].id
    del results[1]
    for result_id, value in ((results[0].id, 0), (dropped_id, 1), (results[1].id, 2)):
        app.backend.store_result(result_id, value, states.SUCCESS)
    assert results[0].get(timeout=LONG) == 0
    kept = app.backend._read_ahead._mine().kept
    assert results[1].id in kept and dropped_id not in kept
    assert results[1].get(timeout=LONG) == 2 and not kept


@pytest.mark.parametrize(
    ('start', 'stop', 'step', 'repeatlast'),
    [(2, 32, 2, True), (0, 1.2, 0.2, True), (0.5, 3, 1, True), (1, None, 1, False), (1, 4, 1, False), (0, 0, 1, True)],
)
def test_fxrange_is_kombus(start: float, stop: float | None, step: float, repeatlast: bool) -> None:
    from itertools import islice

    from kombu.utils.functional import fxrange as kombu_fxrange

    from fastq.utils.functional import fxrange

    expected = list(islice(kombu_fxrange(start, stop, step, repeatlast), 40))
    assert list(islice(fxrange(start, stop, step, repeatlast), 40)) == expected


def test_retry_waits_are_kombus_retry_over_time() -> None:
    # kombu sleeps fxrange(interval_start, interval_max + interval_start, interval_step, repeatlast=True): with
    # the defaults 2, 4, ... 32, then 32 (the waits were capped at interval_max, 30)
    from itertools import islice

    from fastq.backends.redis.retry import policy_intervals

    waits = list(islice(policy_intervals({'interval_start': 2, 'interval_step': 2, 'interval_max': 30}), 18))
    assert waits == [float(n) for n in range(2, 33, 2)] + [32.0, 32.0]
