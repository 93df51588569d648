"""Faults on Redis: the server restarts in the middle of a run; workers are SIGKILLed mid-task.

Counted, not assumed: every task whose `delay()` returned is executed (at least once), with the server
restarted (appendonly, appendfsync always) while thousands of tasks flow.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.harness import WorkerProcess, lines, wait_until
from tests.servers import RedisServer

pytestmark = pytest.mark.slow
INTEGRATION = Path(__file__).resolve().parent.parent / 'integration'


@pytest.fixture
def durable_redis() -> Iterator[RedisServer]:
    server = RedisServer(appendonly=True)
    yield server
    server.close()


_started: list[WorkerProcess] = []


def _worker(tmp_path: Path, url: str, *args: str, name: str = 'worker') -> WorkerProcess:
    env = dict(os.environ, PYTHONPATH=str(INTEGRATION), FASTQ_BROKER_URL=url, FASTQ_RESULT_BACKEND=url)
    env['FASTQ_BROKER_TRANSPORT_OPTIONS'] = '{"visibility_timeout": 5}'
    env.pop('PYTEST_CURRENT_TEST', None)
    w = WorkerProcess(tmp_path, env, ['-l', 'info', '-c', '2', *args], name)
    _started.append(w)
    return w.start()


@pytest.fixture(autouse=True)
def _stop_workers() -> Iterator[None]:
    yield
    while _started:
        w = _started.pop()
        if w.proc is not None and w.proc.poll() is None:
            try:
                w.stop(30)
            except AssertionError:
                w.kill()


@pytest.fixture
def client(monkeypatch: pytest.MonkeyPatch, durable_redis: RedisServer) -> Iterator[Any]:
    monkeypatch.syspath_prepend(str(INTEGRATION))
    import worker_tasks

    worker_tasks.app.close()
    url = durable_redis.url(0)
    worker_tasks.app.conf.update(
        broker_url=url,
        result_backend=url,
        task_publish_retry_policy={'max_retries': 30, 'interval_start': 0.1, 'interval_step': 0.2, 'interval_max': 1},
    )
    yield worker_tasks
    worker_tasks.app.close()


def test_restart_mid_run_every_sent_task_runs(client: Any, durable_redis: RedisServer, tmp_path: Path) -> None:
    out = tmp_path / 'ran.txt'
    worker = _worker(tmp_path, durable_redis.url(0))
    sent: list[str] = []
    failed: list[str] = []

    def produce() -> None:
        for i in range(3000):
            try:
                client.record.apply_async((str(out), str(i)), ignore_result=True)
            except Exception:
                failed.append(str(i))
            else:
                sent.append(str(i))

    producer = threading.Thread(target=produce)
    producer.start()
    wait_until(lambda: len(sent) >= 800, timeout=60, message='first tasks sent')
    durable_redis.restart(down_for=1.0)
    producer.join(300)
    assert len(sent) + len(failed) == 3000
    wait_until(
        lambda: set(sent) <= {line.split()[1] for line in lines(out)},
        timeout=240,
        message=f'all {len(sent)} sent tasks executed',
    )
    assert len(sent) >= 2900  # publishing retried through the restart
    assert 'Connected to' in worker.log
    assert client.add.delay(1, 2).get(timeout=60) == 3  # the worker consumes again after the restart
    worker.stop()


def test_sigkill_without_acks_late_is_at_most_once(client: Any, durable_redis: RedisServer, tmp_path: Path) -> None:
    """Early ack (the default): a task running when its worker is SIGKILLed is lost, never run twice.

    As in Celery, the early ack is sent as the task starts, not waited for: the kill comes once it reached
    Redis (the `unacked` hash is empty), which on a loaded machine can be a few milliseconds after the start.
    """
    import redis

    out = tmp_path / 'sleep.txt'
    worker = _worker(tmp_path, durable_redis.url(0), '-c', '1')
    result = client.sleeper.delay(str(out), 'early', 3)
    wait_until(lambda: any(line.startswith('start early') for line in lines(out)), message='started')
    server = redis.Redis.from_url(durable_redis.url(0))
    wait_until(lambda: server.hlen('unacked') == 0, message='the early ack in Redis')
    server.close()
    os.killpg(worker.pid, signal.SIGKILL)
    worker.proc.wait(10)
    second = _worker(tmp_path, durable_redis.url(0), name='second')
    time.sleep(8)  # longer than the visibility timeout: nothing comes back, it was acked
    assert [line for line in lines(out) if line.startswith('start early')] == ['start early']
    assert result.state in ('PENDING', 'STARTED')
    second.stop()


def test_sigkill_with_acks_late_runs_again(client: Any, durable_redis: RedisServer, tmp_path: Path) -> None:
    out = tmp_path / 'slow.txt'
    worker = _worker(tmp_path, durable_redis.url(0), '-c', '2')
    results = [client.slow_record.delay(str(out), str(i), 2) for i in range(4)]
    wait_until(lambda: len([x for x in lines(out) if x.startswith('start')]) >= 2, message='two running')
    os.killpg(worker.pid, signal.SIGKILL)
    worker.proc.wait(10)
    _worker(tmp_path, durable_redis.url(0), name='second')
    assert sorted(r.get(timeout=120) for r in results) == ['0', '1', '2', '3']
    done = {line.split()[1] for line in lines(out) if line.startswith('done')}
    assert done == {'0', '1', '2', '3'}
