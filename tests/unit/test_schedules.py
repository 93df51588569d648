"""fastq.schedules on its own: what Celery does not decide (7 for Sunday, rejected junk) and beat's run keys."""

from __future__ import annotations

import pickle
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from fastq import Fastq
from fastq.schedules import (
    ParseException,
    crontab,
    crontab_parser,
    humanize_seconds,
    maybe_schedule,
    schedstate,
    schedule,
)


@pytest.fixture
def app() -> Fastq:
    return Fastq('t', broker='memory://', set_as_current=False)


def at(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)  # type: ignore[misc]


def test_celery_docs_examples() -> None:
    assert crontab_parser(60).parse('*/15') == {0, 15, 30, 45}
    assert crontab_parser(24).parse('*/4') == {0, 4, 8, 12, 16, 20}
    assert crontab_parser(7).parse('*') == set(range(7))
    assert crontab_parser(31, 1).parse('*/3') == set(range(1, 32, 3))
    assert crontab_parser(12, 1).parse('*/2') == {1, 3, 5, 7, 9, 11}
    assert crontab_parser(12, 1).parse('2-12/2') == {2, 4, 6, 8, 10, 12}
    assert crontab(day_of_month='*/5').day_of_month == {1, 6, 11, 16, 21, 26, 31}
    assert crontab(day_of_week='mon-fri').day_of_week == {1, 2, 3, 4, 5}
    assert crontab(month_of_year='jan,jul').month_of_year == {1, 7}


@pytest.mark.parametrize('spec', [7, '7', [0, 7], 'sun', '0'])
def test_day_of_week_7_is_sunday(spec: object) -> None:
    assert crontab(day_of_week=spec).day_of_week == {0}  # type: ignore[arg-type]


def test_day_of_week_ranges_ending_at_7() -> None:
    assert crontab(day_of_week='0-7').day_of_week == set(range(7))
    assert crontab(day_of_week='5-7').day_of_week == {5, 6, 0}
    assert crontab(day_of_week='sat-sun').day_of_week == {6, 0}


@pytest.mark.parametrize('spec', ['*/15/2', '1-5-9', '5/15', '*5', '/5', '1_0', '0x10', '*/0', '8', '-1', '1,,2'])
def test_junk_is_an_error(spec: str) -> None:
    with pytest.raises(ValueError):
        crontab(day_of_week=spec)


def test_impossible_dates_and_bad_types() -> None:
    with pytest.raises(ValueError, match='never occurs'):
        crontab(day_of_month=31, month_of_year='feb,apr')
    with pytest.raises(ValueError, match='Valid range is 0-59'):
        crontab(minute=[0, 60])
    with pytest.raises(TypeError):
        crontab(minute=1.5)  # type: ignore[arg-type]
    assert issubclass(ParseException, ValueError)


def test_from_string_repr_equality_pickle() -> None:
    c = crontab.from_string('*/5 9-17 1 jan mon-fri')
    assert c.minute == set(range(0, 60, 5)) and c.hour == set(range(9, 18))
    assert c.day_of_month == {1} and c.month_of_year == {1} and c.day_of_week == {1, 2, 3, 4, 5}
    assert repr(c) == '<crontab: */5 9-17 1 jan mon-fri (m/h/dM/MY/d)>'
    assert c == crontab(minute='0-59/5', hour='9-17', day_of_month='1', month_of_year=1, day_of_week='1-5')
    assert hash(c) == hash(pickle.loads(pickle.dumps(c)))
    assert pickle.loads(pickle.dumps(schedule(30))) == schedule(timedelta(seconds=30))
    with pytest.raises(ValueError, match='5 fields'):
        crontab.from_string('* * *')


