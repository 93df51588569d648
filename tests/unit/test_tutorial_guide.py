"""Celery's tutorials (First Steps, Next Steps, Daemonization's `celery multi`), what a newcomer sees there that
the rest of the suite does not check: the worker's banner as Celery lays it out, a task's repr."""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator

import pytest

from fastq import Fastq
from fastq.worker.worker import WorkController


@pytest.fixture
def level() -> Iterator[logging.Logger]:
    root = logging.getLogger()
    before = root.level
    yield root
    root.setLevel(before)


def banner(app: Fastq, queues: list[str]) -> str:
    out = io.StringIO()
    worker = WorkController(app, hostname='w1@h', pool='threads', concurrency=1, queues=queues, banner_stream=out)
    worker._print_banner()
    return out.getvalue()


def test_the_banner_laid_out_as_celerys(memory_app: Fastq, level: logging.Logger) -> None:
    @memory_app.task(name='t.add')
    def add(x: int, y: int) -> int:
        return x + y

    level.setLevel(logging.INFO)
    text = banner(memory_app, ['hipri', 'celery'])  # (`-Q hipri,celery` of Next Steps)
    assert text.startswith(' \n -------------- w1@h v')  # Celery prints a line of one space first
    queues = text.split('[queues]\n', 1)[1]
    # (the app's tasks: t.add, and any shared task other tests in this process defined, bound as Celery binds them)
    listed = sorted(name for name in memory_app.tasks if not name.startswith('celery.'))
    assert 't.add' in listed
    assert queues == (  # by name, whatever the order of -Q; what follows as Celery 5.7 prints it
        '                .> celery           exchange=celery(direct) key=celery\n'
        '                .> hipri            exchange=hipri(direct) key=hipri\n'
        '\n'
        '[tasks]\n' + ''.join(f'  . {name}\n' for name in listed) + '\n'
    )
    # one queue: Celery's table ends with a line of sixteen spaces, so two lines stand before [tasks]
    queues = banner(memory_app, ['celery']).split('[queues]\n', 1)[1]
    assert queues.startswith(
        '                .> celery           exchange=celery(direct) key=celery\n' + ' ' * 16 + '\n\n['
    )

    level.setLevel(logging.DEBUG)  # -l DEBUG lists the built-in tasks too, as Celery's
    tasks = banner(memory_app, ['celery']).split('[tasks]\n', 1)[1].split()
    assert {'celery.chord', 'celery.chain', 'celery.group', 't.add'} <= set(tasks[1::2])
    level.setLevel(logging.WARNING)
    assert banner(memory_app, ['celery']).endswith('exchange=celery(direct) key=celery\n' + ' ' * 16 + '\n\n')


@pytest.mark.parametrize(('pool', 'shown'), [('threads', '4 (thread)'), ('solo', '4 (solo)')])
def test_the_banners_concurrency_line_names_the_pool_as_celerys(memory_app: Fastq, pool: str, shown: str) -> None:
    # Celery's line ends with its pool class's module: celery.concurrency.thread for -P threads
    out = io.StringIO()
    WorkController(memory_app, hostname='w1@h', pool=pool, concurrency=4, banner_stream=out)._print_banner()
    assert f'.> concurrency: {shown}\n' in out.getvalue()


def test_the_banner_shows_the_autoscale_range_as_celerys(memory_app: Fastq) -> None:
    out = io.StringIO()
    WorkController(memory_app, hostname='w1@h', pool='prefork', autoscale='3,1', banner_stream=out)._print_banner()
    assert '.> concurrency: {min=1, max=3} (prefork)\n' in out.getvalue()  # (fastq's read '1 (prefork)')


def test_a_tasks_repr_names_its_app_as_celerys(memory_app: Fastq) -> None:
    @memory_app.task(name='t.add')
    def add(x: int, y: int) -> int:
        return x + y

    assert repr(add) == f'<@task: t.add of t at {id(memory_app):#x}>'  # Celery's `<@task: tasks.add of tasks at 0x…>`


def test_the_banners_default_queue_is_on_the_default_exchange(memory_app: Fastq, level: logging.Logger) -> None:
    # Celery's banner lists app.amqp.queues: with no task_queues, the default queue on task_default_exchange
    # of task_default_exchange_type with task_default_routing_key (the Routing guide's topic settings)
    memory_app.conf.update(
        task_default_exchange='tasks', task_default_exchange_type='topic', task_default_routing_key='task.default'
    )
    level.setLevel(logging.WARNING)
    queues = banner(memory_app, ['celery', 'feeds']).split('[queues]\n', 1)[1]
    assert queues == (
        '                .> celery           exchange=tasks(topic) key=task.default\n'
        '                .> feeds            exchange=feeds(direct) key=feeds\n\n'
    )
