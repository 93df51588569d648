"""Faults on Redis: the server restarts in the middle of a run; workers are SIGKILLed mid-task.

Counted, not assumed: every task whose `delay()` returned is executed (at least once), with the server
restarted (appendonly, appendfsync always) while thousands of tasks flow.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.harness import WorkerProcess, check_acks_late_survive_sigkill, lines, send_through_restart, wait_until
from tests.servers import RedisServer

pytestmark = pytest.mark.slow


@pytest.fixture
def durable_redis() -> Iterator[RedisServer]:
    server = RedisServer(appendonly=True)
    yield server
    server.close()


@pytest.fixture
def worker_env(durable_redis: RedisServer) -> dict[str, str]:
    url = durable_redis.url(0)
    return {
        'FASTQ_BROKER_URL': url,
        'FASTQ_RESULT_BACKEND': url,
        'FASTQ_BROKER_TRANSPORT_OPTIONS': '{"visibility_timeout": 5}',
    }


def test_restart_mid_run_every_sent_task_runs(
    client: Any, start_worker: Callable[..., WorkerProcess], durable_redis: RedisServer, tmp_path: Path
) -> None:
    worker = start_worker()
    sent = send_through_restart(client, tmp_path / 'ran.txt', 3000, 800, lambda: durable_redis.restart(down_for=1.0))
    assert len(sent) >= 2900  # publishing retried through the restart
    assert 'Connected to' in worker.log
    assert client.add.delay(1, 2).get(timeout=60) == 3  # the worker consumes again after the restart
    worker.stop()


def test_sigkill_without_acks_late_is_at_most_once(
    client: Any, start_worker: Callable[..., WorkerProcess], durable_redis: RedisServer, tmp_path: Path
) -> None:
    """Early ack (the default): a task running when its worker is SIGKILLed is lost, never run twice.

    As in Celery, the early ack is sent as the task starts, not waited for: the kill comes once it reached
    Redis (the `unacked` hash is empty), which on a loaded machine can be a few milliseconds after the start.
    """
    import redis

    out = tmp_path / 'sleep.txt'
    worker = start_worker('-c', '1')
    result = client.sleeper.delay(str(out), 'early', 3)
    wait_until(lambda: any(line.startswith('start early') for line in lines(out)), message='started')
    server = redis.Redis.from_url(durable_redis.url(0))
    wait_until(lambda: server.hlen('unacked') == 0, message='the early ack in Redis')
    server.close()
    os.killpg(worker.pid, signal.SIGKILL)
    worker.proc.wait(10)
    second = start_worker(name='second')
    time.sleep(8)  # longer than the visibility timeout: nothing comes back, it was acked
    assert [line for line in lines(out) if line.startswith('start early')] == ['start early']
    assert result.state in ('PENDING', 'STARTED')
    second.stop()


def test_sigkill_with_acks_late_runs_again(
    client: Any, start_worker: Callable[..., WorkerProcess], tmp_path: Path
) -> None:
    check_acks_late_survive_sigkill(client, start_worker, tmp_path / 'slow.txt')


def test_broker_lost_with_retries_disabled_shuts_the_worker_down(
    request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch, durable_redis: RedisServer
) -> None:
    # broker_connection_retry=False (Celery's): a connection lost after startup is not retried; the worker
    # says so and stops with exit code 1 (an orchestrator restarts it), instead of retrying forever
    monkeypatch.setenv('FASTQ_BROKER_CONNECTION_RETRY', 'false')
    worker = request.getfixturevalue('start_worker')()  # (its environment taken now, with the setting)
    durable_redis.stop()
    try:
        assert worker.proc is not None
        worker.proc.wait(60)
        assert worker.proc.returncode == 1
        assert 'broker_connection_retry=False). Shutting down...' in worker.log
    finally:
        durable_redis.start()
