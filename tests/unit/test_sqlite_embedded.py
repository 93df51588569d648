"""The embedded default: SQLite files in the working directory, result expiry, wakeups with and without inotify."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from fastq import Fastq, states
from fastq.utils import doorbell
from fastq.utils.doorbell import Doorbell


def test_no_broker_configured_means_sqlite_in_cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    app = Fastq('tasks', set_as_current=False)
    assert app.broker_url == f'sqlite:///{tmp_path}/fastq-broker.sqlite3'
    assert app.backend_url == f'sqlite:///{tmp_path}/fastq-results.sqlite3'
    assert app.backend.describe() == app.backend_url
    app.close()


def test_broker_without_backend_disables_results_like_celery(tmp_path: Path) -> None:
    app = Fastq('tasks', broker=f'sqlite:///{tmp_path}/b.db', set_as_current=False)
    assert app.backend_url is None
    with pytest.raises(NotImplementedError, match='No result backend is configured'):
        app.AsyncResult('x').get(timeout=1)
    app.close()


def test_result_expires(sqlite_app: Fastq) -> None:
    sqlite_app.conf.result_expires = 0.3
    sqlite_app._backend = None
    sqlite_app.backend.store_result('gone-soon', 1, states.SUCCESS)
    assert sqlite_app.AsyncResult('gone-soon').state == states.SUCCESS
    time.sleep(0.5)
    assert sqlite_app.AsyncResult('gone-soon').state == states.PENDING


def test_get_wakes_on_the_doorbell(sqlite_app: Fastq) -> None:
    backend = sqlite_app.backend
    threading.Timer(0.2, lambda: backend.store_result('later', 'v', states.SUCCESS)).start()
    assert sqlite_app.AsyncResult('later').get(timeout=30, interval=30) == 'v'


def test_doorbell_without_inotify_falls_back_to_polling(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(doorbell, '_get_libc', lambda: None)
    monkeypatch.setattr(doorbell, 'FALLBACK_POLL', 0.05)
    bell = Doorbell(str(tmp_path / 'ring'))
    generation = bell.generation()
    started = time.monotonic()
    assert bell.wait(generation, 10.0) is False  # no notification available: a bounded poll, not a hang
    assert time.monotonic() - started < 5


def test_doorbell_rings_across_threads(tmp_path: Path) -> None:
    bell = Doorbell(str(tmp_path / 'ring'))
    generation = bell.generation()
    threading.Timer(0.1, bell.ring).start()
    # one wait is capped at the fallback poll (1 s); a loaded machine may need more than one
    deadline = time.monotonic() + 30
    while not bell.wait(generation, 5.0):
        assert time.monotonic() < deadline, 'the ring never arrived'


def test_doorbells_in_more_directories_than_inotify_instances_still_ring(tmp_path: Path) -> None:
    # The kernel allows a user 128 inotify instances by default (and many more watches): one instance per
    # directory ran out in a process that used many (this suite's temporary ones), and every doorbell after
    # that only woke by its 1 s poll, when wait() reports no ring at all
    bells = []
    for i in range(200):
        directory = tmp_path / f'd{i}'
        directory.mkdir()
        bells.append(Doorbell(str(directory / 'ring')))
    generations = [bell.generation() for bell in bells]  # (each directory watched, as a waiter would)
    for bell, generation in list(zip(bells, generations, strict=True))[::40] + [(bells[-1], generations[-1])]:
        bell.ring()
        assert bell.wait(generation, 5.0)


def test_a_doorbell_rings_in_a_directory_made_again(tmp_path: Path) -> None:
    import shutil

    directory = tmp_path / 'again'
    directory.mkdir()
    bell = Doorbell(str(directory / 'ring'))
    generation = bell.generation()
    bell.ring()
    assert bell.wait(generation, 5.0)
    shutil.rmtree(directory)
    directory.mkdir()
    bell = Doorbell(str(directory / 'ring'))
    deadline = time.monotonic() + 30
    while True:  # (the old watch's removal is noticed by the watching thread: the new one follows it)
        generation = bell.generation()
        bell.ring()
        if bell.wait(generation, 1.0):
            break
        assert time.monotonic() < deadline, 'the ring never arrived'


def test_opening_a_new_file_while_another_process_writes(tmp_path: Path) -> None:
    """Switching a new file to WAL fails at once with "locked" while another connection writes (SQLite skips
    its busy wait there); opening waits for it instead, as two processes set up one results file."""
    import sqlite3

    from fastq.utils.sqlite import Database

    path = tmp_path / 'new.sqlite3'
    other = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    other.execute('BEGIN IMMEDIATE')
    other.execute('CREATE TABLE t (x)')
    threading.Timer(0.2, other.execute, ('COMMIT',)).start()
    db = Database(str(path), f'sqlite:///{path}', 'CREATE TABLE IF NOT EXISTS u (y)')
    db.setup()
    assert db.query("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name") == [('t',), ('u',)]
    db.close()
    other.close()
