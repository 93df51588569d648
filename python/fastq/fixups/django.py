"""Django's fixup, as Celery installs it when `DJANGO_SETTINGS_MODULE` is set where the app is made.

A worker is a long-lived Django process that Django's request cycle never cleans up after: a database
connection opened by one task would be kept (and time out on the server) across hours of idle, inherited
by every forked pool child (two processes on one socket corrupt it), and Django itself would be set up only
if the project remembered to. So, as Celery's fixup does: the app's tasks get `DjangoTask`
(`delay_on_commit`); Django is set up (and its system checks run, unless --skip-checks) before the task
modules are imported; and in a worker, database connections and caches are closed before and after each
task, in each new pool child (the parent's descriptors closed without a word to the server, which would
end the parent's session too), and when beat starts inside it. `CELERY_DB_REUSE_MAX` (read from the app's
settings) keeps a connection for that many tasks before closing it.
"""

from __future__ import annotations

import contextlib
import os
import sys
import uuid
import warnings
from typing import Any

from fastq import signals
from fastq.exceptions import FastqWarning

__all__ = ['DjangoFixup', 'FixupWarning', 'fixup']

ERR_NOT_INSTALLED = """\
Environment variable DJANGO_SETTINGS_MODULE is defined
but Django isn't installed.  Won't apply Django fix-ups!
"""


class FixupWarning(FastqWarning):
    """A fixup could not be applied."""


def fixup(app: Any, env: str = 'DJANGO_SETTINGS_MODULE') -> DjangoFixup | None:
    """Install the Django fixup on `app` when the settings module's variable is set (else None)."""
    if not os.environ.get(env):
        return None
    try:
        import django  # noqa: F401
    except ImportError:
        warnings.warn(FixupWarning(ERR_NOT_INSTALLED), stacklevel=2)
        return None
    return DjangoFixup(app).install()


class DjangoFixup:
    def __init__(self, app: Any) -> None:
        self.app = app
        self._worker_fixup: DjangoWorkerFixup | None = None

    def install(self) -> DjangoFixup:
        cwd = os.getcwd()
        if cwd not in sys.path:  # (the project directory first, as Celery's fixup puts it)
            sys.path.insert(0, cwd)
        # Weak receivers, as Celery's: the app keeps its fixups (`app.fixups`), so they live as long as it does,
        # and an app let go (test apps: fastq.contrib.testing forgets them) takes them along; strong ones kept
        # every such app, its fixup and its worker fixup's per-task receivers for the life of the process.
        # No `sender=self.app` either (a signal keeps its senders): `on_import_modules` checks the sender.
        # Each with a uid of its own: a weak bound method's default key is the id of an object that dies at
        # once, which another fixup's could reuse, and then its receiver would not be connected.
        uid = uuid.uuid4().hex
        signals.import_modules.connect(self.on_import_modules, dispatch_uid=('django-fixup', uid))
        signals.worker_init.connect(self.on_worker_init, dispatch_uid=('django-fixup', uid))
        return self

    @property
    def worker_fixup(self) -> DjangoWorkerFixup:
        if self._worker_fixup is None:
            self._worker_fixup = DjangoWorkerFixup(self.app)
        return self._worker_fixup

    def on_import_modules(self, sender: Any = None, **kwargs: Any) -> None:
        """Before the task modules are imported: Django set up (they import models), and in a process that
        was not set up yet (a worker, a script), its system checks run as a worker's are."""
        if sender is not self.app:
            return  # another app's: its own fixup sees to it
        from django.apps import apps

        if apps.ready:  # a Django process (a web server sending tasks) is set up already: nothing to check
            return
        self.worker_fixup.validate_models()

    def on_worker_init(self, sender: Any = None, **kwargs: Any) -> None:
        if sender is not None and getattr(sender, 'app', None) is not self.app:
            return  # another app's worker: its own fixup sees to it
        self.worker_fixup.worker = sender
        self.worker_fixup.install()


class DjangoWorkerFixup:
    def __init__(self, app: Any) -> None:
        from django import db
        from django.core import cache

        self.app = app
        self.worker: Any = None
        self.db_reuse_max = app.conf.get('CELERY_DB_REUSE_MAX', None)
        self._db = db
        self._cache = cache
        self._recycles = 0
        self._installed = False

    def validate_models(self) -> None:
        import django
        from django.core.checks import run_checks

        django.setup()
        if not os.environ.get('CELERY_SKIP_CHECKS'):
            run_checks()

    def install(self) -> DjangoWorkerFixup:
        if self._installed:
            return self
        self._installed = True
        uid = ('django-worker-fixup', uuid.uuid4().hex)  # (weak, each its own uid: see DjangoFixup.install)
        signals.beat_embedded_init.connect(self.close_database, dispatch_uid=uid)
        signals.task_prerun.connect(self.on_task_prerun, dispatch_uid=uid)
        signals.task_postrun.connect(self.on_task_postrun, dispatch_uid=uid)
        signals.worker_process_init.connect(self.on_worker_process_init, dispatch_uid=uid)
        self.close_database()
        self.close_cache()
        return self

    def on_worker_process_init(self, **kwargs: Any) -> None:
        """In a new pool child: the connections it inherited are the parent's; close their descriptors here
        without telling the server (a close() would end the parent's session), then forget them."""
        for conn in self._db.connections.all():
            if conn and conn.connection is not None:
                with contextlib.suppress(Exception):
                    os.close(conn.connection.fileno())
        self._close_database()
        self.close_cache()

    def on_task_prerun(self, sender: Any = None, **kwargs: Any) -> None:
        if not getattr(getattr(sender, 'request', None), 'is_eager', False):
            self.close_database()

    def on_task_postrun(self, sender: Any = None, **kwargs: Any) -> None:
        if not getattr(getattr(sender, 'request', None), 'is_eager', False):
            self.close_database()
            self.close_cache()

    def close_database(self, **kwargs: Any) -> None:
        if not self.db_reuse_max:
            self._close_database()
            return
        if self._recycles >= self.db_reuse_max * 2:
            self._recycles = 0
            self._close_database()
        self._recycles += 1

    def _close_database(self) -> None:
        from django.db import DatabaseError, InterfaceError

        try:
            connections = self._db.connections.all(initialized_only=True)
        except TypeError:  # Django < 4.1
            connections = self._db.connections.all()
        prefork = getattr(self.worker, 'pool_name', None) == 'prefork'
        for conn in connections:
            try:
                conn.close()
                options = self._settings_databases().get(conn.alias, {}).get('OPTIONS', {})
                if options.get('pool') and prefork and hasattr(conn, 'close_pool'):
                    with contextlib.suppress(KeyError):
                        conn.close_pool()
            except InterfaceError:
                pass
            except DatabaseError as exc:
                if 'closed' not in str(exc) and 'not connected' not in str(exc):
                    raise

    @staticmethod
    def _settings_databases() -> dict[str, Any]:
        from django.conf import settings

        return dict(getattr(settings, 'DATABASES', {}) or {})

    def close_cache(self) -> None:
        with contextlib.suppress(TypeError, AttributeError):
            self._cache.close_caches()
