"""Periodic schedules with Celery's names: `schedule` (every N seconds) and `crontab`.

`beat_schedule` entries written for Celery load unchanged. `is_due(last_run_at)` answers Celery's
`(is_due, seconds_until_next_check)`; the beat service that drives them arrives with the scheduler work.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

__all__ = ['crontab', 'crontab_parser', 'schedstate', 'schedule']


@dataclass(frozen=True)
class schedstate:
    is_due: bool
    next: float

    def __iter__(self) -> Any:
        return iter((self.is_due, self.next))


def _now(tz: Any = None) -> datetime:
    return datetime.now(tz or UTC)


class schedule:
    """Run every `run_every` (seconds or a timedelta)."""

    def __init__(self, run_every: float | timedelta, relative: bool = False, nowfun: Any = None) -> None:
        self.run_every = run_every if isinstance(run_every, timedelta) else timedelta(seconds=run_every)
        self.relative = relative
        self.nowfun = nowfun or _now

    def remaining_estimate(self, last_run_at: datetime) -> timedelta:
        return last_run_at + self.run_every - self.nowfun()

    def is_due(self, last_run_at: datetime) -> schedstate:
        remaining = self.remaining_estimate(last_run_at).total_seconds()
        if remaining <= 0:
            return schedstate(True, self.run_every.total_seconds())
        return schedstate(False, remaining)

    @property
    def seconds(self) -> float:
        return self.run_every.total_seconds()

    def __eq__(self, other: object) -> bool:
        return isinstance(other, schedule) and other.run_every == self.run_every

    def __hash__(self) -> int:
        return hash(self.run_every)

    def __repr__(self) -> str:
        return f'<freq: {self.run_every}>'


class crontab_parser:
    """Parse one crontab field: `*`, `*/15`, `1-5`, `1,3,5`, `mon-fri`, `jan`, combinations."""

    _DAYS = {d: i for i, d in enumerate(['sun', 'mon', 'tue', 'wed', 'thu', 'fri', 'sat'])}
    _MONTHS = {
        m: i + 1
        for i, m in enumerate(['jan', 'feb', 'mar', 'apr', 'may', 'jun', 'jul', 'aug', 'sep', 'oct', 'nov', 'dec'])
    }

    def __init__(self, max_: int = 60, min_: int = 0) -> None:
        self.max_ = max_
        self.min_ = min_

    def _value(self, token: str) -> int:
        low = token.lower()
        if low in self._DAYS and self.max_ == 7:
            return self._DAYS[low]
        if low[:3] in self._MONTHS and self.max_ == 13:
            return self._MONTHS[low[:3]]
        value = int(token)
        if self.max_ == 7 and value == 7:
            value = 0
        if not self.min_ <= value < self.max_:
            raise ValueError(f'crontab value {value} out of range [{self.min_}, {self.max_ - 1}]')
        return value

    def parse(self, spec: str) -> set[int]:
        result: set[int] = set()
        for part in str(spec).split(','):
            part = part.strip()
            if not part:
                raise ValueError(f'empty crontab field in {spec!r}')
            step = 1
            if '/' in part:
                part, step_text = part.split('/', 1)
                step = int(step_text)
                if step <= 0:
                    raise ValueError(f'bad crontab step in {spec!r}')
            if part in ('*', ''):
                lo, hi = self.min_, self.max_ - 1
            elif '-' in part:
                a, b = part.split('-', 1)
                lo, hi = self._value(a), self._value(b)
                if hi < lo:
                    result.update(range(lo, self.max_, step))
                    result.update(range(self.min_, hi + 1, step))
                    continue
            else:
                lo = self._value(part)
                hi = self.max_ - 1 if '/' in spec else lo
            result.update(range(lo, hi + 1, step))
        return result


def _field(value: Any, max_: int, min_: int = 0) -> set[int]:
    if isinstance(value, int):
        return crontab_parser(max_, min_).parse(str(value))
    if isinstance(value, str):
        return crontab_parser(max_, min_).parse(value)
    if isinstance(value, Iterable):
        out: set[int] = set()
        for item in value:
            out |= _field(item, max_, min_)
        return out
    raise TypeError(f'bad crontab field {value!r}')


_WS = re.compile(r'\s+')


class crontab(schedule):
    """A cron-like schedule: `crontab(minute=0, hour='*/3')`, `crontab(hour=7, day_of_week='mon-fri')`."""

    def __init__(
        self,
        minute: Any = '*',
        hour: Any = '*',
        day_of_week: Any = '*',
        day_of_month: Any = '*',
        month_of_year: Any = '*',
        nowfun: Any = None,
        **kwargs: Any,
    ) -> None:
        self._orig = (minute, hour, day_of_week, day_of_month, month_of_year)
        self.minute = _field(minute, 60)
        self.hour = _field(hour, 24)
        self.day_of_week = _field(day_of_week, 7)
        self.day_of_month = _field(day_of_month, 32, 1)
        self.month_of_year = _field(month_of_year, 13, 1)
        self.nowfun = nowfun or _now
        self.run_every = timedelta(minutes=1)
        self.relative = False

    @classmethod
    def from_string(cls, cron: str) -> crontab:
        parts = _WS.split(cron.strip())
        if len(parts) != 5:
            raise ValueError(f'crontab string must have 5 fields, got {cron!r}')
        minute, hour, dom, moy, dow = parts
        return cls(minute=minute, hour=hour, day_of_month=dom, month_of_year=moy, day_of_week=dow)

    def _matches(self, dt: datetime) -> bool:
        return (
            dt.minute in self.minute
            and dt.hour in self.hour
            and dt.day in self.day_of_month
            and dt.month in self.month_of_year
            and (dt.isoweekday() % 7) in self.day_of_week
        )

    def next_after(self, dt: datetime) -> datetime:
        """The first matching minute strictly after `dt`."""
        candidate = dt.replace(second=0, microsecond=0) + timedelta(minutes=1)
        for _ in range(366 * 24 * 60 * 5):
            if candidate.month not in self.month_of_year:
                year = candidate.year + (candidate.month == 12)
                candidate = candidate.replace(year=year, month=candidate.month % 12 + 1, day=1, hour=0, minute=0)
                continue
            if candidate.day not in self.day_of_month or (candidate.isoweekday() % 7) not in self.day_of_week:
                candidate = (candidate + timedelta(days=1)).replace(hour=0, minute=0)
                continue
            if candidate.hour not in self.hour:
                candidate = (candidate + timedelta(hours=1)).replace(minute=0)
                continue
            if candidate.minute not in self.minute:
                candidate += timedelta(minutes=1)
                continue
            return candidate
        raise ValueError(f'{self!r} never fires')

    def remaining_estimate(self, last_run_at: datetime) -> timedelta:
        return self.next_after(last_run_at) - self.nowfun(last_run_at.tzinfo)

    def is_due(self, last_run_at: datetime) -> schedstate:
        now = self.nowfun(last_run_at.tzinfo)
        due_at = self.next_after(last_run_at)
        if due_at <= now:
            return schedstate(True, (self.next_after(now) - now).total_seconds())
        return schedstate(False, (due_at - now).total_seconds())

    def __eq__(self, other: object) -> bool:
        return isinstance(other, crontab) and other._orig == self._orig

    def __hash__(self) -> int:
        return hash(self._orig)

    def __repr__(self) -> str:
        m, h, dow, dom, moy = (str(x) for x in self._orig)
        return f'<crontab: {m} {h} {dom} {moy} {dow} (m/h/dM/MY/d)>'
