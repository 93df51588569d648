"""Celery and fastq on one memcached (`cache+memcached://`) or one results directory (`file://`), with Redis as the
broker: a fastq worker on the default queue, a Celery worker on `cq`.

Each side reads the results, failures and saved groups the other stored, and completes the other's chords: on
memcached both count parts with Celery's INCR counter (a chord whose header runs on both workers is joined
once); on files both poll with `celery.chord_unlock`.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.harness import lines

pytestmark = pytest.mark.slow


@pytest.fixture(params=['memcached', 'file'])
def backend_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == 'memcached':
        pytest.importorskip('pymemcache')
        return str(request.getfixturevalue('memcached_url'))
    (tmp_path / 'results').mkdir()
    return f'file://{tmp_path}/results'


@pytest.fixture
def celery_client(celery_client: Any) -> Iterator[Any]:
    """The Celery client, its memcached connection closed at the end (Celery's `close()` leaves it open)."""
    yield celery_client
    backend = getattr(celery_client._local, 'backend', None)
    if 'client' in vars(backend or object()):
        backend.client.close()


def test_each_side_reads_and_completes_the_other(
    celery_client: Any, fastq_client: Any, workers: Any, backend_url: str, tmp_path: Path
) -> None:
    from celery import chord as celery_chord
    from celery import group as celery_group

    from fastq import chord

    native = backend_url.startswith('cache+')
    fastq_worker = workers('fastq')
    celery_worker = workers('celery', '-Q', 'cq')
    tasks = fastq_client
    # Celery client -> fastq worker.
    assert celery_client.send_task('worker_tasks.add', (20, 22)).get(timeout=30) == 42
    failed = celery_client.send_task('worker_tasks.fail', ('from fastq',))
    with pytest.raises(ValueError, match='from fastq'):
        failed.get(timeout=30)
    assert 'ValueError: from fastq' in failed.traceback
    saved = celery_group(celery_client.signature('worker_tasks.mul', (i, 10)) for i in range(3)).apply_async()
    saved.save()
    restored = tasks.app.GroupResult.restore(saved.id)
    assert restored is not None and restored.get(timeout=30) == [0, 10, 20]
    header = [celery_client.signature('worker_tasks.add', (i, i)) for i in range(4)]
    assert celery_chord(header)(celery_client.signature('worker_tasks.tsum')).get(timeout=30) == 12
    # fastq client -> Celery worker.
    assert tasks.add.s(1, 2).set(queue='cq').delay().get(timeout=30) == 3
    failed = tasks.fail.s('from celery').set(queue='cq').delay()
    with pytest.raises(ValueError, match='from celery'):
        failed.get(timeout=30)
    assert 'ValueError: from celery' in (failed.traceback or '')
    mine = tasks.app.GroupResult('g-' + backend_url[:4], [tasks.add.s(i, 1).set(queue='cq').delay() for i in range(3)])
    mine.save()
    theirs = celery_client.GroupResult.restore(mine.id)
    assert theirs is not None and theirs.get(timeout=30) == [1, 2, 3]
    joined = chord([tasks.add.s(i, i).set(queue='cq') for i in range(4)], tasks.tsum.s().set(queue='cq')).delay()
    assert joined.get(timeout=30) == 12
    if native:  # each chord joined by the worker of its last part, with Celery's counter
        assert 'celery.chord_unlock' not in fastq_worker.log + celery_worker.log
    else:
        fastq_worker.wait_for('Task celery.chord_unlock[')
        celery_worker.wait_for('Task celery.chord_unlock[')
    if native:
        _mixed_chords(celery_client, tasks, tmp_path)
        logs = fastq_worker.log + celery_worker.log
        assert 'incremented too many times' not in logs and 'no longer exists' not in logs


def _mixed_chords(celery_client: Any, tasks: Any, tmp_path: Path) -> None:
    """Header tasks on both workers (odd ones on Celery's): both count on one counter, the body runs once."""
    from celery import chord as celery_chord

    from fastq import chord

    out = tmp_path / 'mixed.txt'
    header = [tasks.add.s(i, i).set(queue='cq' if i % 2 else 'celery') for i in range(8)]
    result = chord(header, tasks.record_body.s(str(out))).delay()
    assert result.get(timeout=60) == [i + i for i in range(8)]
    theirs = [celery_client.signature('worker_tasks.add', (i, 1), queue='cq' if i % 2 else 'celery') for i in range(8)]
    body = celery_client.signature('worker_tasks.record_body', (str(out),))
    assert celery_chord(theirs)(body).get(timeout=60) == [i + 1 for i in range(8)]
    # The slow part last, so each side is (most likely) the one whose INCR reaches the size and joins.
    for slow_queue, quick_queue in (('cq', 'celery'), ('celery', 'cq')):
        slow = tasks.slow_record.s(str(tmp_path / 'slow.txt'), slow_queue, 0.3).set(queue=slow_queue)
        result = chord([tasks.add.s(1, 1).set(queue=quick_queue), slow], tasks.record_body.s(str(out))).delay()
        assert result.get(timeout=30) == [2, slow_queue]
    assert len([line for line in lines(out) if line.startswith('body')]) == 4
