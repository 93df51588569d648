"""Beat in one process: entries from Celery's config formats, ticking, catch-up, the schedule file, the service."""

from __future__ import annotations

import logging
import os
import re
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from fastq import Fastq, signals
from fastq.beat import BeatLazyFunc, EmbeddedService, Scheduler, Service
from fastq.beat.entry import entries_from_config
from fastq.beat.scheduler import RUN_HEADER, SchedulingError
from fastq.beat.service import check_scheduler
from fastq.beat.store import ScheduleStore
from fastq.exceptions import ImproperlyConfigured
from fastq.schedules import crontab, schedule


class Clock:
    def __init__(self) -> None:
        self.now = datetime(2024, 5, 1, 12, 0, 0, 500000, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def app() -> Iterator[Fastq]:
    app = Fastq('proj', broker='memory://', backend='memory://', set_as_current=False)

    @app.task(name='proj.add')
    def add(x: int, y: int) -> int:
        return x + y

    yield app
    app.close()


def drain(app: Fastq, *queues: str) -> list[Any]:
    consumer = app.broker.consumer(list(queues or ['celery']), 'test')
    out = consumer.fetch(1000, 0.01)
    consumer.ack([d.tag for d in out])
    consumer.close()
    return [d.message for d in out]


def test_celery_dict_format(app: Fastq) -> None:
    entries = entries_from_config(
        app,
        {
            'seconds': {'task': 'proj.add', 'schedule': 30.0, 'args': (16, 16)},
            'delta': {'task': 'proj.add', 'schedule': timedelta(minutes=5), 'kwargs': {'x': 1, 'y': 2}},
            'cron': {'task': 'other.task', 'schedule': crontab(hour=7, minute=30, day_of_week=1)},
            'relative': {'task': 'proj.add', 'schedule': 3600, 'relative': True, 'options': {'queue': 'q'}},
            # Celery's beat names an entry by its key, whatever 'name' it carries (fastq refused the key)
            'keyed': {'task': 'proj.add', 'schedule': 5, 'name': 'other'},
        },
    )
    assert entries['keyed'].name == 'keyed' and 'other' not in entries
    assert isinstance(entries['seconds'].schedule, schedule) and entries['seconds'].schedule.seconds == 30
    assert entries['seconds'].args == (16, 16)
    assert entries['delta'].kwargs == {'x': 1, 'y': 2}
    assert entries['cron'].schedule.app is app
    assert entries['relative'].schedule.relative and entries['relative'].options == {'queue': 'q'}  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    'spec,error',
    [
        ({'schedule': 10}, "'task' is required"),
        ({'task': 'x'}, "'schedule' is required"),
        ({'task': 'x', 'schedule': 10, 'when': 1}, 'unknown key'),
        ({'task': 'x', 'schedule': 'daily'}, 'not a schedule'),
        ('x', 'expected a dict'),
    ],
)
def test_bad_entries_name_themselves(app: Fastq, spec: Any, error: str) -> None:
    with pytest.raises(ImproperlyConfigured, match=rf"beat_schedule\['bad'\]: .*{error}"):
        entries_from_config(app, {'bad': spec})


def test_add_periodic_task_in_configure_and_finalize_handlers(app: Fastq, caplog: pytest.LogCaptureFixture) -> None:
    add = app._tasks['proj.add']  # (reading app.tasks finalizes the app, before these handlers connect: Celery's)

    @app.on_after_configure.connect
    def setup_periodic_tasks(sender: Fastq, **kwargs: Any) -> None:
        sender.add_periodic_task(10.0, add.s(2, 2), name='add every 10')
        sender.add_periodic_task(30.0, add.s(3, 3), expires=10)
        sender.add_periodic_task(crontab(hour=7, minute=30), add.s(4, 4), queue='morning')

    @app.on_after_finalize.connect
    def later(sender: Fastq, **kwargs: Any) -> None:
        sender.add_periodic_task(60, add, args=(5, 5), name='from a task')

    app.finalize()
    schedule_ = app.conf.beat_schedule
    assert schedule_['add every 10'] == {
        'schedule': 10.0,
        'task': 'proj.add',
        'args': (2, 2),
        'kwargs': {},
        'options': {},
    }
    assert schedule_['proj.add(3, 3)']['options'] == {'expires': 10}
    assert schedule_['proj.add(4, 4)']['options'] == {'queue': 'morning'}
    assert schedule_['from a task']['args'] == (5, 5)
    key = app.add_periodic_task(1, add.s(3, 3))
    assert key == 'proj.add(3, 3)'
    assert 'shadowed a previous unnamed periodic task' in caplog.text
    assert set(entries_from_config(app, app.conf.beat_schedule)) == set(schedule_)


