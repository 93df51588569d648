"""`_core.resp_pack`: Redis commands in RESP, checked against hiredis's own packer."""

from __future__ import annotations

import hiredis
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fastq import _core

_values = st.binary(max_size=300) | st.text(max_size=50) | st.integers() | st.floats(allow_nan=False)


def _hiredis(commands: list[tuple[object, ...]]) -> bytes:
    return b''.join(
        hiredis.pack_command(tuple(v if isinstance(v, bytes | str) else str(v) for v in c)) for c in commands
    )


@settings(deadline=None)  # the first examples pay for page faults of fresh buffers
@given(st.lists(st.tuples(st.sampled_from(['LPUSH', 'SET'])) .flatmap(
    lambda head: st.lists(_values, min_size=1, max_size=20).map(lambda rest: (*head, *rest))), max_size=20),
    st.integers(1, 4096), st.integers(1, 512))  # fmt: skip
def test_same_bytes_as_hiredis_whatever_the_buffer_sizes(
    commands: list[tuple[object, ...]], buffer_size: int, pass_through: int
) -> None:
    buffers = _core.resp_pack(commands, buffer_size, pass_through)
    assert b''.join(buffers) == _hiredis(commands)
    # A buffer ends once it reaches `buffer_size`: it overshoots by at most one value and its framing.
    for buffer in buffers:
        assert len(buffer) < buffer_size + 4096 or len(buffer) >= pass_through


def test_large_values_are_not_copied() -> None:
    big = b'z' * 100
    buffers = _core.resp_pack([('PUBLISH', 'ch', big), ('PING',)], 1 << 16, 64)
    assert [b is big for b in buffers] == [False, True, False]
    assert b''.join(buffers) == _hiredis([('PUBLISH', 'ch', big), ('PING',)])


def test_a_string_that_cannot_be_utf8_is_an_error() -> None:
    with pytest.raises(UnicodeEncodeError):
        _core.resp_pack([('SET', 'k', '\ud800')], 1024, 1024)
