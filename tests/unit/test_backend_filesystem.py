"""The file-system result backend against Celery's own (the oracle), in one directory: each side writes with its
real backend object and the other reads the same files; the directory check, cleanup and chords follow Celery's.
"""

from __future__ import annotations

import os
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from fastq import Fastq, states
from fastq.exceptions import DecodeError, ImproperlyConfigured, TimeoutError

celery = pytest.importorskip('celery')


@pytest.fixture
def apps(tmp_path: Path) -> Iterator[Any]:
    """`apps(**conf)` -> (fastq app, Celery app) on the same directory with the same settings."""
    made: list[Any] = []
    url = f'file://{tmp_path}'

    def make(**conf: Any) -> tuple[Fastq, Any]:
        f_app = Fastq('t', broker='memory://', backend=url, set_as_current=False)
        f_app.conf.update(**conf)
        c_app = celery.Celery('t', broker='memory://', backend=url, set_as_current=False)
        c_app.conf.update(**conf)
        made.extend([f_app, c_app])
        return f_app, c_app

    yield make
    for app in made:
        app.close()


def _id() -> str:
    return str(uuid.uuid4())


def test_results_and_failures_read_both_ways(apps: Any, tmp_path: Path) -> None:
    f_app, c_app = apps()
    ours, theirs, failed = _id(), _id(), _id()
    f_app.backend.mark_as_done(ours, {'x': [1, 'é']})
    c_app.backend.mark_as_done(theirs, {'y': 2})
    f_app.backend.mark_as_failure(failed, KeyError('gone'), traceback='Traceback: ours')
    assert c_app.AsyncResult(ours).get(timeout=5) == {'x': [1, 'é']}
    assert f_app.AsyncResult(theirs).get(timeout=5) == {'y': 2}
    result = c_app.AsyncResult(failed)
    assert isinstance(result.result, KeyError) and result.traceback == 'Traceback: ours'
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == sorted(f'celery-task-meta-{i}' for i in (ours, theirs, failed))  # (no temporary file left)
    assert c_app.backend.decode((tmp_path / f'celery-task-meta-{ours}').read_bytes())['task_id'] == ours


def test_compressed_results_and_groups(apps: Any) -> None:
    f_app, c_app = apps(result_compression='zlib', result_backend_transport_options={'global_keyprefix': 'p:'})
    ids = [_id() for _ in range(3)]
    for n, task_id in enumerate(ids):
        f_app.backend.mark_as_done(task_id, n)
    f_app.GroupResult('fg', [f_app.AsyncResult(i) for i in ids]).save()
    restored = c_app.GroupResult.restore('fg')
    assert restored is not None and restored.get(timeout=5) == [0, 1, 2]
    assert Path(c_app.backend.path.decode(), 'p:celery-taskset-meta-fg').exists()
    c_app.GroupResult('cg', [c_app.AsyncResult(i) for i in ids]).save()
    mine = f_app.GroupResult.restore('cg')
    assert mine is not None and mine.join(timeout=5) == [0, 1, 2]
    f_app.backend.delete_group('cg')
    assert c_app.GroupResult.restore('cg') is None


def test_success_is_kept_and_forget_is_quiet(apps: Any) -> None:
    f_app, c_app = apps()
    task_id = _id()
    f_app.backend.mark_as_done(task_id, 1)
    f_app.backend.mark_as_failure(task_id, ValueError('late duplicate'))
    assert c_app.AsyncResult(task_id).result == 1
    f_app.backend.forget(task_id)
    f_app.backend.forget(task_id)  # (Celery's raises FileNotFoundError here)
    assert f_app.backend.get_state(task_id) == states.PENDING


