"""Periodic schedules with Celery's names and rules: `schedule` (every N seconds), `crontab`, `solar`.

`beat_schedule` entries written for Celery load unchanged, and `is_due(last_run_at)` answers Celery's
`schedstate(is_due, next)`: whether to run now, and the seconds until the schedule should be checked again.
Times are read in the app's time zone (`timezone`, else UTC, or the local zone when `enable_utc` is off);
a naive `last_run_at` is taken as UTC, as Celery takes it.

Crontab fields parse exactly as Celery parses them (`crontab_parser`): `*`, `*/15`, `1-5`, `1-31/10`, lists,
names anywhere a number goes (`mon-fri`, `jan`, any word starting with a day or month abbreviation), ranges
that wrap (`fri-mon`), steps that slice the expanded range (`sat-tue/2` is sat, mon), and `*/5` on
day_of_month starting at 1. fastq differs only where Celery raises or silently drops text: 7 is accepted
for Sunday in day_of_week (as cron(5) does), whitespace around a part is ignored, and text after a
complete part (`*/15/2`, `1-5-9`) is an error instead of being ignored.

Wall-clock times that a DST change repeats run once, at their first occurrence; times it skips run when the
clock jumps past them. (Celery computes such a next run before the previous one and fires repeatedly
through a repeated hour; fastq never schedules a run at or before the last.)
"""

from __future__ import annotations

import importlib
import re
from bisect import bisect_left, bisect_right
from collections.abc import Callable, Iterable
from datetime import UTC, date, datetime, timedelta, tzinfo
from typing import TYPE_CHECKING, Any, NamedTuple

from fastq.exceptions import ImproperlyConfigured

if TYPE_CHECKING:
    from fastq.app import Fastq

__all__ = ['BaseSchedule', 'ParseException', 'crontab', 'crontab_parser', 'maybe_schedule', 'schedstate', 'solar']


class schedstate(NamedTuple):
    """`(is_due, next)`: run now?, and seconds until the next check (Celery's namedtuple)."""

    is_due: bool
    next: float


class ParseException(ValueError):
    """A crontab field that cannot be parsed (a ValueError, so `except ValueError` catches every bad spec)."""


WEEKDAYS = {name: i for i, name in enumerate(('sun', 'mon', 'tue', 'wed', 'thu', 'fri', 'sat'))}
MONTHS = {
    name: i + 1
    for i, name in enumerate(('jan', 'feb', 'mar', 'apr', 'may', 'jun', 'jul', 'aug', 'sep', 'oct', 'nov', 'dec'))
}
DAYS_IN_MONTH = {1: 31, 2: 29, 3: 31, 4: 30, 5: 31, 6: 30, 7: 31, 8: 31, 9: 30, 10: 31, 11: 30, 12: 31}
_TIME_UNITS = (('day', 86400.0), ('hour', 3600.0), ('minute', 60.0), ('second', 1.0))
_SEARCH_YEARS = 400  # the Gregorian calendar repeats every 400 years: no match by then means never


def humanize_seconds(secs: float, prefix: str = '', now: str = 'now') -> str:
    """Celery's wording: `300` -> `5.00 minutes`, `1` -> `1.00 second`, `0` -> `now`."""
    secs = float(format(float(secs), '.2f'))
    for unit, divider in _TIME_UNITS:
        if secs >= divider:
            w = secs / divider
            return f'{prefix}{w:.2f} {unit}{"" if w == 1 else "s"}'
    return now


def _utc(dt: datetime) -> datetime:
    return dt.astimezone(UTC)


