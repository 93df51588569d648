"""Task messages built by fastq._core against the oracle: real Celery publishing on kombu's memory transport.

The memory transport keeps the message dict that kombu's Redis transport would `json.dumps` into Redis, so
`kombu.utils.json.dumps(captured)` is the exact envelope a Celery producer stores. We build the same call
with `_core.task_message(...)` + `Message.to_envelope(...)`, passing what is environment- or clock-dependent
(origin, argsrepr, eta/expires strings, expiration) from the capture, and compare bytes.
"""

import base64
import copy
import datetime as dt
import decimal
import uuid

import kombu.utils.json as kjson
import msgpack
import pytest
from celery import Celery
from hypothesis import given, settings
from hypothesis import strategies as st
from kombu.transport import memory, virtual

from fastq import _core
from fastq.exceptions import EncodeError

TASK_ID = '3677c0e3-cf7c-444e-8b4a-57e9deb83666'
REPLY_TO = '33b82121-fe21-39e7-a527-26660c04737c'
DELIVERY_TAG = '467af1f2-4864-4df0-acc2-64f303a2ec19'
MIMES = {None: None, 'zlib': 'application/x-gzip', 'bzip2': 'application/x-bz2'}


def kombu_default(o):
    """kombu.utils.json.JSONEncoder.default as a function (see test_core_json.py)."""
    reducer = getattr(o, '__json__', None)
    if reducer is not None:
        return reducer()
    for t, (marker, encoder) in kjson._encoders.items():
        if isinstance(o, t):
            return encoder(o) if marker is None else {'__type__': marker, '__value__': encoder(o)}
    if isinstance(o, bytes):
        try:
            return {'__type__': 'bytes', '__value__': o.decode('utf-8')}
        except UnicodeDecodeError:
            return {'__type__': 'base64', '__value__': base64.b64encode(o).decode('utf-8')}
    raise TypeError(f'Object of type {o.__class__.__name__} is not JSON serializable')


@pytest.fixture(scope='module')
def app():
    return Celery('oracle', broker='memory://', set_as_current=False)


@pytest.fixture
def celery_publish(app, monkeypatch):
    """Calls app.send_task and returns the message dict kombu handed to the transport."""
    stored = []
    put = memory.Channel._put

    def capture(self, queue, message, **kwargs):
        stored.append(copy.deepcopy(message))
        return put(self, queue, message, **kwargs)

    monkeypatch.setattr(memory.Channel, '_put', capture)
    monkeypatch.setattr(virtual.Channel, '_next_delivery_tag', lambda self: DELIVERY_TAG)

    def publish(*args, **kwargs):
        # send_task writes "ignore_result": null unless told (Task.apply_async always passes a bool).
        kwargs.setdefault('ignore_result', False)
        app.send_task(*args, task_id=TASK_ID, reply_to=REPLY_TO, **kwargs)
        return stored.pop()

    return publish


def fastq_envelope(
    captured,
    *,
    name,
    args,
    kwargs,
    serializer='json',
    compression=None,
    priority=0,
    extra_headers=None,
    callbacks=None,
    errbacks=None,
    chain=None,
    chord=None,
    **headers,
):
    h = captured['headers']
    body, content_type, content_encoding = _core.encode_task_body(
        args, kwargs, callbacks, errbacks, chain, chord, serializer, kombu_default
    )
    message = _core.task_message(
        task_id=TASK_ID,
        name=name,
        shadow=headers.get('shadow'),
        eta=h['eta'],
        expires=h['expires'],
        group_id=headers.get('group_id'),
        group_index=headers.get('group_index'),
        retries=headers.get('retries', 0),
        time_limit=headers.get('time_limit'),
        soft_time_limit=headers.get('soft_time_limit'),
        root_id=headers.get('root_id') or TASK_ID,
        parent_id=headers.get('parent_id'),
        argsrepr=h['argsrepr'],
        kwargsrepr=h['kwargsrepr'],
        origin=h['origin'],
        ignore_result=headers.get('ignore_result', False),
        replaced_task_nesting=0,
        stamped_headers=headers.get('stamped_headers'),
        stamps=headers.get('stamps', {}),
        extra_headers=extra_headers,
        reply_to=REPLY_TO,
        body=body,
        content_type=content_type,
        content_encoding=content_encoding,
        compression=MIMES[compression],
    )
    return message.to_envelope(
        exchange='',
        routing_key='celery',
        priority=priority,
        delivery_mode=2,
        expiration=captured['properties'].get('expiration'),
        delivery_tag=DELIVERY_TAG,
    )