def test_tick_sends_due_entries_with_their_options(app: Fastq, clock: Clock) -> None:
    app.conf.beat_schedule = {
        'add': {
            'task': 'proj.add',
            'schedule': schedule(1.0, nowfun=clock),
            'args': (1, 2),
            'options': {'queue': 'periodic', 'priority': 7, 'expires': 30},
        },
        'remote': {'task': 'elsewhere.job', 'schedule': crontab(nowfun=clock), 'kwargs': {'k': BeatLazyFunc(clock)}},
    }
    scheduler = Scheduler(app)
    scheduler.setup()
    assert 0.9 < scheduler.tick() <= 1.0  # fresh entries wait one interval
    assert drain(app, 'periodic', 'celery') == []
    clock.advance(1.0)
    scheduler.tick()
    [sent] = drain(app, 'periodic')
    assert sent.headers['task'] == 'proj.add'
    assert sent.headers['celery_beat_task'] is True
    assert sent.headers[RUN_HEADER] == 'add@2024-05-01T12:00:01+00:00'
    assert sent.headers['expires'] is not None
    assert sent.properties['priority'] == 7
    clock.advance(59)
    scheduler.tick()
    [remote] = drain(app)
    assert remote.headers['task'] == 'elsewhere.job'
    assert remote.headers[RUN_HEADER] == 'remote@2024-05-01T12:01:00+00:00'
    assert '2024-05-01T12:01:00.500000+00:00' in remote.body.decode()  # BeatLazyFunc called at send time


def test_argsrepr_is_celerys(app: Fastq, clock: Clock) -> None:
    """Celery's beat passes the args as a list, shown as one, but no args as `()` (its `args or ()`), as
    monitors (flower, events) show them; fastq showed `[]`."""
    app.task(name='proj.ping')(lambda: None)
    app.conf.beat_schedule = {
        name: {'task': task, 'schedule': schedule(1.0, nowfun=clock), 'args': args}
        for name, task, args in [
            ('local', 'proj.ping', ()),
            ('remote', 'elsewhere.job', ()),
            ('two', 'proj.add', (1, 2)),
        ]
    }
    scheduler = Scheduler(app)
    scheduler.setup()
    clock.advance(1.0)
    scheduler.tick()
    shown = {m.headers[RUN_HEADER].split('@')[0]: m.headers['argsrepr'] for m in drain(app)}
    assert shown == {'local': '()', 'remote': '()', 'two': '[1, 2]'}
    app.tasks['proj.ping'].apply_async([])
    app.send_task('elsewhere.job', [])
    assert [m.headers['argsrepr'] for m in drain(app)] == ['()', '()']


def test_celery_schedule_objects_send_every_run(app: Fastq, clock: Clock) -> None:
    """A config that still imports `celery.schedules`: each run is sent (a Celery `schedule(10)` was keyed to
    the minute, so all but one run per half minute were skipped as "sent by another beat")."""
    from celery import schedules as cs

    app.conf.beat_schedule = {
        'every-10s': {'task': 'proj.add', 'schedule': cs.schedule(10, nowfun=clock), 'args': (1, 2)},
        'cron': {'task': 'proj.add', 'schedule': cs.crontab(nowfun=clock), 'args': (3, 4)},
    }
    scheduler = Scheduler(app)
    scheduler.setup()
    assert isinstance(scheduler.entries['cron'].schedule, crontab)
    sent = []
    for _ in range(12):
        clock.advance(10)
        scheduler.tick()
        sent += [m.headers['argsrepr'] for m in drain(app)]
    assert sent.count('[1, 2]') == 12
    assert sent.count('[3, 4]') == 2


def test_a_missed_stretch_runs_once(app: Fastq, clock: Clock, tmp_path: Path) -> None:
    app.conf.beat_schedule = {
        'every-10s': {'task': 'proj.add', 'schedule': schedule(10, nowfun=clock), 'args': (1, 2)},
        'hourly': {'task': 'proj.add', 'schedule': crontab(minute=0, nowfun=clock), 'args': (1, 2)},
    }
    store = ScheduleStore(str(tmp_path / 'schedule'))
    store.open(None, True)
    store.save('every-10s', clock.now - timedelta(hours=3), 5)
    store.save('hourly', clock.now - timedelta(hours=3), 5)
    scheduler = Scheduler(app, store)
    scheduler.setup()
    assert scheduler.tick() == 10.0
    assert len(drain(app)) == 2  # one catch-up run each, not 1080 and 3
    clock.advance(5)
    scheduler.tick()
    assert drain(app) == []
    assert store.load()['every-10s'] == (datetime(2024, 5, 1, 12, 0, 0, 500000, tzinfo=UTC), 6)


