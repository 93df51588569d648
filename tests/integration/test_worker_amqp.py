"""End to end on RabbitMQ: real `fastq worker` processes consuming through rabbitmq-c (one node per session)."""

from __future__ import annotations

from typing import Any

import pytest

from fastq import states

pytestmark = pytest.mark.slow


@pytest.fixture
def urls(amqp_url: str, redis_url: str) -> dict[str, str]:
    return {'FASTQ_BROKER_URL': amqp_url, 'FASTQ_RESULT_BACKEND': redis_url}


def test_results_through_redis(tasks: Any, worker: Any, urls: dict[str, str]) -> None:
    worker()
    results = [tasks.add.delay(i, i) for i in range(50)]
    assert [r.get(timeout=30) for r in results] == [i + i for i in range(50)]
    assert results[0].state == states.SUCCESS
    failed = tasks.fail_custom.delay('boom')
    with pytest.raises(tasks.CustomError, match='boom'):
        failed.get(timeout=30)
