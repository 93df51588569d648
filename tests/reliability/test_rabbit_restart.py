"""Faults on RabbitMQ: the node restarts in the middle of a run; a worker is SIGKILLed with acks_late tasks.

Counted, not assumed: every task whose `delay()` returned (publisher confirms: RabbitMQ had it, persistent, in
a durable queue) is executed at least once, with the node restarted while thousands of tasks flow.
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.harness import WorkerProcess, lines, wait_until
from tests.servers import RabbitServer

pytestmark = pytest.mark.slow
INTEGRATION = Path(__file__).resolve().parent.parent / 'integration'

_started: list[WorkerProcess] = []


def _worker(tmp_path: Path, url: str, backend: str, *args: str, name: str = 'worker') -> WorkerProcess:
    env = dict(os.environ, PYTHONPATH=str(INTEGRATION), FASTQ_BROKER_URL=url, FASTQ_RESULT_BACKEND=backend)
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
def client(monkeypatch: pytest.MonkeyPatch, amqp_url: str, redis_url: str) -> Iterator[Any]:
    monkeypatch.syspath_prepend(str(INTEGRATION))
    import worker_tasks

    worker_tasks.app.close()
    worker_tasks.app.conf.update(
        broker_url=amqp_url,
        result_backend=redis_url,
        task_publish_retry_policy={'max_retries': 60, 'interval_start': 0.1, 'interval_step': 0.2, 'interval_max': 1},
    )
    yield worker_tasks
    worker_tasks.app.close()


def test_sigkill_with_acks_late_runs_again(client: Any, amqp_url: str, redis_url: str, tmp_path: Path) -> None:
    out = tmp_path / 'slow.txt'
    worker = _worker(tmp_path, amqp_url, redis_url, '-c', '2')
    results = [client.slow_record.delay(str(out), str(i), 2) for i in range(4)]
    wait_until(lambda: len([x for x in lines(out) if x.startswith('start')]) >= 2, message='two running')
    os.killpg(worker.pid, signal.SIGKILL)
    worker.proc.wait(10)
    _worker(tmp_path, amqp_url, redis_url, name='second')
    assert sorted(r.get(timeout=120) for r in results) == ['0', '1', '2', '3']
    done = {line.split()[1] for line in lines(out) if line.startswith('done')}
    assert done == {'0', '1', '2', '3'}


def test_node_restart_mid_run_every_confirmed_task_runs(
    client: Any, rabbit_server: RabbitServer, amqp_url: str, redis_url: str, tmp_path: Path
) -> None:
    out = tmp_path / 'ran.txt'
    worker = _worker(tmp_path, amqp_url, redis_url)
    sent: list[str] = []
    failed: list[str] = []

    def produce() -> None:
        for i in range(2000):
            try:
                client.record.apply_async((str(out), str(i)), ignore_result=True)
            except Exception:
                failed.append(str(i))
            else:
                sent.append(str(i))

    producer = threading.Thread(target=produce)
    producer.start()
    wait_until(lambda: len(sent) >= 500, timeout=60, message='first tasks sent')
    rabbit_server.restart()
    producer.join(300)
    assert len(sent) + len(failed) == 2000
    wait_until(
        lambda: set(sent) <= {line.split()[1] for line in lines(out)},
        timeout=240,
        message=f'all {len(sent)} confirmed tasks executed',
    )
    assert len(sent) >= 1900  # publishing waited and retried through the restart
    assert 'reconnecting' in worker.log and 'guest:**@' in worker.log  # the URL logged, its password masked
    assert client.add.delay(1, 2).get(timeout=60) == 3  # the worker consumes again after the restart
