"""The Extensions and Bootsteps guide on a real worker and a real redis-server: custom worker and consumer steps,
custom command-line options reaching them, a kombu consumer of the worker's own, and the worker signals with
Celery's senders and arguments (tests/integration/bootstep_tasks.py holds the application)."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from fastq.exceptions import WorkerLostError
from tests.harness import WorkerProcess, lines, wait_until

HERE = Path(__file__).resolve().parent
NODE = 'bootsteps@example.com'

pytest.importorskip('kombu')
pytest.importorskip('click')


@pytest.fixture
def app(monkeypatch: pytest.MonkeyPatch, redis_url: str) -> Iterator[Any]:
    monkeypatch.syspath_prepend(str(HERE))
    import bootstep_tasks

    bootstep_tasks.app.close()
    bootstep_tasks.app.conf.update(broker_url=redis_url, result_backend=redis_url)
    yield bootstep_tasks
    bootstep_tasks.app.close()


def _records(path: Path) -> list[tuple[str, str]]:
    """(pid, what) per line."""
    return [(line.partition(' ')[0], line.partition(' ')[2]) for line in lines(path)]


def _index(records: list[tuple[str, str]], prefix: str) -> int:
    return next(i for i, (_, what) in enumerate(records) if what.startswith(prefix))


def test_guide_steps_options_and_signals_on_a_real_worker(app: Any, redis_url: str, tmp_path: Path) -> None:
    record = tmp_path / 'record.txt'
    env = dict(
        os.environ,
        PYTHONPATH=os.pathsep.join([str(HERE), os.environ.get('PYTHONPATH', '')]),
        FASTQ_BROKER_URL=redis_url,
        FASTQ_RESULT_BACKEND=redis_url,
        BOOTSTEP_RECORD=str(record),
    )
    env.pop('PYTEST_CURRENT_TEST', None)
    command = [sys.executable, '-m', 'fastq', '-A', 'bootstep_tasks', 'worker']
    args = ['-l', 'info', '-c', '1', '-n', NODE, '--enable-my-option', '--my-number', '42', '-Z', 'tmpl']
    w = WorkerProcess(tmp_path, env, args, 'worker', command=command).start()
    try:
        added = app.add.delay(1, 2)
        assert added.get(timeout=60) == 3
        failing = app.fail.delay('boom')
        with pytest.raises(ValueError):
            failing.get(timeout=60)
        with pytest.raises(WorkerLostError):
            app.die.delay(3).get(timeout=60)
        app.add.apply_async((5, 6), expires=datetime.now(UTC) - timedelta(seconds=10))
        wait_until(lambda: any('task_revoked' in line for line in lines(record)), 60, 'task_revoked')
        app.send_me_a_message('world')
        import redis

        redis.Redis.from_url(redis_url).lpush('celery', b'not a message')  # Celery's "unknown message"
        wait_until(lambda: any('task_rejected' in line for line in lines(record)), 60, 'task_rejected')
        import kombu

        with kombu.Connection(redis_url) as conn:  # a message without a task header, as kombu sends it
            conn.Producer().publish({'hello': 1}, routing_key='celery', serializer='json')
        wait_until(lambda: any('task_rejected-message' in line for line in lines(record)), 60, 'its message')
        app.app.send_task('bootstep_tasks.nope', (7,))
        wait_until(lambda: any('task_unknown' in line for line in lines(record)), 60, 'task_unknown')
        wait_until(lambda: any('consumer-step-message world' in line for line in lines(record)), 60, 'custom message')
        wait_until(lambda: any('worker-step-timer' in line for line in lines(record)), 60, 'timer tick')
        assert f'{NODE}.dq' in w.log  # the celeryd_after_setup receiver's queue, in the banner
    finally:
        assert w.stop(60) == 0, w.log
    records = _records(record)
    whats = [what for _, what in records]
    parent = records[_index(records, 'worker_ready')][0]
    by_pid = {what: pid for pid, what in records}

    # The custom options: the preload one announced before the command runs, the worker's ones in
    # celeryd_init's options and the worker step's __init__ keywords.
    assert 'user_preload_options template=tmpl app=bootstep_tasks' in whats
    assert f'celeryd_init {NODE} enable_my_option=True' in whats
    assert 'celeryd_init-wrong-sender' not in whats
    assert f'worker-step-init {NODE} enable_my_option=True my_number=42' in whats
    assert 'not-included-start' not in whats
    # The steps run in the worker's main process, in Celery's order.
    assert by_pid['worker-step-start pool=True'] == parent
    order = [
        _index(records, prefix)
        for prefix in (
            'celeryd_init',
            'worker-step-init',
            f'celeryd_after_setup {NODE}',
            'worker-step-start',
            'consumer-step-get-consumers',
            'worker_ready',
            'worker_shutting_down',
            'worker-step-stop',
            'consumer-step-shutdown',
            'worker_shutdown',
        )
    ]
    assert order == sorted(order), whats
    # Signals with Celery's senders and arguments.
    assert f'worker_shutting_down {NODE} SIGTERM Warm 0' in whats
    assert f'worker_process_init {NODE}' in whats
    assert by_pid[f'worker_process_init {NODE}'] != parent  # in the pool's child
    assert f'worker_process_shutdown {NODE} True 0' in whats
    assert "task_failure bootstep_tasks.fail ValueError ['boom'] ValueError" in whats
    assert 'task_rejected NoneType' in whats
    assert "task_rejected-message {'hello': 1} celery True" in whats  # (kombu's Message: payload, delivery_info)
    assert 'task_unknown bootstep_tasks.nope True [7] celery' in whats
    assert f'task_received bootstep_tasks.add {added.id} [1, 2]' in whats
    assert f"task_received bootstep_tasks.fail {failing.id} ['boom']" in whats
    # Celery's Request fields, and task_failure for a lost process as Celery's parent sends it
    assert f"task_received-details {added.id} True True None None True '' celery 0 False None" in whats
    more = f'task_received-more {added.id} bootstep_tasks.add (1, 2) {{}} application/json utf-8 True False True'
    assert f'{more} {{}} [] None True [1, 2] None [None, None]' in whats  # (the header's timelimit, a list)
    assert f'task_received-message {added.id} [1, 2] True celery application/json False' in whats
    assert 'task_failure bootstep_tasks.die WorkerLostError [3] {} str request=True' in whats  # (its request pushed)
    assert 'task_revoked bootstep_tasks.add Context [5, 6] True True' in whats  # (Celery's: a Context)


def test_the_guides_info_step_prints_plainly_until_the_banner_then_into_the_log(redis_url: str, tmp_path: Path) -> None:
    """The guide's "Installing Bootsteps" output: what steps print in `__init__` (before the banner) is plain
    text, as Celery's worker redirects stdout into the log only once its banner is out; what they print when
    they start is a WARNING record (fastq redirected stdout before the steps were built, so their `__init__`
    lines were log records too)."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(HERE), os.environ.get('PYTHONPATH', '')]))
    env.update(FASTQ_BROKER_URL=redis_url, FASTQ_RESULT_BACKEND=redis_url)
    env.pop('PYTEST_CURRENT_TEST', None)
    command = [sys.executable, '-m', 'fastq', '-A', 'bootstep_info', 'worker']
    w = WorkerProcess(tmp_path, env, ['-l', 'info', '-c', '1', '-n', 'w@example.com'], 'info', command=command)
    w.start()
    try:
        w.wait_for('<Consumer: w@example.com (running)> is starting')
    finally:
        assert w.stop(60) == 0, w.log
    log = w.log.splitlines()
    banner = next(i for i, line in enumerate(log) if 'w@example.com v' in line)
    assert log.index('<Worker: w@example.com (initializing)> is in init') < banner
    assert log.index('<Consumer: w@example.com (initializing)> is in init') < banner
    assert any(line.endswith('WARNING/MainProcess] <Worker: w@example.com (running)> is starting') for line in log)


