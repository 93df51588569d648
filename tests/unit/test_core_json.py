"""fastq._core's JSON codec against the oracle: the stdlib json module driven the way kombu drives it."""

import base64
import datetime as dt
import decimal
import enum
import json
import math
import struct
import subprocess
import sys
import uuid

import kombu.utils.json as kjson
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from fastq import _core


def kombu_default(o):
    """What kombu.utils.json.JSONEncoder.default does, as a plain function."""
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


def kombu_dumps(obj):
    return kjson.dumps(obj).encode()


def dumps(obj):
    return _core.json_dumps(obj, kombu_default)


def same(a, b):
    """Equality that also tells 1 from 1.0 and True, 0.0 from -0.0, and accepts nan == nan."""
    return type(a) is type(b) and repr(a) == repr(b)


SPECIAL_CHARS = st.sampled_from(
    [
        '"',
        '\\',
        '\n',
        '\r',
        '\t',
        '\b',
        '\f',
        '\x00',
        '\x1f',
        '\x7f',
        '\x80',
        '\u2028',
        '\ud800',
        '\udbff',
        '\udc00',
        '\udfff',
        '\U0001f600',
        '\ufeff',
        '/',
    ]
)
CHARS = st.characters(codec=None) | st.characters(categories=['Cs']) | SPECIAL_CHARS
TEXT = st.text(CHARS, max_size=20)
INTS = (
    st.integers()
    | st.integers(min_value=-(2**200), max_value=2**200)
    | st.sampled_from([0, -1, 2**63 - 1, 2**63, -(2**63), -(2**63) - 1, 2**64 - 1, 2**64])
)
FLOATS = st.floats(allow_nan=True, allow_infinity=True)
JSON_SCALARS = st.none() | st.booleans() | INTS | FLOATS | TEXT
KEYS = TEXT | INTS | FLOATS | st.booleans() | st.none()
KOMBU_TYPES = (
    st.datetimes() | st.dates() | st.times() | st.decimals(allow_nan=False) | st.uuids() | st.binary(max_size=10)
)


def nested(leaves, keys):
    return st.recursive(
        leaves,
        lambda children: (
            st.lists(children, max_size=4) | st.tuples(children, children) | st.dictionaries(keys, children, max_size=4)
        ),
        max_leaves=20,
    )


@given(nested(JSON_SCALARS | KOMBU_TYPES, KEYS))
def test_dumps_matches_kombu(obj):
    assert dumps(obj) == kombu_dumps(obj)


@given(st.floats() | st.integers(0, 2**64 - 1).map(lambda bits: struct.unpack('<d', struct.pack('<Q', bits))[0]))
@settings(max_examples=2000)
def test_float_repr_over_the_whole_range(value):
    assert _core.json_dumps(value, None) == json.dumps(value).encode()
    assert _core.json_dumps({value: 1}, None) == json.dumps({value: 1}).encode()


@given(st.integers(1, 2**53 - 1), st.integers(-30, 25))
@settings(max_examples=3000)
def test_float_repr_where_halfway_ties_can_happen(mantissa, exponent):
    """Floats m * 2**q with small q can sit exactly between two shortest candidates; CPython picks the even one."""
    value = math.ldexp(mantissa, exponent)
    assert _core.json_dumps(value, None) == repr(value).encode()


def test_float_repr_at_the_edge_of_the_halfway_window():
    """Below `2 * 10**17` for `m * 5**(-q-1)` a tie is possible and the exact pass runs; above it is skipped.
    Every odd mantissa next to that bound, for every exponent where it lies below 2**53, and times of day
    (which are far above it) must still print as CPython prints them."""
    values = []
    for q in range(-25, 0):
        bound = 2 * 10**17 // 5 ** (-q - 1)
        for m in range(max(1, bound - 400) | 1, min(bound + 400, 2**53), 2):
            values.append(math.ldexp(m, q))
    values += [1796419702.360271 + i * 1e-6 for i in range(2000)]
    assert len(values) > 9000
    assert _core.json_dumps(values, None) == json.dumps(values).encode()


@pytest.mark.parametrize(
    'value',
    [
        0.0,
        -0.0,
        1.0,
        0.1,
        1e16,
        1e-5,
        1e15,
        0.0001,
        1.2345678901234568e17,
        5e-324,
        2.2250738585072014e-308,
        1.7976931348623157e308,
        123456789012345.67,
        562949953421312.25,
        562949953421312.75,
        2.0**53 + 2,
        2.0**60,
        2.0**70,
        1e22,
        1e23,
        1e21,
        float('nan'),
        float('inf'),
        float('-inf'),
    ],
)
def test_float_edge_cases(value):
    assert _core.json_dumps([value, -value], None) == json.dumps([value, -value]).encode()


