"""Celery's Tasks guide, a real Celery worker and a fastq worker side by side: each test runs once against
each, with the same expectations, so the Celery run shows what the guide's behaviour is and the fastq run
that fastq's worker matches it (what the task stores, the lines the worker logs, the signals it sends).
"""

from __future__ import annotations

import json
import os
import re
import sys
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from tests.harness import WorkerProcess, lines, wait_until

pytestmark = pytest.mark.slow

HERE = Path(__file__).resolve().parent
KINDS = ['celery', 'fastq']


@pytest.fixture
def guide_worker(tmp_path: Path, url: str, backend_url: str) -> Iterator[Callable[[str], WorkerProcess]]:
    """`guide_worker(kind)`: a worker of that kind running tests/compat/tasks_guide_side.py, ready."""
    started: list[WorkerProcess] = []

    def start(kind: str, **extra: str) -> WorkerProcess:
        env = dict(os.environ, **extra)
        env.pop('PYTEST_CURRENT_TEST', None)
        env.update(
            PYTHONPATH=os.pathsep.join([str(HERE), env.get('PYTHONPATH', '')]),
            CELERY_BROKER_URL=url,
            CELERY_RESULT_BACKEND=backend_url,
            TASKS_GUIDE_KIND=kind,
            TASKS_GUIDE_FAILURES=str(tmp_path / 'failures'),
        )
        args = ['-l', 'info', '-c', '1']
        if kind == 'celery':
            args += ['-P', 'prefork', '--without-gossip', '--without-mingle']
        command = [sys.executable, '-m', kind, '-A', 'tasks_guide_side', 'worker']
        worker = WorkerProcess(tmp_path, env, args, kind, command)
        started.append(worker)
        return worker.start()

    yield start
    for worker in started:
        if worker.proc is not None and worker.proc.poll() is None:
            try:
                worker.stop(30)
            except AssertionError:
                worker.kill()


@pytest.mark.parametrize('kind', KINDS)
def test_a_reject_without_requeue_fails_the_task(
    kind: str, guide_worker: Any, celery_client: Any, tmp_path: Path
) -> None:
    """The task never runs again, so its result is FAILURE (the Reject, no traceback), task_failure is sent,
    and the worker logs the rejection as a warning with its traceback."""
    worker = guide_worker(kind)
    result = celery_client.send_task('guide.reject')
    wait_until(lambda: result.state == 'FAILURE', timeout=30, message='FAILURE stored')
    assert type(result.result).__name__ == 'Reject' and result.traceback is None
    wait_until(lambda: f'{result.id} Reject' in lines(tmp_path / 'failures'), message='task_failure sent')
    line = rf'WARNING/\S+\] Task guide\.reject\[{result.id}\] reject requeue=False: bad\nTraceback'
    wait_until(lambda: re.search(line, worker.log) is not None, message='the warning with its traceback')


@pytest.mark.parametrize('kind', KINDS)
def test_the_worker_names_a_task_by_its_shadow_name(kind: str, guide_worker: Any, celery_client: Any) -> None:
    """A call's shadow name is what the worker's lines about it say, the soft time limit's included; and
    `request.time_limit`/`soft_time_limit` are the halves of the call's limits."""
    worker = guide_worker(kind)
    result = celery_client.send_task('guide.limited', shadow='shadow.x', soft_time_limit=0.3, time_limit=30)
    assert result.get(timeout=30) == [30, 0.3]
    worker.wait_for(f'Task shadow.x[{result.id}] succeeded in')
    assert f'Soft time limit (0.3s) exceeded for shadow.x[{result.id}]' in worker.log


@pytest.mark.parametrize('kind', KINDS)
def test_the_calls_ignore_result_wins_over_the_tasks(
    kind: str, guide_worker: Any, celery_client: Any, tmp_path: Path
) -> None:
    """Tips: the execution option `ignore_result` comes last in the precedence, so a task that ignores results
    stores one when the call says ignore_result=False; a call that says nothing (send_task) leaves the task's
    choice, through a retry too."""
    guide_worker(kind)
    unsaid = celery_client.send_task('guide.ignored')
    retried = celery_client.send_task('guide.ignored_retry')
    wait_until(lambda: f'{retried.id} done' in lines(tmp_path / 'failures'), timeout=30, message='retried run')
    kept = celery_client.send_task('guide.ignored', ignore_result=False)
    assert kept.get(timeout=30) == 'kept'  # (-c 1: the calls before it are over)
    meta = celery_client.backend.get_task_meta
    assert meta(unsaid.id)['status'] == 'PENDING'
    assert meta(retried.id)['status'] == 'PENDING'


