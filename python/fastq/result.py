"""`AsyncResult`: a handle on a task's state and return value, read from the result backend.

Typed by the task: `add.delay(1, 2)` is an `AsyncResult[int]`, so `.get()` is an int to a type checker. A
failed task's exception is re-raised by `get()` as its original class when that class is importable here.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import Future
from datetime import datetime
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from fastq import _state, states
from fastq.exceptions import IncompleteStream, TaskRevokedError, TimeoutError

if TYPE_CHECKING:
    from fastq.app import Fastq
    from fastq.backends.base import Backend
    from fastq.utils.graph import DependencyGraph

__all__ = [
    'AsyncResult',
    'EagerResult',
    'GroupResult',
    'ResultBase',
    'ResultSet',
    'allow_join_result',
    'denied_join_result',
    'result_from_tuple',
]

R = TypeVar('R')

E_WOULDBLOCK = (
    'Never call result.get() within a task!\n'
    'See https://docs.celeryq.dev/en/latest/userguide/tasks.html#avoid-launching-synchronous-subtasks\n'
)


#: Inside `allow_join_result()` (per thread, as Celery's): a task may wait on a result there.
_join = threading.local()
#: How many embedded test workers (`fastq.contrib.testing.worker.start_worker`) run: their tasks may wait on
#: results, as Celery's may (its start_worker clears `task_join_will_block` once the worker is up).
_embedded_workers = 0


def assert_will_not_block() -> None:
    task = _state.get_current_worker_task()
    if (
        task is not None
        and not _embedded_workers
        and getattr(task.app.conf, 'task_allow_sync_subtasks', False) is not True
        and not getattr(_join, 'allowed', False)
    ):
        raise RuntimeError(E_WOULDBLOCK)


@contextlib.contextmanager
def _joining(allowed: bool) -> Iterator[None]:
    before = getattr(_join, 'allowed', False)
    _join.allowed = allowed
    try:
        yield
    finally:
        _join.allowed = before


def allow_join_result() -> contextlib.AbstractContextManager[None]:
    """Let a task wait on results within this block (Celery's escape hatch; it can deadlock a busy pool)."""
    return _joining(True)


def denied_join_result() -> contextlib.AbstractContextManager[None]:
    """The opposite of `allow_join_result`, within this block."""
    return _joining(False)


class ResultBase:
    parent: Any = None
    #: The app of `app.AsyncResult`, `app.ResultSet`, `app.GroupResult` (Celery's `subclass_with_self`): what
    #: their results use when not given `app=` (see `bound_result_class`).
    _bound_app: Fastq | None = None

    def as_tuple(self) -> Any:
        """What travels in `children` and saved groups: `((id, parent), None)`, or a group's members."""
        raise NotImplementedError


class AsyncResult(ResultBase, Generic[R]):
    """The result of a task that was sent (or is being executed)."""

    #: What `get(timeout=...)` raises (Celery's `AsyncResult.TimeoutError`, for `except r.TimeoutError`).
    TimeoutError = TimeoutError

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
        self.app = _state.app_or_default(app or self._bound_app)
        self.id = id
        self._backend = backend
        self._name = task_name
        self.parent = parent
        self._cache: dict[str, Any] | None = None
        self.ignored: bool | None = False  # (None: `send_task` was not told, as Celery sets it)
        self.sent_at: float | None = None  # time.monotonic() when this process sent the task (a hint for waits)

    @classmethod
    def _of_sent(
        cls, ids: list[str], app: Fastq, name: str, ignored: bool | None, sent_at: float
    ) -> list[AsyncResult[Any]]:
        """`AsyncResult(id, app=app, task_name=name)` for each of `ids`, with `ignored` and `sent_at` set: the
        results of a batch just sent, made without a call to `__init__` apiece (a group of 100,000 makes as
        many; tests/unit/test_client.py checks that the attributes are `__init__`'s)."""
        new = object.__new__
        out = []
        for task_id in ids:
            result = new(cls)
            result.__dict__ = {
                'app': app,
                'id': task_id,
                '_backend': None,
                '_name': name,
                'parent': None,
                '_cache': None,
                'ignored': ignored,
                'sent_at': sent_at,
            }
            out.append(result)
        return out

    @property
    def backend(self) -> Backend:
        return self._backend or self.app.backend

    @property
    def task_id(self) -> str:
        return self.id

    @property
    def supports_native_join(self) -> bool:
        return bool(self.backend.supports_native_join)

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
        """The results of the tasks this one sent while it ran (as stored with its result)."""
        children = self._get_task_meta().get('children')
        if children is None:
            return None
        return [result_from_tuple(child, self.app) for child in children]

    # --- the tree of tasks this one sent --------------------------------------------------------------------

    def iterdeps(self, intermediate: bool = False) -> Iterator[tuple[Any, Any]]:
        """(parent, node) for this result and every result under it, breadth first; a node's children are
        known once it is done, so an unfinished one raises IncompleteStream unless `intermediate`."""
        stack: deque[tuple[Any, Any]] = deque([(None, self)])
        while stack:
            parent, node = stack.popleft()
            yield parent, node
            if node.ready():
                stack.extend((node, child) for child in node.children or [])
            elif not intermediate:
                raise IncompleteStream()

    def collect(self, intermediate: bool = False, **kwargs: Any) -> Iterator[tuple[Any, Any]]:
        """(result, value) for this task and every task it sent (and so on), waiting for each: Celery's way
        to gather what a task fanned out (`kwargs` go to each `get`)."""
        for _, node in self.iterdeps(intermediate=intermediate):
            yield node, node.get(**kwargs)

    def get_leaf(self) -> Any:
        """The value of the last result of the tree (`iterdeps` order): a chain of tasks that each sent the
        next one ends there."""
        value = None
        for _, node in self.iterdeps():
            value = node.get()
        return value

    def build_graph(self, intermediate: bool = False, formatter: Any = None) -> DependencyGraph:
        """The tree of results as a `DependencyGraph` (`.to_dot(fh)` draws it)."""
        from fastq.utils.graph import DependencyGraph, GraphFormatter

        graph = DependencyGraph(formatter=formatter or GraphFormatter(root=self.id, shape='oval'))
        for parent, node in self.iterdeps(intermediate=intermediate):
            graph.add_arc(node)
            if parent is not None:
                graph.add_edge(parent, node)
        return graph

    @property
    def graph(self) -> DependencyGraph:
        return self.build_graph()

    def then(self, callback: Any, on_error: Any = None, weak: bool = False) -> Future[Any]:
        """Call `callback(result)` once the task is done (from a thread of its own: fastq's clients need no
        event loop to drive it); `on_error(exc)` if waiting or the callback fails. Returns a Future of what
        the callback returned. (`weak` is accepted for Celery's signature.)"""
        return _then_in_thread(lambda: self.get(propagate=False, disable_sync_subtasks=False), self, callback, on_error)

    def _extended(self, key: str) -> Any:
        return self._get_task_meta().get(key)

    @property
    def name(self) -> str | None:
        """The task's name: as known when this result was made (sent from here), else as stored with the
        result (`result_extended`), else None."""
        return self._name if self._name is not None else self._extended('name')

    @name.setter
    def name(self, value: str | None) -> None:
        self._name = value

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
        check_parents = follow_parents and propagate and self.parent is not None
        if check_parents:
            # A chain's result: a failed earlier step raises its own error rather than leave us waiting.
            self._maybe_reraise_parent_error()
            on_interval = _then(self._maybe_reraise_parent_error, on_interval)
        if self._cache is not None:
            meta = self._cache
        else:
            meta = self._set_cache(
                self.backend.wait_for(
                    self.id,
                    timeout=timeout,
                    interval=interval,
                    on_interval=on_interval,
                    sent_at=self.sent_at,
                    on_message=on_message,
                )
            )
        state = meta['status']
        value = meta.get('result')
        if callback is not None:
            callback(self.id, value)
        if propagate and state in PROPAGATE_STATES:
            if check_parents:
                # Celery looks at the parents once more as the result arrives: a chord's body failed with
                # ChordError raises the header task's own error, as a chain's last step raises its first's.
                self._maybe_reraise_parent_error()
            self._raise(state, value, meta.get('traceback'))
        return value  # type: ignore[return-value]

    wait = get

    async def aget(
        self,
        timeout: float | None = None,
        propagate: bool = True,
        interval: float = 0.5,
        follow_parents: bool = True,
        callback: Any = None,
        disable_sync_subtasks: bool = True,
        PROPAGATE_STATES: frozenset[str] = states.PROPAGATE_STATES,
    ) -> R:
        """`get` for code running in an event loop: awaits the result without blocking the loop.

        Same semantics: the value, or the task's exception re-raised when `propagate`; a failed earlier step
        of a chain raises its own error. On Redis it waits on the backend's pub/sub from the running loop (one
        connection per loop, no thread); on SQLite and the in-memory backend the blocking wait runs in the
        loop's default executor, a second at a time.

        Raises:
            fastq.exceptions.TimeoutError: not ready after `timeout` seconds.
        """
        if self.ignored:
            return None  # type: ignore[return-value]
        if disable_sync_subtasks:
            assert_will_not_block()
        check_parents = follow_parents and propagate and self.parent is not None
        if check_parents:
            await self._amaybe_reraise_parent_error()
        if self._cache is not None:
            meta = self._cache
        else:
            meta = self._set_cache(
                await self.backend.await_for(self.id, timeout=timeout, interval=interval, sent_at=self.sent_at)
            )
        state = meta['status']
        value = meta.get('result')
        if callback is not None:
            callback(self.id, value)
        if propagate and state in PROPAGATE_STATES:
            if check_parents:  # an earlier step's failure is the one to report, as `get` does
                await self._amaybe_reraise_parent_error()
            self._raise(state, value, meta.get('traceback'))
        return value  # type: ignore[return-value]

    async def _amaybe_reraise_parent_error(self) -> None:
        parents = []
        node = self.parent
        while node is not None:
            parents.append(node)
            node = node.parent
        for node in reversed(parents):
            if isinstance(node, AsyncResult):
                meta = node._cache
                if meta is None:
                    meta = node._set_cache(await node.backend.aget_task_meta(node.id))
                if meta['status'] in states.PROPAGATE_STATES:
                    node._raise(meta['status'], meta.get('result'), meta.get('traceback'))
            else:
                node.maybe_throw()

    def _raise(self, state: str, value: Any, traceback: str | None) -> None:
        if isinstance(value, BaseException):
            if traceback and self.app.conf.task_remote_tracebacks:
                value = _with_remote_traceback(value, traceback)
            raise value
        if state == states.REVOKED:
            raise TaskRevokedError(value)
        raise Exception(value)

    def maybe_throw(self, propagate: bool = True, callback: Any = None) -> Any:
        """Raise the task's error if it failed (with `propagate`); else its value, as Celery's."""
        meta = self._get_task_meta()
        if propagate and meta['status'] in states.PROPAGATE_STATES:
            self._raise(meta['status'], meta.get('result'), meta.get('traceback'))
        if callback is not None:
            callback(self.id, meta.get('result'))
        return meta.get('result')

    maybe_reraise = maybe_throw

    def exists(self) -> bool:
        """Whether the backend holds a result for this task (Celery 5.7's): tells a task never sent, or whose
        result was forgotten or expired, from one still pending, which both read as PENDING."""
        return self.backend.task_result_exists(self.id)

    def as_list(self) -> list[str]:
        """This task's id, then its parents' (Celery's)."""
        parent = self.parent
        return [self.id, *(parent.as_list() if parent is not None else ())]

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

    def revoke_by_stamped_headers(
        self,
        headers: dict[str, Any],
        connection: Any = None,
        terminate: bool = False,
        signal: str | None = None,
        wait: bool = False,
        timeout: float | None = None,
    ) -> None:
        """Revoke the tasks stamped with these values (see `app.control.revoke_by_stamped_headers`); with `wait`,
        block until the workers answered (or `timeout` seconds passed), as Celery's."""
        self.app.control.revoke_by_stamped_headers(
            headers, terminate=terminate, signal=signal or 'SIGTERM', reply=wait, timeout=timeout
        )

    def _maybe_reraise_parent_error(self) -> None:
        parents = []
        node = self.parent
        while node is not None:
            parents.append(node)
            node = node.parent
        for node in reversed(parents):
            node.maybe_throw()

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
        return unbound_class(type(self)), (self.id, None, self._name, None, self.parent)


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

    @property
    def supports_native_join(self) -> bool:
        return False  # (already here: nothing to join through the backend, as Celery's)

    def revoke(self, *args: Any, **kwargs: Any) -> None:
        """Mark it revoked, as Celery 5.7's: the task already ran here, so nothing is sent to workers; its
        value gives way to the TaskRevokedError a worker would store, which `get` raises."""
        self._state = states.REVOKED
        self._result = TaskRevokedError('revoked')
        self._traceback = None
        self._cache = {'status': self._state, 'result': self._result, 'traceback': None, 'task_id': self.id}

    def __repr__(self) -> str:
        return f'<EagerResult: {self.id}>'


def _then_in_thread(wait: Any, result: Any, callback: Any, on_error: Any) -> Future[Any]:
    """`then`: a thread waits, then calls `callback(result)`; a Future of what it returned (or its error,
    which `on_error` hears too)."""
    future: Future[Any] = Future()

    def run() -> None:
        try:
            wait()
            future.set_result(callback(result))
        except Exception as exc:
            future.set_exception(exc)
            if on_error is not None:
                on_error(exc)

    threading.Thread(target=run, name='fastq-then', daemon=True).start()
    return future


def _with_remote_traceback(exc: BaseException, traceback: str) -> BaseException:
    """`task_remote_tracebacks`: the exception with the frames it was raised in, in the worker (tblib, as
    Celery's; without tblib installed, as it is)."""
    try:
        from tblib import Traceback  # type: ignore[import-untyped,unused-ignore]

        return exc.with_traceback(Traceback.from_string(traceback, strict=False).as_traceback())
    except Exception:  # no tblib, or a traceback it cannot read: the exception as it is
        return exc


def _then(first: Any, second: Any) -> Any:
    if second is None:
        return first

    def both() -> None:
        first()
        second()

    return both


class ResultSet(ResultBase):
    """Results of several tasks, read and waited for together, in order."""

    def __init__(self, results: Iterable[Any], app: Fastq | None = None, **kwargs: Any) -> None:
        self._app = app or self._bound_app
        self.results: list[Any] = list(results)

    @property
    def app(self) -> Fastq:
        if self._app is None:
            self._app = self.results[0].app if self.results else _state.get_current_app()
        return self._app

    @app.setter
    def app(self, app: Fastq) -> None:
        self._app = app

    @property
    def backend(self) -> Backend:
        return self.app.backend

    def add(self, result: Any) -> None:
        if result not in self.results:
            self.results.append(result)

    def remove(self, result: Any) -> None:
        if isinstance(result, str):
            result = self.app.AsyncResult(result)
        try:
            self.results.remove(result)
        except ValueError:
            raise KeyError(result) from None

    def discard(self, result: Any) -> None:
        try:
            self.remove(result)
        except KeyError:
            pass

    def update(self, results: Iterable[Any]) -> None:
        self.results.extend(r for r in results if r not in self.results)

    def clear(self) -> None:
        self.results[:] = []

    def successful(self) -> bool:
        """True if every task succeeded."""
        return all(result.successful() for result in self.results)

    def failed(self) -> bool:
        """True if any task failed."""
        return any(result.failed() for result in self.results)

    def waiting(self) -> bool:
        """True if any task has not finished."""
        return any(not result.ready() for result in self.results)

    def ready(self) -> bool:
        """True when every task has finished (whatever the outcome)."""
        return all(result.ready() for result in self.results)

    def completed_count(self) -> int:
        """How many tasks succeeded (Celery counts only successes as completed)."""
        return sum(int(result.successful()) for result in self.results)

    def maybe_throw(self, callback: Any = None, propagate: bool = True) -> None:  # (Celery's order, not a result's)
        for result in self.results:
            result.maybe_throw(propagate=propagate, callback=callback)

    maybe_reraise = maybe_throw

    def forget(self) -> None:
        for result in self.results:
            result.forget()

    def revoke(
        self,
        connection: Any = None,
        terminate: bool = False,
        signal: Any = None,
        wait: bool = False,
        timeout: Any = None,
    ) -> Any:
        """Revoke every task of the set (`connection` is taken, as Celery's, and not needed)."""
        return self.app.control.revoke(
            [r.id for r in self.results],
            terminate=terminate,
            signal=signal or 'SIGTERM',
            reply=wait,
            timeout=timeout,
        )

    def get(
        self,
        timeout: float | None = None,
        propagate: bool = True,
        interval: float = 0.5,
        callback: Any = None,
        no_ack: bool = True,
        on_message: Any = None,
        disable_sync_subtasks: bool = True,
        on_interval: Any = None,
    ) -> Any:  # (a list; None with a callback on a native-join backend)
        """The results in order (see `join`; `join_native` on a backend that supports it, as Celery's)."""
        join = self.join_native if self.supports_native_join else self.join
        return join(
            timeout=timeout,
            propagate=propagate,
            interval=interval,
            callback=callback,
            on_message=on_message,
            disable_sync_subtasks=disable_sync_subtasks,
            on_interval=on_interval,
        )

    def join(
        self,
        timeout: float | None = None,
        propagate: bool = True,
        interval: float = 0.5,
        callback: Any = None,
        no_ack: bool = True,
        on_message: Any = None,
        disable_sync_subtasks: bool = True,
        on_interval: Any = None,
    ) -> list[Any]:
        """Wait for every task, in order, and return their values; the first failure (in order) is raised
        when `propagate`, else its exception takes its place. `timeout` bounds the whole wait."""
        if disable_sync_subtasks:
            assert_will_not_block()
        deadline = None if timeout is None else time.monotonic() + timeout
        values = []
        for result in self.results:
            remaining = None if deadline is None else max(deadline - time.monotonic(), 0.0)
            value = result.get(
                timeout=remaining,
                propagate=propagate,
                interval=interval,
                on_interval=on_interval,
                on_message=on_message,
                disable_sync_subtasks=disable_sync_subtasks,
            )
            if callback is not None:
                callback(result.id, value)
            else:
                values.append(value)
        return values

    def join_native(
        self,
        timeout: float | None = None,
        propagate: bool = True,
        interval: float = 0.5,
        callback: Any = None,
        no_ack: bool = True,
        on_message: Any = None,
        on_interval: Any = None,
        disable_sync_subtasks: bool = True,
    ) -> list[Any] | None:
        """`join`; with a `callback`, as Celery's native join: called for each task as it finishes (in the order
        they finish, see `iter_native`, a failure raised when its turn comes with `propagate`), returning None."""
        if callback is None:
            return self.join(
                timeout=timeout,
                propagate=propagate,
                interval=interval,
                on_message=on_message,
                disable_sync_subtasks=disable_sync_subtasks,
                on_interval=on_interval,
            )
        if disable_sync_subtasks:
            assert_will_not_block()
        for task_id, meta in self.iter_native(timeout, interval, no_ack, on_message, on_interval):
            if isinstance(meta, list):  # (a group in the set: its values, as Celery's)
                value: Any = [r.get(propagate=propagate, disable_sync_subtasks=disable_sync_subtasks) for r in meta]
            else:
                value = meta.get('result')
                if propagate and meta['status'] in states.PROPAGATE_STATES:
                    by_id = next(r for r in self.results if r.id == task_id)
                    by_id._raise(meta['status'], value, meta.get('traceback'))
            callback(task_id, value)
        return None

    def iter_native(
        self,
        timeout: float | None = None,
        interval: float = 0.5,
        no_ack: bool = True,
        on_message: Any = None,
        on_interval: Any = None,
        **kwargs: Any,
    ) -> Iterator[tuple[str, Any]]:
        """(task id, result meta) for each task as it finishes, in the order they finish, as Celery's native
        iteration (those found finished together come in the set's order; a group in the set gives its results).

        One task is waited for at a time, the first of the set not finished, for at most `interval` seconds
        between looks at the others: a task finishing before it is seen that much later at worst."""
        deadline = None if timeout is None else time.monotonic() + timeout
        pending = list(self.results)
        while pending:
            waiting: list[Any] = []
            for result in pending:
                if isinstance(result, ResultSet):
                    if result.ready():
                        yield result.id, list(result.results)  # type: ignore[attr-defined]
                    else:
                        waiting.append(result)
                    continue
                meta = result._get_task_meta()
                if meta['status'] in states.READY_STATES:
                    yield result.id, meta
                else:
                    waiting.append(result)
            pending = waiting
            if not pending:
                return
            if on_interval is not None:
                on_interval()
            step = interval
            if deadline is not None:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError('The operation timed out.')
                step = min(step, remaining)
            first = pending[0]
            try:
                if isinstance(first, ResultSet):
                    time.sleep(step)
                else:
                    meta = first.backend.wait_for(first.id, timeout=step, interval=interval, on_message=on_message)
                    first._set_cache(meta)  # (ready: read as such on the next look)
            except TimeoutError:
                pass

    def then(self, callback: Any, on_error: Any = None, weak: bool = False) -> Future[Any]:
        """Call `callback(self)` once every task finished (see `AsyncResult.then`)."""
        return _then_in_thread(
            lambda: self.join(propagate=False, disable_sync_subtasks=False), self, callback, on_error
        )

    @property
    def supports_native_join(self) -> bool | None:
        """The first result's backend's (Celery's: None for an empty set)."""
        return self.results[0].supports_native_join if self.results else None

    def __iter__(self) -> Iterator[Any]:
        return iter(self.results)

    def __getitem__(self, index: int) -> Any:
        return self.results[index]

    def __len__(self) -> int:
        return len(self.results)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, ResultSet):
            return other.results == self.results
        return NotImplemented

    def __hash__(self) -> int:
        return hash(tuple(r.id for r in self.results))

    def __repr__(self) -> str:
        return f'<{type(self).__name__}: [{", ".join(r.id for r in self.results)}]>'

    def __reduce__(self) -> tuple[Any, ...]:
        return unbound_class(type(self)), (self.results,)


