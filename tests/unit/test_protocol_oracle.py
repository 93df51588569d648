"""The real celery package is the oracle: the same call must produce the same message.

Each case sends one task with Celery 5.7 (memory transport, its `_put` captured: the JSON document is what
kombu stores on Redis) and with fastq (memory broker), and compares the stored envelopes after normalising
what is unique per process or per publish: reply_to (per-app oid), delivery_tag (a fresh uuid), and
timestamps computed from "now" (compared within a second instead).
"""

from __future__ import annotations

import base64
import json
import time
import uuid
import zlib
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

celery = pytest.importorskip('celery')
from kombu.transport import memory as kombu_memory  # noqa: E402

from fastq import Fastq  # noqa: E402
from fastq.brokers.memory import MemoryBroker  # noqa: E402


@pytest.fixture(scope='module')
def celery_app() -> Iterator[Any]:
    app = celery.Celery('oracle', broker='memory://', set_as_current=False)

    @app.task(name='oracle.add')
    def add(x: Any, y: Any = 0) -> Any:
        return x + y

    yield app


@pytest.fixture
def captured(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, dict[str, Any]]]:
    out: list[tuple[str, dict[str, Any]]] = []
    original = kombu_memory.Channel._put

    def put(self: Any, queue: str, message: dict[str, Any], **kwargs: Any) -> Any:
        out.append((queue, json.loads(json.dumps(message))))
        return original(self, queue, message, **kwargs)

    monkeypatch.setattr(kombu_memory.Channel, '_put', put)
    return out


@pytest.fixture
def fastq_app() -> Iterator[Fastq]:
    app = Fastq('oracle', broker='memory://', backend='memory://', set_as_current=False)

    @app.task(name='oracle.add')
    def add(x: Any, y: Any = 0) -> Any:
        return x + y

    yield app
    app.close()


def fastq_stored(app: Fastq) -> tuple[str, bytes]:
    broker = app.broker
    assert isinstance(broker, MemoryBroker)
    (stored,) = broker._state.messages.values()
    return stored.queue, stored.payload


def normalise(envelope: dict[str, Any]) -> dict[str, Any]:
    envelope = json.loads(json.dumps(envelope))
    props = envelope['properties']
    props['reply_to'] = '<oid>'
    props['delivery_tag'] = '<tag>'
    headers = envelope['headers']
    sent_at = headers.pop('fastq_sent_at', None)  # fastq's own header (time in queue): Celery sends none
    assert sent_at is None or abs(sent_at - time.time()) < 600
    for key in ('eta', 'expires'):
        if headers.get(key):
            headers[key] = '<time>'
    if 'expiration' in props:
        props['expiration'] = str(round(int(props['expiration']) / 1000))
    return envelope


def times(envelope: dict[str, Any]) -> dict[str, datetime | None]:
    h = envelope['headers']
    return {k: datetime.fromisoformat(h[k]) if h.get(k) else None for k in ('eta', 'expires')}


CASES: list[tuple[str, tuple[Any, ...], dict[str, Any]]] = [
    ('plain', (2, 2), {}),
    ('kwargs', (1,), {'kwargs': {'y': 'é\u2603\U0001f600'}}),
    ('priority', (1, 1), {'priority': 5}),
    ('time limits', (1, 1), {'time_limit': 30, 'soft_time_limit': 20}),
    ('user headers', (1, 1), {'headers': {'myhdr': 1, 'nested': {'a': [1, None]}}}),
    ('queue', (1, 1), {'queue': 'other'}),
    ('shadow', (1, 1), {'shadow': 'shadowed.name'}),
    ('ignore_result', (1, 1), {'ignore_result': True}),
    ('countdown', (1, 1), {'countdown': 10}),
    ('expires seconds', (1, 1), {'expires': 60}),
    ('eta datetime', (1, 1), {'eta': datetime(2030, 1, 2, 3, 4, 5, 678901, tzinfo=UTC)}),
    ('eta naive', (1, 1), {'eta': datetime(2030, 1, 2, 3, 4, 5)}),
    ('expires datetime', (1, 1), {'expires': datetime.now(UTC) + timedelta(hours=1)}),
    ('msgpack', (1, 2.5), {'serializer': 'msgpack'}),
    ('zlib', ([1] * 50, [2]), {'compression': 'zlib'}),
    ('bzip2', ('x' * 100, 'y'), {'compression': 'bzip2'}),
    ('msgpack+zlib', (1, 2), {'serializer': 'msgpack', 'compression': 'zlib'}),
    ('special values', ([float('inf'), -0.0, 10**30, None, True, 1.5e-7],), {}),
    ('typed values', ([datetime(2024, 5, 1, 12, 0, tzinfo=UTC), uuid.UUID(int=7), b'\xff\x00'],), {}),
    ('link', (1, 1), {'link': 'SIG'}),
]


