"""`fastq._core.EventBuffer`: each pushed event is the JSON object the stdlib would write for its mapping."""

from __future__ import annotations

import datetime
import json
import re
import time
from types import SimpleNamespace
from typing import Any

import pytest

from fastq import _core
from fastq.serialization import json_default


def buffer(hostname: str = 'w1@host', default: Any = json_default) -> _core.EventBuffer:
    return _core.EventBuffer(hostname, -5.5, 4242, default)  # (a half-hour zone: Celery 5.7's float)


def test_events_are_the_mappings_json_would_write() -> None:
    events = buffer('wörker "1"@host')
    started = events.define('task-started', ())
    succeeded = events.define('task-succeeded', ['result', 'runtime'])
    received = events.define('task-received', ('name', 'args', 'retries', 'eta', 'sent_at', 'flag'))
    before = time.time()
    assert events.push(started, 7, 'id-1') == 1
    assert events.push(succeeded, 8, 'id-1', "'ok' \u2603\n", 0.000123) == 2
    assert events.push(received, 9, 'id-2', 'proj.add', '(1, 2)', 3, None, 1.5e-7, True) == 3
    after = time.time()
    assert len(events) == 3
    body = events.take(10)
    assert body is not None and events.take(10) is None and len(events) == 0
    decoded = json.loads(body)
    for event in decoded:
        assert before - 1e-6 <= event.pop('timestamp') <= after  # written to the microsecond
    common = {'hostname': 'wörker "1"@host', 'utcoffset': -5.5, 'pid': 4242}
    assert decoded == [
        {**common, 'clock': 7, 'uuid': 'id-1', 'type': 'task-started'},
        {**common, 'clock': 8, 'uuid': 'id-1', 'result': "'ok' \u2603\n", 'runtime': 0.000123, 'type': 'task-succeeded'},
        {**common, 'clock': 9, 'uuid': 'id-2', 'name': 'proj.add', 'args': '(1, 2)', 'retries': 3, 'eta': None,
         'sent_at': 1.5e-7, 'flag': True, 'type': 'task-received'},
    ]  # fmt: skip
    # byte for byte what json.dumps writes for the same mapping (keys in the same order, no spaces, ASCII)
    again = buffer('wörker "1"@host')
    kind = again.define('task-succeeded', ('result', 'runtime'))
    again.push(kind, 8, 'id-1', "'ok' \u2603\n\x00", 0.1 + 0.2)
    raw = again.take(1)
    assert raw is not None
    stamp = re.compile(rb'"timestamp":[0-9.]+')  # seconds with six decimals, where repr drops trailing zeros
    assert stamp.sub(b'"timestamp":0', raw) == stamp.sub(
        b'"timestamp":0', json.dumps(json.loads(raw), separators=(',', ':')).encode()
    )


def test_take_gives_batches_oldest_first() -> None:
    events = buffer()
    kind = events.define('task-started', ())
    for clock in range(1000):
        events.push(kind, clock, f'id-{clock}')
    clocks: list[int] = []
    while (body := events.take(256)) is not None:
        batch = json.loads(body)
        assert 1 <= len(batch) <= 256
        clocks += [event['clock'] for event in batch]
    assert clocks == list(range(1000))


def test_interleaved_push_and_take_keep_every_event() -> None:
    """Long runs compact the buffer's front; no event is lost or repeated across that."""
    events = buffer()
    kind = events.define('task-succeeded', ('result', 'runtime'))
    pushed = 0
    seen: list[int] = []
    for _ in range(200):
        for _ in range(700):
            events.push(kind, pushed, 'x' * 36, 'r' * 100, 0.5)
            pushed += 1
        body = events.take(500)
        assert body is not None
        seen += [event['clock'] for event in json.loads(body)]
    while (body := events.take(500)) is not None:
        seen += [event['clock'] for event in json.loads(body)]
    assert seen == list(range(pushed))


def test_values_go_through_default() -> None:
    events = buffer()
    kind = events.define('task-received', ('eta',))
    events.push(kind, 1, 'id', datetime.datetime(2026, 12, 4, 21, 0, 0))
    (event,) = json.loads(events.take(1) or b'')
    assert event['eta'] == json.loads(json.dumps(datetime.datetime(2026, 12, 4, 21, 0, 0), default=json_default))