def stored_bytes(captured):
    return kjson.dumps(captured).encode()


CASES = {
    'plain': {'args': (2, 2), 'kwargs': {}},
    'kwargs': {'args': [], 'kwargs': {'a': 'é', 'b': [1, {'c': None}], 'n': 2**64 - 1, 'neg': -(2**63)}},
    'user headers and priority': {
        'args': (1,),
        'kwargs': {},
        'headers': {'myhdr': 1, 'retries': 5, 'zz': [1, 'x']},
        'priority': 5,
    },
    'time limits': {'args': (), 'kwargs': {}, 'time_limit': 30, 'soft_time_limit': 20.5},
    'workflow ids': {
        'args': ('x',),
        'kwargs': {},
        'group_id': 'g-1',
        'group_index': 3,
        'shadow': 'alias',
        'parent_id': 'p-1',
        'root_id': 'r-1',
        'retries': 2,
        'ignore_result': True,
    },
    'stamps': {'args': (), 'kwargs': {}, 'stamped_headers': ['mystamp'], 'mystamp': 'x'},
    'kombu types': {
        'args': (
            dt.datetime(2024, 5, 6, 7, 8, 9, 10, tzinfo=dt.UTC),
            decimal.Decimal('1.5'),
            uuid.UUID(int=7),
            b'\xff',
            b'ok',
        ),
        'kwargs': {'d': dt.date(2024, 1, 1)},
    },
}


@pytest.mark.parametrize(
    'case, serializer, compression',
    [
        (case, serializer, compression)
        for case in CASES
        for serializer in ['json', 'msgpack']
        for compression in [None, 'zlib', 'bzip2']
        if not (serializer == 'msgpack' and case == 'kombu types')  # msgpack cannot carry those
    ],
)
def test_envelope_is_byte_identical_to_celery(celery_publish, case, serializer, compression):
    call = dict(CASES[case])
    args, kwargs = call.pop('args'), call.pop('kwargs')
    extra_headers = call.pop('headers', None)
    priority = call.pop('priority', 0)
    stamps = {h: call[h] for h in call.get('stamped_headers', [])}
    for h in stamps:
        call.pop(h)
    captured = celery_publish(
        'tasks.add',
        args,
        kwargs,
        serializer=serializer,
        compression=compression,
        headers=extra_headers,
        priority=priority,
        **stamps,
        **call,
    )
    ours = fastq_envelope(
        captured,
        name='tasks.add',
        args=args,
        kwargs=kwargs,
        serializer=serializer,
        compression=compression,
        priority=priority,
        extra_headers=extra_headers,
        stamps=stamps,
        **call,
    )
    assert ours == stored_bytes(captured)


@pytest.mark.parametrize('when', ['eta', 'countdown', 'expires datetime', 'expires seconds'])
def test_eta_and_expires(celery_publish, when):
    now = dt.datetime.now(dt.UTC)
    options = {
        'eta': {'eta': now + dt.timedelta(seconds=30)},
        'countdown': {'countdown': 10},
        'expires datetime': {'expires': now + dt.timedelta(hours=1)},
        'expires seconds': {'expires': 60, 'countdown': 5},
    }[when]
    captured = celery_publish('tasks.add', (2, 2), {}, **options)
    assert captured['headers']['eta'] or captured['headers']['expires']
    assert fastq_envelope(captured, name='tasks.add', args=(2, 2), kwargs={}) == stored_bytes(captured)


