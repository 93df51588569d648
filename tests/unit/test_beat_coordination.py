"""The broker primitives beat relies on (claims, leases) on every broker, and a split brain that sends each run once."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from fastq import Fastq
from fastq.beat.scheduler import RUN_HEADER, Scheduler
from fastq.brokers.base import Broker
from fastq.schedules import crontab, schedule


def test_claim_is_granted_once(any_app: Fastq) -> None:
    broker = any_app.broker
    broker.connect()
    assert broker.claim('beat.t/a@1', 60)
    assert not broker.claim('beat.t/a@1', 60)
    assert broker.claim('beat.t/a@2', 60)


def test_claim_is_free_again_after_its_ttl(any_app: Fastq) -> None:
    broker = any_app.broker
    broker.connect()
    assert broker.claim('k', 0.2)
    time.sleep(0.3)
    assert broker.claim('k', 60)
    assert not broker.claim('k', 60)


def test_concurrent_claims_one_winner_per_key(any_app: Fastq) -> None:
    broker = any_app.broker
    broker.connect()
    keys = [f'run-{i}' for i in range(40)]
    with ThreadPoolExecutor(8) as pool:
        wins = list(pool.map(lambda k: broker.claim(k, 60), keys * 8))
    assert sum(wins) == len(keys)


def test_lease_holder_extends_others_wait(any_app: Fastq) -> None:
    broker = any_app.broker
    broker.connect()
    assert broker.lease_holder('beat.t') is None
    assert broker.lease('beat.t', 'a', 30)
    assert not broker.lease('beat.t', 'b', 30)
    assert broker.lease('beat.t', 'a', 30)  # extended by its holder
    assert broker.lease_holder('beat.t') == 'a'
    broker.release_lease('beat.t', 'b')  # not b's: a no-op
    assert broker.lease_holder('beat.t') == 'a'
    broker.release_lease('beat.t', 'a')
    assert broker.lease('beat.t', 'b', 30)
    assert broker.lease_holder('beat.t') == 'b'


def test_expired_lease_is_taken_over(any_app: Fastq) -> None:
    broker = any_app.broker
    broker.connect()
    assert broker.lease('beat.t', 'a', 0.2)
    time.sleep(0.3)
    assert broker.lease_holder('beat.t') is None
    assert broker.lease('beat.t', 'b', 30)
    assert not broker.lease('beat.t', 'a', 30)  # the old holder cannot extend what it lost


HOLD_LEASE = """
import sys, time
from fastq import Fastq
app = Fastq('t', broker=sys.argv[1], set_as_current=False)
assert app.broker.lease('beat.t', 'dying-holder', 600)
print('held', flush=True)
time.sleep(600)
"""


def test_sqlite_lease_of_a_dead_process_is_free_at_once(sqlite_app: Fastq) -> None:
    broker = sqlite_app.broker
    broker.connect()
    with subprocess.Popen(
        [sys.executable, '-c', HOLD_LEASE, sqlite_app.broker_url], stdout=subprocess.PIPE, text=True
    ) as proc:
        try:
            assert proc.stdout is not None and proc.stdout.readline().strip() == 'held'
            assert not broker.lease('beat.t', 'standby', 600)
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(10)
            assert broker.lease_holder('beat.t') is None
            assert broker.lease('beat.t', 'standby', 600)  # a 600 s lease, taken over without waiting for it
        finally:
            if proc.poll() is None:
                proc.kill()


class Clock:
    def __init__(self, start: datetime) -> None:
        self.now = start

    def __call__(self) -> datetime:
        return self.now


def _periodic_config(clock: Clock) -> dict[str, Any]:
    return {
        'every-second': {'task': 'remote.every_second', 'schedule': schedule(1.0, nowfun=clock)},
        'every-7s': {'task': 'remote.every_7s', 'schedule': schedule(timedelta(seconds=7), nowfun=clock)},
        'every-minute': {'task': 'remote.every_minute', 'schedule': crontab(nowfun=clock)},
    }


def _twin(app: Fastq) -> Fastq:
    """A second app on the same broker (the memory broker lives in its app, so there it is the same app)."""
    if app.broker_url.startswith('memory'):
        return app
    return Fastq('t', broker=app.broker_url, backend='memory://', set_as_current=False)


def _sent_runs(broker: Broker) -> list[str]:
    consumer = broker.consumer(['celery'], 'drain')
    runs: list[str] = []
    try:
        while True:
            batch = consumer.fetch(500, 0.5)
            if not batch:
                return runs
            runs += [d.message.headers[RUN_HEADER] for d in batch if d.message is not None]
            consumer.ack([d.tag for d in batch])
    finally:
        consumer.close()


def test_split_brain_sends_each_run_once(any_app: Fastq, caplog: pytest.LogCaptureFixture) -> None:
    """Two schedulers without a leader lock tick the same entries at the same (fake) times in random order:
    their claims still let exactly one of them send each run."""
    other_app = _twin(any_app)
    clock = Clock(datetime(2024, 5, 1, 11, 59, 30, tzinfo=UTC))
    rng = random.Random(7)
    any_app.conf.beat_schedule = _periodic_config(clock)
    other_app.conf.beat_schedule = _periodic_config(clock)
    schedulers = [Scheduler(any_app), Scheduler(other_app)]
    for s in schedulers:
        s.setup()
    start = clock.now
    caplog.set_level('INFO', logger='celery.beat')
    while clock.now < start + timedelta(minutes=5):
        clock.now += timedelta(seconds=rng.uniform(0.05, 0.6))
        rng.shuffle(schedulers)
        for s in schedulers:
            s.tick()
    runs = _sent_runs(any_app.broker)
    if other_app is not any_app:
        other_app.close()
    assert len(runs) == len(set(runs)), 'a run was sent twice'
    minutes = sorted(r for r in runs if r.startswith('every-minute@'))
    assert minutes == [
        f'every-minute@2024-05-01T{h:02}:{m:02}:00+00:00' for h, m in ((12, 0), (12, 1), (12, 2), (12, 3), (12, 4))
    ]
    assert sum(r.startswith('every-second@') for r in runs) > 200
    assert sum(r.startswith('every-7s@') for r in runs) >= 30
    skipped = [r for r in caplog.records if r.getMessage().startswith('Scheduler: Skipping due task')]
    sent = [r for r in caplog.records if r.getMessage().startswith('Scheduler: Sending due task')]
    assert len(sent) == len(runs) and len(skipped) > 100  # both sides really did find the runs due


def test_split_brain_after_downtime_catches_up_once(any_app: Fastq, tmp_path: Path) -> None:
    """Two schedulers whose last runs differ (one was down longer) agree on the one catch-up run."""
    other_app = _twin(any_app)
    clock = Clock(datetime(2024, 5, 1, 12, 0, 20, tzinfo=UTC))
    any_app.conf.beat_schedule = _periodic_config(clock)
    other_app.conf.beat_schedule = _periodic_config(clock)
    a, b = Scheduler(any_app), Scheduler(other_app)
    a.setup()
    b.setup()
    for name in a.entries:
        a.entries[name].last_run_at = clock.now - timedelta(hours=3)
        b.entries[name].last_run_at = clock.now - timedelta(days=2, minutes=17)
    a.tick()
    b.tick()
    runs = _sent_runs(any_app.broker)
    if other_app is not any_app:
        other_app.close()
    window = schedule(7).last_due_at(clock.now)  # runs every 7 s are keyed on 7 s windows since the epoch
    assert sorted(runs) == [
        f'every-7s@{window.isoformat()}',
        'every-minute@2024-05-01T12:00:00+00:00',
        'every-second@2024-05-01T12:00:20+00:00',
    ]