class BaseSchedule:
    """What beat needs from a schedule: `is_due`, `remaining_estimate`, and the app's clock and zone."""

    def __init__(self, nowfun: Callable[[], datetime] | None = None, app: Fastq | None = None) -> None:
        self.nowfun = nowfun
        self._app = app

    @property
    def app(self) -> Fastq:
        if self._app is not None:
            return self._app
        from fastq._state import get_current_app

        return get_current_app()

    @app.setter
    def app(self, app: Fastq | None) -> None:
        self._app = app

    @property
    def tz(self) -> tzinfo:
        return self.app.timezone

    @property
    def utc_enabled(self) -> bool:
        return bool(self.app.conf.enable_utc)

    def now(self) -> datetime:
        return (self.nowfun or self.app.now)()

    def maybe_make_aware(self, dt: datetime, naive_as_utc: bool = True) -> datetime:
        """An aware datetime: naive ones are read as UTC (shown in the app's zone), or in the zone itself."""
        if dt.tzinfo is not None and dt.tzinfo.utcoffset(dt) is not None:
            return dt
        if naive_as_utc:
            return dt.replace(tzinfo=UTC).astimezone(self.tz)
        return dt.replace(tzinfo=self.tz)

    def to_local(self, dt: datetime) -> datetime:
        """Celery's: with `enable_utc` off, `dt` in the machine's zone (a naive one read as in it), else `dt`."""
        if self.utc_enabled:
            return dt
        from fastq.utils.time import local_timezone

        if dt.tzinfo is None or dt.utcoffset() is None:
            return dt.replace(tzinfo=local_timezone())
        return dt.astimezone(local_timezone())

    def remaining_estimate(self, last_run_at: datetime) -> timedelta:
        raise NotImplementedError

    def is_due(self, last_run_at: datetime) -> schedstate:
        raise NotImplementedError

    def last_due_at(self, now: datetime) -> datetime | None:
        """The latest instant at or before `now` when this schedule fires, if it can tell (else None).

        Beat keys each run on it, so two schedulers that both decide a run is due agree on which run it is.
        """
        return None

    def _remaining_from(self, next_run: datetime) -> timedelta:
        return _utc(next_run) - _utc(self.maybe_make_aware(self.now()))


class schedule(BaseSchedule):
    """Run every `run_every` (seconds or a timedelta) after the last run.

    With `relative=True` the runs snap to the clock at the interval's resolution (every hour on the hour,
    every day at midnight in the app's zone), as Celery's relative schedules do.
    """

    def __init__(
        self,
        run_every: float | timedelta | None = None,
        relative: bool = False,
        nowfun: Callable[[], datetime] | None = None,
        app: Fastq | None = None,
    ) -> None:
        if run_every is None:
            run_every = 0.0
        self.run_every = run_every if isinstance(run_every, timedelta) else timedelta(seconds=run_every)
        self.relative = relative
        super().__init__(nowfun=nowfun, app=app)

    @property
    def seconds(self) -> float:
        return max(self.run_every.total_seconds(), 0.0)

    @property
    def human_seconds(self) -> str:
        return humanize_seconds(self.seconds)

    def next_run_at(self, last_run_at: datetime) -> datetime:
        start = self.maybe_make_aware(last_run_at)
        if self.relative:
            return _relative_deadline(start, self.run_every)
        return _utc(start) + self.run_every

    def remaining_estimate(self, last_run_at: datetime) -> timedelta:
        return self._remaining_from(self.next_run_at(last_run_at))

    def is_due(self, last_run_at: datetime) -> schedstate:
        last_run_at = self.maybe_make_aware(last_run_at)
        remaining = max(self.remaining_estimate(last_run_at).total_seconds(), 0.0)
        if remaining:
            return schedstate(False, remaining)
        next_s = self.seconds
        if self.relative:
            # Realign to the next boundary after now (a late run or a DST change moves it).
            now = self.maybe_make_aware(self.now()).astimezone(last_run_at.tzinfo)
            next_s = self.remaining_estimate(now).total_seconds()
            if next_s <= 0:
                next_s = self.seconds
        return schedstate(True, next_s)

    def last_due_at(self, now: datetime) -> datetime:
        """The start of the interval-sized window (counted from the Unix epoch) that holds `now`.

        Consecutive runs of one beat are at least an interval apart, so each falls in a window of its own.
        """
        step = max(round(self.seconds * 1_000_000), 1)
        micros = round(_utc(self.maybe_make_aware(now)).timestamp() * 1_000_000)
        return datetime.fromtimestamp((micros - micros % step) / 1_000_000, UTC)

    def __repr__(self) -> str:
        return f'<freq: {self.human_seconds}>'

    def __eq__(self, other: object) -> bool:
        if isinstance(other, schedule):
            return self.run_every == other.run_every
        return self.run_every == other

    def __hash__(self) -> int:
        return hash(self.run_every)

    def __reduce__(self) -> tuple[Any, ...]:
        return self.__class__, (self.run_every, self.relative, self.nowfun)


