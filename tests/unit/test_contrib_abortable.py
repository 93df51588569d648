"""`fastq.contrib.abortable` (Celery's): a task asked to stop through its result sees it and stops itself;
run on an embedded worker (`fastq.contrib.testing.worker.start_worker`)."""

from __future__ import annotations

import threading
from typing import Any

from fastq.contrib.abortable import ABORTED, AbortableAsyncResult, AbortableTask
from fastq.contrib.testing.app import TestApp, setup_default_app
from fastq.contrib.testing.worker import start_worker


def test_an_abortable_task_stops_when_asked() -> None:
    app = TestApp()
    started = threading.Event()
    with setup_default_app(app):

        @app.task(bind=True, base=AbortableTask)
        def long_task(self: Any) -> str:
            started.set()
            for _ in range(1000):
                if self.is_aborted():
                    return 'aborted'
                threading.Event().wait(0.01)
            return 'finished'

        with start_worker(app, pool='threads', concurrency=2):
            result = long_task.delay()
            assert isinstance(result, AbortableAsyncResult) and not result.is_aborted()
            assert started.wait(10)
            result.abort()
            assert result.is_aborted() or result.state == 'SUCCESS'
            assert result.get(timeout=30) == 'aborted'
            other = long_task.AsyncResult('never-sent')
            other.abort()
            assert other.state == ABORTED and long_task.is_aborted(task_id='never-sent')
