"""Celery scheduler classes hosted by fastq's beat (fastq.beat.hosted), in one process on the memory broker:
Celery's own `celery.beat.Scheduler` stands in for django-celery-beat's (tests/integration/
test_django_celery_beat.py runs that one for real)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest

from fastq import Fastq
from fastq.beat import EmbeddedService, Scheduler, Service
from fastq.beat.hosted import CeleryApp, HostedScheduler, celery_schedule
from fastq.beat.service import check_scheduler
from fastq.exceptions import ImproperlyConfigured
from fastq.schedules import crontab, schedule

celery_beat = pytest.importorskip('celery.beat')
celery_schedules = pytest.importorskip('celery.schedules')


@pytest.fixture
def app() -> Iterator[Fastq]:
    app = Fastq('proj', broker='memory://', backend='memory://', set_as_current=False)

    @app.task(name='proj.add')
    def add(x: int, y: int) -> int:
        return x + y

    app.conf.beat_schedule = {
        'fast': {'task': 'proj.add', 'schedule': schedule(0.05), 'args': [1, 2], 'options': {'priority': 3}},
        'nightly': {'task': 'proj.add', 'schedule': crontab(minute=0, hour=4), 'args': (1, 1)},
    }
    yield app
    app.close()


def drain(app: Fastq) -> list[Any]:
    consumer = app.broker.consumer(['celery'], 'test')
    out = consumer.fetch(1000, 0.01)
    consumer.ack([d.tag for d in out])
    consumer.close()
    return [d.message for d in out]


def wait_for_messages(app: Fastq, count: int, tick: Any = None, timeout: float = 30.0) -> list[Any]:
    got: list[Any] = []
    deadline = time.monotonic() + timeout
    while len(got) < count:
        assert time.monotonic() < deadline, f'{count} messages not sent in time (got {len(got)})'
        if tick is not None:
            tick()
        got += drain(app)
        time.sleep(0.01)
    return got


def test_celery_scheduler_classes_are_accepted_and_others_refused() -> None:
    class Mine(celery_beat.Scheduler):  # type: ignore[misc,name-defined]
        pass

    assert check_scheduler(Mine) is Mine
    assert check_scheduler('celery.beat:Scheduler') is celery_beat.Scheduler
    assert check_scheduler('celery.beat:PersistentScheduler') is Scheduler  # fastq's own, as before
    with pytest.raises(ImproperlyConfigured, match=r"'collections:OrderedDict' is not available in fastq beat"):
        check_scheduler('collections:OrderedDict')
    with pytest.raises(ImproperlyConfigured, match=r"'no.such:Scheduler' .* importing it raised ModuleNotFound"):
        check_scheduler('no.such:Scheduler')


def test_fastq_schedules_become_celerys(app: Fastq) -> None:
    view = CeleryApp(app)
    every = celery_schedule(schedule(30, relative=True), view)
    assert type(every) is celery_schedules.schedule and every.run_every.total_seconds() == 30 and every.relative
    cron = celery_schedule(crontab(minute='*/15', hour='9-17', day_of_week='mon-fri'), view)
    assert type(cron) is celery_schedules.crontab and cron == celery_schedules.crontab('*/15', '9-17', 'mon-fri')
    beat_schedule = view.conf.beat_schedule
    assert type(beat_schedule['nightly']['schedule']) is celery_schedules.crontab
    assert app.conf.beat_schedule['nightly']['schedule'] == crontab(minute=0, hour=4)  # the app's own untouched
    assert view.conf.timezone == app.conf.timezone and view.conf.get('nope', 1) == 1


def test_hosted_scheduler_sends_fastq_messages_as_celery_beat_does(app: Fastq) -> None:
    hosted = HostedScheduler(app, celery_beat.Scheduler)
    assert hosted.label == 'celery.beat.Scheduler' and hosted.max_interval == 300
    [message] = wait_for_messages(app, 1, hosted.tick)
    headers = message.headers
    assert headers['task'] == 'proj.add' and headers['celery_beat_task'] is True
    assert headers['argsrepr'] == '[1, 2]'  # (Celery's beat passes a list)
    assert message.properties['priority'] == 3
    assert set(hosted.instance.schedule) == {'fast', 'nightly'}
    assert type(hosted.instance.schedule['nightly'].schedule) is celery_schedules.crontab
    instance = hosted.instance
    hosted.standby()  # no longer leading: the instance is closed and dropped, a fresh one made on the next tick
    assert hosted.instance is None
    wait_for_messages(app, 1, hosted.tick)
    assert hosted.instance is not instance
    hosted.close()


def test_service_hosts_the_class_under_its_leader_lock(app: Fastq) -> None:
    from celery import signals as celery_signals

    seen: list[Any] = []

    def on_beat_init(sender: Any, **kwargs: Any) -> None:
        seen.append(sender.scheduler)

    celery_signals.beat_init.connect(on_beat_init, weak=False)
    app.conf.beat_scheduler = 'celery.beat:Scheduler'
    beat = EmbeddedService(app, lock_timeout=3)
    try:
        assert isinstance(beat.service.scheduler, HostedScheduler)
        beat.start()
        wait_for_messages(app, 3)
        assert beat.service.leader and beat.service.lock is not None
        standby = Service(app, scheduler_cls='celery.beat:Scheduler', lock_timeout=3)
        standby._elect(standby.lock or _lock(standby), app.broker)
        assert not standby.leader  # the lock is the leader's: the standby's class is never made nor ticked
        assert isinstance(standby.scheduler, HostedScheduler) and standby.scheduler.instance is None
    finally:
        beat.stop()
        celery_signals.beat_init.disconnect(on_beat_init)
    assert len(seen) == 1 and isinstance(seen[0], celery_beat.Scheduler)


def _lock(service: Service) -> Any:
    from fastq.beat.lock import LeaderLock

    return LeaderLock(service.app.broker, service.lock_name, service.lock_timeout)