class Color(enum.IntEnum):
    RED = 1


class Weird(int):
    def __repr__(self):
        return 'nope'

    __str__ = __repr__


class Ratio(float):
    def __repr__(self):
        return 'nope'


class Text(str):
    def __str__(self):
        return 'nope'


class ItemsDict(dict):
    def items(self):
        return [('z', 1)]


class IterList(list):
    def __iter__(self):
        return iter([9])


class IterTuple(tuple):
    def __iter__(self):
        return iter([8])


class Reduces:
    def __json__(self):
        return {'reduced': [1, 2]}


@pytest.mark.parametrize(
    'obj',
    [
        [Color.RED, Weird(5), Weird(2**70), Ratio(1.5), Text('ab')],
        {Color.RED: 1, Weird(3): 2, Ratio(2.5): 3, Text('k'): 4},
        ItemsDict(a=1),
        ItemsDict(),
        [IterList([1, 2]), IterTuple((1, 2)), IterList()],
        {True: 1, False: 2, None: 3, 1.5: 4, float('nan'): 5, float('inf'): 6, -(2**100): 7},
        [
            Reduces(),
            dt.datetime(2024, 1, 2, 3, 4, 5, 6, tzinfo=dt.UTC),
            decimal.Decimal('1.10'),
            uuid.UUID(int=5),
            b'\xff\x00',
            b'text',
            dt.date(2024, 1, 2),
            dt.time(1, 2),
        ],
        '\ud800\udc00 \U0001f600 \x7f',
        [[[[]]], {}, ()],
    ],
)
def test_dumps_edge_cases(obj):
    assert dumps(obj) == kombu_dumps(obj)


def test_default_none_and_errors_match_stdlib():
    with pytest.raises(TypeError, match='^Object of type object is not JSON serializable$'):
        _core.json_dumps([object()], None)
    with pytest.raises(TypeError, match='^Object of type set is not JSON serializable$'):
        dumps({1})
    with pytest.raises(TypeError, match='^keys must be str, int, float, bool or None, not tuple$'):
        dumps({(1,): 2})
    circular = []
    circular.append(circular)
    with pytest.raises(ValueError, match='^Circular reference detected$'):
        dumps(circular)
    loop = {}
    loop['a'] = [loop]
    with pytest.raises(ValueError, match='^Circular reference detected$'):
        dumps(loop)
    with pytest.raises(ValueError, match='^Circular reference detected$'):
        _core.json_dumps(object(), lambda o: [o])


def test_shared_but_not_circular_is_fine():
    shared = [1]
    assert dumps([shared, shared, {'a': shared}]) == b'[[1], [1], {"a": [1]}]'


def test_default_errors_propagate():
    def default(o):
        raise KeyError('boom')

    with pytest.raises(KeyError):
        _core.json_dumps([object()], default)


def test_default_may_mutate_the_container():
    data = [object(), 2]

    def default(o):
        data.append(3)
        return 1

    assert _core.json_dumps(data, default) == b'[1, 2, 3]'


def deep(n, leaf=1):
    for _ in range(n):
        leaf = [leaf]
    return leaf


def test_recursion_limit():
    assert dumps(deep(50)) == kombu_dumps(deep(50))
    with pytest.raises(RecursionError):
        dumps(deep(100_000))
    with pytest.raises(RecursionError):
        _core.json_dumps(object(), lambda o: [object()])
    with pytest.raises(RecursionError):
        _core.json_loads(b'[' * 100_000, None)
    with pytest.raises(RecursionError):
        _core.json_loads('{"a": ' * 100_000, None)


def test_big_ints():
    for n in [2**64, -(2**64), 10**100, -(10**4000)]:
        assert dumps(n) == kombu_dumps(n)
        assert _core.json_loads(str(n), None) == n
    with pytest.raises(ValueError, match='Exceeds the limit'):
        _core.json_loads('1' * 5000, None)
    with pytest.raises(ValueError, match='Exceeds the limit'):
        dumps(10**5000)


ROUND_TRIP_KEYS = st.text(CHARS, max_size=10)
ROUND_TRIP = st.recursive(
    st.none() | st.booleans() | INTS | st.floats(allow_nan=False) | TEXT,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(ROUND_TRIP_KEYS, children, max_size=4),
    max_leaves=20,
)


@given(ROUND_TRIP)
def test_round_trip(obj):
    assert same(_core.json_loads(dumps(obj), None), obj)


