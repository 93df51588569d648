"""End to end with results in PostgreSQL through the database backend: real `fastq worker` processes (SQLite broker,
prefork children that inherit the backend and must open connections of their own) store into Celery's tables."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from fastq import chain, chord, group, states
from tests.harness import lines, wait_until

pytestmark = pytest.mark.slow

sa = pytest.importorskip('sqlalchemy')


@pytest.fixture
def urls(tmp_path: Path, postgres_url: str) -> dict[str, str]:
    return {'FASTQ_BROKER_URL': f'sqlite:///{tmp_path}/broker.sqlite3', 'FASTQ_RESULT_BACKEND': f'db+{postgres_url}'}


def _rows(postgres_url: str, sql: str) -> list[Any]:
    engine = sa.create_engine(postgres_url)
    try:
        with engine.begin() as conn:
            result = conn.execute(sa.text(sql))
            return list(result) if result.returns_rows else []
    finally:
        engine.dispose()


def test_worker_results_groups_and_cleanup(tasks: Any, worker: Any, postgres_url: str) -> None:
    from fastq.backends.database import DatabaseBackend

    tasks.app.conf.result_extended = True
    w = worker('-c', '3', extra_env={'FASTQ_RESULT_EXTENDED': 'true'})
    assert '.> results:     db+postgresql://postgres@127.0.0.1' in w.log
    assert isinstance(tasks.app.backend, DatabaseBackend)
    results = [tasks.add.delay(i, i) for i in range(30)]
    assert [r.get(timeout=30) for r in results] == [i + i for i in range(30)]
    meta = tasks.app.backend.get_task_meta(results[0].id)
    assert (meta['name'], meta['args'], meta['queue']) == ('worker_tasks.add', [0, 0], 'celery')
    assert meta['worker'].startswith('celery@') and isinstance(results[0].date_done, datetime)
    failed = tasks.fail_custom.delay('boom')
    with pytest.raises(tasks.CustomError, match='boom'):
        failed.get(timeout=30)
    assert 'CustomError: boom' in (failed.traceback or '')
    assert group(tasks.add.s(i, 1) for i in range(5)).delay().get(timeout=30) == [1, 2, 3, 4, 5]
    assert chain(tasks.add.s(1, 2), tasks.mul.s(10)).delay().get(timeout=30) == 30
    # Results kept past result_expires are what celery.backend_cleanup deletes (sent by Celery's beat).
    old = datetime.now(UTC).replace(tzinfo=None) - timedelta(days=2)
    _rows(postgres_url, f"UPDATE celery_taskmeta SET date_done = '{old.isoformat()}' WHERE task_id = '{results[0].id}'")
    tasks.app.send_task('celery.backend_cleanup').get(timeout=30)
    backend = tasks.app.backend
    assert backend.get_state(results[0].id) == states.PENDING and backend.get_state(results[1].id) == states.SUCCESS


def test_chord_joined_once_by_prefork_children(tasks: Any, worker: Any, tmp_path: Path, postgres_url: str) -> None:
    """Header tasks finish in several pool children at once; exactly one of them sends the body."""
    out = tmp_path / 'chord.txt'
    worker('-c', '4')
    header = [tasks.chord_part.s(str(out), str(i), i, 0.05 * (i % 3)) for i in range(12)]
    result = chord(header, tasks.record_body.s(str(out))).delay()
    assert result.get(timeout=60) == list(range(12))
    bodies = [line for line in lines(out) if line.startswith('body')]
    assert len(bodies) == 1
    # joined: parts gone, the done marker kept (written once the body is sent, which may be after it ran)
    wait_until(
        lambda: [tuple(row) for row in _rows(postgres_url, 'SELECT done, size FROM fastq_chords')] == [(1, None)],
        30,
        'the done marker',
    )
    assert _rows(postgres_url, 'SELECT COUNT(*) FROM fastq_chord_parts')[0][0] == 0