def _round_down(dt: datetime, every: timedelta) -> datetime:
    """Celery's delta_resolution: to the day, hour or minute when the interval is at least that long."""
    seconds = every.total_seconds()
    if seconds >= 86400:
        return dt.replace(hour=0, minute=0, second=0, microsecond=0)
    if seconds >= 3600:
        return dt.replace(minute=0, second=0, microsecond=0)
    if seconds >= 60:
        return dt.replace(second=0, microsecond=0)
    return dt.replace(microsecond=0)


def _occurrences(local: datetime) -> list[datetime]:
    """UTC instants a local wall time names: two in a repeated hour, the forward one in a skipped hour."""
    if not _exists(local):
        return [_utc(local.replace(fold=0))]  # fold 0 of a skipped time is the instant the clock jumped past it
    return sorted({_utc(local.replace(fold=0)), _utc(local.replace(fold=1))})


def _exists(local: datetime) -> bool:
    naive = local.replace(tzinfo=None)
    tz = local.tzinfo
    return all(_utc(local.replace(fold=f)).astimezone(tz).replace(tzinfo=None) == naive for f in (0, 1))


def _relative_deadline(start: datetime, every: timedelta) -> datetime:
    """The last rounded local boundary at or before `start + every`, never at or before `start` (Celery's rule;
    day intervals advance by calendar days)."""
    start_utc = _utc(start)
    if every >= timedelta(days=1):
        end = start + every  # wall-clock arithmetic: calendar days
        future = [d for d in _occurrences(_round_down(end, every)) if d > start_utc]
        return min(future, default=_utc(end))
    end_utc = start_utc + every
    local_end = end_utc.astimezone(start.tzinfo)
    candidates = _occurrences(_round_down(local_end, every))
    before = [d for d in candidates if d <= end_utc]
    rounded = max(before) if before else min(candidates)
    if every >= timedelta(minutes=1) and rounded <= start_utc:
        unit = timedelta(hours=1) if every >= timedelta(hours=1) else timedelta(minutes=1)
        candidates += _occurrences(_round_down(local_end + unit, every))
        candidates += _occurrences(_round_down(start + every, every))
        future = [d for d in candidates if d > start_utc]
        before = [d for d in future if d <= end_utc]
        rounded = max(before) if before else min(future, default=end_utc)
    return rounded


class crontab_parser:
    """Expand one crontab field to the set of numbers it names (Celery's parser and rules).

    `crontab_parser(60).parse('*/15')` -> {0, 15, 30, 45}; `crontab_parser(31, 1).parse('*/3')` -> {1, 4, ..., 31};
    `max_` is how many values the field has and `min_` the first, so the largest is `max_ + min_ - 1`.
    """

    ParseException = ParseException
    _PART = re.compile(
        r'^(?:(?P<star>\*)|(?P<lo>[0-9A-Za-z]+?)-(?P<hi>[0-9A-Za-z]+)|(?P<one>[0-9A-Za-z]+))(?P<step>/.*)?$'
    )

    def __init__(self, max_: int = 60, min_: int = 0) -> None:
        self.max_ = max_
        self.min_ = min_

    def parse(self, spec: str) -> set[int]:
        acc: set[int] = set()
        for part in spec.split(','):
            if not part:
                raise ParseException('empty part')
            acc.update(self._parse_part(part.strip()))
        return acc

    def _parse_part(self, part: str) -> list[int]:
        if part.startswith('-'):
            raise ParseException('negative numbers not supported')
        m = self._PART.match(part)
        if m is None or (m['one'] and m['step']):
            raise ParseException(f'Invalid crontab part {part!r}.')
        if m['star']:
            values = list(range(self.min_, self.max_ + self.min_))
        elif m['one']:
            return [self._number(m['one'])]
        else:
            values = self._range(self._number(m['lo']), self._number(m['hi']))
        if m['step'] is None:
            return values
        step = m['step'][1:]
        if not step:
            raise ParseException('empty filter')
        if not step.isdigit() or int(step) == 0:
            raise ParseException(f'Invalid crontab step {step!r} in {part!r}: a positive whole number is needed.')
        return values[:: int(step)]

    def _range(self, fr: int, to: int) -> list[int]:
        if to < fr:  # wraps around the end of the field
            return list(range(fr, self.min_ + self.max_)) + list(range(self.min_, to + 1))
        return list(range(fr, to + 1))

    def _number(self, token: str) -> int:
        if token.isdigit():
            value = int(token)
        else:
            abbreviation = token[:3].lower()
            if abbreviation in MONTHS:
                value = MONTHS[abbreviation]
            elif abbreviation in WEEKDAYS:
                value = WEEKDAYS[abbreviation]
            else:
                raise ValueError(f'Invalid weekday literal {token!r}.')
        largest = self.min_ + self.max_ - 1
        if value > largest:
            raise ValueError(f'Invalid end range: {value} > {largest}.')
        if value < self.min_:
            raise ValueError(f'Invalid beginning range: {value} < {self.min_}.')
        return value


