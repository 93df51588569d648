"""Time helpers: aware datetimes in the app's zone, ISO-8601 on the wire, rate strings."""

from __future__ import annotations

import contextlib
import os
import time as _time
from datetime import UTC, datetime, timedelta, tzinfo
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

__all__ = ['from_iso', 'get_timezone', 'local_timezone', 'maybe_make_aware', 'now_in', 'parse_rate', 'to_timestamp']

_RATE_UNITS = {'s': 1.0, 'm': 60.0, 'h': 3600.0}


def parse_rate(rate: str | float | None) -> float:
    """Tasks per second for Celery's rate strings: `'10/s'`, `'100/m'`, `'1000/h'`, or a bare number (per second).

    0, '' or None means unlimited (returned as 0.0). The number is read as Celery's `rate` reads it, with
    `float` (' 5 ', '1e3' and '5/' are rates there too), and a bad one fails with float's own words, which
    Celery's `rate_limit` control reply quotes; a negative rate is refused (Celery takes it, and the task
    then never runs).
    """
    if rate is None:
        return 0.0
    if isinstance(rate, int | float) and not isinstance(rate, bool):
        if rate < 0:
            raise ValueError(f'rate limit must not be negative: {rate!r}')
        return float(rate)
    if not isinstance(rate, str):
        raise ValueError(f'rate limit must be a string like "10/m", got {rate!r}')
    if not rate:
        return 0.0
    number, _, unit = rate.partition('/')
    per = _RATE_UNITS.get(unit.strip() or 's')
    if per is None:
        raise ValueError(f'bad rate limit {rate!r}: expected a number with an optional /s, /m or /h')
    value = float(number)
    if not value >= 0:  # (negative, or nan)
        raise ValueError(f'rate limit must not be negative: {rate!r}')
    return value / per


def get_timezone(name: str | tzinfo | None, enable_utc: bool = True) -> tzinfo:
    """The app's time zone: `timezone` if set (a zone's name, or a tzinfo as Celery takes too), else UTC (or
    the local zone when `enable_utc` is False)."""
    if isinstance(name, tzinfo):
        return name
    if name:
        return ZoneInfo(name)
    if enable_utc:
        return UTC
    return local_timezone()


def local_timezone() -> tzinfo:
    """The machine's zone with its DST rules (`TZ`, else /etc/localtime), as Celery's LocalTimezone follows them.

    Not `datetime.now().astimezone().tzinfo`: that is today's fixed offset, and a crontab read in it would run an
    hour off for half of the year. A zone tzdata names is a ZoneInfo, so repeated and skipped wall times have
    their two instants (`fold`); a `TZ` that only the C library understands (a POSIX rule) falls back to the
    offsets the `time` module gives.
    """
    name = os.environ.get('TZ', '').lstrip(':')
    candidates = [name] if name else []
    if not name:
        real = os.path.realpath('/etc/localtime')
        if '/zoneinfo/' in real:
            candidates.append(real.split('/zoneinfo/', 1)[1])
    for key in candidates:
        with contextlib.suppress(ZoneInfoNotFoundError, ValueError, OSError):
            return ZoneInfo(key)
    if not name:
        with contextlib.suppress(OSError, ValueError), open('/etc/localtime', 'rb') as f:
            return ZoneInfo.from_file(f, key='localtime')
    return _SystemLocalTime()


class _SystemLocalTime(tzinfo):
    """Local time as the C library computes it (Celery's LocalTimezone): for a `TZ` zoneinfo cannot read."""

    def utcoffset(self, dt: datetime | None) -> timedelta:
        return timedelta(seconds=-_time.altzone) if self._isdst(dt) else timedelta(seconds=-_time.timezone)

    def dst(self, dt: datetime | None) -> timedelta:
        return self.utcoffset(dt) - timedelta(seconds=-_time.timezone)

    def tzname(self, dt: datetime | None) -> str:
        return _time.tzname[self._isdst(dt)]

    def fromutc(self, dt: datetime) -> datetime:
        local = _time.localtime((dt.replace(tzinfo=None) - datetime(1970, 1, 1)).total_seconds())
        return dt + timedelta(seconds=local.tm_gmtoff)

    @staticmethod
    def _isdst(dt: datetime | None) -> bool:
        if dt is None or not _time.daylight:
            return False
        stamp = _time.mktime((dt.year, dt.month, dt.day, dt.hour, dt.minute, dt.second, dt.weekday(), 0, -1))
        return _time.localtime(stamp).tm_isdst > 0

    def __repr__(self) -> str:
        return f'<local time: {"/".join(_time.tzname)}>'


def now_in(tz: tzinfo) -> datetime:
    return datetime.now(tz)


def maybe_make_aware(dt: datetime, tz: tzinfo | None = None) -> datetime:
    """Attach `tz` (default UTC) to a naive datetime; aware datetimes are returned unchanged."""
    if dt.tzinfo is None or dt.tzinfo.utcoffset(dt) is None:
        return dt.replace(tzinfo=tz or UTC)
    return dt


def from_iso(value: str) -> datetime:
    """Parse a message's ISO-8601 `eta`/`expires`; a naive one is UTC, whatever the app's `timezone`, as
    Celery's worker reads it (`maybe_make_aware(..., naive_as_utc=True)`) and its client measures it."""
    return maybe_make_aware(datetime.fromisoformat(value), UTC)


def to_timestamp(value: str | datetime | None) -> float | None:
    """Unix time of an ISO string or datetime (None stays None; naive is UTC, as in `from_iso`)."""
    if value is None:
        return None
    dt = from_iso(value) if isinstance(value, str) else maybe_make_aware(value, UTC)
    return dt.timestamp()


def seconds(value: float | timedelta | None) -> float | None:
    if value is None:
        return None
    if isinstance(value, timedelta):
        return value.total_seconds()
    return float(value)


def monotonic() -> float:
    return _time.monotonic()
