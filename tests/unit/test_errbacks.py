"""A failed task's errbacks, in both of Celery's styles, run eagerly (`task_always_eager`, `apply()`): the
`(request, exc, traceback)` one in place, the `(task_id)` one as a task; one that fails stops no other."""

from __future__ import annotations

import time
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


def test_an_errback_is_classified_by_the_arguments_still_to_come() -> None:
    """Celery 5.7 counts the arguments an errback still takes once its signature's own are bound: `two.s('x')`
    takes one more, so it is sent the failed task's id (`two(task_id, 'x')`), not called with `(request,
    exc, traceback)`; an immutable one is classified by its function."""
    app = Fastq('errbacks_arity', broker='memory://', backend='memory://')
    app.conf.task_always_eager = True
    seen: list[Any] = []

    @app.task
    def fail() -> None:
        raise KeyError('x')

    @app.task
    def two(task_id: str, tag: str) -> None:
        seen.append((tag, task_id))

    @app.task
    def three(request: Any, exc: BaseException, traceback: str | None, tag: str = '') -> None:
        seen.append((tag, request.id))

    result = fail.apply_async(link_error=[two.s('x'), three.s(tag='kw'), two.si('fixed', 'y')])
    assert sorted(seen) == [('kw', result.id), ('x', result.id), ('y', 'fixed')]


def test_errbacks_sent_as_tasks_are_one_group() -> None:
    """Celery 5.7 sends the errbacks it does not call in place as one group: each has the group's id in
    `request.group` (and, with `result_extended`, in its stored result)."""
    from fastq.contrib.testing.app import TestApp, setup_default_app
    from fastq.contrib.testing.worker import start_worker

    app = TestApp()
    seen: list[Any] = []
    with setup_default_app(app):

        @app.task
        def fail() -> None:
            raise KeyError('x')

        @app.task(bind=True)
        def on_error(self: Any, task_id: str, tag: str) -> None:
            seen.append((tag, task_id, self.request.group))

        with start_worker(app, pool='threads'):
            result = fail.apply_async(link_error=[on_error.s('a'), on_error.s('b')])
            with pytest.raises(KeyError):
                result.get(timeout=10)
            for _ in range(500):
                if len(seen) == 2:
                    break
                time.sleep(0.01)
    (a, b) = sorted(seen)
    assert a[:2] == ('a', result.id) and b[:2] == ('b', result.id)
    assert a[2] is not None and a[2] == b[2]