class _day_of_week_parser(crontab_parser):
    """day_of_week also takes 7 for Sunday (cron(5)); it is folded to 0 after ranges and steps are expanded."""

    def __init__(self) -> None:
        super().__init__(7, 0)

    def _number(self, token: str) -> int:
        if token.isdigit() and int(token) == 7:
            return 7
        return super()._number(token)

    def _range(self, fr: int, to: int) -> list[int]:
        if to == 7 and fr <= 7:
            return list(range(fr, 8))
        return super()._range(fr, to)

    def parse(self, spec: str) -> set[int]:
        return {v % 7 for v in super().parse(spec)}


Cronspec = int | str | Iterable[int]


def _expand(spec: Cronspec, max_: int, min_: int = 0, parser: crontab_parser | None = None) -> set[int]:
    """Celery's _expand_cronspec: ints and iterables are taken as they are, strings are parsed."""
    if isinstance(spec, int):
        result = {spec}
    elif isinstance(spec, str):
        result = (parser or crontab_parser(max_, min_)).parse(spec)
    elif isinstance(spec, Iterable):
        result = set(spec)
    else:
        raise TypeError(
            'Argument cronspec needs to be of any of the following types: int, str, or an iterable type. '
            f'{type(spec)!r} was given.'
        )
    if isinstance(parser, _day_of_week_parser):
        result = {0 if v == 7 else v for v in result}
    for number in result:
        if not isinstance(number, int) or number >= max_ + min_ or number < min_:
            raise ValueError(
                f"Invalid crontab pattern.  Valid range is {min_}-{max_ - 1 + min_}. '{number}' was found."
            )
    return result