def test_workflow_signatures(app, celery_publish):
    sig = app.signature('tasks.cb', args=(1,), immutable=True)
    err = app.signature('tasks.err', kwargs={'k': 'v'})
    captured = celery_publish('tasks.add', (1, 2), {'k': 'v'}, link=sig, link_error=err, chain=[sig, err], chord=sig)
    ours = fastq_envelope(
        captured,
        name='tasks.add',
        args=(1, 2),
        kwargs={'k': 'v'},
        callbacks=[sig],
        errbacks=[err],
        chain=[sig, err],
        chord=sig,
    )
    assert ours == stored_bytes(captured)


ARGS = st.lists(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.floats() | st.text(max_size=20), max_size=5
)
INTS = st.integers(-(2**63), 2**64 - 1)
KWARGS = st.dictionaries(st.text(max_size=10), INTS | st.text(max_size=10) | st.lists(INTS, max_size=3), max_size=4)


@given(
    args=ARGS,
    kwargs=KWARGS,
    serializer=st.sampled_from(['json', 'msgpack']),
    compression=st.sampled_from([None, 'zlib', 'bzip2']),
)
@settings(max_examples=60, deadline=None)
def test_envelopes_for_generated_calls(app, args, kwargs, serializer, compression):
    stored = []
    put = memory.Channel._put

    def capture(self, queue, message, **kw):
        stored.append(copy.deepcopy(message))
        return put(self, queue, message, **kw)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(memory.Channel, '_put', capture)
        mp.setattr(virtual.Channel, '_next_delivery_tag', lambda self: DELIVERY_TAG)
        app.send_task(
            'tasks.gen',
            args,
            kwargs,
            task_id=TASK_ID,
            reply_to=REPLY_TO,
            serializer=serializer,
            compression=compression,
            ignore_result=False,
        )
    captured = stored.pop()
    ours = fastq_envelope(
        captured, name='tasks.gen', args=args, kwargs=kwargs, serializer=serializer, compression=compression
    )
    assert ours == stored_bytes(captured)


def test_encode_task_body_is_kombu_dumps():
    args, kwargs = [1, 'two', 3.0], {'x': dt.datetime(2020, 1, 1)}
    embed = {'callbacks': None, 'errbacks': [{'task': 'e'}], 'chain': None, 'chord': None}
    body, ct, ce = _core.encode_task_body(args, kwargs, None, [{'task': 'e'}], None, None, 'json', kombu_default)
    assert (body, ct, ce) == (kjson.dumps((args, kwargs, embed)).encode(), 'application/json', 'utf-8')
    assert ct == _core.CONTENT_TYPE_JSON
    args = [1, b'raw', [None, True]]
    body, ct, ce = _core.encode_task_body(args, {}, None, None, None, None, 'msgpack', None)
    assert body == msgpack.packb((args, {}, dict.fromkeys(embed)), use_bin_type=True)
    assert (ct, ce) == (_core.CONTENT_TYPE_MSGPACK, 'binary') == ('application/x-msgpack', 'binary')


def test_encode_task_body_errors():
    with pytest.raises(ValueError, match='serializer'):
        _core.encode_task_body([], {}, None, None, None, None, 'pickle', None)
    with pytest.raises(TypeError, match='not JSON serializable'):
        _core.encode_task_body([object()], {}, None, None, None, None, 'json', None)
    with pytest.raises(TypeError, match='can not serialize'):
        _core.encode_task_body([object()], {}, None, None, None, None, 'msgpack', None)
    with pytest.raises(OverflowError):
        _core.encode_task_body([2**64], {}, None, None, None, None, 'msgpack', None)