@given(nested(JSON_SCALARS | KOMBU_TYPES, KEYS))
def test_loads_matches_kombu(obj):
    text = kombu_dumps(obj)
    assert same(_core.json_loads(text, kjson.object_hook), kjson.loads(text))
    assert same(_core.json_loads(text.decode(), None), json.loads(text))


@given(nested(JSON_SCALARS, TEXT))
def test_loads_non_ascii_output_of_stdlib(obj):
    text = json.dumps(obj, ensure_ascii=False, indent=1)
    assert same(_core.json_loads(text, None), json.loads(text))
    try:
        raw = text.encode()
    except UnicodeEncodeError:
        return  # lone surrogates cannot be sent as UTF-8 bytes
    assert same(_core.json_loads(raw, None), json.loads(text))


def kombu_loads_plain(raw):
    return kjson.loads(raw, object_hook=None)


def outcome(fn, arg):
    try:
        return 'ok', repr(fn(arg))
    except RecursionError:
        return 'recursion', None
    except ValueError as e:
        return 'ValueError', str(e)


EDGE_DOCUMENTS = [
    '',
    ' ',
    '  1  ',
    '[1,]',
    '{"a":1,}',
    '[01]',
    '01',
    '1.',
    '1.e5',
    '1e',
    '1e+',
    '1E-2',
    '-',
    '-a',
    '-0',
    '-0.0',
    '"abc',
    r'"a\x"',
    r'"\u12"',
    r'"\u12',
    r'"\u123',
    r'"\u1234',
    r'"\ud834\u12"',
    r'"\ud834\uXYZW"',
    r'"\ud834\udd1e"',
    r'"\ud834\udd1e',
    r'"\ud834"',
    r'"\udd1e\ud834"',
    r'"\ud834\ud834\udd1e"',
    r'"\ud834\u0041"',
    '{"a" 1}',
    '{1:1}',
    '[1 2]',
    'nul',
    'null',
    'NaN',
    'NaN1',
    '-NaN',
    'Infinity',
    '-Infinity',
    '-Infinit',
    'infinity',
    '"\x01"',
    '"\x1f"',
    '"\x7f"',
    '\ufeff1',
    '1 x',
    '"\\',
    '[',
    '{',
    '{"a":1',
    '{"a":',
    'tru',
    'true',
    'false',
    '[]',
    '{}',
    '[[]]',
    '{"a": {"b": [1, 2.5, "x"]}}',
    '{"a": 1, "a": 2, "b": 3}',
    '\t\n\r [1]\n',
    '1\n2',
    '[\n1,\n2\n,]',
    '"é"',
    '["é", x]',
    '\u00a01',
    '1e400',
    '-1e400',
    '1e-400',
    '123456789012345678901234567890',
    '-123456789012345678901234567890',
    '9223372036854775807',
    '9223372036854775808',
    '-9223372036854775809',
    '0.1',
    '1.7976931348623157e308',
    '4.9e-324',
    '2.4703282292062328e-324',
    '"\\/\\b\\f\\n\\r\\t\\"\\\\"',
    '{"__type__": "x", "__value__": 1}',
    '{"__type__": 1}',
    '{"__type__": 1, "__value__": 2, "c": 3}',
    '{"__type__": 1, "__type__": 2, "__value__": 3}',
    '"\ud800"',
    '["\udfff", "a\ud800b"]',
    '１',
    '[1]]',
    '"a"b',
]


@pytest.mark.parametrize('doc', EDGE_DOCUMENTS)
def test_loads_edge_documents(doc):
    assert outcome(lambda s: _core.json_loads(s, None), doc) == outcome(json.loads, doc)
    try:
        raw = doc.encode()
    except UnicodeEncodeError:
        return
    assert outcome(lambda s: _core.json_loads(s, None), raw) == outcome(kombu_loads_plain, raw)


@given(st.text(st.sampled_from('[]{}",:-0123456789.eE+ \n\\untrlfasNIy\ud800é') | CHARS, max_size=30))
@settings(max_examples=500)
def test_loads_fuzz_against_stdlib(doc):
    assert outcome(lambda s: _core.json_loads(s, None), doc) == outcome(json.loads, doc)


@given(st.binary(max_size=30))
def test_loads_bytes_fuzz_against_kombu(raw):
    assert outcome(lambda s: _core.json_loads(s, None), raw) == outcome(kombu_loads_plain, raw)


def test_invalid_utf8_is_a_unicode_decode_error():
    with pytest.raises(UnicodeDecodeError):
        _core.json_loads(b'"\xff"', None)
    with pytest.raises(UnicodeDecodeError):
        _core.json_loads(b'"\xed\xa0\x80"', None)  # a surrogate encoded in UTF-8 is not UTF-8


