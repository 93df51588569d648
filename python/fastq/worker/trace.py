"""Running one task: request context, signals, hooks, result storage, retries and callbacks.

Runs wherever tasks execute: a prefork child, a pool thread, the solo worker's loop, or the caller's process
for `apply()`. Split into steps (prepare -> run -> one outcome handler per result kind -> finish) so that each
stays small; the log lines are Celery's, word for word, because people grep and alert on them.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import random
import time
import traceback as tb
import warnings
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from fastq import _state, signals, states
from fastq.exceptions import EncodeError, Ignore, OperationalError, Reject, Retry, TimeLimitExceeded
from fastq.task import Task as _Task
from fastq.task import actual_ignore_result
from fastq.utils.functional import as_list
from fastq.utils.log import task_context
from fastq.utils.nodenames import gethostname
from fastq.utils.text import saferepr
from fastq.worker.request import ExceptionInfo

if TYPE_CHECKING:
    from fastq.backends.base import Backend
    from fastq.result import EagerResult
    from fastq.task import Context, Task

logger = logging.getLogger('celery.app.trace')
# As Celery's: an app that never set logging up (a client running tasks eagerly, `apply()` in tests) does not
# get tracebacks on stderr from Python's last-resort handler; a configured root logger still gets them.
logger.addHandler(logging.NullHandler())

#: The base class's __call__: a task class that replaced it runs through its own (see `execute`).
_TASK_CALL = _Task.__call__

#: Return types checked for awaitability without `inspect.isawaitable` (an ABC check, slow per task).
_NOT_AWAITABLE = frozenset({type(None), bool, int, float, str, bytes, list, tuple, dict, set})

#: Outcomes after which the task has not returned for good, so `after_return` is not called (Celery's
#: IGNORE_STATES): it will run again (a retry), or was dropped on purpose.
_NOT_RETURNED = frozenset({states.IGNORED, states.RETRY, states.REJECTED})

LOG_SUCCESS = 'Task %(name)s[%(id)s] succeeded in %(runtime)ss: %(return_value)s'
LOG_FAILURE = 'Task %(name)s[%(id)s] %(description)s: %(exc)s'
LOG_IGNORED = 'Task %(name)s[%(id)s] %(description)s'
LOG_REJECTED = 'Task %(name)s[%(id)s] %(exc)s'
LOG_RETRY = 'Task %(name)s[%(id)s] retry: %(exc)s'


@dataclass(slots=True)
class Outcome:
    """What happened to one task run; small and marshal-able so a child can send it to its parent."""

    state: str
    runtime: float
    retval_repr: str = ''
    exc_repr: str = ''
    requeue: bool = False  # Reject(requeue=True)
    retval: Any = None  # only in-process (eager, threads); not sent over IPC
    exception: BaseException | None = None
    traceback: str | None = None

    def to_wire(self) -> tuple[str, float, str, str, bool, str | None]:
        """The fields the parent needs (the traceback, set for failures and retries only, for their events)."""
        return (self.state, self.runtime, self.retval_repr, self.exc_repr, self.requeue, self.traceback)

    @classmethod
    def from_wire(cls, data: tuple[str, float, str, str, bool, str | None]) -> Outcome:
        state, runtime, retval_repr, exc_repr, requeue, traceback = data
        return cls(state, runtime, retval_repr, exc_repr, requeue, traceback=traceback)


class Killed(BaseException):
    """Raised into a running task by a pool that stops it in place (the gevent pool's time limit or revoke):
    it leaves the task with no bookkeeping, as a killed process would, and the pool reports why."""


class _Einfo(ExceptionInfo):
    """The `ExceptionInfo` of an exception raised here, with its traceback: what hooks and signals receive as
    `einfo` (`internal`, Celery's: whether the error happened in the worker's own code, not the task's)."""

    def __init__(self, exc: BaseException) -> None:
        super().__init__(exc, ''.join(tb.format_exception(type(exc), exc, exc.__traceback__)))
        self.tb = exc.__traceback__

    @property
    def exc_info(self) -> tuple[type[BaseException], BaseException, Any]:
        return self.type, self.exception, self.tb


def _apply_signatures(app: Any, sigs: Any, args: tuple[Any, ...], parent: Context) -> None:
    """Send a task's link callbacks with its return value, as Celery's tracer does: one callback as itself;
    several as one group (and each group among them as itself), so `result.children` reads as in Celery."""
    if not sigs:
        return
    from fastq.canvas import group, maybe_signature

    found = [sig for sig in (maybe_signature(raw, app=app) for raw in sigs) if sig is not None]
    ids: dict[str, Any] = {'parent_id': parent.id, 'root_id': parent.root_id or parent.id}
    if len(found) == 1:
        found[0].clone(args).apply_async(**ids)
        return
    for sig in found:
        if isinstance(sig, group):
            sig.apply_async(args, **ids)
    rest = [sig for sig in found if not isinstance(sig, group)]
    if rest:
        group(rest, app=app).apply_async(args, **ids)


def _continue_chain(app: Any, chain: list[Any] | None, retval: Any, request: Context) -> None:
    """Protocol v2 chains travel reversed in the body: pop the next signature, send it with the rest (an
    empty list for the last step, as Celery's worker sends it: that step's `request.chain` reads `[]`)."""
    if not chain:
        return
    from fastq.canvas import maybe_signature

    remaining = list(chain)
    nxt = maybe_signature(remaining.pop(), app=app)
    if nxt is not None:
        nxt.clone((retval,)).apply_async(chain=remaining, parent_id=request.id, root_id=request.root_id or request.id)


def _results(task: Task[Any, Any]) -> Backend:
    """The backend the task's results go to: its own (`@app.task(backend=...)`), else the app's, as Celery's
    tracer uses `task.backend`. A task without one reads a class attribute more than `app.backend` costs;
    one with a URL has it made on the first call, not on each (`Task.backend`)."""
    return task.app.backend if task._backend is None else task.backend


def _store_allowed(task: Task[Any, Any], request: Context, failure: bool) -> bool:
    if request.is_eager and not task.store_eager_result:
        return False
    ignore = actual_ignore_result(task, request)
    if failure:
        return not ignore or bool(task.store_errors_even_if_ignored)
    return not ignore


def _autoretry(task: Task[Any, Any], exc: BaseException) -> None:
    """Turn an exception listed in `autoretry_for` into `task.retry(...)` (raises Retry or the exception)."""
    if not task.autoretry_for or not isinstance(exc, task.autoretry_for):
        return
    if task.dont_autoretry_for and isinstance(exc, task.dont_autoretry_for):
        return
    options = dict(task.retry_kwargs or {})
    if task.retry_backoff:  # (a countdown in retry_kwargs is ignored then, as Celery documents)
        # Whole seconds, as Celery's: the factor is `int(max(1.0, retry_backoff))`, the cap an int too.
        factor = int(max(1.0, float(task.retry_backoff)))
        countdown = min(factor * (2**task.request.retries), int(task.retry_backoff_max))
        if task.retry_jitter:
            countdown = random.randrange(countdown + 1)
        options['countdown'] = countdown
    task.retry(exc=exc, **options)


def execute(task: Task[Any, Any], args: Sequence[Any], kwargs: dict[str, Any], request: dict[str, Any]) -> Outcome:
    """Run `task` with a request built from `request` (Context fields, a dict the request then owns: it
    becomes the Context's attributes) and return what happened."""
    ctx, started = _enter(task, args, kwargs, request)
    state, retval = None, None
    try:
        _prerun(task, ctx, args, kwargs)
        try:
            task.before_start(ctx.id or '', args, kwargs)
            # A Task class with its own __call__ (Celery's DebugTask, Flask's app-context task) runs through it,
            # as Celery's tracer does; otherwise straight to `run`, a call less per task.
            retval = task(*args, **kwargs) if type(task).__call__ is not _TASK_CALL else task.run(*args, **kwargs)
            if type(retval) not in _NOT_AWAITABLE and inspect.isawaitable(retval):
                from fastq.worker.asyncrun import run_coroutine

                retval = run_coroutine(retval)
        except BaseException as exc:
            if type(exc) is Killed:
                raise
            outcome = _on_exception(task, ctx, exc, args, kwargs, started)
        else:
            state = states.SUCCESS
            outcome = _on_success(task, ctx, retval, args, kwargs, started)
        _finish(task, ctx, outcome, args, kwargs)
        return outcome
    except Exception as exc:
        return _on_internal_error(task, ctx, exc, args, kwargs, started, state, retval)
    finally:
        _leave(task)


async def execute_async(
    task: Task[Any, Any],
    args: Sequence[Any],
    kwargs: dict[str, Any],
    request: dict[str, Any],
    guard: Callable[[Awaitable[Any]], Awaitable[Any]] | None = None,
) -> Outcome:
    """`execute` for the asyncio pool: the awaitable the task returns is awaited on the running loop, through
    `guard` (the pool's time limits) when given; everything else (signals, hooks, result storage, retries) is
    `execute`'s own code. Result-backend calls stay blocking: one short round trip each, made in the task's
    own context, which a hop to a thread would cost more than it saves.

    A cancellation from outside (the pool terminating a revoked task) propagates as CancelledError with no
    bookkeeping, as a killed process would; a CancelledError raised by the task's own code is a failure.
    """
    ctx, started = _enter(task, args, kwargs, request)
    state, retval = None, None
    try:
        _prerun(task, ctx, args, kwargs)
        try:
            task.before_start(ctx.id or '', args, kwargs)
            # A custom __call__ of a sync task (see `execute`); an async task's own __call__ would block the loop.
            custom = type(task).__call__ is not _TASK_CALL and not task._is_async
            retval = task(*args, **kwargs) if custom else task.run(*args, **kwargs)
            if type(retval) not in _NOT_AWAITABLE and inspect.isawaitable(retval):
                retval = await (guard(retval) if guard is not None else retval)
        except asyncio.CancelledError as exc:
            current = asyncio.current_task()
            if current is not None and current.cancelling():
                raise
            outcome = _on_exception(task, ctx, exc, args, kwargs, started)
        except BaseException as exc:
            outcome = _on_exception(task, ctx, exc, args, kwargs, started)
        else:
            state = states.SUCCESS
            outcome = _on_success(task, ctx, retval, args, kwargs, started)
        _finish(task, ctx, outcome, args, kwargs)
        return outcome
    except Exception as exc:
        return _on_internal_error(task, ctx, exc, args, kwargs, started, state, retval)
    finally:
        _leave(task)


def _enter(
    task: Task[Any, Any], args: Sequence[Any], kwargs: dict[str, Any], request: dict[str, Any]
) -> tuple[Context, float]:
    request['args'] = args
    request['kwargs'] = kwargs
    request['called_directly'] = False
    ctx = task.push_fields(request)
    _state.push_current_task(task)
    task_context(ctx.id, task.name)
    return ctx, time.monotonic()


def _leave(task: Task[Any, Any]) -> None:
    task_context(None, None)
    _state.pop_current_task()
    task.pop_request()


def _prerun(task: Task[Any, Any], ctx: Context, args: Sequence[Any], kwargs: dict[str, Any]) -> None:
    task_id = ctx.id or ''
    if signals.task_prerun.connected:  # (checked here: building the call costs more than the send, per task)
        signals.task_prerun.send(sender=task, task_id=task_id, task=task, args=args, kwargs=kwargs)
    # STARTED after task_prerun, as Celery's tracer stores it: its receivers run before the task is seen started.
    if task.track_started and _store_allowed(task, ctx, failure=False):
        _results(task).mark_as_started(task_id, pid=_pid(), hostname=ctx.hostname)


def _on_exception(
    task: Task[Any, Any], ctx: Context, exc: BaseException, args: Sequence[Any], kwargs: dict[str, Any], started: float
) -> Outcome:
    """The outcome of a task body that raised `exc` (KeyboardInterrupt and SystemExit propagate)."""
    task_id = ctx.id or ''
    if isinstance(exc, Retry):
        return _on_retry(task, ctx, exc, started)
    if isinstance(exc, Ignore):
        logger.info(LOG_IGNORED, {'name': _log_name(task, ctx), 'id': task_id, 'description': 'ignored'})
        return Outcome(states.IGNORED, time.monotonic() - started, exception=exc)
    if isinstance(exc, Reject):
        return _on_reject(task, ctx, exc, args, kwargs, started)
    if isinstance(exc, KeyboardInterrupt | SystemExit):
        raise exc
    if isinstance(exc, TimeLimitExceeded):  # a hard limit is final: never retried (a killed process is not)
        return _on_failure(task, ctx, exc, args, kwargs, started)
    try:
        _autoretry(task, exc)
    except Retry as retry:
        return _on_retry(task, ctx, retry, started)
    except BaseException as final:
        if isinstance(final, KeyboardInterrupt | SystemExit):
            raise
        return _on_failure(task, ctx, final, args, kwargs, started)
    return _on_failure(task, ctx, exc, args, kwargs, started)


def _may_store_later(task: Task[Any, Any], ctx: Context) -> bool:
    """Whether nothing that runs after the store in this trace could look for the stored result: no chord,
    callbacks or chain to continue, no success/postrun receivers, no overridden success hooks."""
    cls = type(task)
    return not (
        ctx.chord
        or ctx.callbacks
        or ctx.chain
        or signals.task_success.receivers
        or signals.task_postrun.receivers
        or cls.on_success is not _Task.on_success
        or cls.after_return is not _Task.after_return
        or 'on_success' in task.__dict__  # (annotated)
        or 'after_return' in task.__dict__
    )


def _on_success(
    task: Task[Any, Any], ctx: Context, retval: Any, args: Sequence[Any], kwargs: dict[str, Any], started: float
) -> Outcome:
    task_id = ctx.id or ''
    try:
        if not ctx.is_eager:  # sent before the result is stored, so the stored `children` list them (Celery's)
            _apply_signatures(task.app, ctx.callbacks, (retval,), ctx)
            _continue_chain(task.app, ctx.chain, retval, ctx)
    except (EncodeError, OperationalError) as exc:  # (Celery's: the task fails, its failure stored and told)
        return _on_failure(task, ctx, exc, args, kwargs, started)
    if _store_allowed(task, ctx, failure=False):
        backend = task.app.backend if task._backend is None else task.backend  # (`_results`, inlined)
        try:
            if _may_store_later(task, ctx):
                backend.store_success_later(task_id, retval, request=ctx)
            else:
                backend.mark_as_done(task_id, retval, request=ctx)
        except EncodeError as exc:  # a return value the result serializer cannot write: the task fails, as Celery's
            return _on_failure(task, ctx, exc, args, kwargs, started)
    if ctx.chord:  # a chord header task: its part counts whether or not its result is stored
        _results(task).on_chord_part_return(ctx, states.SUCCESS, retval)
    runtime = time.monotonic() - started
    outcome = Outcome(states.SUCCESS, runtime, retval_repr=saferepr(retval, task.resultrepr_maxsize), retval=retval)
    task.on_success(retval, task_id, args, kwargs)
    if signals.task_success.connected:
        signals.task_success.send(sender=task, result=retval, runtime=runtime)
    if logger.isEnabledFor(logging.INFO):  # the arguments cost more than the check (a task per call)
        logger.info(
            LOG_SUCCESS,
            {'name': _log_name(task, ctx), 'id': task_id, 'runtime': runtime, 'return_value': outcome.retval_repr},
        )
    return outcome


def _on_failure(
    task: Task[Any, Any], ctx: Context, exc: BaseException, args: Sequence[Any], kwargs: dict[str, Any], started: float
) -> Outcome:
    task_id = ctx.id or ''
    einfo = _Einfo(exc)
    _store_failure(task, ctx, exc, einfo.traceback)
    runtime = time.monotonic() - started
    outcome = Outcome(states.FAILURE, runtime, exc_repr=repr(exc), exception=exc, traceback=einfo.traceback)
    task.on_failure(exc, task_id, args, kwargs, einfo)
    _announce_failure(task, ctx, exc, args, kwargs, einfo)
    name = _log_name(task, ctx)
    if task.throws and isinstance(exc, task.throws):  # Celery's expected errors: INFO, no traceback
        logger.info(LOG_FAILURE, {'name': name, 'id': task_id, 'description': 'raised expected', 'exc': repr(exc)})
    else:
        logger.error(
            LOG_FAILURE,
            {'name': name, 'id': task_id, 'description': 'raised unexpected', 'exc': repr(exc)},
            exc_info=(type(exc), exc, exc.__traceback__),
        )
    return outcome


def _store_failure(task: Task[Any, Any], ctx: Context, exc: BaseException, traceback: str | None) -> None:
    """Record the task's FAILURE, and what it means for its chord and the rest of its chain."""
    if _store_allowed(task, ctx, failure=True):
        try:
            _results(task).mark_as_failure(ctx.id or '', exc, traceback, request=ctx)
        except Exception as store_exc:  # the failure must be reported even if the backend chokes on it
            logger.exception('Task %s[%s] could not store its failure: %r', task.name, ctx.id, store_exc)
    if ctx.chord:
        _results(task).on_chord_part_return(ctx, states.FAILURE, exc)
    if ctx.chain and not ctx.is_eager:  # the chain's later steps never run: their results fail too
        _results(task).fail_chain(ctx.chain, exc, traceback)


def _announce_failure(
    task: Task[Any, Any], ctx: Context, exc: BaseException, args: Sequence[Any], kwargs: dict[str, Any], einfo: _Einfo
) -> None:
    """`task_failure`, then the errbacks."""
    signals.task_failure.send(
        sender=task,
        task_id=ctx.id or '',
        exception=exc,
        args=args,
        kwargs=kwargs,
        traceback=exc.__traceback__,
        einfo=einfo,
    )
    if ctx.errbacks:
        from fastq.backends.chords import call_errbacks

        call_errbacks(task.app, ctx.errbacks, ctx, exc, einfo.traceback)


def _on_reject(
    task: Task[Any, Any], ctx: Context, exc: Reject, args: Sequence[Any], kwargs: dict[str, Any], started: float
) -> Outcome:
    """A task that raised Reject: logged as Celery does, a warning with the traceback.

    Rejected without requeue, the task never runs again, so Celery 5.7 (its issue #4222) records it as
    failed rather than leave it PENDING for good: FAILURE stored with no traceback, its chord, chain and
    errbacks told, `task_failure` sent. Its `on_failure` and `after_return` are not called, and the message
    is still rejected, not acked, so that a dead-letter exchange gets it. The worker sends `task-failed`
    (with the traceback carried in the outcome) before `task-rejected`, as Celery's does.

    Celery does that recording in the worker's parent, once the child has answered, so after `task_postrun`
    (state REJECTED): `_finish` does it here after `task_postrun`, in the same order (a receiver of both
    sees postrun first); only the process differs (the child: the parent has no copy of the exception).
    """
    logger.warning(
        LOG_REJECTED,
        {'name': _log_name(task, ctx), 'id': ctx.id or '', 'exc': repr(exc)},
        exc_info=(type(exc), exc, exc.__traceback__),
    )
    einfo = None
    if not exc.requeue and not ctx.is_eager:
        einfo = _Einfo(exc)  # (recorded by `_finish`, after task_postrun)
    return Outcome(
        states.REJECTED,
        time.monotonic() - started,
        exc_repr=repr(exc),
        requeue=exc.requeue,
        exception=exc,
        traceback=einfo.traceback if einfo is not None else None,  # (for the parent's `task-failed`)
    )


def _log_name(task: Task[Any, Any], ctx: Context) -> str:
    """The name the worker's task lines give: the call's shadow name when it has one (Celery's)."""
    return ctx.shadow or task.name


def store_retry_state(task: Task[Any, Any], ctx: Context, retry: Retry) -> None:
    """Store RETRY for `retry` now (`Task.retry` calls this before it sends the next run).

    A store that fails is logged and left to `_on_retry`, which tries again after the message went: a retry
    must not be lost because the result backend is down.
    """
    if ctx.is_eager or not _store_allowed(task, ctx, failure=True):
        return
    reason = retry.exc if retry.exc is not None else retry
    try:  # (the result is the retry's exc, None without one: Celery's mark_as_retry(reason.exc))
        _results(task).mark_as_retry(ctx.id or '', retry.exc, _Einfo(reason).traceback, request=ctx)
    except Exception as exc:
        logger.warning('Task %s[%s] could not store its RETRY state yet: %r', task.name, ctx.id, exc)
        return
    retry.state_stored = True


def _on_retry(task: Task[Any, Any], ctx: Context, exc: Retry, started: float) -> Outcome:
    task_id = ctx.id or ''
    reason = exc.exc if exc.exc is not None else exc
    einfo = _Einfo(reason)
    if not exc.state_stored and _store_allowed(task, ctx, failure=True) and not ctx.is_eager:
        _results(task).mark_as_retry(task_id, exc.exc, einfo.traceback, request=ctx)
    # As Celery's handle_retry: on_retry gets the retry's exc (None without one) and the Retry's einfo, as
    # task_retry does; that signal's `reason` is the Retry exception itself (str() of it says why).
    retry_einfo = _Einfo(exc)
    task.on_retry(exc.exc, task_id, ctx.args, ctx.kwargs, retry_einfo)  # type: ignore[arg-type]
    signals.task_retry.send(sender=task, request=ctx, reason=exc, einfo=retry_einfo)
    logger.info(LOG_RETRY, {'name': _log_name(task, ctx), 'id': task_id, 'exc': str(exc)})
    # task-retried's `exception` is the reason's repr (Celery's Request.on_retry: safe_repr(exc.exc)), not
    # the Retry's 'Retry in 0s: ...'
    return Outcome(
        states.RETRY, time.monotonic() - started, exc_repr=repr(exc.exc), exception=exc, traceback=einfo.traceback
    )


def _on_internal_error(
    task: Task[Any, Any],
    ctx: Context,
    exc: Exception,
    args: Sequence[Any],
    kwargs: dict[str, Any],
    started: float,
    state: str | None,
    retval: Any,
) -> Outcome:
    """What Celery's tracer does when its own bookkeeping raised (the result store, a signal's sender, a
    handler), not the task body: `task_postrun` with the state reached so far (its `finally`), then
    `task_internal_error`, the "Exception raised outside body" warning, and the task failed as any
    failure is (FAILURE stored if the backend can, `on_failure`, `task_failure`, errbacks, the error line).
    An eager call raises it instead, as Celery's `apply()`."""
    _postrun(task, ctx, args, kwargs, retval, state)
    if ctx.is_eager:
        raise exc
    einfo = signal_internal_error(task, vars(ctx), exc, args, kwargs)
    warnings.warn(RuntimeWarning(f'Exception raised outside body: {exc!r}:\n{einfo.traceback}'), stacklevel=1)
    return _on_failure(task, ctx, exc, args, kwargs, started)


def signal_internal_error(task: Any, request: dict[str, Any], exc: Exception, args: Any, kwargs: Any) -> _Einfo:
    """`task_internal_error` as Celery sends it (`request` the request's dict); the `einfo` it carried."""
    einfo = _Einfo(exc)
    einfo.internal = True
    signals.task_internal_error.send(
        sender=task,
        task_id=request.get('id'),
        args=args,
        kwargs=kwargs,
        request=request,
        exception=exc,
        traceback=exc.__traceback__,
        einfo=einfo,
    )
    return einfo


def _finish(task: Task[Any, Any], ctx: Context, outcome: Outcome, args: Sequence[Any], kwargs: dict[str, Any]) -> None:
    task_id = ctx.id or ''
    retval = outcome.retval if outcome.state == states.SUCCESS else outcome.exception
    if outcome.state in _NOT_RETURNED:
        _postrun(task, ctx, args, kwargs, retval, outcome.state)
        exc = outcome.exception
        if outcome.state == states.REJECTED and isinstance(exc, Reject) and not exc.requeue and not ctx.is_eager:
            _store_failure(task, ctx, exc, None)  # (see `_on_reject`)
            _announce_failure(task, ctx, exc, args, kwargs, _Einfo(exc))
        return
    try:
        task.after_return(outcome.state, retval, task_id, args, kwargs, None)
    except Exception as exc:
        logger.exception('Task %s[%s] after_return handler raised: %r', task.name, task_id, exc)
    _postrun(task, ctx, args, kwargs, retval, outcome.state)


def _postrun(
    task: Task[Any, Any], ctx: Context, args: Sequence[Any], kwargs: dict[str, Any], retval: Any, state: str | None
) -> None:
    if signals.task_postrun.connected:  # (checked here: building the call costs more than the send, per task)
        signals.task_postrun.send(
            sender=task, task_id=ctx.id or '', task=task, args=args, kwargs=kwargs, retval=retval, state=state
        )


def _pid() -> int:
    import os

    return os.getpid()


def apply_eagerly(
    task: Task[Any, Any],
    args: Sequence[Any],
    kwargs: dict[str, Any],
    *,
    task_id: str,
    retries: int,
    throw: bool,
    link: Any,
    link_error: Any,
    options: dict[str, Any],
) -> EagerResult[Any]:
    """`task.apply()`: run in this process, return an EagerResult; re-raise when `throw`."""
    from fastq.result import EagerResult

    parent = _state.get_current_task()
    request = {
        'id': task_id,
        'task': task.name,
        'retries': retries,
        'is_eager': True,
        'callbacks': None,
        'errbacks': as_list(link_error) or None,  # (run by the failure's handling, as a worker's)
        'delivery_info': {
            'is_eager': True,
            'exchange': options.get('exchange'),
            'routing_key': options.get('routing_key'),
            'priority': options.get('priority'),
        },
        'root_id': parent.request.root_id if parent else task_id,
        'parent_id': parent.request.id if parent else None,
        'hostname': gethostname(),
        'loglevel': options.get('loglevel') or 0,
        'logfile': options.get('logfile'),
        'ignore_result': bool(options.get('ignore_result', task.ignore_result)),  # (Celery's apply())
        'headers': options.get('headers'),
    }
    outcome = execute(task, args, kwargs, request)
    if outcome.state == states.SUCCESS:
        _apply_signatures(task.app, as_list(link), (outcome.retval,), task.request)
    elif outcome.state == states.RETRY:
        sig = getattr(outcome.exception, 'sig', None)
        if sig is not None:  # an eager retry runs eagerly, as Celery's apply() does
            return sig.apply(retries=retries + 1, throw=throw)  # type: ignore[no-any-return]
        if throw and outcome.exception is not None:
            raise outcome.exception
    elif outcome.state == states.FAILURE and throw and outcome.exception is not None:
        raise outcome.exception
    value = outcome.retval if outcome.state == states.SUCCESS else outcome.exception
    return EagerResult(task_id, value, outcome.state, traceback=outcome.traceback, name=task.name, app=task.app)
