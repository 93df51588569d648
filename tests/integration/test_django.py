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