def test_next_run_in_the_app_zone(app: Fastq) -> None:
    app.conf.timezone = 'Europe/Berlin'
    c = crontab(minute=0, hour=7, app=app)
    nxt = c.next_run_at(at(2024, 6, 1, 6))  # 08:00 in Berlin: today's 07:00 has passed
    assert nxt == datetime(2024, 6, 2, 7, tzinfo=ZoneInfo('Europe/Berlin'))
    naive = c.next_run_at(datetime(2024, 6, 1, 4))  # naive means UTC: 06:00 in Berlin
    assert naive == datetime(2024, 6, 1, 7, tzinfo=ZoneInfo('Europe/Berlin'))


def test_a_rare_date_is_found() -> None:
    c = crontab(minute=0, hour=0, day_of_month=29, month_of_year=2, day_of_week='mon')
    assert c.next_run_at(at(2024, 3, 1)) == at(2044, 2, 29)


def test_is_due_and_catch_up(app: Fastq) -> None:
    now = at(2024, 1, 1, 12, 0, 30)
    every = schedule(60, app=app, nowfun=lambda: now)
    assert every.is_due(now - timedelta(seconds=10)) == schedstate(False, 50.0)
    # three hours late: due once, and the next check is one interval away, not a storm of missed runs
    assert every.is_due(now - timedelta(hours=3)) == schedstate(True, 60.0)
    hourly = crontab(minute=0, app=app, nowfun=lambda: now)
    assert hourly.is_due(at(2024, 1, 1, 8, 0)) == schedstate(True, 3570.0)


def test_starting_deadline_skips_stale_cron_runs(app: Fastq) -> None:
    app.conf.beat_cron_starting_deadline = 120
    now = at(2024, 1, 1, 12, 30)
    hourly = crontab(minute=0, app=app, nowfun=lambda: now)
    assert hourly.is_due(at(2024, 1, 1, 11, 30)) == schedstate(False, 1800.0)
    half_hourly = crontab(minute='0,29', app=app, nowfun=lambda: now)
    assert half_hourly.is_due(at(2024, 1, 1, 11, 30)).is_due


def test_last_due_at_keys(app: Fastq) -> None:
    now = at(2024, 1, 1, 12, 34, 56, 789000)
    assert schedule(10, app=app).last_due_at(now) == at(2024, 1, 1, 12, 34, 50)
    assert schedule(0.25, app=app).last_due_at(now) == at(2024, 1, 1, 12, 34, 56, 750000)
    assert crontab(minute='*/15', app=app).last_due_at(now) == at(2024, 1, 1, 12, 30)
    assert crontab(minute=0, hour=3, day_of_week='mon', app=app).last_due_at(now) == at(2024, 1, 1, 3, 0)
    weekly = crontab(minute=0, hour=3, day_of_week='tue', app=app)
    assert weekly.last_due_at(now) == at(2023, 12, 26, 3, 0)


def test_last_due_at_skips_a_wall_time_the_clock_jumped_over(app: Fastq) -> None:
    app.conf.timezone = 'America/New_York'
    ny = ZoneInfo('America/New_York')
    c = crontab(minute=30, hour=2, app=app)
    # 2024-03-10 02:30 does not exist; it fires at 03:30 EDT, so at 03:10 the last run was the day before
    assert c.last_due_at(datetime(2024, 3, 10, 3, 10, tzinfo=ny)) == datetime(2024, 3, 9, 2, 30, tzinfo=ny)
    assert c.next_run_at(datetime(2024, 3, 10, 1, 0, tzinfo=ny)).astimezone(UTC) == at(2024, 3, 10, 7, 30)


def test_humanize_and_maybe_schedule(app: Fastq) -> None:
    assert humanize_seconds(300) == '5.00 minutes'
    assert humanize_seconds(1) == '1.00 second'
    assert humanize_seconds(0) == 'now'
    assert repr(schedule(300)) == '<freq: 5.00 minutes>'
    s = maybe_schedule(10, app=app)
    assert isinstance(s, schedule) and s.app is app and s.seconds == 10
    c = crontab()
    assert maybe_schedule(c, app=app) is c and c.app is app
    with pytest.raises(TypeError):
        maybe_schedule('every day')
