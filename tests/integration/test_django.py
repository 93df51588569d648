"""A Django project configures fastq the way Celery's Django guide says: one import changes."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytest.importorskip('django')

FILES = {
    'proj/__init__.py': 'from .celery import app as celery_app\n__all__ = ("celery_app",)\n',
    'proj/settings.py': """
        SECRET_KEY = 'test'
        INSTALLED_APPS = ['django.contrib.contenttypes', 'shop']
        DATABASES = {}
        CELERY_BROKER_URL = 'memory://'
        CELERY_RESULT_BACKEND = 'memory://'
        CELERY_TASK_ALWAYS_EAGER = True
        CELERY_TIMEZONE = 'Europe/Paris'
        DEBUG = True
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
        from fastq import shared_task

        @shared_task
        def total(prices):
            return sum(prices)
    """,
    'check.py': """
        import django
        django.setup()
        from proj import celery_app
        from shop.tasks import total
        celery_app.finalize()
        assert celery_app.conf.broker_url == 'memory://', celery_app.conf.broker_url
        assert celery_app.conf.timezone == 'Europe/Paris'
        assert 'shop.tasks.total' in celery_app.tasks, sorted(celery_app.tasks)
        assert total.delay([1, 2, 3]).get() == 6
        print('ok')
    """,
}


def test_django_project(tmp_path: Path) -> None:
    for name, text in FILES.items():
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))
    proc = subprocess.run(
        [sys.executable, 'check.py'],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env={'DJANGO_SETTINGS_MODULE': 'proj.settings', 'PATH': '/usr/bin:/bin', 'PYTHONPATH': str(tmp_path)},
        timeout=120,
    )
    assert proc.stdout.strip() == 'ok', proc.stderr


WORKER_FILES = {
    'proj/__init__.py': 'from .celery import app as celery_app\n__all__ = ("celery_app",)\n',
    'proj/settings.py': """
        import os
        SECRET_KEY = 'test'
        INSTALLED_APPS = ['django.contrib.contenttypes', 'shop']
        HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        DATABASES = {'default': {'ENGINE': 'django.db.backends.sqlite3', 'NAME': os.path.join(HERE, 'db.sqlite3')}}
        CELERY_BROKER_URL = 'sqlite:///' + os.path.join(HERE, 'broker.sqlite3')
        CELERY_RESULT_BACKEND = 'sqlite:///' + os.path.join(HERE, 'results.sqlite3')
        USE_TZ = True
    """,
    'proj/celery.py': FILES['proj/celery.py'],
    'shop/__init__.py': '',
    'shop/models.py': """
        from django.db import models

        class Item(models.Model):
            name = models.CharField(max_length=20)

            class Meta:
                app_label = 'shop'
    """,
    'shop/tasks.py': """
        from django.db import connection
        from fastq import shared_task
        from shop.models import Item

        @shared_task
        def make(name):
            Item.objects.create(name=name)
            return sorted(Item.objects.values_list('name', flat=True))

        @shared_task
        def fresh_connection():
            # the fixup closed the connection the last task used: each task starts without one
            return connection.connection is None
    """,
    'client.py': """
        import sys
        import django
        django.setup()
        from django.core.management import call_command
        from django.db import transaction
        from proj import celery_app
        from fastq.contrib.django.task import DjangoTask
        from shop.tasks import make, fresh_connection

        step = sys.argv[1]
        if step == 'setup':
            call_command('migrate', run_syncdb=True, verbosity=0)
            task = celery_app.tasks['shop.tasks.make']
            assert isinstance(task, DjangoTask), type(task).__mro__
            queue = lambda: celery_app.broker.qsize('celery')
            with transaction.atomic():
                make.delay_on_commit('a')
                assert queue() == 0  # not before the commit
            assert queue() == 1
            try:
                with transaction.atomic():
                    make.apply_async_on_commit(('never',))
                    raise RuntimeError('rolled back')
            except RuntimeError:
                pass
            assert queue() == 1  # nor after a rollback
        else:
            assert make.delay('b').get(timeout=60) == ['a', 'b']
            assert fresh_connection.delay().get(timeout=60) is True
        print('ok')
    """,
}


def test_a_worker_of_a_django_project(tmp_path: Path) -> None:
    """Celery's Django fixup, in fastq: tasks are DjangoTasks (`delay_on_commit` waits for the commit, a
    rollback sends nothing); the worker sets Django up before importing the tasks (they import models) and
    closes the database connection around each task."""
    from tests.harness import WorkerProcess

    for name, text in WORKER_FILES.items():
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))
    env = {'DJANGO_SETTINGS_MODULE': 'proj.settings', 'PATH': '/usr/bin:/bin', 'PYTHONPATH': str(tmp_path)}

    def client(step: str) -> None:
        proc = subprocess.run(
            [sys.executable, 'client.py', step], cwd=tmp_path, capture_output=True, text=True, env=env, timeout=120
        )
        assert proc.stdout.strip() == 'ok', proc.stderr

    client('setup')
    command = [sys.executable, '-m', 'fastq', '-A', 'proj', 'worker']
    w = WorkerProcess(tmp_path, env, ['-l', 'info', '-c', '1'], 'django-worker', command).start()
    try:
        client('run')
    finally:
        w.stop(30)
    assert 'shop.tasks.make' in w.log