def test_tag_hook_only_sees_tags():
    seen = []

    def hook(d):
        seen.append(dict(d))
        return ('tag', d['__type__'], d['__value__'])

    doc = (
        '[{"__type__": "a", "__value__": {"__type__": "b", "__value__": 1}}, {"__value__": 2, "__type__": "c"},'
        ' {"__type__": "d"}, {"x": 1}, {"__type__": 1, "__value__": 2, "y": 3}]'
    )
    assert _core.json_loads(doc, hook) == [
        ('tag', 'a', ('tag', 'b', 1)),
        ('tag', 'c', 2),
        {'__type__': 'd'},
        {'x': 1},
        {'__type__': 1, '__value__': 2, 'y': 3},
    ]
    assert [d['__type__'] for d in seen] == ['b', 'a', 'c']


def test_tag_hook_errors_propagate():
    def hook(d):
        raise LookupError(d['__type__'])

    with pytest.raises(LookupError):
        _core.json_loads('{"__type__": "x", "__value__": 1}', hook)


def test_kombu_tags_round_trip():
    value = [
        dt.datetime(2024, 1, 2, 3, 4, 5, tzinfo=dt.UTC),
        decimal.Decimal('3.14'),
        uuid.uuid4(),
        b'\x00\xff',
        b'abc',
        dt.date(2020, 2, 29),
        dt.time(23, 59),
    ]
    assert _core.json_loads(dumps(value), kjson.object_hook) == value


def test_duplicate_keys_keep_first_position():
    assert list(_core.json_loads('{"a": 1, "b": 2, "a": 3}', None).items()) == [('a', 3), ('b', 2)]


def test_nan_and_signed_zero():
    got = _core.json_loads('[NaN, -0.0, -0, Infinity, -Infinity]', None)
    assert math.isnan(got[0])
    assert same(got[1:], [-0.0, 0, math.inf, -math.inf])


def test_input_types():
    assert _core.json_loads(b'[1]', None) == _core.json_loads('[1]', None) == [1]
    with pytest.raises(TypeError):
        _core.json_loads(bytearray(b'[1]'), None)
    with pytest.raises(TypeError):
        _core.json_loads(1, None)


@given(TEXT)
def test_strings_with_surrogates(text):
    assume(text)
    assert _core.json_dumps(text, None) == json.dumps(text).encode()
    assert _core.json_loads(_core.json_dumps(text, None), None) == text
    assert _core.json_loads(json.dumps(text, ensure_ascii=False), None) == text


@pytest.mark.skipif(_core.build_profile == 'debug', reason='unoptimised frames are much larger')
def test_deepest_documents_fit_a_thread_stack():
    """With the recursion limit raised, the codecs stop at their own cap well before a 4 MiB stack runs out."""
    script = """if True:
        import sys, threading
        from fastq import _core
        sys.setrecursionlimit(1_000_000)
        threading.stack_size(4 * 1024 * 1024)
        def run():
            for n in (9_000, 20_000):
                x = 1
                for i in range(n):
                    x = [x] if i % 2 else {'k': x}
                for fn in (lambda: _core.json_dumps(x, None), lambda: _core.json_loads('[' * n + ']' * n, None),
                           lambda: _core.json_loads('{"a": ' * n + '1' + '}' * n, None)):
                    try:
                        fn()
                    except RecursionError:
                        assert n > 10_000
            print('survived')
        t = threading.Thread(target=run)
        t.start()
        t.join()
    """
    result = subprocess.run([sys.executable, '-c', script], capture_output=True, text=True, timeout=60, check=False)
    assert (result.returncode, result.stdout.strip()) == (0, 'survived'), result.stderr


def test_keys_are_shared_across_documents_and_threads():
    """Short keys come from one process-wide cache: each message's keys are the str objects of the last
    message's (made and hashed once); long keys are new each time. Decoding from many threads at once still
    gives every document its own, correct keys."""
    import threading

    first = _core.json_loads(b'{"root_id": 1, "' + b'k' * 40 + b'": 2}', None)
    second = _core.json_loads(b'{"root_id": 3, "' + b'k' * 40 + b'": 4}', None)
    (a_short, a_long), (b_short, b_long) = list(first), list(second)
    assert a_short is b_short
    assert a_long == b_long and a_long is not b_long

    failures = []

    def decode(n: int) -> None:
        for i in range(2000):
            keys = [f'key{(n * 7 + i + j) % 300}' for j in range(5)]
            doc = _core.json_loads(json.dumps(dict.fromkeys(keys, i)), None)
            if list(doc) != list(dict.fromkeys(keys)):
                failures.append((keys, list(doc)))

    threads = [threading.Thread(target=decode, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert failures == []
