"""Small helpers: URL masking, node names, rates, schedules."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from fastq.schedules import crontab, schedule
from fastq.utils.nodenames import default_nodename, host_format, nodesplit
from fastq.utils.text import as_uri, mask_url, saferepr
from fastq.utils.time import parse_rate


@pytest.mark.parametrize(
    ('url', 'masked'),
    [
        ('redis://:secret@localhost:6379/0', 'redis://:**@localhost:6379/0'),
        ('amqp://guest:guest@host//', 'amqp://guest:**@host//'),
        ('sqlite:///x.db', 'sqlite:///x.db'),
        ('amqp://a:b@h1//;amqp://c:d@h2//', 'amqp://a:**@h1//;amqp://c:**@h2//'),
    ],
)
def test_mask_url(url: str, masked: str) -> None:
    assert mask_url(url) == masked


def test_host_format() -> None:
    assert host_format('w1@%h', host='box.example.com') == 'w1@box.example.com'
    assert host_format('%n-%d', host='box.example.com') == 'box-example.com'
    assert host_format('100%%', host='h') == '100%'
    assert nodesplit('a@b') == ('a', 'b') and nodesplit('b') == (None, 'b')
    assert default_nodename('w2') == 'celery@w2'  # a bare name is a host, as in Celery
    assert default_nodename(None).startswith('celery@')


@pytest.mark.parametrize(
    ('rate', 'per_second'),
    [
        ('10/s', 10.0),
        ('60/m', 1.0),
        ('3600/h', 1.0),
        ('5', 5.0),
        (None, 0.0),
        ('', 0.0),
        # read as Celery's rate(): float() of what is before the slash, no unit after it is /s
        ('1e3/s', 1000.0),
        (' 5 /m', 5 / 60),
        ('5/', 5.0),
        ('0.5', 0.5),
    ],
)
def test_parse_rate(rate: str | None, per_second: float) -> None:
    assert parse_rate(rate) == per_second


def test_parse_rate_refuses_in_floats_words() -> None:
    """Celery's rate_limit control reply quotes float's error: 'Invalid rate limit string: ValueError("could
    not convert string to float: 'abc'")'; a negative rate, which Celery takes and then never runs the task,
    and an unknown unit are refused."""
    with pytest.raises(ValueError, match="could not convert string to float: 'abc'"):
        parse_rate('abc')
    with pytest.raises(ValueError, match='must not be negative'):
        parse_rate('-5/s')
    with pytest.raises(ValueError, match="bad rate limit '10/x'"):
        parse_rate('10/x')


def test_saferepr_bounds() -> None:
    assert saferepr((2, 2)) == '(2, 2)'
    assert len(saferepr(list(range(100000)), 100)) <= 100


def test_schedule_is_due() -> None:
    s = schedule(timedelta(seconds=10))
    due, nxt = s.is_due(datetime.now(UTC) - timedelta(seconds=11))
    assert due and nxt == 10
    due, nxt = s.is_due(datetime.now(UTC))
    assert not due and 0 < nxt <= 10


def test_crontab_next_fire() -> None:
    c = crontab(minute=0, hour='*/3')
    start = datetime(2026, 1, 1, 1, 30, tzinfo=UTC)
    assert c.next_run_at(start) == datetime(2026, 1, 1, 3, 0, tzinfo=UTC)
    weekdays = crontab(hour=7, minute=30, day_of_week='mon-fri')
    saturday = datetime(2026, 1, 3, 8, 0, tzinfo=UTC)
    assert weekdays.next_run_at(saturday) == datetime(2026, 1, 5, 7, 30, tzinfo=UTC)
    assert crontab.from_string('*/15 * * * *') == crontab(minute='*/15')
    with pytest.raises(ValueError, match='Valid range is 0-59'):
        crontab(minute=61)


@pytest.mark.parametrize(
    'url',
    [
        'pyamqp://guest@localhost//',
        'amqp://',
        'amqps://',
        'amqp://user@h/vh',
        'amqp://u:p@127.0.0.1:5673/a%2Fb',
        'amqp://a:b@h1//;amqp://a:b@h2//',
        'redis://localhost',
        'redis://:secret@127.0.0.1:6379/1',
        'redis://user:pw@h/3',
        'rediss://:s@h:6380/0',
        'sentinel://h:26379;sentinel://h2:26379',
        'sqs://AK:SK@',
        'memory://',
        'redis+socket:///tmp/r.sock',
    ],
)
def test_as_uri_prints_broker_urls_as_celery(url: str) -> None:
    """The banner's transport and "Connected to" line: kombu's `Connection.as_uri()`, which Celery prints."""
    kombu = pytest.importorskip('kombu')
    assert as_uri(url) == kombu.Connection(url).as_uri()


def test_as_uri_masks_what_kombu_does_not_know() -> None:
    assert as_uri('sqlite:///tmp/b.db') == 'sqlite:///tmp/b.db'
