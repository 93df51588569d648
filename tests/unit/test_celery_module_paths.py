"""Porting is one import per module: Celery's module paths that user code imports from exist under `fastq.`
with the same names (the deeper ones too: `celery.app.task`, `celery.app.log`, `celery.local` ...)."""

from __future__ import annotations

import importlib
import logging

import pytest

from fastq import Fastq

PATHS = [
    ('app.task', 'Task'),
    ('app.task', 'Context'),
    ('app.base', 'Celery'),
    ('app.control', 'Control'),
    ('app.control', 'Inspect'),
    ('app.log', 'TaskFormatter'),
    ('app', 'app_or_default'),
    ('app', 'shared_task'),
    ('local', 'Proxy'),
    ('beat', 'PersistentScheduler'),
    ('utils', 'uuid'),
    ('contrib.migrate', 'move_task_by_id'),
    ('contrib.sphinx', 'TaskDocumenter'),
    # warning categories that `warnings.filterwarnings(..., category=...)` in code written for Celery names
    ('exceptions', 'CDeprecationWarning'),
    ('exceptions', 'CPendingDeprecationWarning'),
    ('exceptions', 'DuplicateTaskNameWarning'),
    ('exceptions', 'FixupWarning'),
    ('exceptions', 'NotConfigured'),
]


@pytest.mark.parametrize(('module', 'name'), PATHS)
def test_the_name_is_where_celery_has_it(module: str, name: str) -> None:
    celery = pytest.importorskip('celery')
    if module == 'contrib.sphinx':
        pytest.importorskip('sphinx')
    assert hasattr(importlib.import_module(f'{celery.__name__}.{module}'), name)  # (the list is Celery's)
    assert hasattr(importlib.import_module(f'fastq.{module}'), name)


def test_app_task_is_the_task_base_class() -> None:
    from fastq.app.task import Task
    from fastq.beat import PersistentScheduler, Scheduler

    app = Fastq('paths', broker='memory://')
    assert issubclass(app.Task, Task)
    assert PersistentScheduler is Scheduler
    from fastq.app import app_or_default
    from fastq.utils import uuid

    assert app_or_default(app) is app
    assert len(uuid()) == 36 and uuid() != uuid()


def _format(formatter: logging.Formatter, level: int) -> str:
    record = logging.LogRecord('tasks', level, __file__, 1, 'adding %s', ('4 + 4',), None)
    return formatter.format(record)


def test_task_formatter_formats_as_celerys() -> None:
    # Celery's logging docs: `handler.setFormatter(TaskFormatter('%(task_id)s - %(task_name)s - ...'))` in an
    # after_setup_task_logger receiver; records outside a task say '???'
    celery_log = pytest.importorskip('celery.app.log')
    from celery import Celery

    from fastq.app.log import TaskFormatter

    fmt = '%(task_id)s %(task_name)s %(levelname)s %(message)s'
    for use_color in (True, False):
        for level in (logging.DEBUG, logging.INFO, logging.WARNING, logging.ERROR):
            ours = _format(TaskFormatter(fmt, use_color=use_color), level)
            assert ours == _format(celery_log.TaskFormatter(fmt, use_color=use_color), level)
    capp = Celery('paths', set_as_current=False)
    capp.conf.task_always_eager = True
    app = Fastq('paths', broker='memory://', backend='memory://')
    app.conf.task_always_eager = True

    @capp.task(name='tasks.show')
    def c_show() -> str:
        return _format(celery_log.TaskFormatter(fmt, use_color=False), logging.INFO)

    @app.task(name='tasks.show')
    def f_show() -> str:
        return _format(TaskFormatter(fmt, use_color=False), logging.INFO)

    theirs = c_show.apply(task_id='abc').get()
    ours = f_show.apply(task_id='abc').get()
    assert ours == theirs == 'abc tasks.show INFO adding 4 + 4'