def test_a_file_caught_mid_write_is_read_again(apps: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from fastq.backends import filesystem

    f_app, c_app = apps()
    task_id = _id()
    c_app.backend.mark_as_done(task_id, 'whole')
    path = tmp_path / f'celery-task-meta-{task_id}'
    whole = path.read_bytes()
    path.write_bytes(b'')  # as Celery's writer leaves it between its truncate and its write
    pauses: list[float] = []

    def sleep(seconds: float) -> None:  # (the writer finishes while the reader pauses)
        pauses.append(seconds)
        path.write_bytes(whole)

    monkeypatch.setattr(filesystem, 'time', SimpleNamespace(sleep=sleep, time=time.time))
    assert f_app.backend.get_task_meta(task_id)['result'] == 'whole' and len(pauses) == 1
    monkeypatch.setattr(filesystem, 'time', SimpleNamespace(sleep=pauses.append, time=time.time))
    path.write_bytes(b'{"stat')  # never finished: an error after the last pause
    with pytest.raises(DecodeError):
        f_app.backend.get_task_meta(task_id)
    assert len(pauses) == 1 + len(filesystem.TORN_READ_PAUSES)


def test_wait_for_polls_until_ready(apps: Any) -> None:
    f_app, c_app = apps()
    task_id = _id()
    with pytest.raises(TimeoutError):
        f_app.AsyncResult(task_id).get(timeout=0.05)
    theirs = c_app.backend
    threading.Timer(0.1, lambda: theirs.mark_as_done(task_id, 'late')).start()
    assert f_app.AsyncResult(task_id).get(timeout=10) == 'late'


def test_cleanup_by_modification_time(apps: Any, tmp_path: Path) -> None:
    f_app, c_app = apps(result_expires=60)
    old, new = _id(), _id()
    for task_id in (old, new):
        c_app.backend.mark_as_done(task_id, 1)
    f_app.GroupResult('old-group', []).save()
    stale_temp = tmp_path / '.fastq-tmp-dead'
    stale_temp.write_bytes(b'half')
    (tmp_path / 'unrelated').write_bytes(b'kept')
    past = time.time() - 7200
    for name in (f'celery-task-meta-{old}', 'celery-taskset-meta-old-group', stale_temp.name, 'unrelated'):
        os.utime(tmp_path / name, (past, past))
    backend = f_app.backend
    assert backend.supports_autoexpire is False  # beat schedules celery.backend_cleanup for it
    backend.cleanup()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([f'celery-task-meta-{new}', 'unrelated'])


def test_chords_poll_with_chord_unlock(apps: Any) -> None:
    f_app, _ = apps()
    assert f_app.backend.chord_store is None


@pytest.mark.parametrize(
    ('url', 'message'),
    [
        ('file://', 'You need to configure a path'),
        ('file:///nonexistent/dir', 'does not\nwork correctly'),
    ],
)
def test_directory_checked_when_made(url: str, message: str) -> None:
    app = Fastq('t', broker='memory://', backend=url, set_as_current=False)
    try:
        with pytest.raises(ImproperlyConfigured, match=message):
            app.backend  # noqa: B018
    finally:
        app.close()


def test_url_forms(tmp_path: Path) -> None:
    from fastq.backends.filesystem import E_NO_PATH_SET, E_PATH_NON_CONFORMING_SCHEME, directory_of

    assert directory_of(f'file://localhost{tmp_path}') == str(tmp_path)
    assert directory_of(f'file://{tmp_path}/') == f'{tmp_path}/'
    with pytest.raises(ImproperlyConfigured, match=E_NO_PATH_SET):
        directory_of('')
    with pytest.raises(ImproperlyConfigured, match=E_PATH_NON_CONFORMING_SCHEME):
        directory_of('files:///tmp')
    app = Fastq('t', broker='memory://', backend=f'file://localhost{tmp_path}', set_as_current=False)
    try:
        app.backend.mark_as_done('x', 1)
        assert (tmp_path / 'celery-task-meta-x').exists()
        assert not list(tmp_path.glob('.fs-backend-*'))  # the directory check cleans up after itself
    finally:
        app.close()
