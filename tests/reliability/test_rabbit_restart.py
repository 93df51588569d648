"""Faults on RabbitMQ: the node restarts in the middle of a run; a worker is SIGKILLed with acks_late tasks.

Counted, not assumed: every task whose `delay()` returned (publisher confirms: RabbitMQ had it, persistent, in
a durable queue) is executed at least once, with the node restarted while thousands of tasks flow.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.harness import WorkerProcess, check_acks_late_survive_sigkill, send_through_restart
from tests.servers import RabbitServer

pytestmark = pytest.mark.slow


@pytest.fixture
def worker_env(amqp_url: str, redis_url: str) -> dict[str, str]:
    return {'FASTQ_BROKER_URL': amqp_url, 'FASTQ_RESULT_BACKEND': redis_url}


@pytest.fixture
def publish_retries() -> int:
    return 60  # a node restart takes longer than a redis-server's


def test_sigkill_with_acks_late_runs_again(
    client: Any, start_worker: Callable[..., WorkerProcess], tmp_path: Path
) -> None:
    check_acks_late_survive_sigkill(client, start_worker, tmp_path / 'slow.txt')


def test_node_restart_mid_run_every_confirmed_task_runs(
    client: Any, start_worker: Callable[..., WorkerProcess], rabbit_server: RabbitServer, tmp_path: Path
) -> None:
    worker = start_worker()
    sent = send_through_restart(client, tmp_path / 'ran.txt', 2000, 500, rabbit_server.restart)
    assert len(sent) >= 1900  # publishing waited and retried through the restart
    assert 'reconnecting' in worker.log and 'guest:**@' in worker.log  # the URL logged, its password masked
    assert client.add.delay(1, 2).get(timeout=60) == 3  # the worker consumes again after the restart
