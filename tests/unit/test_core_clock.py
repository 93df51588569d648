"""`_core.utc_isoformat`: exactly what `datetime.isoformat()` writes for the same aware UTC instant."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fastq import _core

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
FIRST = -62_135_596_800_000_000  # 0001-01-01T00:00:00
LAST = 253_402_300_799_999_999  # 9999-12-31T23:59:59.999999


def reference(micros: int) -> str:
    return (EPOCH + timedelta(microseconds=micros)).isoformat()


@given(st.integers(min_value=FIRST, max_value=LAST))
def test_any_instant_reads_as_datetime_writes_it(micros: int) -> None:
    assert _core.utc_isoformat(micros) == reference(micros)


@pytest.mark.parametrize(
    'micros',
    [0, 1, -1, 999_999, 1_000_000, 951_782_400_000_000, 4_107_542_399_999_999, FIRST, LAST, 86_400 * 10**6 - 1],
)
def test_edges(micros: int) -> None:
    assert _core.utc_isoformat(micros) == reference(micros)


def test_now_is_the_system_clock() -> None:
    before = datetime.now(UTC).replace(microsecond=0)
    now = datetime.fromisoformat(_core.utc_isoformat(None))
    after = datetime.now(UTC)
    assert now.tzinfo == UTC and before <= now <= after


@pytest.mark.parametrize('micros', [FIRST - 1, LAST + 1])
def test_out_of_datetimes_range(micros: int) -> None:
    with pytest.raises(ValueError, match='year is out of range'):
        _core.utc_isoformat(micros)