class GroupResult(ResultSet):
    """The result of a group: its id and its tasks' results, in the group's order."""

    def __init__(
        self,
        id: str | None = None,
        results: Iterable[Any] | None = None,
        parent: Any = None,
        app: Fastq | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(results or [], app=app)
        self.id = id
        self.parent = parent

    def save(self, backend: Backend | None = None) -> Any:
        """Store this group's task ids, so `GroupResult.restore(id)` can rebuild it elsewhere."""
        return (backend or self.backend).save_group(self.id or '', self)

    def delete(self, backend: Backend | None = None) -> None:
        """Remove what `save` stored."""
        (backend or self.backend).delete_group(self.id or '')

    @classmethod
    def restore(cls, id: str, backend: Backend | None = None, app: Fastq | None = None) -> GroupResult | None:
        """The group saved under `id`, or None."""
        backend = backend or (app or cls._bound_app or _state.get_current_app()).backend
        return backend.restore_group(id)

    def as_tuple(self) -> tuple[tuple[str | None, Any], list[Any]]:
        return (self.id, self.parent.as_tuple() if self.parent is not None else None), [
            r.as_tuple() for r in self.results
        ]

    @property
    def children(self) -> list[Any]:
        return self.results

    def __bool__(self) -> bool:
        return bool(self.id or self.results)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, GroupResult):
            return other.id == self.id and other.results == self.results and other.parent == self.parent
        if isinstance(other, str):
            return other == self.id
        return NotImplemented

    def __hash__(self) -> int:
        return hash(self.id)

    def __str__(self) -> str:
        return str(self.id)

    def __repr__(self) -> str:
        return f'<{type(self).__name__}: {self.id} [{", ".join(r.id for r in self.results)}]>'

    def __reduce__(self) -> tuple[Any, ...]:
        return unbound_class(type(self)), (self.id, self.results, self.parent)