@pytest.mark.parametrize('serializer', ['json', 'msgpack'])
def test_decode_task_body_reads_celery_bodies(celery_publish, serializer):
    captured = celery_publish('tasks.add', (1, 'a'), {'k': [1, 2]}, serializer=serializer, compression='zlib')
    message = _core.Message.from_envelope(stored_bytes(captured), kjson.object_hook)
    body = _core.decompress(message.body, message.headers['compression'])
    args, kwargs, embed = _core.decode_task_body(body, message.content_type, kjson.object_hook)
    assert (args, kwargs) == ([1, 'a'], {'k': [1, 2]})
    assert embed == {'callbacks': None, 'errbacks': None, 'chain': None, 'chord': None}


def test_decode_task_body_applies_the_tag_hook():
    when = dt.datetime(2024, 1, 2, 3, 4, 5, tzinfo=dt.UTC)
    body, ct, _ = _core.encode_task_body([when], {'u': uuid.UUID(int=1)}, None, None, None, None, 'json', kombu_default)
    assert _core.decode_task_body(body, ct, kjson.object_hook)[:2] == ([when], {'u': uuid.UUID(int=1)})


@pytest.mark.parametrize(
    'body, content_type, message',
    [
        (b'{}', 'application/json', 'expected an array'),
        (b'[[], {}]', 'application/json', 'expected 3 items'),
        (b'[{}, {}, null]', 'application/json', r'args \(item 0\) must be an array, not an object'),
        (b'[[], [], null]', 'application/json', r'kwargs \(item 1\) must be an object, not an array'),
        (b'[[], {}, 5]', 'application/json', r'embed \(item 2\) must be an object or null, not a number'),
        (b'[[], {}, {}', 'application/json', 'Expecting'),
        (b'\x93\x90\x80\xa1x', 'application/x-msgpack', 'embed'),
        (b'[[], {}, null]', 'application/x-python-serialize', 'unsupported content type'),
    ],
)
def test_decode_task_body_says_what_is_wrong(body, content_type, message):
    with pytest.raises(ValueError, match=message):
        _core.decode_task_body(body, content_type, None)


def test_decode_task_body_fills_embed():
    _, _, embed = _core.decode_task_body(b'[[1], {"a": 1}, {"chain": [1], "extra": 2}]', 'application/json', None)
    assert embed == {'chain': [1], 'extra': 2, 'callbacks': None, 'errbacks': None, 'chord': None}
    assert _core.decode_task_body(b'[[], {}, null]', 'application/json', None)[2] == dict.fromkeys(
        ['callbacks', 'errbacks', 'chain', 'chord']
    )


@pytest.mark.parametrize('compression', [None, 'zlib'])
def test_from_envelope_reads_what_kombu_stores(celery_publish, compression):
    captured = celery_publish(
        'tasks.add', (2, 2), {}, compression=compression, headers={'when': 'now'}, priority=3, expires=60
    )
    message = _core.Message.from_envelope(stored_bytes(captured), None)
    assert message.headers == captured['headers']
    assert message.properties == captured['properties']
    assert message.body == base64.b64decode(captured['body'])
    assert message.content_type == captured['content-type']
    assert message.content_encoding == captured['content-encoding']
    assert _core.Message.from_envelope(stored_bytes(captured).decode(), None).headers == captured['headers']


def test_to_envelope_overwrites_delivery_properties_in_place():
    message = _core.Message(
        b'body',
        'application/json',
        'utf-8',
        {'h': 1},
        {'priority': 9, 'correlation_id': 'c', 'delivery_tag': 'old', 'x': None},
    )
    envelope = kjson.loads(message.to_envelope('ex', 'rk', 4, 1, '1000', 'new'))
    assert list(envelope) == ['body', 'content-encoding', 'content-type', 'headers', 'properties']
    assert list(envelope['properties'].items()) == [
        ('priority', 4),
        ('correlation_id', 'c'),
        ('delivery_tag', 'new'),
        ('x', None),
        ('delivery_mode', 1),
        ('expiration', '1000'),
        ('delivery_info', {'exchange': 'ex', 'routing_key': 'rk'}),
        ('body_encoding', 'base64'),
    ]
    assert message.properties == {'priority': 9, 'correlation_id': 'c', 'delivery_tag': 'old', 'x': None}


