"""django-celery-beat's DatabaseScheduler run by `fastq beat`: periodic tasks kept in the project's database
(as the Django admin edits them) are sent to a real fastq worker, and changes made while beat runs apply.

The project is a throwaway Django project on SQLite with django_celery_beat installed and migrated, on a
Redis broker. Runs are counted by what the task records, never by timing.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.harness import READY_TIMEOUT, WorkerProcess, lines, wait_until

pytest.importorskip('django_celery_beat')

SCHEDULER = 'django_celery_beat.schedulers:DatabaseScheduler'

FILES = {
    'proj/__init__.py': 'from .celery import app as celery_app\n__all__ = ("celery_app",)\n',
    'proj/settings.py': """
        import os
        SECRET_KEY = 'test'
        INSTALLED_APPS = ['django.contrib.contenttypes', 'django_celery_beat', 'shop']
        HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        DATABASES = {
            'default': {
                'ENGINE': 'django.db.backends.sqlite3',
                'NAME': os.path.join(HERE, 'db.sqlite3'),
                # (IMMEDIATE: a transaction that reads, then writes, waits for beat's write instead of
                # failing at once with "database is locked", as a deferred one's upgrade does)
                'OPTIONS': {'timeout': 30, 'transaction_mode': 'IMMEDIATE', 'init_command': 'PRAGMA journal_mode=WAL'},
            }
        }
        USE_TZ = True
        TIME_ZONE = 'Europe/Paris'
        CELERY_BROKER_URL = os.environ['TEST_BROKER_URL']
        CELERY_BEAT_SCHEDULE = {
            'from-settings': {'task': 'shop.tasks.record', 'schedule': 1.0, 'args': ['settings']},
        }
    """,
    'proj/celery.py': """
        import os
        from fastq import Celery

        os.environ.setdefault('DJANGO_SETTINGS_MODULE', 'proj.settings')
        app = Celery('proj')
        app.config_from_object('django.conf:settings', namespace='CELERY')
        app.autodiscover_tasks()
    """,
    'shop/__init__.py': '',
    'shop/tasks.py': """
        import os
        from fastq import shared_task

        @shared_task(ignore_result=True)
        def record(name, **extra):
            with open(os.environ['TEST_RUNS'], 'a') as f:
                f.write(name + '\\n')
    """,
    'client.py': """
        import json
        import sys
        import django
        django.setup()
        from django.core.management import call_command
        from django_celery_beat.models import IntervalSchedule, PeriodicTask

        def every_second():
            return IntervalSchedule.objects.get_or_create(every=1, period=IntervalSchedule.SECONDS)[0]

        step = sys.argv[1]
        if step == 'setup':
            call_command('migrate', verbosity=0)
            PeriodicTask.objects.create(
                name='tick-a', task='shop.tasks.record', interval=every_second(), args=json.dumps(['a'])
            )
        elif step == 'change':  # as the admin would: one task disabled, another added
            task = PeriodicTask.objects.get(name='tick-a')
            task.enabled = False
            task.save()
            PeriodicTask.objects.create(
                name='tick-c', task='shop.tasks.record', interval=every_second(), args=json.dumps(['c'])
            )
        else:
            rows = PeriodicTask.objects.filter(name__in=['tick-a', 'tick-c', 'from-settings'])
            print(json.dumps({
                t.name: {'count': t.total_run_count, 'last_run_at': str(t.last_run_at or ''), 'task': t.task,
                         'args': t.args, 'interval': str(t.interval)} for t in rows
            }))
    """,
}


@pytest.fixture
def project(tmp_path: Path, redis_url: str) -> Iterator[dict[str, str]]:
    for name, text in FILES.items():
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))
    env = dict(os.environ, DJANGO_SETTINGS_MODULE='proj.settings', TEST_BROKER_URL=redis_url)
    env.update(TEST_RUNS=str(tmp_path / 'runs.txt'), PYTHONPATH=os.pathsep.join([str(tmp_path), os.getcwd()]))
    env.pop('PYTEST_CURRENT_TEST', None)
    yield env


def run_script(tmp_path: Path, env: dict[str, str], *args: str) -> str:
    proc = subprocess.run([sys.executable, *args], cwd=tmp_path, capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


def counts(tmp_path: Path) -> dict[str, int]:
    out: dict[str, int] = {}
    for name in lines(tmp_path / 'runs.txt'):
        out[name] = out.get(name, 0) + 1
    return out


def test_database_scheduler_runs_under_fastq_beat(tmp_path: Path, project: dict[str, str]) -> None:
    run_script(tmp_path, project, 'client.py', 'setup')
    fastq = [sys.executable, '-m', 'fastq', '-A', 'proj']
    worker = WorkerProcess(tmp_path, project, ['-l', 'info', '-c', '1'], 'worker', [*fastq, 'worker']).start()
    beat = WorkerProcess(tmp_path, project, ['-l', 'info', '--scheduler', SCHEDULER], 'beat', [*fastq, 'beat'])
    beat.start(wait=False)
    try:
        beat.wait_for('beat: Starting...', READY_TIMEOUT)
        # the entry made in the database and the one of beat_schedule (synced into the table) both run
        wait_until(lambda: counts(tmp_path).get('a', 0) >= 2 and counts(tmp_path).get('settings', 0) >= 2, 60, 'runs')
        assert 'scheduler -> django_celery_beat.schedulers.DatabaseScheduler' in beat.log

        run_script(tmp_path, project, 'client.py', 'change')
        wait_until(lambda: counts(tmp_path).get('c', 0) >= 2, 60, 'the added task running')
        beat.wait_for('DatabaseScheduler: Schedule changed.')
        sent_a = beat.log.count('Sending due task tick-a ')
        wait_until(lambda: counts(tmp_path).get('c', 0) >= 5, 60, 'more runs of the added task')
        assert beat.log.count('Sending due task tick-a ') == sent_a  # disabled: no longer sent
        wait_until(lambda: counts(tmp_path).get('a', 0) == sent_a, 60, 'every sent run of tick-a done')
    finally:
        beat_code = beat.stop(30)
        worker.stop(30)
    assert beat_code == 0, beat.log
    rows = json.loads(run_script(tmp_path, project, 'client.py', 'report'))
    assert rows['tick-a']['count'] == sent_a == counts(tmp_path)['a']  # written back, run by run
    assert rows['tick-c']['count'] == beat.log.count('Sending due task tick-c ') >= 5
    assert rows['tick-c']['last_run_at'] and rows['from-settings']['last_run_at']  # (tick-a's: None once disabled)
    settings_row = rows['from-settings']
    assert settings_row['task'] == 'shop.tasks.record' and json.loads(settings_row['args']) == ['settings']
    assert settings_row['interval'] == 'every second'
    assert settings_row['count'] == beat.log.count('Sending due task from-settings ') >= 2


ORACLE = """
    import json
    import os
    import django
    django.setup()
    from django.core.management import call_command
    from django_celery_beat.models import IntervalSchedule, PeriodicTask
    from django_celery_beat.schedulers import DatabaseScheduler

    call_command('migrate', verbosity=0)
    every = IntervalSchedule.objects.get_or_create(every=1, period=IntervalSchedule.HOURS)[0]
    options = dict(queue='periodic', exchange='periodic', routing_key='periodic', priority=7, expire_seconds=600,
                   headers=json.dumps({'x-origin': 'admin'}), args=json.dumps(['one']),
                   kwargs=json.dumps({'three': 3}))
    PeriodicTask.objects.create(name='registered', task='shop.tasks.record', interval=every, **options)
    PeriodicTask.objects.create(name='remote', task='elsewhere.task', interval=every, **options)

    import redis
    client = redis.Redis.from_url(os.environ['TEST_BROKER_URL'])

    def drain():  # (a priority's messages have a list of their own: periodic, periodic\x06\x166 ...)
        out = []
        for key in sorted(client.scan_iter('periodic*')):
            out += [json.loads(raw) for raw in client.lrange(key, 0, -1)]
            client.delete(key)
        return out

    def send_all(scheduler):
        for name in ('registered', 'remote'):
            scheduler.apply_entry(scheduler.schedule[name], producer=scheduler.producer)
        return drain()

    # Celery's beat: DatabaseScheduler on a Celery app reading the same settings
    from celery import Celery
    celery_app = Celery('proj', set_as_current=True)
    celery_app.config_from_object('django.conf:settings', namespace='CELERY')

    @celery_app.task(name='shop.tasks.record', ignore_result=True)
    def record(name, **extra):
        pass

    celery_sent = send_all(DatabaseScheduler(app=celery_app))

    # fastq's beat, hosting the same class (named by the CELERY_BEAT_SCHEDULER setting)
    from proj import celery_app as fastq_app
    from fastq.beat.service import Service
    fastq_app.conf.beat_scheduler = 'django_celery_beat.schedulers:DatabaseScheduler'
    hosted = Service(fastq_app).scheduler
    with hosted.celery_app.as_current():
        fastq_sent = send_all(hosted._start())
    print(json.dumps({'celery': celery_sent, 'fastq': fastq_sent}))
