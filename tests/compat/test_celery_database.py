"""Celery and fastq on one PostgreSQL result database (Celery's "Database" backend tables), with Redis as the broker.

Celery client -> fastq worker and fastq client -> Celery worker: each side reads the results, failures and
extended results the other stored, and the groups the other saved. A chord sent by a Celery client (which, on
this backend, sends `celery.chord_unlock` to poll the header) completes on a fastq worker; one sent by a fastq
client with `native_join` off completes on a Celery worker.
"""

from __future__ import annotations

from typing import Any

import pytest

pytestmark = pytest.mark.slow

pytest.importorskip('sqlalchemy')


@pytest.fixture
def backend_url(postgres_url: str) -> str:
    return f'db+{postgres_url}'


def test_celery_client_fastq_worker(celery_client: Any, fastq_client: Any, workers: Any) -> None:
    from celery import chord, group

    celery_client.conf.result_extended = True
    w = workers('fastq', extra_env={'FASTQ_RESULT_EXTENDED': 'true'})
    result = celery_client.send_task('worker_tasks.add', (20, 22))
    assert result.get(timeout=30) == 42
    meta = celery_client.backend.get_task_meta(result.id, cache=False)
    assert (meta['name'], meta['args'], meta['kwargs'], meta['queue']) == ('worker_tasks.add', [20, 22], {}, 'celery')
    assert meta['worker'].startswith('celery@')
    failed = celery_client.send_task('worker_tasks.fail', ('from fastq',))
    with pytest.raises(ValueError, match='from fastq'):
        failed.get(timeout=30)
    assert 'ValueError: from fastq' in failed.traceback
    # A group Celery saved, restored by fastq; its results stored by the fastq worker.
    saved = group(celery_client.signature('worker_tasks.mul', (i, 10)) for i in range(3)).apply_async()
    saved.save()
    restored = fastq_client.app.GroupResult.restore(saved.id)
    assert restored is not None and restored.get(timeout=30) == [0, 10, 20]
    # Celery's chord on this backend: celery.chord_unlock, run by the fastq worker, sends the body.
    header = [celery_client.signature('worker_tasks.add', (i, i)) for i in range(4)]
    joined = chord(header)(celery_client.signature('worker_tasks.tsum'))
    assert joined.get(timeout=30) == 12
    assert 'Task celery.chord_unlock[' in w.log


def test_fastq_client_celery_worker(fastq_client: Any, workers: Any) -> None:
    from fastq import chord

    # (without native_join, fastq's chords poll with celery.chord_unlock as Celery's do: Celery workers join them)
    fastq_client.app.conf.update(result_extended=True, result_backend_transport_options={'native_join': False})
    w = workers('celery', extra_env={'CELERY_RESULT_EXTENDED': '1'})
    result = fastq_client.add.delay(20, 22)
    assert result.get(timeout=30) == 42
    meta = fastq_client.app.backend.get_task_meta(result.id)
    assert (meta['name'], meta['args'], meta['kwargs'], meta['queue']) == ('worker_tasks.add', [20, 22], {}, 'celery')
    failed = fastq_client.fail.delay('from celery')
    with pytest.raises(ValueError, match='from celery'):
        failed.get(timeout=30)
    assert 'ValueError: from celery' in (failed.traceback or '')
    # A fastq group on a Celery worker, saved by fastq and restored by Celery's backend in the worker's stead.
    from celery import Celery

    saved = fastq_client.app.GroupResult('g', [fastq_client.add.delay(i, 1) for i in range(3)])
    saved.save()
    celery_app = Celery('reader', backend=fastq_client.app.conf.result_backend, set_as_current=False)
    try:
        restored = celery_app.GroupResult.restore('g')
        assert restored is not None and restored.get(timeout=30) == [1, 2, 3]
    finally:
        celery_app.close()
    joined = chord([fastq_client.add.s(i, i) for i in range(4)], fastq_client.tsum.s()).delay()
    assert joined.get(timeout=30) == 12
    w.wait_for('Task celery.chord_unlock[')