def test_from_envelope_round_trip_and_body_encodings():
    message = _core.Message(b'\x00\xffbin', 'application/x-msgpack', 'binary', {'a': [1]}, {'reply_to': 'r'})
    again = _core.Message.from_envelope(message.to_envelope('', 'q', 0, 2, None, 'tag'), None)
    assert (again.body, again.content_type, again.content_encoding, again.headers) == (
        b'\x00\xffbin',
        'application/x-msgpack',
        'binary',
        {'a': [1]},
    )
    assert again.properties['delivery_info'] == {'exchange': '', 'routing_key': 'q'}
    plain = (
        b'{"body": "[1]", "content-encoding": "utf-8", "content-type": "application/json", "headers": {},'
        b' "properties": {}}'
    )
    assert _core.Message.from_envelope(plain, None).body == b'[1]'


#: Envelopes `Message.from_envelope` must reject (and `task_head` must not vouch for).
MALFORMED_ENVELOPES = [
    b'[]',
    b'not json',
    b'{}',
    b'{"body": 1, "content-encoding": "utf-8", "content-type": "a", "headers": {}, "properties": {}}',
    b'{"body": "", "content-encoding": "utf-8", "content-type": 1, "headers": {}, "properties": {}}',
    b'{"body": "", "content-encoding": "utf-8", "content-type": "a", "headers": [], "properties": {}}',
    b'{"body": "", "content-encoding": "utf-8", "content-type": "a", "headers": {}}',
    (
        b'{"body": "!!", "content-encoding": "utf-8", "content-type": "a", "headers": {},'
        b' "properties": {"body_encoding": "base64"}}'
    ),
    (
        b'{"body": "", "content-encoding": "utf-8", "content-type": "a", "headers": {},'
        b' "properties": {"body_encoding": "rot13"}}'
    ),
]


@pytest.mark.parametrize('doc', MALFORMED_ENVELOPES)
def test_from_envelope_rejects_malformed(doc):
    with pytest.raises(ValueError):
        _core.Message.from_envelope(doc, None)


def test_task_message_shape():
    message = _core.task_message(
        'id-1',
        'tasks.x',
        None,
        None,
        None,
        None,
        None,
        0,
        None,
        None,
        'id-1',
        None,
        '()',
        '{}',
        'me@host',
        False,
        0,
        None,
        {},
        {'compression': 'spoofed', 'extra': 1},
        'reply',
        b'[[], {}, {}]',
        'application/json',
        'utf-8',
        'application/x-gzip',
    )
    assert list(message.headers)[-3:] == ['stamps', 'compression', 'extra']
    assert message.headers['compression'] == 'application/x-gzip'
    assert message.properties == {'correlation_id': 'id-1', 'reply_to': 'reply'}
    assert _core.decompress(message.body, 'application/x-gzip') == b'[[], {}, {}]'
    assert "task='tasks.x'" in repr(message) and "id='id-1'" in repr(message)
    with pytest.raises(EncodeError, match="Unknown compression method 'application/x-nope'"):
        _core.task_message(
            'i',
            't',
            None,
            None,
            None,
            None,
            None,
            0,
            None,
            None,
            'i',
            None,
            '',
            '',
            'o',
            False,
            0,
            None,
            {},
            None,
            '',
            b'',
            'application/json',
            'utf-8',
            'application/x-nope',  # (lzma, the other codecs kombu has, are the serialization module's)
        )


def test_message_attributes_are_typed_and_mutable():
    message = _core.Message(b'', 'application/json', 'utf-8', {}, {})
    message.headers = {'a': 1}
    message.properties['p'] = 2
    assert (message.headers, message.properties) == ({'a': 1}, {'p': 2})
    with pytest.raises(TypeError):
        message.body = 'not bytes'
    with pytest.raises(TypeError):
        message.headers = []