class crontab(BaseSchedule):
    """A cron-like schedule: `crontab(minute=0, hour='*/3')`, `crontab(hour=7, day_of_week='mon-fri')`.

    A day must match day_of_week, day_of_month and month_of_year all three (as in Celery, not cron's "either
    day field"). Runs fall on whole minutes of the app's time zone.
    """

    def __init__(
        self,
        minute: Cronspec = '*',
        hour: Cronspec = '*',
        day_of_week: Cronspec = '*',
        day_of_month: Cronspec = '*',
        month_of_year: Cronspec = '*',
        **kwargs: Any,
    ) -> None:
        self._orig_minute = '*' if minute is None else minute
        self._orig_hour = '*' if hour is None else hour
        self._orig_day_of_week = '*' if day_of_week is None else day_of_week
        self._orig_day_of_month = '*' if day_of_month is None else day_of_month
        self._orig_month_of_year = '*' if month_of_year is None else month_of_year
        self._orig_kwargs = kwargs
        self.hour = _expand(self._orig_hour, 24)
        self.minute = _expand(self._orig_minute, 60)
        self.day_of_week = _expand(self._orig_day_of_week, 7, parser=_day_of_week_parser())
        self.day_of_month = _expand(self._orig_day_of_month, 31, 1)
        self.month_of_year = _expand(self._orig_month_of_year, 12, 1)
        if not any(day <= DAYS_IN_MONTH[month] for month in self.month_of_year for day in self.day_of_month):
            raise ValueError(
                f'Invalid crontab: day_of_month {self._orig_day_of_month!r} never occurs in '
                f'month_of_year {self._orig_month_of_year!r}.'
            )
        self._minutes = sorted(self.minute)
        self._hours = sorted(self.hour)
        super().__init__(**kwargs)

    @classmethod
    def from_string(cls, cron: str) -> crontab:
        """`crontab.from_string('*/5 9-17 * * mon-fri')`: minute hour day_of_month month_of_year day_of_week."""
        parts = cron.split()
        if len(parts) != 5:
            raise ValueError(f'A crontab string has 5 fields (m h dom mon dow), got {cron!r}')
        minute, hour, day_of_month, month_of_year, day_of_week = parts
        return cls(minute, hour, day_of_week, day_of_month, month_of_year)

    # --- searching the calendar ---------------------------------------------------------------------------

    def _day_matches(self, day: date) -> bool:
        return (
            day.month in self.month_of_year
            and day.day in self.day_of_month
            and day.isoweekday() % 7 in self.day_of_week
        )

    def _first_time(self, hour: int, minute: int) -> tuple[int, int] | None:
        """The first (hour, minute) of the spec at or after hour:minute on a matching day."""
        i = bisect_left(self._hours, hour)
        if i < len(self._hours) and self._hours[i] == hour:
            j = bisect_left(self._minutes, minute)
            if j < len(self._minutes):
                return hour, self._minutes[j]
            i += 1
        return (self._hours[i], self._minutes[0]) if i < len(self._hours) else None

    def _last_time(self, hour: int, minute: int) -> tuple[int, int] | None:
        """The last (hour, minute) of the spec at or before hour:minute on a matching day."""
        i = bisect_right(self._hours, hour) - 1
        if i >= 0 and self._hours[i] == hour:
            j = bisect_right(self._minutes, minute) - 1
            if j >= 0:
                return hour, self._minutes[j]
            i -= 1
        return (self._hours[i], self._minutes[-1]) if i >= 0 else None

    def _next_wall(self, after: datetime) -> datetime:
        """The first matching wall-clock minute after the minute of `after` (naive, local)."""
        start = after.replace(second=0, microsecond=0, tzinfo=None) + timedelta(minutes=1)
        day, hour, minute = start.date(), start.hour, start.minute
        while day.year <= start.year + _SEARCH_YEARS:
            if day.month not in self.month_of_year:
                day = (day.replace(day=1) + timedelta(days=32)).replace(day=1)
                hour = minute = 0
                continue
            if self._day_matches(day):
                found = self._first_time(hour, minute)
                if found is not None:
                    return datetime(day.year, day.month, day.day, *found)
            day += timedelta(days=1)
            hour = minute = 0
        raise ValueError(f'{self!r} never fires')

    def _previous_wall(self, at: datetime) -> datetime:
        """The last matching wall-clock minute at or before the minute of `at` (naive, local)."""
        day, hour, minute = at.date(), at.hour, at.minute
        while day.year >= at.year - _SEARCH_YEARS:
            if day.month not in self.month_of_year:
                day = day.replace(day=1) - timedelta(days=1)
                hour, minute = 23, 59
                continue
            if self._day_matches(day):
                found = self._last_time(hour, minute)
                if found is not None:
                    return datetime(day.year, day.month, day.day, *found)
            day -= timedelta(days=1)
            hour, minute = 23, 59
        raise ValueError(f'{self!r} never fired')

    def next_run_at(self, last_run_at: datetime) -> datetime:
        """The first run strictly after `last_run_at`, in the app's time zone."""
        tz = self.tz
        last = self.maybe_make_aware(last_run_at).astimezone(tz)
        last_utc = _utc(last)
        wall = last.replace(tzinfo=None)
        while True:
            wall = self._next_wall(wall)
            for fold in (0, 1):  # fold 1: the second pass of a repeated wall time
                candidate = wall.replace(tzinfo=tz, fold=fold)
                if _utc(candidate) > last_utc:
                    return candidate

    def last_due_at(self, now: datetime) -> datetime:
        tz = self.tz
        now = self.maybe_make_aware(now).astimezone(tz)
        now_utc = _utc(now)
        wall = self._previous_wall(now.replace(tzinfo=None))
        while _utc(wall.replace(tzinfo=tz)) > now_utc:  # a skipped wall time maps forward, past now
            wall = self._previous_wall(wall - timedelta(minutes=1))
        return wall.replace(tzinfo=tz)

    def remaining_delta(
        self, last_run_at: datetime, tz: tzinfo | None = None, ffwd: Any = None
    ) -> tuple[datetime, timedelta, datetime]:
        """Celery's `(start, delta, now)`, the next run being at `start + delta`, so that Celery's
        `celery.utils.time.remaining(*crontab.remaining_delta(last))` is `remaining_estimate(last)`. (Celery's
        delta is an `ffwd` of the fields to set; here it is a timedelta from `start`, in UTC.)"""
        start = _utc(self.maybe_make_aware(last_run_at))
        return start, _utc(self.next_run_at(last_run_at)) - start, self.maybe_make_aware(self.now())

    def remaining_estimate(self, last_run_at: datetime) -> timedelta:
        return self._remaining_from(self.next_run_at(last_run_at))

    def is_due(self, last_run_at: datetime) -> schedstate:
        """Due once the next run after `last_run_at` has come; with `beat_cron_starting_deadline` set, a
        missed run older than that many seconds is skipped instead (Celery's rule)."""
        rem_secs = self.remaining_estimate(last_run_at).total_seconds()
        due = rem_secs <= 0
        deadline = self.app.conf.beat_cron_starting_deadline
        stale = False
        if deadline is not None and rem_secs < 0:
            now = self.maybe_make_aware(self.now())
            since = _utc(now) - timedelta(seconds=deadline, microseconds=1)
            if self.remaining_estimate(since).total_seconds() > 0:
                stale, due = True, False
        if due or stale:
            return schedstate(due, max(self.remaining_estimate(self.now()).total_seconds(), 0.0))
        return schedstate(due, max(rem_secs, 0.0))

    def __repr__(self) -> str:
        return (
            f'<crontab: {self._orig_minute} {self._orig_hour} {self._orig_day_of_month} '
            f'{self._orig_month_of_year} {self._orig_day_of_week} (m/h/dM/MY/d)>'
        )

    def _key(self) -> tuple[frozenset[int], ...]:
        return tuple(
            frozenset(s) for s in (self.month_of_year, self.day_of_month, self.day_of_week, self.hour, self.minute)
        )

    def __eq__(self, other: object) -> bool:
        if isinstance(other, crontab):
            return self._key() == other._key() and self.nowfun == other.nowfun
        return NotImplemented

    def __hash__(self) -> int:
        return hash(self._key())

    def __reduce__(self) -> tuple[Any, ...]:
        orig = (
            self._orig_minute,
            self._orig_hour,
            self._orig_day_of_week,
            self._orig_day_of_month,
            self._orig_month_of_year,
        )
        return self.__class__, orig, self._orig_kwargs

    def __setstate__(self, state: dict[str, Any]) -> None:
        BaseSchedule.__init__(self, **state)
        self._orig_kwargs = dict(state)