def test_bad_pushes_raise_and_append_nothing() -> None:
    events = buffer(default=None)
    kind = events.define('task-succeeded', ('result', 'runtime'))
    with pytest.raises(ValueError, match='2 fields, got 1'):
        events.push(kind, 1, 'id', 'only one')
    with pytest.raises(IndexError):
        events.push(kind + 1, 1, 'id', 'a', 1.0)
    with pytest.raises(TypeError, match='not JSON serializable'):
        events.push(kind, 1, 'id', object(), 1.0)
    assert len(events) == 0 and events.take(10) is None
    events.push(kind, 2, 'id', 'fine', 1.0)
    assert events.clear() == 1 and len(events) == 0


def worker_buffer(muted: set[str], limit: int = 1000) -> tuple[_core.EventBuffer, list[str], list[int]]:
    events = buffer()
    asked: list[str] = []
    woken: list[int] = []
    clock = iter(range(100, 10_000)).__next__

    def is_muted(name: str) -> bool:
        asked.append(name)
        return name in muted

    events.worker(is_muted, lambda: woken.append(len(events)), clock, limit)
    return events, asked, woken


def job(task_id: str, name: str = 'proj.add', **headers: Any) -> Any:
    request = SimpleNamespace(id=task_id, task=name, argsrepr='(1, 2)', kwargsrepr='{}', root_id='root',
                              parent_id=None, retries=2, headers=headers)  # fmt: skip
    return SimpleNamespace(request=request, delivery=SimpleNamespace(queue='emails'))


def test_worker_events_from_the_workers_objects() -> None:
    events, asked, _ = worker_buffer(muted={'proj.quiet'})
    events.task_received(job('a', eta='2026-12-04T22:00:00+00:00', fastq_sent_at=1796419702.5))
    events.task_started(job('a'))
    events.task_finished(job('a'), SimpleNamespace(state='SUCCESS', retval_repr='3', runtime=0.25))
    events.task_finished(job('b'), SimpleNamespace(state='FAILURE', exc_repr='KeyError(1)', traceback='Tb...'))
    events.task_finished(job('c'), SimpleNamespace(state='RETRY', exc_repr='Retry()', traceback=None))
    events.task_finished(job('d'), SimpleNamespace(state='REJECTED', requeue=True))
    events.task_finished(job('e'), SimpleNamespace(state='REVOKED'))  # task_revoked sends it: nothing here
    events.task_lost(job('f').request, "WorkerLostError('gone')")
    events.task_revoked(job('g').request, True, 15, False)
    for _ in range(3):
        events.task_received(job('q', name='proj.quiet'))  # send_events=False: nothing, asked once
    decoded = json.loads(events.take(100) or b'')
    for event in decoded:
        assert event.pop('hostname') == 'w1@host' and event.pop('pid') == 4242 and event.pop('utcoffset') == -5.5
        assert isinstance(event.pop('timestamp'), float)
    assert decoded == [
        {'clock': 100, 'uuid': 'a', 'name': 'proj.add', 'args': '(1, 2)', 'kwargs': '{}', 'root_id': 'root',
         'parent_id': None, 'retries': 2, 'eta': '2026-12-04T22:00:00+00:00', 'expires': None, 'queue': 'emails',
         'sent_at': 1796419702.5, 'type': 'task-received'},
        {'clock': 101, 'uuid': 'a', 'type': 'task-started'},
        {'clock': 102, 'uuid': 'a', 'result': '3', 'runtime': 0.25, 'type': 'task-succeeded'},
        {'clock': 103, 'uuid': 'b', 'exception': 'KeyError(1)', 'traceback': 'Tb...', 'type': 'task-failed'},
        {'clock': 104, 'uuid': 'c', 'exception': 'Retry()', 'traceback': None, 'type': 'task-retried'},
        {'clock': 105, 'uuid': 'd', 'requeue': True, 'type': 'task-rejected'},
        {'clock': 106, 'uuid': 'f', 'exception': "WorkerLostError('gone')", 'traceback': None, 'type': 'task-failed'},
        {'clock': 107, 'uuid': 'g', 'terminated': True, 'signum': 15, 'expired': False, 'type': 'task-revoked'},
    ]  # fmt: skip
    assert asked == ['proj.add', 'proj.quiet']


def test_worker_events_wake_the_sender_once_the_limit_is_reached() -> None:
    events, _, woken = worker_buffer(muted=set(), limit=3)
    for task_id in 'abcde':
        events.task_started(job(task_id))
    assert woken == [3]
    events.take(10)
    for task_id in 'fgh':
        events.task_started(job(task_id))
    assert woken == [3, 3]