@pytest.mark.parametrize(('case', 'args', 'options'), CASES, ids=[c[0] for c in CASES])
def test_same_envelope_as_celery(
    case: str,
    args: tuple[Any, ...],
    options: dict[str, Any],
    celery_app: Any,
    fastq_app: Fastq,
    captured: list[tuple[str, dict[str, Any]]],
) -> None:
    task_id = str(uuid.uuid4())
    c_opts, f_opts = dict(options), dict(options)
    if options.get('link') == 'SIG':
        c_opts['link'] = celery_app.signature('oracle.add', args=(10,))
        f_opts['link'] = fastq_app.signature('oracle.add', args=(10,))
    celery_app.tasks['oracle.add'].apply_async(args, task_id=task_id, **c_opts)
    fastq_app.tasks['oracle.add'].apply_async(args, task_id=task_id, **f_opts)
    (c_queue, c_env), (f_queue, f_raw) = captured[-1], fastq_stored(fastq_app)
    f_env = json.loads(f_raw)
    assert f_queue == c_queue
    if 'compression' in options:
        # zlib output depends on the library build; compare the decompressed bodies, then the rest.
        c_body, f_body = (base64.b64decode(e.pop('body')) for e in (c_env, f_env))
        mime = c_env['headers']['compression']
        if mime == 'application/x-gzip':
            assert zlib.decompress(f_body) == zlib.decompress(c_body)
        else:
            assert f_body == c_body
    if case == 'typed values':
        # Celery's saferepr shows non-UTF-8 bytes as hex (b'ff00'); fastq keeps Python's repr. Both headers
        # are for logs only and never parsed back, so this is the one deliberate difference.
        f_env['headers']['argsrepr'] = c_env['headers']['argsrepr']
    if case == 'eta naive':
        # Celery sends a naive eta as it is, and its worker reads it as UTC; fastq makes it aware in UTC before
        # sending, so no reader has to guess the zone. Same instant, explicit offset.
        assert f_env['headers']['eta'] == options['eta'].replace(tzinfo=UTC).isoformat()
        assert c_env['headers']['eta'] == options['eta'].isoformat()
        f_env['headers']['eta'] = c_env['headers']['eta'] = None
    assert normalise(f_env) == normalise(c_env)
    for key, c_time in times(c_env).items():
        f_time = times(f_env)[key]
        assert (f_time is None) == (c_time is None), key
        if c_time is not None and f_time is not None:
            assert abs((f_time - c_time).total_seconds()) < 1.0, key
            assert f_env['headers'][key][-6:] == c_env['headers'][key][-6:]  # same UTC offset spelling


def test_byte_identical_json_envelope(celery_app: Any, fastq_app: Fastq, captured: Any, monkeypatch: Any) -> None:
    """Beyond equal values: the stored bytes are kombu's, key order and spacing included."""
    task_id = str(uuid.uuid4())
    celery_app.tasks['oracle.add'].apply_async((1, {'b': [1.5, None]}), task_id=task_id)
    fastq_app.tasks['oracle.add'].apply_async((1, {'b': [1.5, None]}), task_id=task_id)
    c_env = captured[-1][1]
    _, f_raw = fastq_stored(fastq_app)
    f_env = json.loads(f_raw)
    c_env['properties']['reply_to'] = f_env['properties']['reply_to']
    c_env['properties']['delivery_tag'] = f_env['properties']['delivery_tag']
    # fastq's one addition: its send time, placed where Celery puts a custom header (last).
    c_env['headers']['fastq_sent_at'] = f_env['headers']['fastq_sent_at']
    assert f_raw == json.dumps(c_env).encode()


@pytest.mark.parametrize('name', ['unregistered.name', 'oracle.add'])
@pytest.mark.parametrize('options', [{}, {'ignore_result': True}, {'ignore_result': False}])
def test_send_task_sends_ignore_result_as_given(
    name: str, options: dict[str, Any], celery_app: Any, fastq_app: Fastq, captured: list[tuple[str, dict[str, Any]]]
) -> None:
    """`send_task` puts `ignore_result` in the header as given, None by default (registered task or not), as
    Celery's does: it does not look at the task."""
    task_id = str(uuid.uuid4())
    c_result = celery_app.send_task(name, (1, 1), task_id=task_id, **options)
    f_result = fastq_app.send_task(name, (1, 1), task_id=task_id, **options)
    c_env, f_env = captured[-1][1], json.loads(fastq_stored(fastq_app)[1])
    assert f_env['headers']['ignore_result'] is c_env['headers']['ignore_result'] is options.get('ignore_result')
    assert f_result.ignored is c_result.ignored
    assert normalise(f_env) == normalise(c_env)


def test_a_naive_eta_is_the_instant_celerys_worker_reads(
    celery_app: Any, fastq_app: Fastq, captured: list[tuple[str, dict[str, Any]]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A naive `eta`/`expires` means UTC to Celery whatever the app's `timezone`: its client sends it as it is
    and its worker's `Request` reads it with `naive_as_utc`. fastq's worker reading Celery's message, and
    fastq's client sending its own, land on that instant, not on the same wall time in the app's zone (here
    nine hours earlier)."""
    from celery.worker.request import Request

    from fastq import _core
    from fastq.protocol import parse_task_headers

    monkeypatch.setattr(celery_app.conf, 'timezone', 'Asia/Tokyo')
    fastq_app.conf.timezone = 'Asia/Tokyo'
    eta, expires = datetime(2030, 1, 1, 12), datetime(2030, 1, 1, 13)
    celery_app.tasks['oracle.add'].apply_async((1, 1), eta=eta, expires=expires)
    envelope = captured[-1][1]
    assert envelope['headers']['eta'] == '2030-01-01T12:00:00'  # Celery sends it naive
    with celery_app.connection_for_write() as conn:
        request = Request(conn.default_channel.message_to_python(envelope), app=celery_app)
        celery_eta, celery_expires = request.eta.timestamp(), request.expires.timestamp()
    assert celery_eta == eta.replace(tzinfo=UTC).timestamp()

    fastq_read = parse_task_headers(_core.Message.from_envelope(json.dumps(envelope).encode(), None))
    assert (fastq_read.eta, fastq_read.expires) == (celery_eta, celery_expires)

    fastq_app.tasks['oracle.add'].apply_async((1, 1), eta=eta, expires=expires)
    fastq_read = parse_task_headers(_core.Message.from_envelope(fastq_stored(fastq_app)[1], None))
    assert (fastq_read.eta, fastq_read.expires) == (celery_eta, celery_expires)
