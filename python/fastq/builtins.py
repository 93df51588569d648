"""Celery's built-in tasks, in every app: Celery clients send them by name, so a fastq worker must run them.

`celery.chord_unlock` joins a chord by polling when the result backend cannot count parts; `celery.map`,
`celery.starmap` and `celery.chunks` run one task over many arguments; `celery.group`, `celery.chain` and
`celery.chord` are Celery's old ways of sending workflows; `celery.accumulate` collects arguments; and
`celery.backend_cleanup` deletes expired results. They are registered when the app is finalized (or first
needed), under Celery's names and options, and the worker banner leaves them out, as Celery's does.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from fastq import states
from fastq.exceptions import ChordError

if TYPE_CHECKING:
    from fastq.app import Fastq
    from fastq.task import Task

__all__ = ['builtin', 'register_builtins']


def register_builtins(app: Fastq) -> None:
    """Add the built-in tasks to `app` (once)."""
    if 'celery.chord_unlock' in app.tasks:
        return
    for add in _BUILTINS:
        add(app)


def builtin(app: Fastq, name: str) -> Task[Any, Any]:
    """A built-in task of `app`, registering them first if the app was not finalized."""
    register_builtins(app)
    return app.tasks[name]


def _backend_cleanup(app: Fastq) -> None:
    @app.task(name='celery.backend_cleanup', shared=False, lazy=False)
    def backend_cleanup() -> None:
        app.backend.cleanup()


def _accumulate(app: Fastq) -> None:
    @app.task(name='celery.accumulate', bind=True, shared=False, lazy=False)
    def accumulate(self: Any, *args: Any, **kwargs: Any) -> Any:
        index = kwargs.get('index')
        return args[index] if index is not None else args


def _chord_unlock(app: Fastq) -> None:
    from fastq.backends.chords import chord_error
    from fastq.canvas import maybe_signature
    from fastq.result import GroupResult, result_from_tuple

    @app.task(
        name='celery.chord_unlock',
        max_retries=None,
        shared=False,
        default_retry_delay=app.conf.result_chord_retry_interval,
        ignore_result=True,
        lazy=False,
        bind=True,
    )
    def unlock_chord(
        self: Any,
        /,
        group_id: str,
        callback: Any,
        interval: float | None = None,
        max_retries: int | None = None,
        result: Any = None,
        **kwargs: Any,
    ) -> None:
        """Retry until every header task is ready, then send the body with their values (or fail it)."""
        interval = self.default_retry_delay if interval is None else interval
        deps = GroupResult(group_id, [result_from_tuple(r, app) for r in result or ()], app=app)
        callback = maybe_signature(callback, app=app)
        try:
            ready = deps.ready()
        except Exception as exc:
            raise self.retry(exc=exc, countdown=interval, max_retries=max_retries) from exc
        if not ready:
            raise self.retry(countdown=interval, max_retries=max_retries)
        try:
            values = deps.join(timeout=app.conf.result_chord_join_timeout, disable_sync_subtasks=False)
        except Exception as exc:
            culprit = next((r for r in deps.results if r.state in states.PROPAGATE_STATES), None)
            reason = f'Dependency {culprit.id} raised {exc!r}' if culprit is not None else repr(exc)
            app.backend.chord_error_from_stack(callback, chord_error(reason, exc))
            return
        try:
            callback.delay(values)
        except Exception as exc:
            app.backend.chord_error_from_stack(callback, ChordError(f'Callback error: {exc!r}'))


def _map(app: Fastq) -> None:
    from fastq.canvas import signature

    @app.task(name='celery.map', shared=False, lazy=False)
    def xmap(task: Any, it: Any) -> list[Any]:
        fun = signature(task, app=app).type
        return [fun(item) for item in it]


def _starmap(app: Fastq) -> None:
    from fastq.canvas import signature

    @app.task(name='celery.starmap', shared=False, lazy=False)
    def xstarmap(task: Any, it: Any) -> list[Any]:
        fun = signature(task, app=app).type
        return [fun(*item) for item in it]


def _chunks(app: Fastq) -> None:
    from fastq.canvas import chunks as _chunks_sig

    @app.task(name='celery.chunks', shared=False, lazy=False)
    def chunks(task: Any, it: Any, n: int) -> Any:
        return _chunks_sig.apply_chunks(task, it, n, app=app)


def _group(app: Fastq) -> None:
    """No longer sent by Celery, kept for old clients."""
    from fastq.canvas import maybe_signature
    from fastq.result import result_from_tuple

    @app.task(name='celery.group', bind=True, shared=False, lazy=False)
    def group(self: Any, tasks: Any, result: Any, group_id: str, partial_args: Any, add_to_parent: bool = True) -> Any:
        group_result = result_from_tuple(result, app)
        for task in tasks:
            maybe_signature(task, app=app).clone(partial_args).apply_async(group_id=group_id, add_to_parent=False)
        parent = app.current_worker_task
        if add_to_parent and parent is not None:
            parent.request.children.append(group_result)
        return group_result.as_tuple()


def _chain(app: Fastq) -> None:
    """No longer sent by Celery, kept for old clients."""

    @app.task(name='celery.chain', shared=False, lazy=False)
    def chain(*args: Any, **kwargs: Any) -> None:
        raise NotImplementedError('chain is not a real task')


def _chord(app: Fastq) -> None:
    """No longer sent by Celery, kept for old clients."""
    from fastq.canvas import chord as chord_sig
    from fastq.canvas import group, maybe_signature

    @app.task(name='celery.chord', bind=True, ignore_result=False, shared=False, lazy=False)
    def chord(
        self: Any,
        /,
        header: Any,
        body: Any,
        partial_args: Any = (),
        interval: float | None = None,
        countdown: float = 1,
        max_retries: int | None = None,
        eager: bool = False,
        **kwargs: Any,
    ) -> Any:
        tasks = header.tasks if isinstance(header, group) else header
        header_group = group([maybe_signature(s, app=app) for s in tasks], app=app)
        body_sig = maybe_signature(body, app=app)
        return chord_sig(header_group, body_sig).run(
            header_group, body_sig, tuple(partial_args), app, interval, countdown, max_retries, **kwargs
        )


_BUILTINS: tuple[Callable[[Fastq], None], ...] = (
    _backend_cleanup,
    _accumulate,
    _chord_unlock,
    _map,
    _starmap,
    _chunks,
    _group,
    _chain,
    _chord,
)
