"""Celery is the oracle: fastq's schedules must parse and fire exactly as Celery 5.7's do.

Random crontab specs and start times in several time zones; for each, the next run (`remaining_estimate`)
and `is_due` must equal Celery's. The one known difference is checked on its own: around a DST fall-back
Celery can compute a next run at or before the last one (and then fires on every tick through the repeated
hour); fastq's next run is always after the last.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from celery import Celery
from celery import schedules as cs

from fastq import Fastq
from fastq import schedules as fs

DOW_NAMES = ['sun', 'mon', 'tue', 'wed', 'thu', 'fri', 'sat', 'monday', 'Sunday']
MONTH_NAMES = ['jan', 'feb', 'mar', 'apr', 'may', 'jun', 'jul', 'aug', 'sep', 'oct', 'nov', 'dec', 'january']
FIELDS = [(60, 0, None), (24, 0, None), (7, 0, DOW_NAMES), (31, 1, None), (12, 1, MONTH_NAMES)]
ZONES = ['UTC', 'Europe/Berlin', 'America/New_York', 'Australia/Lord_Howe', 'Asia/Kolkata']


def random_field(rng: random.Random, max_: int, min_: int, names: list[str] | None = None) -> str:
    def number() -> str:
        if names and rng.random() < 0.3:
            return rng.choice(names)
        return str(rng.randint(min_, min_ + max_ - 1))

    parts = []
    for _ in range(rng.randint(1, 3)):
        r = rng.random()
        if r < 0.2:
            parts.append('*')
        elif r < 0.4:
            parts.append(f'*/{rng.randint(1, max_)}')
        elif r < 0.6:
            parts.append(f'{number()}-{number()}')
        elif r < 0.75:
            parts.append(f'{number()}-{number()}/{rng.randint(1, 6)}')
        else:
            parts.append(number())
    return ','.join(parts)


def random_spec(rng: random.Random) -> dict[str, str]:
    spec = {}
    for key, (max_, min_, names), chance in zip(
        ('minute', 'hour', 'day_of_week', 'day_of_month', 'month_of_year'),
        FIELDS,
        (0.7, 0.6, 0.3, 0.3, 0.3),
        strict=True,
    ):
        if rng.random() < chance:
            spec[key] = random_field(rng, max_, min_, names)
    return spec


def apps(tz: str) -> tuple[Celery, Fastq]:
    capp = Celery(set_as_current=False)
    capp.conf.timezone = tz
    fapp = Fastq(set_as_current=False)
    fapp.conf.timezone = tz
    return capp, fapp


def outcome(make: Callable[[], Any]) -> Any:
    try:
        return make()
    except Exception:
        return 'error'


@pytest.mark.parametrize('max_,min_,names', FIELDS)
def test_parser_expands_like_celery(max_: int, min_: int, names: list[str] | None) -> None:
    rng = random.Random(max_ * 100 + min_)
    for _ in range(1500):
        spec = random_field(rng, max_, min_, names)
        celery_says = outcome(lambda: cs.crontab_parser(max_, min_).parse(spec))  # noqa: B023
        fastq_says = outcome(lambda: fs.crontab_parser(max_, min_).parse(spec))  # noqa: B023
        assert fastq_says == celery_says, spec


@pytest.mark.parametrize(
    'spec',
    ['*', '*/15', '1-5', '1,3,5', '59-1', '1-31/10', '*/0', '1-5/0', '', '1,,2', '-1', '*/', 'x', 'mon-fri',
     'jan-mar', 'dec-feb', 'sat-tue/2', '5', ' 5', '3-3', 'monday', 'fri-mon'],
)  # fmt: skip
def test_parser_edge_cases_like_celery(spec: str) -> None:
    for max_, min_, _ in FIELDS:
        celery_says = outcome(lambda: cs.crontab_parser(max_, min_).parse(spec))  # noqa: B023
        fastq_says = outcome(lambda: fs.crontab_parser(max_, min_).parse(spec))  # noqa: B023
        assert fastq_says == celery_says, (spec, max_, min_)


@pytest.mark.parametrize('seed', range(4))
def test_crontab_next_run_and_is_due_like_celery(seed: int) -> None:
    rng = random.Random(seed)
    compared = 0
    for _ in range(600):
        tz = rng.choice(ZONES)
        spec = random_spec(rng)
        last = datetime(2020, 1, 1, tzinfo=UTC) + timedelta(seconds=rng.randint(0, 10 * 365 * 86400))
        if rng.random() < 0.3:
            last = last.astimezone(ZoneInfo(tz))
        ahead = rng.randint(0, 90 * 86400) if rng.random() < 0.5 else rng.randint(0, 7200)
        now = last.astimezone(UTC) + timedelta(seconds=ahead)
        capp, fapp = apps(tz)
        c = outcome(lambda: cs.crontab(**spec, app=capp, nowfun=lambda: now))  # noqa: B023
        f = outcome(lambda: fs.crontab(**spec, app=fapp, nowfun=lambda: now))  # noqa: B023
        assert (c == 'error') == (f == 'error'), spec
        if c == 'error':
            continue
        assert f.remaining_estimate(last) == c.remaining_estimate(last), (tz, spec, last, now)
        assert tuple(f.is_due(last)) == tuple(c.is_due(last)), (tz, spec, last, now)
        compared += 1
    assert compared > 500


@pytest.mark.parametrize(
    'tz,start',
    [
        ('America/New_York', datetime(2024, 11, 3, 4, tzinfo=UTC)),  # fall back: 01:00-02:00 twice
        ('America/New_York', datetime(2024, 3, 10, 5, tzinfo=UTC)),  # spring forward: no 02:00-03:00
        ('Europe/Berlin', datetime(2024, 10, 26, 22, tzinfo=UTC)),
        ('Europe/Berlin', datetime(2024, 3, 30, 22, tzinfo=UTC)),
        ('Australia/Lord_Howe', datetime(2024, 4, 6, 12, tzinfo=UTC)),  # a half-hour shift
    ],
)
def test_crontab_across_dst_like_celery_except_where_celery_goes_back(tz: str, start: datetime) -> None:
    capp, fapp = apps(tz)
    zone = ZoneInfo(tz)
    specs: list[dict[str, Any]] = [
        {'minute': 30},
        {'minute': '*/15'},
        {'minute': 0, 'hour': 2},
        {'minute': 30, 'hour': '1-3'},
        {},
        {'minute': 45, 'hour': 1},
    ]
    same = celery_went_back = 0
    for spec in specs:
        for minutes in range(0, 6 * 60, 7):
            last = (start + timedelta(minutes=minutes)).astimezone(zone)
            now = last.astimezone(UTC) + timedelta(minutes=3)
            c = cs.crontab(**spec, app=capp, nowfun=lambda: now)  # noqa: B023
            f = fs.crontab(**spec, app=fapp, nowfun=lambda: now)  # noqa: B023
            celery_next = now + c.remaining_estimate(last)
            fastq_next = now + f.remaining_estimate(last)
            assert fastq_next > last
            if fastq_next == celery_next:
                same += 1
            else:
                assert celery_next <= last, (spec, last, celery_next, fastq_next)
                celery_went_back += 1
    assert same > 250


@pytest.mark.parametrize('tz', ['UTC', 'America/New_York', 'Australia/Lord_Howe'])
@pytest.mark.parametrize('every', [1, 45, 60, 90, 3600, 5400, 86400, 2 * 86400])
@pytest.mark.parametrize('relative', [False, True])
def test_interval_like_celery(tz: str, every: int, relative: bool) -> None:
    """Relative schedules round to the clock in the app's zone, so the start times straddle DST changes."""
    rng = random.Random(every)
    capp, fapp = apps(tz)
    starts = [datetime(2024, 3, 9, tzinfo=UTC), datetime(2024, 4, 5, tzinfo=UTC), datetime(2024, 11, 2, tzinfo=UTC)]
    for _ in range(150):
        last = rng.choice(starts) + timedelta(seconds=rng.uniform(0, 3 * 86400))
        now = last + timedelta(seconds=rng.uniform(0, 3 * every))
        c = cs.schedule(every, relative=relative, app=capp, nowfun=lambda: now)  # noqa: B023
        f = fs.schedule(every, relative=relative, app=fapp, nowfun=lambda: now)  # noqa: B023
        assert f.remaining_estimate(last) == c.remaining_estimate(last), (last, now)
        assert tuple(f.is_due(last)) == tuple(c.is_due(last)), (last, now)


