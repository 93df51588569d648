"""Django's database connections as the result backends use them, from any thread of any process.

Django keeps one connection per thread (per greenlet under gevent), opened on first use and closed by
Django's request cycle, which a worker does not have. Inside a task the Django fixup closes connections
around it, but a worker also stores results outside tasks: the parent's threads store the states of revoked,
expired and lost tasks, and a pool child stores an internal error after its task ended. Such an operation is
treated as Django treats a request: before and after it, this thread's connections that are unusable or
older than `CONN_MAX_AGE` (with Django's default of 0: all of them) are closed, unless a transaction is open
on them. Elsewhere (a web process, a script, a task) connections are left to whoever owns the thread, as
django-celery-results leaves them.

Django refuses its ORM in a thread running an event loop (fastq's asyncio pool stores results from its
loop), so there an operation runs in a small pool of threads of its own, each handled as a worker thread
outside tasks, while the caller blocks as it would on any other backend's round trip.

A connection the server closed under us fails with InterfaceError; as django-celery-results' retry does, the
connection is closed and the operation runs once more on a new one (not inside a caller's transaction, which
a new connection could not continue).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from fastq import _state
from fastq.exceptions import ImproperlyConfigured

__all__ = ['closing_connections', 'current_request', 'models', 'run']

T = TypeVar('T')

E_NOT_READY = (
    'The django-db result backend needs Django set up first: call django.setup() (a worker with '
    'DJANGO_SETTINGS_MODULE set does it before importing tasks)'
)
E_NOT_INSTALLED = (
    "The django-db result backend needs 'django_celery_results' in INSTALLED_APPS, and its tables "
    '(python manage.py migrate django_celery_results)'
)

#: Threads for operations asked for from an event loop's thread (see the module's docstring).
LOOP_THREADS = 4

_models: tuple[Any, Any, Any] | None = None
_offload: tuple[int, ThreadPoolExecutor] | None = None  # (with the pid that made it: a forked child makes its own)
_offload_lock = threading.Lock()


def models() -> tuple[Any, Any, Any]:
    """django-celery-results' `(TaskResult, GroupResult, ChordCounter)`: importable only once Django is set up."""
    global _models
    if _models is None:
        from django.apps import apps
        from django.core.exceptions import AppRegistryNotReady

        try:
            apps.check_models_ready()
        except AppRegistryNotReady as exc:
            raise ImproperlyConfigured(E_NOT_READY) from exc
        if not apps.is_installed('django_celery_results'):
            raise ImproperlyConfigured(E_NOT_INSTALLED)
        from django_celery_results.models import ChordCounter, GroupResult, TaskResult

        _models = (TaskResult, GroupResult, ChordCounter)
    return _models


def current_request(task_id: str) -> Any:
    """The request of the task this thread is executing, if it is `task_id`'s: fastq's worker stores STARTED
    without one, where Celery passes it (its row then has the task's name, arguments and worker)."""
    task = _state.get_current_task()
    if task is None:
        return None
    request = task.request
    return request if getattr(request, 'id', None) == task_id else None


def _managed() -> bool:
    """Whether this thread is a worker's outside any task: nobody else will close its connections."""
    return _state.worker_hostname is not None and _state.get_current_worker_task() is None


def closing_connections(close_all: bool = False) -> None:
    """Close this thread's connections that are unusable or past `CONN_MAX_AGE` (all of them with
    `close_all`), leaving those inside a transaction."""
    from django.db import connections

    for conn in connections.all(initialized_only=True):
        if conn.in_atomic_block:
            continue
        with contextlib.suppress(Exception):  # (a broken connection may fail to close: it is gone either way)
            if close_all:
                conn.close()
            else:
                conn.close_if_unusable_or_obsolete()


def run(fn: Callable[[], T], managed: bool | None = None) -> T:
    """`fn()` (one backend operation), with this thread's connections handled as the module says.

    `managed` forces the request-like handling on (an executor thread of the asyncio client) or off.
    """
    from django.db import InterfaceError

    if _in_event_loop():
        return _offloaded().submit(lambda: run(fn, True)).result()
    if managed is None:
        managed = _managed()
    if managed:
        closing_connections()
    try:
        try:
            return fn()
        except InterfaceError:
            from django.db import connections

            if any(conn.in_atomic_block for conn in connections.all(initialized_only=True)):
                raise
            closing_connections(close_all=True)
            return fn()
    finally:
        if managed:
            closing_connections()


def _in_event_loop() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


def _offloaded() -> ThreadPoolExecutor:
    global _offload
    with _offload_lock:
        if _offload is None or _offload[0] != os.getpid():
            _offload = (os.getpid(), ThreadPoolExecutor(LOOP_THREADS, thread_name_prefix='fastq-django-db'))
        return _offload[1]
