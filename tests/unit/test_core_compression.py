"""fastq._core's compression against the oracle: zlib.compress and bz2.compress, as kombu's codecs call them."""

import bz2
import zlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fastq import _core

GZIP = 'application/x-gzip'
BZ2 = 'application/x-bz2'

DATA = (
    st.binary(max_size=2000)
    | st.text(max_size=500).map(str.encode)
    | st.sampled_from([b'', b'a', b'[[2, 2], {}, {"callbacks": null}]' * 50, bytes(range(256)) * 100])
)


@given(DATA)
def test_gzip_is_zlib_compress(data):
    packed = _core.compress(data, GZIP)
    assert packed == zlib.compress(data)
    assert _core.decompress(packed, GZIP) == data


@given(DATA)
@settings(max_examples=50)
def test_bz2_is_bz2_compress(data):
    packed = _core.compress(data, BZ2)
    assert packed == bz2.compress(data)
    assert _core.decompress(packed, BZ2) == data


def test_large_bodies():
    data = bytes(range(256)) * 4096 + b'tail'
    assert _core.compress(data, GZIP) == zlib.compress(data)
    assert _core.decompress(zlib.compress(data), GZIP) == data
    assert _core.decompress(bz2.compress(data), BZ2) == data


def test_decompress_like_the_stdlib():
    packed = zlib.compress(b'hello')
    assert _core.decompress(packed + b'garbage', GZIP) == zlib.decompress(packed + b'garbage') == b'hello'
    streams = bz2.compress(b'ab') + bz2.compress(b'cd')
    assert _core.decompress(streams, BZ2) == bz2.decompress(streams) == b'abcd'
    assert _core.decompress(streams + b'garbage', BZ2) == bz2.decompress(streams + b'garbage')
    assert _core.decompress(b'', BZ2) == bz2.decompress(b'') == b''


@pytest.mark.parametrize(
    'mime, data',
    [
        (GZIP, b''),
        (GZIP, b'not zlib'),
        (GZIP, zlib.compress(b'hello world')[:-3]),
        (GZIP, zlib.compress(b'hello world')[:5]),
        (BZ2, b'garbage'),
        (BZ2, bz2.compress(b'hello')[:-3]),
        (BZ2, bz2.compress(b'ab') + bz2.compress(b'cd')[:-3]),
    ],
)
def test_corrupt_data_is_a_value_error(mime, data):
    with pytest.raises(Exception):  # noqa: B017 - the stdlib raises zlib.error/OSError/ValueError here
        (zlib.decompress if mime == GZIP else bz2.decompress)(data)
    with pytest.raises(ValueError):
        _core.decompress(data, mime)


@pytest.mark.parametrize('mime', ['zlib', 'gzip', 'application/x-brotli', 'application/zstd', ''])
def test_unknown_mime(mime):
    with pytest.raises(ValueError, match='unknown compression'):
        _core.compress(b'x', mime)
    with pytest.raises(ValueError, match='unknown compression'):
        _core.decompress(b'x', mime)