def maybe_schedule(s: Any, relative: bool = False, app: Fastq | None = None) -> BaseSchedule | None:
    """A schedule from a number of seconds, a timedelta, or a schedule (which is bound to `app`)."""
    if s is None:
        return None
    if isinstance(s, int | float) and not isinstance(s, bool):
        s = timedelta(seconds=s)
    if isinstance(s, timedelta):
        return schedule(s, relative, app=app)
    s = _from_celery(s)
    if not isinstance(s, BaseSchedule) and not hasattr(s, 'is_due'):
        raise TypeError(f'not a schedule: {s!r} (a number of seconds, a timedelta, crontab or solar)')
    if app is not None:
        s.app = app
    return s  # type: ignore[no-any-return]


def _from_celery(s: Any) -> Any:
    """Celery's own `schedule`, `crontab` or `solar` (a config written for Celery may still import them from
    `celery.schedules`) as fastq's namesake, with its `nowfun`.

    Beat keys each run on the schedule's `last_due_at`, which Celery's classes lack: its runs were keyed to the
    minute, so a Celery `schedule(10)` sent one run in each half minute and skipped the others as "sent by
    another beat". Subclasses, other modules' classes, and a spec fastq refuses stay as they are.
    """
    cls = type(s)
    if cls.__module__ != 'celery.schedules':
        return s
    nowfun = getattr(s, 'nowfun', None)
    try:
        if cls.__name__ == 'schedule':
            return schedule(s.run_every, s.relative, nowfun=nowfun)
        if cls.__name__ == 'crontab':
            fields = (s._orig_minute, s._orig_hour, s._orig_day_of_week, s._orig_day_of_month, s._orig_month_of_year)
            return crontab(*fields, nowfun=nowfun)
        if cls.__name__ == 'solar':
            return solar(s.event, s.lat, s.lon, nowfun=nowfun)
    except (AttributeError, TypeError, ValueError):
        pass
    return s


