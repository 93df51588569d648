"""A failed task's errbacks, in both of Celery's styles, run eagerly (`task_always_eager`, `apply()`): the
`(request, exc, traceback)` one in place, the `(task_id)` one as a task; one that fails stops no other."""

from __future__ import annotations

from typing import Any

import pytest

from fastq import Fastq


def test_both_styles_run_and_a_failing_one_stops_no_other() -> None:
    app = Fastq('errbacks', broker='memory://', backend='memory://')
    app.conf.task_always_eager = True
    seen: list[Any] = []

    @app.task
    def fail(message: str) -> None:
        raise ValueError(message)

    @app.task
    def on_error(request: Any, exc: BaseException, traceback: str | None, tag: str) -> None:
        seen.append((tag, request.id, type(exc).__name__, 'ValueError: boom' in (traceback or '')))

    @app.task
    def on_error_id(task_id: str) -> None:
        seen.append(('id', task_id))

    @app.task
    def broken(request: Any, exc: BaseException, traceback: str | None) -> None:
        raise RuntimeError('the errback itself fails')

    result = fail.apply_async(('boom',), link_error=[broken.s(), on_error.s('new'), on_error_id.s()])
    with pytest.raises(ValueError):
        result.get()
    assert seen == [('new', result.id, 'ValueError', True), ('id', result.id)]


def test_a_bound_errback_is_sent_the_task_id() -> None:
    # (Celery's rule: a bound task is called the old way, whatever its arity)
    app = Fastq('errbacks_bound', broker='memory://', backend='memory://')
    app.conf.task_always_eager = True
    seen: list[Any] = []

    @app.task
    def fail() -> None:
        raise KeyError('x')

    @app.task(bind=True)
    def on_error(self: Any, task_id: str) -> None:
        seen.append(task_id)

    result = fail.apply_async(link_error=on_error.s())
    assert seen == [result.id]