def test_restart_from_the_schedule_file_does_not_repeat_a_run(app: Fastq, clock: Clock, tmp_path: Path) -> None:
    app.conf.beat_schedule = {'every-2s': {'task': 'proj.add', 'schedule': schedule(2, nowfun=clock), 'args': (1, 2)}}
    path = str(tmp_path / 'schedule')
    first = Scheduler(app, ScheduleStore(path))
    assert first.store is not None
    first.store.open(None, True)
    first.setup()
    clock.advance(2)
    first.tick()
    assert len(drain(app)) == 1
    first.close()  # as if killed: the file was written before the send
    clock.advance(1)
    second = Scheduler(app, ScheduleStore(path))
    assert second.store is not None
    second.store.open(None, True)
    second.setup()
    assert second.entries['every-2s'].total_run_count == 1
    assert second.tick() == pytest.approx(1.0)
    assert drain(app) == []
    clock.advance(1)
    second.tick()
    assert len(drain(app)) == 1
    second.close()


def test_schedule_file_resets_when_the_zone_changes(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    store = ScheduleStore(str(tmp_path / 'schedule'))
    store.open('Europe/Berlin', True)
    store.save('x', datetime(2024, 1, 1, tzinfo=UTC), 3)
    store.close()
    store = ScheduleStore(str(tmp_path / 'schedule'))
    store.open('Europe/Paris', True)
    assert store.load() == {}
    assert "Reset: Timezone changed from 'Europe/Berlin' to 'Europe/Paris'" in caplog.text
    store.save('x', datetime(2024, 1, 1, tzinfo=UTC), 3)
    store.keep_only({'y'})
    assert store.load() == {}
    store.close()


def test_schedule_file_resets_as_celerys_when_the_zone_is_set_or_unset(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Celery compares the stored `timezone` only when one was stored: setting one where none was keeps the last
    runs, unsetting one drops them, saying `to None`. (fastq dropped them both ways, saying `''`.)"""
    path = str(tmp_path / 'schedule')
    kept = {'x': (datetime(2024, 1, 1, tzinfo=UTC), 3)}
    for tz, expected in [(None, {}), ('Europe/Paris', kept), (None, {})]:
        store = ScheduleStore(path)
        store.open(tz, True)
        assert store.load() == expected, tz
        store.save('x', *kept['x'])
        store.close()
    assert [r.getMessage() for r in caplog.records if 'Reset' in r.getMessage()] == [
        "Reset: Timezone changed from 'Europe/Paris' to None"
    ]


def test_a_foreign_schedule_file_is_replaced(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / 'celerybeat-schedule'
    path.write_bytes(b'\x13W\x9a\xce' + b'gdbm' * 100)  # what Celery's shelve leaves behind
    store = ScheduleStore(str(path))
    store.open(None, True)
    store.save('x', datetime(2024, 1, 1, tzinfo=UTC), 1)
    assert 'Removing corrupted schedule file' in caplog.text
    assert path.read_bytes().startswith(b'SQLite format 3')
    store.close()


def test_entry_whose_next_run_fails_does_not_stop_the_others(app: Fastq, clock: Clock) -> None:
    class Broken(schedule):
        def is_due(self, last_run_at: datetime) -> Any:
            raise RuntimeError('boom')

    app.conf.beat_schedule = {
        'broken': {'task': 'proj.add', 'schedule': Broken(1, nowfun=clock), 'args': (1, 2)},
        'fine': {'task': 'proj.add', 'schedule': schedule(1, nowfun=clock), 'args': (1, 2)},
    }
    scheduler = Scheduler(app)
    scheduler.setup()
    clock.advance(1)
    scheduler.tick()
    assert [m.headers[RUN_HEADER].split('@')[0] for m in drain(app)] == ['fine']


def test_a_task_that_cannot_be_sent_is_logged_as_celerys_beat_logs_it(
    app: Fastq, clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    """Celery's line (alerts match on it) and error type, and the next entry still goes out."""
    app.conf.beat_schedule = {
        'unsendable': {'task': 'proj.add', 'schedule': schedule(1, nowfun=clock), 'args': (object(), 2)},
        'fine': {'task': 'proj.add', 'schedule': schedule(1, nowfun=clock), 'args': (1, 2)},
    }
    scheduler = Scheduler(app)
    scheduler.setup()
    clock.advance(1)
    with caplog.at_level(logging.ERROR, 'celery.beat'):
        scheduler.tick()
    [record] = [r for r in caplog.records if r.getMessage().startswith('Message Error: ')]
    assert record.getMessage() == (
        "Message Error: Couldn't apply scheduled task unsendable: Object of type object is not JSON serializable"
    )
    assert record.exc_info is not None and record.exc_info[0] is SchedulingError
    assert [m.headers[RUN_HEADER].split('@')[0] for m in drain(app)] == ['fine']


@pytest.mark.parametrize(
    'name', [None, 'celery.beat:PersistentScheduler', 'celery.beat.PersistentScheduler', 'fastq.beat:Scheduler']
)
def test_scheduler_names_accepted(name: str | None) -> None:
    check_scheduler(name)


def test_other_schedulers_are_refused_clearly(app: Fastq, capsys: pytest.CaptureFixture[str]) -> None:
    from fastq.cli import main

    with pytest.raises(SystemExit) as exit_:
        main(['beat', '--scheduler', 'django_celery_beat.schedulers:DatabaseScheduler'], app=app)
    assert exit_.value.code == 1
    err = capsys.readouterr().err
    assert "beat_scheduler: 'django_celery_beat.schedulers:DatabaseScheduler' is not available in fastq" in err
    app.conf.beat_scheduler = 'collections:OrderedDict'  # (not a scheduler class)
    with pytest.raises(ImproperlyConfigured):
        Service(app)


def wait_until(predicate: Any, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, 'not met in time'
        time.sleep(0.01)


def test_embedded_service_sends_signals_runs_and_stops(
    app: Fastq, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, 'celery.beat')
    seen: list[str] = []

    def on_init(sender: Any, **kwargs: Any) -> None:
        seen.append('beat_init')

    def on_embedded(sender: Any, **kwargs: Any) -> None:
        seen.append('beat_embedded_init')

    signals.beat_init.connect(on_init)
    signals.beat_embedded_init.connect(on_embedded)
    app.conf.beat_schedule = {'fast': {'task': 'proj.add', 'schedule': 0.05, 'args': (1, 1)}}
    beat = EmbeddedService(app, schedule_filename=str(tmp_path / 'schedule'))
    try:
        beat.start()
        wait_until(lambda: app.broker.qsize('celery') >= 2)
    finally:
        beat.stop()
        signals.beat_init.disconnect(on_init)
        signals.beat_embedded_init.disconnect(on_embedded)
    assert not beat.is_alive()
    assert seen == ['beat_init', 'beat_embedded_init']
    assert app.broker.lease_holder('beat.proj') is None  # handed back on the way out
    # Celery's debug lines: the schedule as read, and each sleep
    assert 'Current schedule:\n<ScheduleEntry: fast proj.add(1, 1) <freq: now>>' in caplog.text
    assert 'beat: Waking up now.' in caplog.text  # (humanize_seconds: under a second is 'now')
    # the `%(processName)s` of Celery's embedded beat (a process named Beat), and only of what it logs: the
    # worker's main thread asks it to stop, there as in Celery
    names = {r.getMessage(): r.processName for r in caplog.records if r.name == 'celery.beat'}
    assert names.pop('beat: Shutting down...') == 'MainProcess'
    assert set(names.values()) == {'Beat'}


@pytest.mark.parametrize('remote_control', [False, True])
def test_banner_has_celerys_lines(
    app: Fastq, tmp_path: Path, remote_control: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`celery beat`'s Configuration block, the remote control node included when it answers."""
    monkeypatch.chdir(tmp_path)
    from fastq.cli.beat import banner

    service = Service(
        app, schedule_filename=str(tmp_path / 's'), max_interval=10, remote_control=remote_control, hostname='b@h'
    )
    lines = banner(app, service, 'INFO', None).splitlines()
    assert lines[1].startswith('LocalTime -> ') and lines[2] == 'Configuration ->'
    # the URL as kombu's as_uri masks it, and the schedule file as given (fastq: its own form, an absolute path)
    assert lines[3] == '    . broker -> memory://:**@localhost//'
    assert f'    . db -> {tmp_path / "s"}' in lines
    relative = Service(app, schedule_filename='celerybeat-schedule')
    assert relative.scheduler.info == '    . db -> celerybeat-schedule'
    assert '    . logfile -> [stderr]@%INFO' in lines
    assert '    . maxinterval -> 10.00 seconds (10s)' in lines
    assert ('    . remote control -> b@h' in lines) is remote_control


def test_two_services_one_leader_and_a_clean_handover(
    app: Fastq, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger='celery.beat')
    app.conf.beat_schedule = {'fast': {'task': 'proj.add', 'schedule': 0.05, 'args': (1, 1)}}
    first = Service(app, schedule_filename=str(tmp_path / 'a'), lock_timeout=0.6)
    second = Service(app, schedule_filename=str(tmp_path / 'b'), lock_timeout=0.6)
    threads = [threading.Thread(target=s.start, daemon=True) for s in (first, second)]
    try:
        threads[0].start()
        wait_until(lambda: first.leader)
        threads[1].start()
        wait_until(lambda: 'Standing by: another beat' in caplog.text)
        assert not second.leader
        first.stop(wait=True)
        wait_until(lambda: second.leader)
        sent_before = app.broker.qsize('celery')
        wait_until(lambda: app.broker.qsize('celery') > sent_before)
    finally:
        first.stop()
        second.stop(wait=True)
    runs = [m.headers[RUN_HEADER] for m in drain(app)]
    assert len(runs) == len(set(runs))


def test_backend_cleanup_is_scheduled_where_results_do_not_expire(tmp_path: Path) -> None:
    """Celery's default entry: `celery.backend_cleanup` daily at 4:00 when results expire (`result_expires`)
    but the backend does not expire them itself (the database backend), unless the schedule names it."""
    pytest.importorskip('sqlalchemy')
    db = Fastq('proj', broker='memory://', backend=f'db+sqlite:///{tmp_path}/r.db', set_as_current=False)
    scheduler = Scheduler(db)
    scheduler.setup()
    entry = scheduler.entries['celery.backend_cleanup']
    assert (entry.task, entry.schedule, entry.options['expires']) == (
        'celery.backend_cleanup',
        crontab('0', '4', '*'),
        12 * 3600,
    )
    db.conf.beat_schedule = {'celery.backend_cleanup': {'task': 'celery.backend_cleanup', 'schedule': 60.0}}
    scheduler.setup()
    assert scheduler.entries['celery.backend_cleanup'].schedule == schedule(60.0)  # (the schedule's own wins)
    db.conf.result_expires = None
    db.conf.beat_schedule = {}
    scheduler.setup()
    assert 'celery.backend_cleanup' not in scheduler.entries
    db.close()
    redis_like = Fastq('proj', broker='memory://', backend='memory://', set_as_current=False)  # (expires itself)
    scheduler = Scheduler(redis_like)
    scheduler.setup()
    assert 'celery.backend_cleanup' not in scheduler.entries
    redis_like.close()


def test_a_stale_pidfile_is_removed_saying_so(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`celery beat --pidfile` (and the worker's) say it on stderr when they replace a dead process's pidfile."""
    from fastq.cli.base import write_pidfile

    pidfile = tmp_path / 'beat.pid'
    pidfile.write_text('999999999\n')  # (above any pid_max: no such process)
    write_pidfile(str(pidfile))
    assert capsys.readouterr().err == 'Stale pidfile exists - Removing it.\n'
    assert int(pidfile.read_text()) == os.getpid()


def test_remote_control_logs_celerys_pidbox_lines(
    app: Fastq, tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Celery 5.7's beat pidbox lines: connected, a ping left unanswered by a stuck scheduler, no fanout."""
    import dataclasses

    from fastq.worker.control import NO_REPLY

    caplog.set_level(logging.INFO, 'celery.beat')
    service = Service(app, schedule_filename=str(tmp_path / 's'), max_interval=10, remote_control=True)
    service._start_remote_control(app.broker)
    try:
        assert 'beat pidbox: Connected to memory://:**@localhost//.' in caplog.messages
        service._last_tick = time.monotonic()
        assert service._ping(None) == {'ok': 'pong'}
        service._last_tick = time.monotonic() - 90
        assert service._ping(None) is NO_REPLY
    finally:
        service._pidbox.stop()
    [stuck] = [m for m in caplog.messages if m.startswith('beat pidbox: not answering')]
    assert re.fullmatch(r'beat pidbox: not answering ping, the scheduler has not ticked for 9\d\.\ds '
                        r'\(over the 60\.0s limit\)\.', stuck)  # fmt: skip
    monkeypatch.setattr(app.broker, 'features', dataclasses.replace(app.broker.features, fanout=False))
    Service(app, schedule_filename=str(tmp_path / 's'), remote_control=True)._start_remote_control(app.broker)
    assert caplog.messages[-1] == (
        'beat pidbox: the memory transport has no fanout exchanges, so remote control is unavailable.'
    )