class solar(BaseSchedule):
    """Run at a solar event seen from a place: `solar('sunset', -37.81, 144.96)` (needs `pip install ephem`).

    Events: dawn_astronomical, dawn_nautical, dawn_civil, sunrise, solar_noon, sunset, dusk_civil,
    dusk_nautical, dusk_astronomical. Where an event does not happen on a day (polar day or night), the
    search goes on to the next day that has it, up to a year ahead.
    """

    _horizons = {
        'dawn_astronomical': '-18',
        'dawn_nautical': '-12',
        'dawn_civil': '-6',
        'sunrise': '-0:34',
        'solar_noon': '0',
        'sunset': '-0:34',
        'dusk_civil': '-6',
        'dusk_nautical': '-12',
        'dusk_astronomical': '-18',
    }
    _methods = {
        'dawn_astronomical': 'rising',
        'dawn_nautical': 'rising',
        'dawn_civil': 'rising',
        'sunrise': 'rising',
        'solar_noon': 'transit',
        'sunset': 'setting',
        'dusk_civil': 'setting',
        'dusk_nautical': 'setting',
        'dusk_astronomical': 'setting',
    }
    _all_events = frozenset(_methods)
    max_search_days = 366

    def __init__(self, event: str, lat: float, lon: float, **kwargs: Any) -> None:
        try:
            ephem = importlib.import_module('ephem')
        except ImportError as exc:
            raise ImproperlyConfigured(
                'solar schedules need the ephem library: pip install ephem (or fastq[solar])'
            ) from exc
        self.ephem = ephem
        self.event = event
        self.lat = lat
        self.lon = lon
        super().__init__(**kwargs)
        if event not in self._all_events:
            raise ValueError(f'Argument event "{event}" is invalid, must be one of {", ".join(sorted(self._methods))}.')
        if not -90 <= lat <= 90:
            raise ValueError(f'Argument latitude {lat} is invalid, must be between -90 and 90.')
        if not -180 <= lon <= 180:
            raise ValueError(f'Argument longitude {lon} is invalid, must be between -180 and 180.')
        cal = ephem.Observer()
        cal.lat = str(lat)
        cal.lon = str(lon)
        cal.elev = 0
        cal.horizon = self._horizons[event]
        cal.pressure = 0
        self.cal = cal
        self.method = self._methods[event]
        self.use_center = event.startswith(('dawn_', 'dusk_'))

    def _event(self, start: datetime, direction: str) -> datetime:
        """The first event after (`next`) or before (`previous`) `start`, skipping days without one."""
        ephem = self.ephem
        sun = ephem.Sun()
        kwargs = {'use_center': True} if self.use_center else {}
        when = ephem.Date(_utc(start).replace(tzinfo=None))
        self.cal.date = when
        skip = getattr(self.cal, f'{direction}_antitransit')
        for _ in range(self.max_search_days):
            try:
                found = getattr(self.cal, f'{direction}_{self.method}')(sun, start=when, **kwargs)
                return found.datetime().replace(tzinfo=UTC)  # type: ignore[no-any-return]
            except ephem.CircumpolarError:
                when = skip(sun, start=when)
        return when.datetime().replace(tzinfo=UTC)  # type: ignore[no-any-return]

    def next_run_at(self, last_run_at: datetime) -> datetime:
        return self._event(self.maybe_make_aware(last_run_at), 'next')

    def last_due_at(self, now: datetime) -> datetime:
        return self._event(self.maybe_make_aware(now), 'previous')

    def remaining_estimate(self, last_run_at: datetime) -> timedelta:
        return self._remaining_from(self.next_run_at(last_run_at))

    def is_due(self, last_run_at: datetime) -> schedstate:
        rem = max(self.remaining_estimate(last_run_at).total_seconds(), 0.0)
        if rem:
            return schedstate(False, rem)
        return schedstate(True, max(self.remaining_estimate(self.now()).total_seconds(), 0.0))

    def __repr__(self) -> str:
        return f'<solar: {self.event} at latitude {self.lat}, longitude: {self.lon}>'

    def __eq__(self, other: object) -> bool:
        if isinstance(other, solar):
            return (other.event, other.lat, other.lon) == (self.event, self.lat, self.lon)
        return NotImplemented

    def __hash__(self) -> int:
        return hash((self.event, self.lat, self.lon))

    def __reduce__(self) -> tuple[Any, ...]:
        return self.__class__, (self.event, self.lat, self.lon)
