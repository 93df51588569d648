"""End to end on RabbitMQ: real `fastq worker` processes consuming through rabbitmq-c (one node per session)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from fastq import states
from fastq.brokers.amqp.topology import delayed_level
from tests.harness import wait_until

from .test_cli import fastq

pytestmark = pytest.mark.slow


@pytest.fixture(params=['redis', 'rpc'])
def urls(request: pytest.FixtureRequest, amqp_url: str) -> dict[str, str]:
    backend = request.getfixturevalue('redis_url') if request.param == 'redis' else 'rpc://'
    return {'FASTQ_BROKER_URL': amqp_url, 'FASTQ_RESULT_BACKEND': backend}


def test_results(tasks: Any, worker: Any, urls: dict[str, str]) -> None:
    worker()
    results = [tasks.add.delay(i, i) for i in range(50)]
    assert [r.get(timeout=30) for r in results] == [i + i for i in range(50)]
    assert results[0].state == states.SUCCESS
    failed = tasks.fail_custom.delay('boom')
    with pytest.raises(tasks.CustomError, match='boom'):
        failed.get(timeout=30)


def test_eta_waits_in_the_delayed_chain_not_in_the_worker(tasks: Any, worker: Any, urls: dict[str, str]) -> None:
    if urls['FASTQ_RESULT_BACKEND'] == 'rpc://':
        pytest.skip('one backend is enough here')
    worker()
    sent = time.time()
    result = tasks.add.apply_async((2, 3), countdown=3)
    broker = tasks.app.broker

    def parked() -> bool:
        return any(broker.qsize(delayed_level(level)) for level in range(3))

    wait_until(parked, timeout=10, message='the task waiting in celery_delayed_*')
    assert result.get(timeout=30) == 5
    assert result.date_done is not None and result.date_done.timestamp() >= sent + 2.5


def test_inspect_ping(tasks: Any, worker: Any, tmp_path: Path, urls: dict[str, str]) -> None:
    if urls['FASTQ_RESULT_BACKEND'] == 'rpc://':
        pytest.skip('one backend is enough here')
    w = worker('-n', 'w1@%h')
    hostname = [word for word in w.log.split() if word.startswith('w1@')][0]
    assert tasks.app.control.inspect(destination=[hostname], timeout=3).ping() == {hostname: {'ok': 'pong'}}
    proc = fastq(tmp_path, urls, '-A', 'worker_tasks', 'inspect', 'ping', '-d', hostname, '-t', '3')
    assert proc.stdout.splitlines()[:2] == [f'->  {hostname}: OK', '        pong']
