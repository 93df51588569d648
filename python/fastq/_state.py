"""Process-wide state that Celery also keeps globally: the current app and the task being executed.

Everything else is app-scoped. The current app exists so that `shared_task` and `AsyncResult(id)` without
`app=` work as in Celery; the task stack so that tasks sent from inside a task get `parent_id`/`root_id`
and so that `Task.request` answers for the running task.

The current app is one per process, deliberately: Celery keeps it per thread, so in a thread the user starts
`current_app` (and a shared task, `AsyncResult(id)`) is Celery's fallback 'default' app, with none of the
project's settings, unless that thread calls `app.set_current()` again; fastq's is the app made current,
whichever thread asks.
"""

from __future__ import annotations

import os
import weakref
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from fastq.app import Fastq
    from fastq.task import Task

_current_app: Fastq | None = None
_default_app: Fastq | None = None
#: The node name of the worker this process belongs to (its parent's, in a pool child), for the signals Celery
#: sends with it as sender (`worker_process_init`, `worker_process_shutdown`); None outside a worker.
worker_hostname: str | None = None
#: The apps of the process, for `shared_task` (which registers on those finalized): weakly held, as Celery's, so
#: an app dropped (a test's) is neither kept alive nor given the tasks of later modules.
_apps: weakref.WeakSet[Any] = weakref.WeakSet()
# The tasks executing, innermost last: per thread and per asyncio task (the asyncio pool runs many at once in
# one thread). A tuple, replaced on each change, so an asyncio task's copy of the context stays its own.
_tasks: ContextVar[tuple[Task[Any, Any], ...]] = ContextVar('fastq.current_tasks', default=())


def set_current_app(app: Fastq | None) -> None:
    global _current_app
    _current_app = app


def get_current_app() -> Fastq:
    global _default_app
    if _current_app is not None:
        return _current_app
    if _default_app is None:
        from fastq.app import Fastq

        _default_app = Fastq('default', set_as_current=False)
    return _default_app


def set_default_app(app: Fastq | None) -> None:
    global _default_app
    _default_app = app


def _app_or_default(app: Fastq | None = None) -> Fastq:
    return app if app is not None else get_current_app()


def _app_or_default_trace(app: Fastq | None = None) -> Fastq:
    """The Application guide's "Breaking the chain" aid (`CELERY_TRACE_APP=1`), as Celery's: code that was not
    handed an app, and falls back to the current one, prints where it did; falling back to the default app
    (no app was ever made current) is an error in the main process, where an app should always be known."""
    import multiprocessing
    import traceback

    if app is not None:
        return app
    if _current_app is not None:
        print('-- RETURNING TO CURRENT APP --')  # (Celery's words, on stdout; the stack on stderr)
        traceback.print_stack()
        return _current_app
    if multiprocessing.current_process().name == 'MainProcess':
        raise Exception('DEFAULT APP')
    print('-- RETURNING TO DEFAULT APP --')
    traceback.print_stack()
    return get_current_app()


#: `app`, else the current app: what helpers taking `app=None` use (AsyncResult, result_from_tuple, the events
#: snapshot, contrib.migrate). Traced with `CELERY_TRACE_APP` set when this module is imported, as Celery's.
app_or_default = _app_or_default


def enable_trace() -> None:
    """Trace fallbacks to the current or default app (what `CELERY_TRACE_APP` turns on), as Celery's."""
    global app_or_default
    app_or_default = _app_or_default_trace


def disable_trace() -> None:
    global app_or_default
    app_or_default = _app_or_default


if os.environ.get('CELERY_TRACE_APP'):
    enable_trace()


def register_app(app: Fastq) -> None:
    _apps.add(app)


def unregister_app(app: Fastq) -> None:
    """Forget a closed app (so `shared_task` no longer registers on it): test apps come and go."""
    _apps.discard(app)


def all_apps() -> list[Fastq]:
    return list(_apps)


def push_current_task(task: Task[Any, Any]) -> None:
    _tasks.set((*_tasks.get(), task))


def pop_current_task() -> None:
    _tasks.set(_tasks.get()[:-1])


def get_current_task() -> Task[Any, Any] | None:
    stack = _tasks.get()
    return stack[-1] if stack else None


def get_current_worker_task() -> Task[Any, Any] | None:
    """The innermost task executed by a worker (not called directly or eagerly)."""
    for task in reversed(_tasks.get()):
        request = task.request
        if not request.called_directly and not request.is_eager:
            found: Task[Any, Any] = task
            return found
    return None
