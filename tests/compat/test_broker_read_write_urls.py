"""`broker_read_url` and `broker_write_url` (Celery's Configuration reference): a worker consumes from the read
URL and publishes (a chain's next step, events) to the write URL, a Celery worker and a fastq worker alike.
Two Redis databases stand for the two URLs, so where each message went shows."""

from __future__ import annotations

import json
from typing import Any

import pytest
import redis

from tests.harness import wait_until

pytestmark = pytest.mark.slow


@pytest.mark.parametrize('kind', ['fastq', 'celery'])
def test_a_worker_consumes_from_the_read_url_and_publishes_to_the_write_url(
    kind: str, workers: Any, fastq_client: Any, redis_server: Any, url: str
) -> None:
    from tests.servers import DatabasePool

    pool = redis_server._pool
    assert isinstance(pool, DatabasePool)
    read, write = redis_server.url(pool.take()), redis_server.url(pool.take())
    w = workers(kind, '-n', f'{kind}1@%h', extra_env={'CELERY_BROKER_READ_URL': read, 'CELERY_BROKER_WRITE_URL': write})
    t = fastq_client
    t.app.conf.broker_url = read  # (the client publishes where the worker reads)
    t.app.close()
    first = (t.add.s(1, 1) | t.mul.s(10)).apply_async()
    assert first.parent.get(timeout=30) == 2  # run from the read URL
    reader, writer = redis.Redis.from_url(read), redis.Redis.from_url(write)
    wait_until(lambda: writer.llen('celery') == 1, message='the next step published to the write URL')
    [envelope] = writer.lrange('celery', 0, -1)
    assert json.loads(envelope)['headers']['task'] == 'worker_tasks.mul'
    assert reader.llen('celery') == 0 and redis.Redis.from_url(url).llen('celery') == 0
    if kind == 'fastq':
        masked = {u: u.replace('redis://', 'redis://:**@') for u in (read, write)}  # (kombu's as_uri)
        assert f'transport:   {masked[write]}' in w.log  # (the banner's is Celery's app.connection(): write)
        assert f'Connected to {masked[read]}' in w.log