def test_a_consumer_step_adds_and_cancels_task_queues(redis_url: str, caplog: pytest.LogCaptureFixture) -> None:
    """The guide's consumer methods `add_task_queue(name, ...)` and `cancel_task_queue(name)`, logged in
    Celery's words (fastq's consumer had neither: AttributeError)."""
    import threading

    from fastq import Fastq, bootsteps
    from fastq.worker.worker import WorkController

    app = Fastq('queues', broker=redis_url, backend=redis_url)

    @app.task
    def add(x: int, y: int) -> int:
        return x + y

    class Queues(bootsteps.StartStopStep):
        requires = ('celery.worker.consumer:Tasks',)

        def start(self, c: Any) -> None:
            c.add_task_queue('extra')
            c.add_task_queue('extra')  # (consumed already: said once)
            c.add_task_queue('other')
            c.cancel_task_queue('other')

    app.steps['consumer'].add(Queues)
    caplog.set_level('INFO')
    worker = WorkController(app, pool='threads', concurrency=1, quiet=True)
    thread = threading.Thread(target=worker.start, daemon=True)
    thread.start()
    try:
        assert add.apply_async((2, 3), queue='extra').get(timeout=60) == 5
        assert 'extra' in worker.queues and 'other' not in worker.queues
    finally:
        worker.stop()
        thread.join(60)
        app.close()
    said = [r.getMessage() for r in caplog.records if r.name == 'celery.worker.consumer.consumer']
    assert said == ['Started consuming from extra', 'Started consuming from other', 'Canceling queue other']


def test_consumer_steps_restart_when_the_broker_connection_is_lost(tmp_path: Path) -> None:
    """The guide: "the Consumer calls stop every time the consumer is restarted (i.e. connection is lost)",
    and starts the steps again once it is back (fastq's consumer steps kept running through the outage)."""
    from tests.servers import RedisServer

    server = RedisServer()
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(HERE), os.environ.get('PYTHONPATH', '')]))
    env.update(FASTQ_BROKER_URL=server.url(0), FASTQ_RESULT_BACKEND=server.url(1))
    env.pop('PYTEST_CURRENT_TEST', None)
    command = [sys.executable, '-m', 'fastq', '-A', 'bootstep_info', 'worker']
    w = WorkerProcess(tmp_path, env, ['-l', 'info', '-c', '1', '-n', 're@example.com'], 're', command=command)
    try:
        w.start()
        w.wait_for('<Consumer: re@example.com (running)> is starting')
        server.stop()
        w.wait_for('<Consumer: re@example.com (running)> is stopping')
        server.start()
        w.wait_for('<Consumer: re@example.com (running)> is starting', count=2)
    finally:
        code = w.stop(60)
        server.close()
    assert code == 0, w.log
    # "Connected to" the broker when the worker starts and again after the outage, in the same (Celery's) words
    from fastq.utils.text import as_uri

    assert w.log.count(f'Connected to {as_uri(server.url(0))}\n') == 2, w.log
    said = [line.partition('] ')[2] for line in w.log.splitlines() if '<Consumer: ' in line and '] ' in line]
    assert said == [
        '<Consumer: re@example.com (running)> is starting',
        '<Consumer: re@example.com (running)> is stopping',
        '<Consumer: re@example.com (running)> is starting',
        '<Consumer: re@example.com (closing)> is stopping',
        '<Consumer: re@example.com (terminating)> is shutting down',
    ]
