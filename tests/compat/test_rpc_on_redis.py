"""`result_backend = 'rpc://'` on a Redis broker (Celery's First Steps tutorial sets `backend='rpc://'`, and its
rpc backend works on kombu's Redis transport): replies are kombu envelopes pushed onto the list named by the
caller's reply queue, so Celery workers answer fastq clients and the reverse."""

from __future__ import annotations

import threading
from typing import Any

import pytest

pytestmark = pytest.mark.slow


@pytest.fixture
def backend_url() -> str:
    return 'rpc://'


@pytest.mark.parametrize('kind', ['fastq', 'celery'])
def test_a_fastq_client_gets_replies_from_either_worker(kind: str, workers: Any, fastq_client: Any) -> None:
    workers(kind)
    t = fastq_client
    assert t.add.delay(2, 3).get(timeout=30) == 5
    with pytest.raises(ValueError, match='boom'):
        t.fail.delay('boom').get(timeout=30)
    got: list[int] = []  # a thread of its own: its own reply queue, read by the same listener
    thread = threading.Thread(target=lambda: got.append(t.add.delay(20, 22).get(timeout=30)))
    thread.start()
    thread.join(60)
    assert got == [42]
    assert [r.get(timeout=30) for r in [t.add.delay(i, i) for i in range(20)]] == [i * 2 for i in range(20)]


def test_a_celery_client_gets_replies_from_a_fastq_worker(workers: Any, celery_client: Any) -> None:
    workers('fastq')
    assert celery_client.send_task('worker_tasks.add', (2, 3)).get(timeout=30) == 5
    results = [celery_client.send_task('worker_tasks.add', (i, i)) for i in range(10)]
    assert [r.get(timeout=30) for r in results] == [i * 2 for i in range(10)]