def bound_result_class(app: Fastq, base: type[ResultBase]) -> type[Any]:
    """`app.AsyncResult`, `app.ResultSet`, `app.GroupResult`: Celery's `subclass_with_self`, a subclass with
    the base's name, module and docstring whose results are the app's unless given `app=` (so `isinstance(r,
    app.AsyncResult)` works as in Celery). Pickled as the base class (see `unbound_class`)."""
    return type(base.__name__, (base,), {'_bound_app': app, '__module__': base.__module__, '__doc__': base.__doc__})


def unbound_class(cls: type[Any]) -> type[Any]:
    """The module's class a result class made by `bound_result_class` extends (itself otherwise): what a result
    pickles as, since pickle cannot name a class made per app; unpickled, it is the current app's."""
    while '_bound_app' in cls.__dict__:
        cls = cls.__bases__[0]
    return cls


def result_from_tuple(r: Any, app: Fastq | None = None) -> Any:
    """An AsyncResult or GroupResult from what `as_tuple()` made (as stored in `children` and saved groups)."""
    if isinstance(r, ResultBase):
        return r
    app = _state.app_or_default(app)
    res, nodes = r
    task_id, parent = res if isinstance(res, list | tuple) else (res, None)
    parent_result = result_from_tuple(parent, app) if parent else None
    if nodes is not None:  # (the app's classes, as Celery's: `isinstance(restored, app.GroupResult)` holds)
        return app.GroupResult(task_id, [result_from_tuple(child, app) for child in nodes], parent=parent_result)
    return app.AsyncResult(task_id, parent=parent_result)
