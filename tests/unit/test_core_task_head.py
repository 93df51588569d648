"""`_core.task_head`: the headers the worker's parent reads, without decoding the rest of the envelope.

Its contract is relative to `Message.from_envelope`: whatever it vouches for (not None) decodes the full way
too, with the same header values; whatever it refuses goes to the full decode, which reports the problem.
"""

from __future__ import annotations

import json
from collections.abc import Iterable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fastq import _core
from fastq.brokers.base import Delivery
from fastq.exceptions import InvalidTaskError
from fastq.protocol import build_task_message, parse_delivery, parse_task_headers
from tests.unit.test_core_protocol import MALFORMED_ENVELOPES

FIELDS = _core.TASK_HEAD_FIELDS


def envelope(priority: int = 0, **options) -> bytes:
    fields = {
        'task_id': 'id-1',
        'name': 'tasks.add',
        'args': (1, 2),
        'kwargs': {'k': 'é'},
        'embed': {},
        'serializer': 'json',
        'compression': None,
        'eta': None,
        'expires': None,
        'reply_to': 'r',
        'origin': 'gen1@host',
    }
    fields.update(options)
    message = build_task_message(**fields)
    return message.to_envelope('', 'celery', priority, 2, None, 'tag-1')


def agrees(data: bytes) -> None:
    """The head, if any, says what the full decode says."""
    head = _core.task_head(data)
    if head is None:
        return
    message = _core.Message.from_envelope(data, None)  # vouched for: must not raise
    assert head.fields == tuple(message.headers.get(name) for name in FIELDS)
    assert head.content_type == message.content_type


ENVELOPES = {
    'plain': envelope(),
    'every header': envelope(
        eta='2030-01-01T00:00:00+00:00',
        expires='2030-01-02T00:00:00+00:00',
        time_limit=30,
        soft_time_limit=20.5,
        retries=3,
        shadow='alias',
        group_id='g',
        group_index=2,
        root_id='root',
        parent_id='parent',
        ignore_result=True,
        headers={'fastq_sent_at': 1.5, 'x-fastq-deliveries': 2, 'redelivered': True, 'custom': [1, {'a': 2}]},
    ),
    'msgpack, compressed': envelope(serializer='msgpack', compression='zlib'),
}


@pytest.mark.parametrize('name', ENVELOPES)
def test_reads_the_headers_the_full_decode_reads(name):
    data = ENVELOPES[name]
    head = _core.task_head(data)
    assert head is not None
    agrees(data)


def test_utf8_body_without_base64():
    doc = {
        'body': '[[], {}, {}]',
        'content-encoding': 'utf-8',
        'content-type': 'application/json',
        'headers': {'id': 'i', 'task': 't', 'timelimit': [1, None]},
        'properties': {},
    }
    head = _core.task_head(json.dumps(doc).encode())
    assert head is not None
    assert head.fields[:2] == ('i', 't') and head.fields[FIELDS.index('timelimit')] == [1, None]


@pytest.mark.parametrize(
    'doc',
    [
        *MALFORMED_ENVELOPES,
        b'{"body": "", "content-encoding": 2, "content-type": "a", "headers": {}, "properties": {}}',
        b'{"body": "", "content-encoding": "utf-8", "content-type": "a", "headers": {}, "properties": {}} x',
        b'{"body": "\\ud800", "content-encoding": "utf-8", "content-type": "a", "headers": {}, "properties": {}}',
        b'\xff{}',
    ],
)
def test_refuses_what_the_full_decode_rejects(doc):
    assert _core.task_head(doc) is None
    with pytest.raises(ValueError):
        _core.Message.from_envelope(doc, None)


def test_leaves_unusual_spellings_to_the_full_decode():
    escaped = ENVELOPES['plain'].replace(b'"task":', b'"t\\u0061sk":', 1)
    assert _core.task_head(escaped) is None
    assert _core.Message.from_envelope(escaped, None).headers['task'] == 'tasks.add'
    deep = ENVELOPES['plain'].replace(b'"headers": {', b'"headers": {"deep": ' + b'[' * 40 + b']' * 40 + b', ', 1)
    assert _core.task_head(deep) is None
    assert _core.Message.from_envelope(deep, None).headers['task'] == 'tasks.add'
    assert _core.task_head(ENVELOPES['plain'].decode()) is None  # a str: only bytes are read


def test_a_repeated_member_counts_as_in_a_dict():
    doc = (
        b'{"body": "", "content-encoding": "utf-8", "content-type": "a", "headers": {"id": "first", "task": "t"},'
        b' "properties": {}, "headers": {"task": "u", "task": "v"}}'
    )
    head = _core.task_head(doc)
    assert head is not None and head.fields[:2] == (None, 'v')
    agrees(doc)


@settings(max_examples=400, deadline=None)
@given(st.data())
def test_mutated_envelopes_never_disagree(data):
    """Whatever bytes a broker hands over: the head is None or agrees with the full decode."""
    agrees(mutated(data, ENVELOPES.values()))


def mutated(data: st.DataObject, envelopes: Iterable[bytes]) -> bytes:
    """One of `envelopes` with one to four bytes set, deleted or inserted (JSON's punctuation mostly)."""
    doc = bytearray(data.draw(st.sampled_from(list(envelopes))))
    for _ in range(data.draw(st.integers(1, 4))):
        at = data.draw(st.integers(0, len(doc) - 1))
        op = data.draw(st.sampled_from(['set', 'delete', 'insert']))
        byte = data.draw(st.sampled_from(b'{}[]",:\\0123456789.eE-+ tnfaulrsNI\x00\xff'))
        if op == 'set':
            doc[at] = byte
        elif op == 'delete':
            del doc[at]
        else:
            doc.insert(at, byte)
    return bytes(doc)


def test_delivery_decodes_its_message_only_when_read():
    data = ENVELOPES['every header']
    head = _core.task_head(data)
    d = Delivery('tag-1', 'celery', None, data, head=head)
    assert d._message is None
    assert d.task_id == 'id-1' and d.task_name == 'tasks.add'
    assert d._message is None
    assert d.message is not None and d.message.headers['custom'] == [1, {'a': 2}]


def test_request_from_the_head_is_the_request_from_the_message():
    data = ENVELOPES['every header']
    d = Delivery('tag-1', 'celery', None, data, head=_core.task_head(data))
    fast = parse_delivery(d)
    full = parse_task_headers(_core.Message.from_envelope(data, None))
    for name in (
        'id task eta expires retries time_limit soft_time_limit ignore_result argsrepr kwargsrepr root_id '
        'parent_id group shadow sent_at'
    ).split():
        assert getattr(fast, name) == getattr(full, name), name
    assert fast.sent_at == 1.5 and fast.time_limit == 30.0 and fast.soft_time_limit == 20.5
    assert fast._headers is None
    assert fast.headers == full.headers  # decoded when read


def test_invalid_headers_are_reported_in_the_full_decodes_words():
    bad = ENVELOPES['plain'].replace(b'"retries": 0', b'"retries": "x"', 1)
    d = Delivery('tag-1', 'celery', None, bad, head=_core.task_head(bad))
    assert d.head is not None
    with pytest.raises(InvalidTaskError, match='"retries" must be an integer'):
        parse_delivery(d)
    v1 = (
        b'{"body": "e30=", "content-encoding": "utf-8", "content-type": "application/json", "headers": {},'
        b' "properties": {"body_encoding": "base64"}}'
    )
    d = Delivery('tag-2', 'celery', None, v1, head=_core.task_head(v1))
    assert d.head is not None
    with pytest.raises(InvalidTaskError, match='protocol v1 is not supported'):
        parse_delivery(d)
