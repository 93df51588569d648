"""Time helpers: aware datetimes in the app's zone, ISO-8601 on the wire, rate strings."""

from __future__ import annotations

import re
import time as _time
from datetime import UTC, datetime, timedelta, tzinfo
from zoneinfo import ZoneInfo

__all__ = ['from_iso', 'get_timezone', 'maybe_make_aware', 'now_in', 'parse_rate', 'to_timestamp']

_RATE = re.compile(r'^\s*(\d+(?:\.\d*)?)\s*(?:/\s*([smh]))?\s*$')
_RATE_UNITS = {'s': 1.0, 'm': 60.0, 'h': 3600.0}


def parse_rate(rate: str | float | None) -> float:
    """Tasks per second for Celery's rate strings: `'10/s'`, `'100/m'`, `'1000/h'`, or a bare number (per second).

    0 or None means unlimited (returned as 0.0).
    """
    if rate is None:
        return 0.0
    if isinstance(rate, int | float) and not isinstance(rate, bool):
        if rate < 0:
            raise ValueError(f'rate limit must not be negative: {rate!r}')
        return float(rate)
    if not isinstance(rate, str):
        raise ValueError(f'rate limit must be a string like "10/m", got {rate!r}')
    match = _RATE.match(rate)
    if not match:
        raise ValueError(f'bad rate limit {rate!r}: expected a number with an optional /s, /m or /h')
    return float(match.group(1)) / _RATE_UNITS[match.group(2) or 's']


def get_timezone(name: str | None, enable_utc: bool = True) -> tzinfo:
    """The app's time zone: `timezone` if set, else UTC (or the local zone when `enable_utc` is False)."""
    if name:
        return ZoneInfo(name)
    if enable_utc:
        return UTC
    local = datetime.now().astimezone().tzinfo
    return local or UTC


def now_in(tz: tzinfo) -> datetime:
    return datetime.now(tz)


def maybe_make_aware(dt: datetime, tz: tzinfo | None = None) -> datetime:
    """Attach `tz` (default UTC) to a naive datetime; aware datetimes are returned unchanged."""
    if dt.tzinfo is None or dt.tzinfo.utcoffset(dt) is None:
        return dt.replace(tzinfo=tz or UTC)
    return dt


def from_iso(value: str, tz: tzinfo | None = None) -> datetime:
    """Parse an ISO-8601 timestamp from a message; a naive one is read in `tz` (Celery's behaviour)."""
    return maybe_make_aware(datetime.fromisoformat(value), tz)


def to_timestamp(value: str | datetime | None, tz: tzinfo | None = None) -> float | None:
    """Unix time of an ISO string or datetime (None stays None)."""
    if value is None:
        return None
    dt = from_iso(value, tz) if isinstance(value, str) else maybe_make_aware(value, tz)
    return dt.timestamp()


def seconds(value: float | timedelta | None) -> float | None:
    if value is None:
        return None
    if isinstance(value, timedelta):
        return value.total_seconds()
    return float(value)


def monotonic() -> float:
    return _time.monotonic()