"""

VARYING = {'id', 'root_id', 'correlation_id', 'delivery_tag', 'origin', 'expires', 'reply_to'}


def comparable(message: dict[str, Any]) -> dict[str, Any]:
    """A message as sent to Redis, without what differs from one send to the next (ids, sender, clock) and
    fastq's own `fastq_sent_at` header (which Celery's workers ignore, as any header they do not know)."""
    import base64

    headers = {k: v for k, v in message['headers'].items() if k not in VARYING | {'fastq_sent_at'}}
    properties = {k: v for k, v in message['properties'].items() if k not in VARYING}
    body = json.loads(base64.b64decode(message['body']))
    return {
        **{k: v for k, v in message.items() if k not in ('headers', 'properties', 'body')},
        'headers': headers,
        'expires_set': message['headers'].get('expires') is not None,
        'properties': properties,
        'body': body,
    }


def test_messages_are_those_celery_beat_sends(tmp_path: Path, project: dict[str, str]) -> None:
    """The same database entries sent by Celery's beat (DatabaseScheduler on a Celery app) and by fastq's
    (the same class hosted, named by CELERY_BEAT_SCHEDULER): the same messages, for a task registered in
    the beat's app and for one that is not (sent by name)."""
    (tmp_path / 'oracle.py').write_text(textwrap.dedent(ORACLE))
    out = json.loads(run_script(tmp_path, project, 'oracle.py').strip().splitlines()[-1])
    celery_sent = {m['headers']['periodic_task_name']: comparable(m) for m in out['celery']}
    fastq_sent = {m['headers']['periodic_task_name']: comparable(m) for m in out['fastq']}
    assert sorted(celery_sent) == sorted(fastq_sent) == ['registered', 'remote']
    # Celery's send_task of a task it does not know puts ignore_result=None in the header; so does fastq's
    assert celery_sent['remote']['headers']['ignore_result'] is None
    assert fastq_sent == celery_sent
    registered = fastq_sent['registered']
    assert registered['headers']['task'] == 'shop.tasks.record'
    assert registered['headers']['celery_beat_task'] is True and registered['headers']['x-origin'] == 'admin'
    assert registered['properties']['priority'] == 7 and registered['expires_set']
    assert registered['properties']['delivery_info'] == {'exchange': 'periodic', 'routing_key': 'periodic'}
    assert registered['body'][:2] == [['one'], {'three': 3}] and registered['headers']['argsrepr'] == "['one']"