def test_enabling_worker_events_again_keeps_one_set_of_event_types() -> None:
    """`enable_events` after `disable_events` configures the same buffer again; the event types stay as they were."""
    events, _, _ = worker_buffer(muted=set())
    first = events.define('probe', ())
    events.worker(lambda name: False, lambda: None, iter(range(5)).__next__, 1000)
    assert events.define('probe', ()) == first + 1  # nothing was defined in between
    events.task_started(job('a'))
    assert json.loads(events.take(1) or b'')[0]['type'] == 'task-started'


def kombu_envelope(headers: dict[str, Any]) -> bytes:
    """A task envelope as kombu writes it (its `json.dumps` separators), with these headers."""
    return json.dumps({
        'body': 'W1tdLCB7fSwge31d', 'content-encoding': 'utf-8', 'content-type': 'application/json',
        'headers': headers,
        'properties': {'correlation_id': headers.get('id'), 'delivery_info': {'exchange': '', 'routing_key': 'q'},
                       'body_encoding': 'base64', 'delivery_tag': 'tag-1'},
    }).encode()  # fmt: skip


@pytest.mark.parametrize(
    'headers',
    [
        {'argsrepr': '(1, 2)', 'kwargsrepr': '{}', 'root_id': 'r', 'parent_id': None, 'retries': 0, 'eta': None,
         'expires': None},  # a Celery client's: no send time
        {'argsrepr': "('é \"q\"\\n',)", 'kwargsrepr': "{'k': [1, {'x': None}]}", 'root_id': None,
         'parent_id': 'p', 'retries': 7, 'eta': '2026-12-04T22:00:00.123456+00:00',
         'expires': '2026-12-05T22:00:00+00:00', 'fastq_sent_at': 1796419702.3602712},
        {'argsrepr': '()', 'kwargsrepr': '{}', 'retries': None, 'fastq_sent_at': 1.5},  # no root/parent, null retries
        {'argsrepr': '()', 'kwargsrepr': '{}', 'retries': 2, 'eta': '2026-12-04T22:00:00', 'lang': 'py',
         'timelimit': [None, None], 'nested': {'argsrepr': 'not this one', 'retries': 'x'}},
        {'kwargsrepr': '{}', 'retries': 1},  # argsrepr missing: written from the decoded request ('')
        {'argsrepr': '()', 'kwargsrepr': '{}', 'retries': False},  # `or 0` makes it 0
    ],
)  # fmt: skip
def test_received_event_from_the_envelope_text_is_the_event_from_the_decoded_values(headers: dict[str, Any]) -> None:
    """A message decoded from an envelope keeps the JSON of the event's header fields, copied into its
    `task-received` instead of encoding the decoded values again: the event must be the same either way."""
    from fastq.protocol import parse_task_headers

    headers = {'lang': 'py', 'task': 'proj.add', 'id': 'id-1', **headers}
    message = _core.Message.from_envelope(kombu_envelope(headers), None)
    request = parse_task_headers(message)

    def received(message: Any) -> dict[str, Any]:
        events, _, _ = worker_buffer(muted=set())
        events.task_received(SimpleNamespace(request=request, delivery=SimpleNamespace(queue='q', message=message)))
        (event,) = json.loads(events.take(10) or b'')
        event.pop('timestamp')
        return event

    from_text = received(message)
    from_values = received(SimpleNamespace(headers=message.headers))
    assert from_text == from_values
    assert from_text['args'] == str(headers.get('argsrepr', '')) and from_text['queue'] == 'q'
    assert list(from_text)[-2:] == ['queue', 'type']


def test_replaced_headers_are_not_read_from_the_envelope_text() -> None:
    message = _core.Message.from_envelope(kombu_envelope({'task': 'proj.add', 'id': 'i', 'argsrepr': '(1,)'}), None)
    message.headers = {'task': 'proj.add', 'id': 'i', 'argsrepr': '(2,)', 'kwargsrepr': '{}'}
    request = SimpleNamespace(id='i', task='proj.add', argsrepr='(2,)', kwargsrepr='{}', root_id=None,
                              parent_id=None, retries=0, headers=message.headers)  # fmt: skip
    events, _, _ = worker_buffer(muted=set())
    events.task_received(SimpleNamespace(request=request, delivery=SimpleNamespace(queue='q', message=message)))
    (event,) = json.loads(events.take(10) or b'')
    assert event['args'] == '(2,)'
