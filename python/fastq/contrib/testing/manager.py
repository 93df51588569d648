"""Integration-test helpers, Celery's `celery.contrib.testing.manager`: `Manager(app)` waits for results and
for workers to report tasks (`join`, `wait_for`, `assert_received`, `assert_accepted`, `wait_until_idle`).

The same methods with the same arguments and messages, over fastq's inspect and control clients.
"""

from __future__ import annotations

import itertools
import sys
import time
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from functools import partial
from typing import TYPE_CHECKING, Any, TextIO

from fastq import exceptions, states
from fastq.exceptions import ContentDisallowed, OperationalError
from fastq.result import ResultSet
from fastq.utils.functional import fxrange
from fastq.utils.text import truncate

if TYPE_CHECKING:
    from fastq.app import Fastq

__all__ = ['E_STILL_WAITING', 'Manager', 'ManagerMixin', 'Sentinel', 'humanize_seconds', 'retry_over_time']

E_STILL_WAITING = 'Still waiting for {0}.  Trying again {when}: {exc!r}'


def humanize_seconds(secs: float, prefix: str = '', sep: str = '', now: str = 'now') -> str:
    """Celery's `humanize_seconds(..., microseconds=True)`: `in 0.10 seconds` rather than `now` under 1 s."""
    from fastq.schedules import humanize_seconds as _humanize

    if 0 < secs < 1:
        return f'{prefix}{sep}{secs:.2f} seconds'
    return _humanize(secs, f'{prefix}{sep}', now)


def retry_over_time(
    fun: Callable[..., Any],
    catch: type[BaseException] | tuple[type[BaseException], ...],
    args: Sequence[Any] | None = None,
    kwargs: dict[str, Any] | None = None,
    errback: Callable[[BaseException, Iterator[float], int], float] | None = None,
    max_retries: int | None = None,
    interval_start: float = 2,
    interval_step: float = 2,
    interval_max: float = 30,
    callback: Callable[[], Any] | None = None,
    timeout: float | None = None,
) -> Any:
    """kombu's: call `fun` until it does not raise `catch` (re-raised after `max_retries` retries or once
    `timeout` seconds passed); `errback(exc, intervals, retries)` returns the time to wait."""
    intervals = fxrange(interval_start, interval_max + interval_start, interval_step, repeatlast=True)
    end = time.monotonic() + timeout if timeout else None
    for retries in itertools.count():
        try:
            return fun(*(args or ()), **(kwargs or {}))
        except catch as exc:
            if max_retries is not None and retries >= max_retries:
                raise
            if end is not None and time.monotonic() > end:
                raise
            if callback:
                callback()
            wait = float(errback(exc, intervals, retries) if errback else next(intervals))
            if wait:
                for _ in range(int(wait)):
                    if callback:
                        callback()
                    time.sleep(1.0)
                time.sleep(abs(int(wait) - wait))
    raise AssertionError('unreachable')  # pragma: no cover


class Sentinel(Exception):
    """Signifies the end of something."""


