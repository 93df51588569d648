"""Real `fastq worker` processes on SQS (moto's server), results in Redis: tasks, acks_late redelivery after a
SIGKILL once the visibility timeout passes, a FIFO queue, ETAs, and remote control said to be unavailable."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from tests.harness import check_acks_late_survive_sigkill, lines

pytestmark = pytest.mark.slow

#: Short enough for the SIGKILL test to see a redelivery quickly; live workers renew what they hold.
VISIBILITY = 3


@pytest.fixture
def options(sqs_options: dict[str, Any]) -> dict[str, Any]:
    return dict(sqs_options, visibility_timeout=VISIBILITY)


@pytest.fixture
def urls(sqs_url: str, redis_url: str, options: dict[str, Any]) -> dict[str, str]:
    return {
        'FASTQ_BROKER_URL': sqs_url,
        'FASTQ_RESULT_BACKEND': redis_url,
        'FASTQ_BROKER_TRANSPORT_OPTIONS': json.dumps(options),
    }


@pytest.fixture
def client(tasks: Any, options: dict[str, Any]) -> Any:
    tasks.app.close()
    tasks.app.conf.broker_transport_options = options
    return tasks


def test_tasks_run_and_no_pidbox(client: Any, worker: Any) -> None:
    w = worker()
    assert 'Remote control is off: sqs://testing:**@127.0.0.1' in w.log
    results = [client.add.delay(i, i) for i in range(20)]
    assert [r.get(timeout=30) for r in results] == [i + i for i in range(20)]
    with pytest.raises(ValueError, match='boom'):
        client.fail.delay('boom').get(timeout=30)


def test_inspect_says_there_is_no_remote_control(client: Any, worker: Any, tmp_path: Path, urls: Any) -> None:
    import os

    env = {**os.environ, **urls, 'PYTHONPATH': str(Path(__file__).parent)}
    out = subprocess.run(
        [sys.executable, '-m', 'fastq', '-A', 'worker_tasks', 'inspect', 'ping'],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 1
    assert 'has no fanout: remote control' in out.stderr


def test_acks_late_redelivered_after_sigkill(client: Any, worker: Any, tmp_path: Path) -> None:
    """Both tasks running when the worker dies come back once their visibility timeout runs out."""

    def start(*args: str, name: str = '') -> Any:
        return worker(*args)

    check_acks_late_survive_sigkill(client, start, tmp_path / 'out.txt')


def test_fifo_queue_in_order(client: Any, worker: Any, tmp_path: Path) -> None:
    worker('-Q', 'jobs.fifo', '-c', '1')
    out = tmp_path / 'order.txt'
    results = [client.record.apply_async((str(out), str(i)), queue='jobs.fifo') for i in range(6)]
    assert [r.get(timeout=30) for r in results] == [str(i) for i in range(6)]
    assert [line.split()[1] for line in lines(out)] == [str(i) for i in range(6)]


def test_eta_and_countdown(client: Any, worker: Any) -> None:
    worker()
    sent = time.time()
    soon = client.when_run.apply_async(countdown=2)
    later = client.when_run.apply_async(eta=datetime.fromtimestamp(sent + 3, tz=UTC))
    assert soon.get(timeout=30) >= sent + 2
    assert later.get(timeout=30) >= sent + 3