CITIES = {
    'melbourne': (-37.81, 144.96),
    'tromso': (69.65, 18.96),  # polar day and night: events that skip days
    'quito': (-0.18, -78.47),
    'new_york': (40.71, -74.0),
}


@pytest.mark.parametrize('city', sorted(CITIES))
@pytest.mark.parametrize('tz', ['UTC', 'Europe/Oslo'])
def test_solar_like_celery(city: str, tz: str) -> None:
    pytest.importorskip('ephem')
    lat, lon = CITIES[city]
    capp, fapp = apps(tz)
    for event in sorted(fs.solar._all_events):
        for last in (datetime(2024, 6, 21, 3, tzinfo=UTC), datetime(2024, 12, 21, 15, 30, tzinfo=UTC)):
            last = last.astimezone(ZoneInfo(tz))
            now = last + timedelta(hours=5)
            c = cs.solar(event, lat, lon, app=capp, nowfun=lambda: now)  # noqa: B023
            f = fs.solar(event, lat, lon, app=fapp, nowfun=lambda: now)  # noqa: B023
            assert abs(f.remaining_estimate(last) - c.remaining_estimate(last)) < timedelta(milliseconds=1)
            assert f.is_due(last).is_due == c.is_due(last).is_due


@pytest.fixture
def local_zone(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[str], None]]:
    """Set the process's local zone (`TZ` and tzset) for a test, and put it back after."""

    def use(name: str) -> None:
        monkeypatch.setenv('TZ', name)
        time.tzset()

    yield use
    monkeypatch.undo()
    time.tzset()


