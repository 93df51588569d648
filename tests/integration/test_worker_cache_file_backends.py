"""End to end with results in memcached (`cache+memcached://`) and in a directory (`file://`): a real `fastq worker`
(SQLite broker, prefork children that open their own memcached connections) stores results, failures, groups
and chords, joined natively with Celery's counter on memcached and by `celery.chord_unlock` on files."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from fastq import chain, chord, group, states
from fastq.exceptions import ChordError
from tests.harness import lines, wait_until

pytestmark = pytest.mark.slow


@pytest.fixture(params=['memcached', 'file'])
def urls(tmp_path: Path, request: pytest.FixtureRequest) -> dict[str, str]:
    if request.param == 'memcached':
        pytest.importorskip('pymemcache')
        backend = str(request.getfixturevalue('memcached_url'))
    else:
        (tmp_path / 'results').mkdir()
        backend = f'file://{tmp_path}/results'
    return {'FASTQ_BROKER_URL': f'sqlite:///{tmp_path}/broker.sqlite3', 'FASTQ_RESULT_BACKEND': backend}


def test_results_failures_groups_and_chords(tasks: Any, worker: Any, tmp_path: Path, urls: dict[str, str]) -> None:
    w = worker('-c', '3')
    backend = urls['FASTQ_RESULT_BACKEND']
    native = backend.startswith('cache+')
    assert f'.> results:     {backend}' in w.log
    results = [tasks.add.delay(i, i) for i in range(10)]
    assert [r.get(timeout=30) for r in results] == [i + i for i in range(10)]
    failed = tasks.fail_custom.delay('boom')
    with pytest.raises(tasks.CustomError, match='boom'):
        failed.get(timeout=30)
    assert 'CustomError: boom' in (failed.traceback or '')
    saved = group(tasks.add.s(i, 1) for i in range(5)).delay()
    saved.save()
    restored = tasks.app.GroupResult.restore(saved.id)
    assert restored is not None and restored.get(timeout=30) == [1, 2, 3, 4, 5]
    assert chain(tasks.add.s(1, 2), tasks.mul.s(10)).delay().get(timeout=30) == 30
    # A chord whose header tasks finish in several pool children at once: the body is sent once.
    out = tmp_path / 'chord.txt'
    header = [tasks.chord_part.s(str(out), str(i), i, 0.02 * (i % 3)) for i in range(8)]
    assert chord(header, tasks.record_body.s(str(out))).delay().get(timeout=60) == list(range(8))
    assert len([line for line in lines(out) if line.startswith('body')]) == 1
    assert ('Task celery.chord_unlock[' in w.log) is not native
    # A header with a nested group: more parts than the saved group has results (fastq's size key counts them).
    nested = chord([group(tasks.add.s(1, 1), tasks.add.s(2, 2)), tasks.add.s(3, 3)], tasks.xsum.s()).delay()
    assert nested.get(timeout=30) == 12
    # A failed header task fails the body with a ChordError (get() may see the header's error first, as Celery's).
    failing = chord([tasks.add.s(1, 1), tasks.fail.s('part')], tasks.tsum.s()).delay()
    with pytest.raises((ChordError, ValueError), match='part'):
        failing.get(timeout=30)
    wait_until(lambda: failing.state == states.FAILURE, message='the body failed')
    assert isinstance(failing.result, ChordError)
    if not native:  # results live until celery.backend_cleanup deletes them (sent by beat)
        assert tasks.app.backend.supports_autoexpire is False
        tasks.app.send_task('celery.backend_cleanup').get(timeout=30)
