"""`shared_task`: tasks defined in reusable modules, bound to whichever app uses them.

A shared task is registered on every app that exists or is created later (at finalize), and the object the
decorator returns resolves to the *current* app's task at call time, as in Celery.

`@app.task` is shared too unless given `shared=False` (Celery's default, its `connect_on_app_finalize`): the
task is its own app's, and every app of the process finalized *after* the decorator ran registers a task of its
own for the same function (a test app made later has the project's tasks; an app finalized before does not).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from fastq import _state
from fastq.utils.local import Proxy

if TYPE_CHECKING:
    from fastq.app import Fastq
    from fastq.task import Task

__all__ = ['bind_shared_tasks', 'bind_tasks_shared_on_finalize', 'share_on_finalize', 'shared_task']

_shared: list[tuple[Callable[..., Any], dict[str, Any]]] = []
#: The functions of `@app.task` (shared, the default) with their options: what an app finalized later registers.
_on_finalize: list[tuple[Callable[..., Any], dict[str, Any]]] = []


def bind_shared_tasks(app: Fastq) -> None:
    for fun, options in _shared:
        app._task_from_fun(fun, **options)


def share_on_finalize(fun: Callable[..., Any], options: dict[str, Any]) -> None:
    """Register `fun` (given to `@app.task`) on every app finalized from now on, as Celery's shared tasks."""
    _on_finalize.append((fun, options))


def bind_tasks_shared_on_finalize(app: Fastq) -> None:
    """What an app being finalized registers of the `@app.task` tasks of the process (its own are there
    already: the function it was given under that name stays, as in Celery a name is never registered twice)."""
    for fun, options in list(_on_finalize):
        app._task_from_fun(fun, **options)


class _SharedTaskProxy(Proxy):
    """Looks like the task, resolved on each use against the current app: Celery's `Proxy`, so `isinstance(t,
    Task)`, `dir(t)`, pickling and the operators answer for the task, as they do in Celery.

    Setting or deleting an attribute reaches the task too, as through Celery's Proxy: the Testing guide's
    `patch('proj.tasks.send_order.retry')` must replace the retry the task body calls, not a proxy's copy.
    """

    __slots__ = ('_fun', '_options')

    def __init__(self, fun: Callable[..., Any], options: dict[str, Any]) -> None:
        object.__setattr__(self, '_fun', fun)
        object.__setattr__(self, '_options', options)
        super().__init__(self._resolve, name=fun.__name__, __doc__=fun.__doc__)

    def _resolve(self) -> Task[Any, Any]:
        app = _state.get_current_app()
        fun, options = object.__getattribute__(self, '_fun'), object.__getattribute__(self, '_options')
        return app._task_from_fun(fun, **options)


def shared_task(*args: Any, **options: Any) -> Any:
    """`@shared_task` or `@shared_task(bind=True, ...)`: a task usable from any app."""

    def create(fun: Callable[..., Any]) -> Any:
        if isinstance(fun, _SharedTaskProxy):  # (Celery's check, and words)
            raise TypeError(
                '@shared_task was applied more than once to the same function. Remove the extra @shared_task decorator.'
            )
        _shared.append((fun, options))
        for app in _state.all_apps():
            if app.finalized:
                app._task_from_fun(fun, **options)
        return _SharedTaskProxy(fun, options)

    if len(args) == 1 and callable(args[0]):  # (`shared_task(fun, name=...)` too, as Celery's)
        return create(args[0])
    return create
