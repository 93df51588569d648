"""fastq and the real `celery` package on one SQS (moto's server), results in Redis, both ways.

A Celery client's tasks run by a fastq worker and a fastq client's by a Celery worker (plain calls, countdowns,
a FIFO queue with Celery's MessageGroupId); the message bodies each side puts on SQS have the same layout.
"""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest

pytestmark = pytest.mark.slow


@pytest.fixture
def url(sqs_url: str) -> str:
    return sqs_url


@pytest.fixture
def backend_url(redis_url: str) -> str:
    return redis_url


@pytest.fixture
def options(sqs_options: dict[str, Any]) -> dict[str, Any]:
    return dict(sqs_options)


@pytest.fixture
def sqs_env(options: dict[str, Any]) -> dict[str, str]:
    raw = json.dumps(options)
    return {'FASTQ_BROKER_TRANSPORT_OPTIONS': raw, 'CELERY_BROKER_TRANSPORT_OPTIONS': raw}


@pytest.fixture
def celery_sqs(celery_client: Any, options: dict[str, Any]) -> Any:
    celery_client.conf.broker_transport_options = options
    return celery_client


@pytest.fixture
def fastq_sqs(fastq_client: Any, options: dict[str, Any]) -> Any:
    fastq_client.app.close()
    fastq_client.app.conf.broker_transport_options = options
    return fastq_client


def test_celery_client_fastq_worker(celery_sqs: Any, workers: Any, sqs_env: dict[str, str]) -> None:
    w = workers('fastq', extra_env=sqs_env)
    result = celery_sqs.send_task('worker_tasks.add', (20, 22))
    assert result.get(timeout=30) == 42
    assert f'Task worker_tasks.add[{result.id}] received' in w.log
    delayed = celery_sqs.send_task('worker_tasks.when_run', countdown=1.5)
    assert delayed.get(timeout=30) > 0


def test_fastq_client_celery_worker(fastq_sqs: Any, workers: Any, sqs_env: dict[str, str]) -> None:
    w = workers('celery', extra_env=sqs_env)
    result = fastq_sqs.add.delay(20, 22)
    assert result.get(timeout=30) == 42
    w.wait_for(f'Task worker_tasks.add[{result.id}] succeeded')
    # An ETA sent with DelaySeconds reaches a Celery worker, which still honours the header.
    delayed = fastq_sqs.when_run.apply_async(countdown=1.5)
    assert delayed.get(timeout=30) > 0


def test_fifo_with_celerys_group_id(celery_sqs: Any, fastq_sqs: Any, workers: Any, sqs_env: dict[str, str]) -> None:
    workers('fastq', '-Q', 'jobs.fifo', '-c', '1', extra_env=sqs_env)
    from_celery = [
        celery_sqs.send_task('worker_tasks.add', (i, i), queue='jobs.fifo', MessageGroupId='g1') for i in range(3)
    ]
    from_fastq = fastq_sqs.add.apply_async((5, 5), queue='jobs.fifo')
    assert [r.get(timeout=30) for r in from_celery] == [0, 2, 4]
    assert from_fastq.get(timeout=30) == 10


def test_bodies_have_one_layout(celery_sqs: Any, fastq_sqs: Any, sqs_server: Any, options: dict[str, Any]) -> None:
    """Both sides put base64 of kombu's JSON envelope on SQS, with the same keys in the same order."""
    celery_sqs.send_task('worker_tasks.add', (1, 2), queue='nobody')
    fastq_sqs.app.send_task('worker_tasks.add', (1, 2), queue='nobody')
    client = sqs_server.client()
    queue = client.get_queue_url(QueueName=f'{options["queue_name_prefix"]}nobody')['QueueUrl']
    messages = client.receive_message(QueueUrl=queue, MaxNumberOfMessages=10, VisibilityTimeout=30)['Messages']
    assert len(messages) == 2
    documents = [json.loads(base64.b64decode(m['Body'], validate=True)) for m in messages]
    assert [list(d) for d in documents] == [['body', 'content-encoding', 'content-type', 'headers', 'properties']] * 2
    first, second = (d['properties'] for d in documents)
    assert list(first) == list(second)
    assert first['delivery_info'] == second['delivery_info'] == {'exchange': '', 'routing_key': 'nobody'}
    assert {d['headers']['task'] for d in documents} == {'worker_tasks.add'}