@pytest.mark.parametrize('kind', KINDS)
def test_an_expired_call_stores_revoked_as_its_ignore_result_says(
    kind: str, guide_worker: Any, celery_client: Any
) -> None:
    """An expired message of a task that ignores results stores nothing unless the call asked for its result."""
    guide_worker(kind)
    past = datetime.now(UTC) - timedelta(seconds=30)
    unsaid = celery_client.send_task('guide.ignored', expires=past)
    kept = celery_client.send_task('guide.ignored', expires=past, ignore_result=False)
    wait_until(lambda: kept.state == 'REVOKED', timeout=30, message='REVOKED stored for the call that asked')
    assert celery_client.backend.get_task_meta(unsaid.id)['status'] == 'PENDING'


@pytest.mark.parametrize('kind', KINDS)
def test_the_worker_lines_come_from_celerys_loggers(kind: str, guide_worker: Any) -> None:
    """Logging: a logging setup that names Celery's loggers (or a format showing `%(name)s`) finds the
    worker's lines where Celery logs them, and worker_ready's receivers run before the 'ready.' line."""
    worker = guide_worker(kind, TASKS_GUIDE_LOG_FORMAT='%(name)s|%(levelname)s|%(message)s')
    log = worker.log
    assert re.search(r'^celery\.worker\.consumer\.connection\|INFO\|Connected to redis://', log, re.M)
    ready = re.search(r'^celery\.apps\.worker\|INFO\|\S+ ready\.$', log, re.M)
    receiver = log.find('guide|WARNING|worker_ready received')
    assert ready is not None and 0 <= receiver < ready.start()


@pytest.mark.parametrize('kind', KINDS)
def test_a_retry_stores_its_exc_and_tells_on_retry(
    kind: str, guide_worker: Any, celery_client: Any, tmp_path: Path
) -> None:
    """States, RETRY: the stored result is the exception given to retry() (None without one), and on_retry
    gets that exception (or None) with the Retry's ExceptionInfo, as the task_retry signal does."""
    guide_worker(kind)
    given = celery_client.send_task('guide.retry_later', (True,))
    bare = celery_client.send_task('guide.retry_later', (False,))
    for result in (given, bare):
        wait_until(lambda r=result: r.state == 'RETRY', timeout=30, message='RETRY stored')
    assert repr(given.result) == "KeyError('later')" and bare.result is None and bare.info is None
    wait_until(lambda: len([x for x in lines(tmp_path / 'failures') if 'on_retry' in x]) == 2, message='on_retry')
    said = lines(tmp_path / 'failures')
    assert f"{given.id} on_retry KeyError('later') Retry" in said
    assert f'{bare.id} on_retry None Retry' in said
    celery_client.control.revoke([given.id, bare.id])


@pytest.mark.parametrize('kind', KINDS)
def test_arguments_validated_with_pydantic(kind: str, guide_worker: Any, celery_client: Any) -> None:
    """Argument validation with Pydantic: @app.task(pydantic=True) validates the dict sent into the model
    the parameter is annotated with, stores the returned model's dump, and fails a call that does not
    validate with pydantic's ValidationError."""
    guide_worker(kind)
    assert celery_client.send_task('guide.pydantic', ({'value': 1},)).get(timeout=30) == {'value': 'example: 1'}
    assert celery_client.send_task('guide.pydantic', (), {'arg': {'value': '2'}}).get(timeout=30) == {
        'value': 'example: 2'
    }
    bad = celery_client.send_task('guide.pydantic', ({'value': 'x'},))
    bad.get(timeout=30, propagate=False)  # (what the client rebuilds depends on pydantic being imported here)
    stored = json.loads(celery_client.backend.client.get(f'celery-task-meta-{bad.id}'))
    assert stored['status'] == 'FAILURE' and stored['result']['exc_type'] == 'ValidationError'