@pytest.mark.parametrize('tz', ['Europe/London', 'America/New_York'])
def test_crontab_in_local_time_follows_dst(local_zone: Callable[[str], None], tz: str) -> None:
    """`enable_utc = False` and no `timezone`: the machine's zone, DST included, so a crontab runs as Celery's
    does with that zone named in `timezone`. (fastq took today's fixed offset: in December a summer crontab ran
    an hour off. Celery's own LocalTimezone is not the oracle here: west of UTC it puts runs hours off.)"""
    local_zone(tz)
    fapp = Fastq(set_as_current=False)
    fapp.conf.enable_utc = False
    capp = Celery(set_as_current=False)
    capp.conf.timezone = tz
    rng = random.Random(tz)
    specs: list[dict[str, Any]] = [
        {'minute': 30, 'hour': 1},
        {'minute': 0, 'hour': '*/5'},
        {'hour': 23, 'day_of_month': 31},
    ]
    for spec in specs:
        for _ in range(60):
            last = datetime(2024, 1, 1, tzinfo=UTC) + timedelta(seconds=rng.randint(0, 366 * 86400))
            now = last + timedelta(seconds=rng.choice([1, 60, 3600, 86400]))
            c = cs.crontab(**spec, app=capp, nowfun=lambda: now)  # noqa: B023
            f = fs.crontab(**spec, app=fapp, nowfun=lambda: now)  # noqa: B023
            if now + c.remaining_estimate(last) <= last:  # (the DST fall-back case above)
                continue
            assert f.remaining_estimate(last) == c.remaining_estimate(last), (spec, last, now)
            assert tuple(f.is_due(last)) == tuple(c.is_due(last)), (spec, last, now)


def test_local_zone_from_a_posix_tz_rule_has_its_dst(local_zone: Callable[[str], None]) -> None:
    """A `TZ` only the C library reads (no tzdata name) still gives DST, through the `time` module."""
    from fastq.utils.time import get_timezone

    local_zone('CET-1CEST,M3.5.0,M10.5.0/3')
    zone = get_timezone(None, enable_utc=False)
    winter, summer = datetime(2024, 1, 15, 12, tzinfo=UTC), datetime(2024, 7, 15, 12, tzinfo=UTC)
    assert winter.astimezone(zone).hour == 13 and summer.astimezone(zone).hour == 14
    assert datetime(2024, 7, 15, 14, tzinfo=zone).astimezone(UTC) == summer


@pytest.mark.parametrize('enable_utc', [True, False])
def test_to_local_and_remaining_delta_like_celery(local_zone: Callable[[str], None], enable_utc: bool) -> None:
    """The reference's `to_local` and `crontab.remaining_delta` (fastq had neither): `remaining(*delta)` is the
    time to the next run, as with Celery's."""
    from celery.utils.time import remaining

    local_zone('America/New_York')
    capp, fapp = apps('Europe/Berlin')
    capp.conf.enable_utc = fapp.conf.enable_utc = enable_utc
    now = datetime(2024, 3, 30, 23, 40, tzinfo=UTC)  # Berlin's clocks go forward that night
    c = cs.crontab(minute='*/20', hour='1-3', app=capp, nowfun=lambda: now)
    f = fs.crontab(minute='*/20', hour='1-3', app=fapp, nowfun=lambda: now)
    naive = datetime(2024, 7, 1, 12, 30)
    assert f.to_local(naive) == c.to_local(naive) and f.to_local(naive).utcoffset() == c.to_local(naive).utcoffset()
    assert f.to_local(naive.replace(tzinfo=UTC)) == c.to_local(naive.replace(tzinfo=UTC))  # (the same instant)
    for last in (now - timedelta(minutes=50), now, now + timedelta(hours=3)):
        assert remaining(*f.remaining_delta(last)) == c.remaining_estimate(last) == f.remaining_estimate(last)
