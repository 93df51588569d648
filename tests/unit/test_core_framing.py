"""fastq._core's pipe framing through its Python surface."""

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fastq import _core

FRAMES = st.lists(st.tuples(st.integers(0, 2**64 - 1), st.integers(0, 255), st.binary(max_size=300)), max_size=10)


def test_constants():
    assert _core.FRAME_HEADER_SIZE == 13
    assert _core.MAX_FRAME_PAYLOAD == 2**30


def test_layout():
    assert _core.encode_frame(7, 2, b'hi') == struct.pack('<IQB', 2, 7, 2) + b'hi'


@given(FRAMES, st.integers(1, 50))
def test_round_trip_in_any_chunking(frames, chunk):
    data = _core.encode_frames(frames)
    assert data == b''.join(_core.encode_frame(*f) for f in frames)
    decoder = _core.FrameDecoder()
    got = []
    for i in range(0, len(data), chunk):
        got.extend(decoder.feed(data[i : i + chunk]))
    assert got == frames
    assert decoder.buffered == 0


def test_partial_frame_is_buffered():
    decoder = _core.FrameDecoder()
    data = _core.encode_frame(1, 1, b'abcdef')
    assert decoder.feed(data[:10]) == []
    assert decoder.buffered == 10
    assert decoder.feed(data[10:]) == [(1, 1, b'abcdef')]


def test_errors():
    with pytest.raises(OverflowError):
        _core.encode_frame(2**64, 0, b'')
    with pytest.raises(OverflowError):
        _core.encode_frame(0, 256, b'')
    with pytest.raises(ValueError, match='exceeds'):
        _core.FrameDecoder().feed(struct.pack('<IQB', 2**30 + 1, 0, 0))