class ManagerMixin:
    """What `Manager` does, for a class with an `app` (call `_init_manager` first)."""

    app: Fastq

    def _init_manager(
        self,
        block_timeout: float = 30 * 60.0,
        no_join: bool = False,
        stdout: TextIO | None = None,
        stderr: TextIO | None = None,
    ) -> None:
        self.stdout = sys.stdout if stdout is None else stdout
        self.stderr = sys.stderr if stderr is None else stderr
        self.connerrors: tuple[type[BaseException], ...] = (OperationalError, ConnectionError)
        self.block_timeout = block_timeout
        self.no_join = no_join

    def remark(self, s: str, sep: str = '-') -> None:
        print(f'{sep}{s}', file=self.stdout)

    def warn(self, s: str) -> None:
        self.stderr.write(s + '\n')

    def missing_results(self, r: Any) -> list[str]:
        """The ids of the results in `r` not received yet."""
        return [res.id for res in r if not res.ready()]

    def wait_for(
        self,
        fun: Callable[..., Any],
        catch: Any,
        desc: str = 'thing',
        args: Sequence[Any] = (),
        kwargs: dict[str, Any] | None = None,
        errback: Callable[..., Any] | None = None,
        max_retries: int = 10,
        interval_start: float = 0.1,
        interval_step: float = 0.5,
        interval_max: float = 5.0,
        emit_warning: bool = False,
        **options: Any,
    ) -> Any:
        """Wait for event to happen: `fun` raising `catch` means it has not yet."""

        def on_error(exc: BaseException, intervals: Iterator[float], retries: int) -> float:
            interval = next(intervals)
            if emit_warning:
                self.warn(E_STILL_WAITING.format(desc, when=humanize_seconds(interval, 'in', ' '), exc=exc))
            if errback:
                errback(exc, interval, retries)
            return interval

        return self.retry_over_time(
            fun, catch, args=args, kwargs=kwargs or {}, errback=on_error, max_retries=max_retries,
            interval_start=interval_start, interval_step=interval_step, **options,
        )  # fmt: skip

    def ensure_not_for_a_while(
        self,
        fun: Callable[..., Any],
        catch: Any,
        desc: str = 'thing',
        max_retries: int = 20,
        interval_start: float = 0.1,
        interval_step: float = 0.02,
        interval_max: float = 1.0,
        emit_warning: bool = False,
        **options: Any,
    ) -> Any:
        """Make sure something does not happen (at least for a while): `fun` keeps raising `catch`. As in
        Celery, what `fun` returns when it does not raise is returned (the AssertionError is never reached)."""
        try:
            return self.wait_for(
                fun, catch, desc=desc, max_retries=max_retries, interval_start=interval_start,
                interval_step=interval_step, interval_max=interval_max, emit_warning=emit_warning,
            )  # fmt: skip
        except catch:
            pass
        else:
            raise AssertionError(f'Should not have happened: {desc}')

    def retry_over_time(self, *args: Any, **kwargs: Any) -> Any:
        return retry_over_time(*args, **kwargs)

    def join(self, r: Any, propagate: bool = False, max_retries: int = 10, **kwargs: Any) -> Any:
        if self.no_join:
            return None
        if not isinstance(r, ResultSet):
            r = ResultSet([r], app=self.app)
        received: list[str] = []

        def on_result(task_id: str, value: Any) -> None:
            received.append(task_id)

        for _ in range(max_retries) if max_retries else itertools.count(0):
            received[:] = []
            try:
                return r.get(callback=on_result, propagate=propagate, **kwargs)
            except (TimeoutError, exceptions.TimeoutError) as exc:  # (socket.timeout is the builtin)
                waiting_for = self.missing_results(r)
                self.remark(
                    f'Still waiting for {len(r) - len(received)}/{len(r)}: '
                    f'[{truncate(", ".join(waiting_for))}]: {exc!r}',
                    '!',
                )
            except self.connerrors as exc:
                self.remark(f'join: connection lost: {exc!r}', '!')
        raise AssertionError('Test failed: Missing task results')

    def inspect(self, timeout: float = 3.0) -> Any:
        return self.app.control.inspect(timeout=timeout)

    def query_tasks(self, ids: Sequence[str], timeout: float = 0.5) -> Iterator[tuple[str, Any]]:
        tasks = self.inspect(timeout).query_task(*ids) or {}
        yield from tasks.items()

    def query_task_states(self, ids: Sequence[str], timeout: float = 0.5) -> dict[str, set[str]]:
        found: dict[str, set[str]] = defaultdict(set)
        for _hostname, reply in self.query_tasks(ids, timeout=timeout):
            for task_id, (state, _) in reply.items():
                found[state].add(task_id)
        return found

    def assert_accepted(
        self, ids: Sequence[str], interval: float = 0.5, desc: str = 'waiting for tasks to be accepted', **policy: Any
    ) -> Any:
        return self.assert_task_worker_state(self.is_accepted, ids, interval=interval, desc=desc, **policy)

    def assert_received(
        self, ids: Sequence[str], interval: float = 0.5, desc: str = 'waiting for tasks to be received', **policy: Any
    ) -> Any:
        return self.assert_task_worker_state(self.is_received, ids, interval=interval, desc=desc, **policy)

    def assert_result_tasks_in_progress_or_completed(
        self,
        async_results: Sequence[Any],
        interval: float = 0.5,
        desc: str = 'waiting for tasks to be started or completed',
        **policy: Any,
    ) -> Any:
        return self.assert_task_state_from_result(
            self.is_result_task_in_progress, async_results, interval=interval, desc=desc, **policy
        )

    def assert_task_state_from_result(
        self, fun: Callable[..., Any], results: Sequence[Any], interval: float = 0.5, **policy: Any
    ) -> Any:
        return self.wait_for(partial(self.true_or_raise, fun, results, timeout=interval), (Sentinel,), **policy)

    @staticmethod
    def is_result_task_in_progress(results: Sequence[Any], **kwargs: Any) -> bool:
        return all(result.state in (states.STARTED, states.SUCCESS) for result in results)

    def assert_task_worker_state(
        self, fun: Callable[..., Any], ids: Sequence[str], interval: float = 0.5, **policy: Any
    ) -> Any:
        return self.wait_for(partial(self.true_or_raise, fun, ids, timeout=interval), (Sentinel,), **policy)

    def is_received(self, ids: Sequence[str], **kwargs: Any) -> bool:
        return self._ids_matches_state(['reserved', 'active', 'ready'], ids, **kwargs)

    def is_accepted(self, ids: Sequence[str], **kwargs: Any) -> bool:
        return self._ids_matches_state(['active', 'ready'], ids, **kwargs)

    def _ids_matches_state(self, expected_states: Sequence[str], ids: Sequence[str], timeout: float = 0.5) -> bool:
        found = self.query_task_states(ids, timeout=timeout)
        return all(any(t in s for s in [found[k] for k in expected_states]) for t in ids)

    def true_or_raise(self, fun: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        res = fun(*args, **kwargs)
        if not res:
            raise Sentinel()
        return res

    def wait_until_idle(self) -> None:
        """Purge the app's queues (until nothing is left), then wait until no worker runs a task."""
        control = self.app.control
        with self.app.connection() as connection:
            while control.purge(connection=connection):
                pass
            inspect: Any = control.inspect()
            inspect.connection = connection
            while True:
                try:
                    count = sum(len(t) for t in (inspect.active() or {}).values())
                except ContentDisallowed:
                    break
                if count == 0:
                    break


class Manager(ManagerMixin):
    """Test helpers for task integration tests."""

    def __init__(self, app: Fastq, **kwargs: Any) -> None:
        self.app = app
        self._init_manager(**kwargs)
