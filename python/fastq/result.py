"""`AsyncResult`: a handle on a task's state and return value, read from the result backend.

Typed by the task: `add.delay(1, 2)` is an `AsyncResult[int]`, so `.get()` is an int to a type checker. A
failed task's exception is re-raised by `get()` as its original class when that class is importable here.
"""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from fastq import _state, states
from fastq.exceptions import TaskRevokedError

if TYPE_CHECKING:
    from fastq.app import Fastq
    from fastq.backends.base import Backend

__all__ = ['AsyncResult', 'EagerResult', 'ResultBase']

R = TypeVar('R')

E_WOULDBLOCK = (
    'Never call result.get() within a task!\n'
    'See https://docs.celeryq.dev/en/latest/userguide/tasks.html#avoid-launching-synchronous-subtasks'
)


def assert_will_not_block() -> None:
    task = _state.get_current_worker_task()
    if task is not None and getattr(task.app.conf, 'task_allow_sync_subtasks', False) is not True:
        raise RuntimeError(E_WOULDBLOCK)


class ResultBase:
    parent: Any = None


class AsyncResult(ResultBase, Generic[R]):
    """The result of a task that was sent (or is being executed)."""

    def __init__(
        self,
        id: str,
        backend: Backend | None = None,
        task_name: str | None = None,
        app: Fastq | None = None,
        parent: Any = None,
    ) -> None:
        if id is None:
            raise ValueError(f'AsyncResult requires valid id, not {type(id)}')
        self.app = app or _state.get_current_app()
        self.id = id
        self._backend = backend
        self.name = task_name
        self.parent = parent
        self._cache: dict[str, Any] | None = None
        self.ignored = False

    @property
    def backend(self) -> Backend:
        return self._backend or self.app.backend

    @property
    def task_id(self) -> str:
        return self.id

    # --- state --------------------------------------------------------------------------------------------

    def _get_task_meta(self) -> dict[str, Any]:
        if self._cache is None:
            meta = self.backend.get_task_meta(self.id)
            if meta['status'] in states.READY_STATES:
                self._cache = meta
            return meta
        return self._cache

    def _set_cache(self, meta: dict[str, Any]) -> dict[str, Any]:
        if meta['status'] in states.READY_STATES:
            self._cache = meta
        return meta

    @property
    def state(self) -> str:
        """PENDING, RECEIVED, STARTED, SUCCESS, FAILURE, RETRY, REVOKED or a custom state."""
        return str(self._get_task_meta()['status'])

    status = state

    @property
    def result(self) -> Any:
        """The return value, or the exception for failed tasks (without raising it)."""
        return self._get_task_meta().get('result')

    info = result

    @property
    def traceback(self) -> str | None:
        return self._get_task_meta().get('traceback')

    @property
    def date_done(self) -> datetime | None:
        value = self._get_task_meta().get('date_done')
        if isinstance(value, str):
            return datetime.fromisoformat(value)
        return value

    @property
    def children(self) -> list[Any] | None:
        return self._get_task_meta().get('children')

    def _extended(self, key: str) -> Any:
        return self._get_task_meta().get(key)

    @property
    def args(self) -> Any:
        return self._extended('args')

    @property
    def kwargs(self) -> Any:
        return self._extended('kwargs')

    @property
    def worker(self) -> Any:
        return self._extended('worker')

    @property
    def retries(self) -> Any:
        return self._extended('retries')

    @property
    def queue(self) -> Any:
        return self._extended('queue')

    def ready(self) -> bool:
        """True when the task has finished (SUCCESS, FAILURE or REVOKED)."""
        return self.state in states.READY_STATES

    def successful(self) -> bool:
        return self.state == states.SUCCESS

    def failed(self) -> bool:
        return self.state == states.FAILURE

    # --- waiting ------------------------------------------------------------------------------------------

    def get(
        self,
        timeout: float | None = None,
        propagate: bool = True,
        interval: float = 0.5,
        no_ack: bool = True,
        follow_parents: bool = True,
        callback: Any = None,
        on_message: Any = None,
        on_interval: Any = None,
        disable_sync_subtasks: bool = True,
        EXCEPTION_STATES: frozenset[str] = states.EXCEPTION_STATES,
        PROPAGATE_STATES: frozenset[str] = states.PROPAGATE_STATES,
    ) -> R:
        """Wait for the task to finish and return its value; re-raise its exception when `propagate`.

        Raises:
            fastq.exceptions.TimeoutError: not ready after `timeout` seconds.
        """
        if self.ignored:
            return None  # type: ignore[return-value]
        if disable_sync_subtasks:
            assert_will_not_block()
        if self._cache is not None:
            meta = self._cache
        else:
            meta = self._set_cache(
                self.backend.wait_for(self.id, timeout=timeout, interval=interval, on_interval=on_interval)
            )
        state = meta['status']
        value = meta.get('result')
        if callback is not None:
            callback(self.id, value)
        if propagate and state in PROPAGATE_STATES:
            self._raise(state, value, meta.get('traceback'))
        return value  # type: ignore[return-value]

    wait = get

    def _raise(self, state: str, value: Any, traceback: str | None) -> None:
        if isinstance(value, BaseException):
            raise value
        if state == states.REVOKED:
            raise TaskRevokedError(value)
        raise Exception(value)

    def maybe_throw(self, propagate: bool = True) -> None:
        meta = self._get_task_meta()
        if propagate and meta['status'] in states.PROPAGATE_STATES:
            self._raise(meta['status'], meta.get('result'), meta.get('traceback'))

    maybe_reraise = maybe_throw

    def revoke(
        self,
        connection: Any = None,
        terminate: bool = False,
        signal: str | None = None,
        wait: bool = False,
        timeout: float | None = None,
    ) -> None:
        """Revoke this task (see `app.control.revoke`); with `wait`, block until workers report the state."""
        self.app.control.revoke(self.id, terminate=terminate, signal=signal or 'SIGTERM')
        if wait:
            self.backend.wait_for(self.id, timeout=timeout)

    def forget(self) -> None:
        """Remove the stored result."""
        self._cache = None
        self.backend.forget(self.id)

    def as_tuple(self) -> tuple[tuple[str, Any], None]:
        parent = self.parent
        return (self.id, parent.as_tuple() if parent else None), None

    def __eq__(self, other: object) -> bool:
        if isinstance(other, AsyncResult):
            return other.id == self.id
        if isinstance(other, str):
            return other == self.id
        return NotImplemented

    def __hash__(self) -> int:
        return hash(self.id)

    def __str__(self) -> str:
        return self.id

    def __repr__(self) -> str:
        return f'<{type(self).__name__}: {self.id}>'

    def __reduce__(self) -> tuple[Any, ...]:
        return self.__class__, (self.id, None, self.name, None, self.parent)


class EagerResult(AsyncResult[R]):
    """The result of a task run in this process (`apply()`, `task_always_eager`): already known."""

    def __init__(
        self,
        id: str,
        ret_value: Any,
        state: str,
        traceback: str | None = None,
        name: str | None = None,
        app: Fastq | None = None,
    ) -> None:
        super().__init__(id, task_name=name, app=app)
        self._result = ret_value
        self._state = state
        self._traceback = traceback
        self._cache = {'status': state, 'result': ret_value, 'traceback': traceback, 'task_id': id}

    def _get_task_meta(self) -> dict[str, Any]:
        assert self._cache is not None
        return self._cache

    def get(self, timeout: float | None = None, propagate: bool = True, *args: Any, **kwargs: Any) -> R:
        if propagate and self._state in states.PROPAGATE_STATES:
            self._raise(self._state, self._result, self._traceback)
        return self._result  # type: ignore[no-any-return]

    wait = get

    def forget(self) -> None:
        return None

    def __repr__(self) -> str:
        return f'<EagerResult: {self.id}>'
