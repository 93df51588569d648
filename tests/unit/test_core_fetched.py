"""`_core.fetched_deliveries`: the Redis fetch script's reply as the deliveries the worker's parent holds.

Its contract is the Python loop it replaced: for each (key index, tag, envelope) triple, a `Delivery` with
the envelope's head, or whatever `decoded` makes of an envelope without one, and the tags in order.
"""

from __future__ import annotations

import json

import pytest

from fastq import _core
from fastq.brokers.base import Delivery
from fastq.brokers.redis.consumer import _counts
from fastq.brokers.redis.layout import DELIVERIES_HEADER
from tests.unit.test_core_task_head import envelope

QUEUES = ['celery', 'other']


def with_headers(**headers) -> bytes:
    doc = json.loads(envelope())
    doc['headers'].update(headers)
    return json.dumps(doc).encode()


def fetched(reply, queues=QUEUES, decoded=None, counts=_counts):
    made = []

    def decode(tag, queue, data):
        made.append((tag, queue, data))
        return ('decoded', tag, queue, data)

    out, tags = _core.fetched_deliveries(reply, queues, 12.5, Delivery, decoded or decode, counts)
    return out, tags, made


def test_deliveries_in_order_with_their_heads():
    first, second = envelope(), with_headers(id='id-2')
    out, tags, decoded = fetched([1, b'tag-1', first, 2, b'tag-2', second])
    assert tags == ['tag-1', 'tag-2'] and all(type(t) is str for t in tags)
    assert [(d.tag, d.queue, d.raw, d.received) for d in out] == [
        ('tag-1', 'celery', first, 12.5),
        ('tag-2', 'other', second, 12.5),
    ]
    assert [d.task_id for d in out] == ['id-1', 'id-2']
    assert all(type(d) is Delivery and d.head is not None and d._message is None for d in out)
    assert [(d.redelivered, d.deliveries) for d in out] == [(False, 1), (False, 1)]
    assert out[0].message.headers['task'] == 'tasks.add'  # decoded on first read, from the envelope kept
    assert decoded == []


def test_messages_handed_out_before_count_as_the_python_helper_counts():
    seen = []

    def counts(earlier, redelivered):
        seen.append((earlier, redelivered))
        return _counts(earlier, redelivered)

    reply = [
        *(1, b't1', with_headers(**{DELIVERIES_HEADER: 2})),
        *(1, b't2', with_headers(redelivered=True)),
        *(1, b't3', with_headers(**{DELIVERIES_HEADER: 0}, redelivered=False)),
    ]
    out, _, _ = fetched(reply, counts=counts)
    assert [(d.redelivered, d.deliveries) for d in out] == [(True, 3), (True, 1), (False, 1)]
    assert seen == [(2, None), (None, True), (0, False)]


def test_envelopes_without_a_head_go_to_decoded():
    out, tags, decoded = fetched([1, b'bad', b'not json', 2, 'str-tag', envelope()])
    assert out[0] == ('decoded', 'bad', 'celery', b'not json')
    assert decoded == [('bad', 'celery', b'not json')]
    assert tags == ['bad', 'str-tag'] and out[1].tag == 'str-tag'


def test_what_a_reply_may_hold_besides_bytes_and_ints():
    data = envelope()
    out, tags, _ = fetched([b'2', 77, bytearray(data)])
    assert tags == ['77'] and out[0].queue == 'other' and out[0].raw == data and type(out[0].raw) is bytes


def test_an_empty_reply():
    assert fetched([])[:2] == ([], [])


@pytest.mark.parametrize(
    'reply, words',
    [
        ([1, b'tag'], 'triples'),
        ([0, b'tag', b'{}'], 'queue key 0 of 2'),
        ([3, b'tag', b'{}'], 'queue key 3 of 2'),
    ],
)
def test_replies_it_cannot_read(reply, words):
    with pytest.raises(ValueError, match=words):
        fetched(reply)


def test_a_tag_that_is_not_utf8_raises_as_decode_does():
    with pytest.raises(UnicodeDecodeError):
        fetched([1, b'\xff', envelope()])


def test_moved_deliveries_read_their_tags_from_the_envelopes():
    """`moved_deliveries`: the replies of LMOVEs into a hold (fastq.brokers.redis.holding). Each envelope's
    tag is read as the fetch script reads it, or asked of `tag_of` when it is not plainly there; nil replies
    (the queue ran out) and errors are skipped."""
    plain = envelope()
    doc = json.loads(plain)
    doc['properties']['delivery_tag'] = 'odd"tag'
    odd = json.dumps(doc).encode()
    asked = []

    def tag_of(data):
        asked.append(data)
        return 'from-python'

    made = []
    out, tags = _core.moved_deliveries(
        [plain, None, odd, b'not json', ValueError('x')],
        'celery',
        12.5,
        Delivery,
        lambda tag, queue, data: made.append((tag, queue, data)) or ('decoded', tag),
        _counts,
        tag_of,
    )
    assert tags == [json.loads(plain)['properties']['delivery_tag'], 'from-python', 'from-python']
    assert asked == [odd, b'not json']
    assert [d.tag for d in out[:2]] == tags[:2] and all(d.queue == 'celery' for d in out[:2])
    assert out[0].head is not None and out[0].received == 12.5
    assert out[2] == ('decoded', 'from-python') and made == [('from-python', 'celery', b'not json')]
