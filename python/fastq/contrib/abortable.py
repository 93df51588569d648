"""Abortable tasks (Celery's `celery.contrib.abortable`): the caller asks, the task checks and stops itself.

`AbortableAsyncResult.abort()` stores the ABORTED state for the task in the result backend; the task, an
`AbortableTask`, looks at `self.is_aborted()` between steps of its work and returns early when it is. So the
task chooses where it may stop (unlike `revoke(terminate=True)`, which kills the process running it), and
it needs a result backend. A task that finishes after all stores its result over the ABORTED state.

    @app.task(bind=True, base=AbortableTask)
    def long_task(self):
        for i in range(10):
            if self.is_aborted():
                return 'aborted'
            step(i)

    result = long_task.delay()
    ...
    result.abort()
"""

from __future__ import annotations

from typing import Any

from fastq.result import AsyncResult
from fastq.task import Task

__all__ = ['ABORTED', 'AbortableAsyncResult', 'AbortableTask']

ABORTED = 'ABORTED'


class AbortableAsyncResult(AsyncResult[Any]):
    """An `AsyncResult` that can ask its task to stop."""

    def is_aborted(self) -> bool:
        return self.state == ABORTED

    def abort(self) -> Any:
        """Ask the task to stop: it sees it at its next `is_aborted()` (if it is an AbortableTask that checks)."""
        return self.backend.store_result(self.id, None, ABORTED, traceback=None)


class AbortableTask(Task[Any, Any]):
    """A task that can be aborted: check `self.is_aborted()` in it from time to time."""

    abstract = True

    def AsyncResult(self, task_id: str, **kwargs: Any) -> AbortableAsyncResult:
        return AbortableAsyncResult(task_id, backend=self.backend, task_name=self.name, app=self.app)

    def is_aborted(self, **kwargs: Any) -> bool:
        """Whether this task (or the one of `task_id=`) was asked to stop."""
        task_id = kwargs.get('task_id', self.request.id)
        if not task_id:
            return False
        return self.AsyncResult(task_id).is_aborted()
