"""Chord join and workflow failure handling, shared by every result backend.

A chord's header tasks each carry the body; when one reaches its final state, the worker calls
`on_chord_part_return`, which hands the part to the backend's `ChordStore` in one atomic step: record it
(once per task and header index, however often the task is redelivered), and, if it completes the header,
claim the right to send the body. Exactly one caller gets the claim; it reads the parts in `group_index`
order, sends the body with their values, then releases the claim, which deletes the parts and leaves a
"done" marker so a late duplicate cannot start the chord again. If a part failed, the body is not sent: it
fails with a ChordError naming the first failed part in header order, and its errbacks run.

Backends without a store (`chord_store` is None) use Celery's fallback: a `celery.chord_unlock` task that
polls the header's results until they are all ready.
"""

from __future__ import annotations

import abc
import functools
import inspect
import logging
import math
import sys
import uuid
from collections import deque
from dataclasses import dataclass
from traceback import format_exception
from typing import TYPE_CHECKING, Any

from fastq import states
from fastq.exceptions import ChordError
from fastq.utils.functional import as_list

if TYPE_CHECKING:
    from fastq.app import Fastq
    from fastq.backends.base import Backend
    from fastq.result import GroupResult

__all__ = ['ChordStore', 'Claim', 'chord_error', 'chord_error_from_stack', 'fail_chain', 'on_chord_part_return']

logger = logging.getLogger('fastq.backends.chords')


@dataclass(slots=True)
class Claim:
    """The right to send a chord's body, held by the one caller whose part completed the header."""

    token: str
    #: The encoded parts in header order, when the store read them with the claim (else `parts()` does).
    parts: list[bytes] | None = None


class ChordStore(abc.ABC):
    """A backend's chord bookkeeping: a size, the parts returned so far, a claim and a done marker."""

    @abc.abstractmethod
    def set_size(self, group_id: str, size: int) -> None:
        """How many parts complete the chord (stored before its last header task is sent)."""

    @abc.abstractmethod
    def add(self, group_id: str, count: int = 1) -> None:
        """Expect `count` more parts (tasks added to a running chord)."""

    @abc.abstractmethod
    def record(self, group_id: str, task_id: str, index: int | None, part: bytes) -> Claim | None:
        """Atomically: record the part unless `task_id:index` was recorded; if all parts are in and nobody
        holds the claim, take it. None unless this caller must send the body."""

    def parts(self, group_id: str, claim: Claim) -> list[bytes]:
        """The encoded parts in header order (for stores whose `record` does not return them)."""
        return claim.parts or []

    def extend(self, group_id: str, claim: Claim, seconds: int) -> bool:
        """Keep the claim while the body is sent; False if it was lost meanwhile (then do not send)."""
        return True

    @abc.abstractmethod
    def release(self, group_id: str, claim: Claim) -> bool:
        """The body was sent (or failed): drop the parts, leave the done marker. False if the claim was lost."""

    @abc.abstractmethod
    def forget_size(self, group_id: str) -> None:
        """After a ChordError: a late copy of a header task must not fail the chord again."""


def new_claim_token() -> str:
    return uuid.uuid4().hex


def claim_seconds(app: Fastq) -> int:
    """How long a claim lasts at first: twice the join timeout (at least 5 s), as Celery 5.7 sets it."""
    return max(5, int((app.conf.result_chord_join_timeout or 5.0) * 2))


def done_seconds(app: Fastq) -> int:
    """How long the done marker keeps late duplicates of a joined chord's header tasks away."""
    return int(max(claim_seconds(app) * 2, 300))


def publish_seconds(app: Fastq, body: Any) -> int:
    """The claim's lease while the body is sent: long enough for every publish retry (Celery's estimate)."""
    conf = app.conf
    initial = claim_seconds(app)
    timeout = conf.broker_connection_timeout
    if timeout is None:
        return initial * 2
    from fastq.sending import retry_policy_in_force

    policy = retry_policy_in_force(conf, body.options.get('retry_policy'))
    retry = body.options.get('retry')
    retries = int(policy.get('max_retries') or 0) if (conf.task_publish_retry if retry is None else retry) else 0
    start, step = float(policy.get('interval_start', 0)), float(policy.get('interval_step', 0.2))
    waits = sum(min(start + step * n, float(policy.get('interval_max', 1))) for n in range(retries))
    return max(initial, math.ceil((retries + 1) * float(timeout) + waits + max(float(timeout), 1)))


def chord_error(message: str, cause: Any = None) -> ChordError:
    error = ChordError(message)
    if isinstance(cause, BaseException):
        error.__cause__ = cause
    return error


def on_chord_part_return(backend: Backend, request: Any, state: str, result: Any) -> None:
    """A header task of a chord finished (SUCCESS, FAILURE or REVOKED): record it, maybe send the body."""
    store = backend.chord_store
    group_id, task_id = getattr(request, 'group', None), getattr(request, 'id', None)
    if store is None or not group_id or not task_id:
        return
    part = backend.encode([1, task_id, state, backend.encode_result(result, state)])
    claim = store.record(group_id, task_id, getattr(request, 'group_index', None), part)
    if claim is None:
        return
    callback = _body(backend.app, request)
    try:
        values = _join(backend, store, group_id, claim)
    except Exception as exc:
        error = exc if isinstance(exc, ChordError) else chord_error(f'Join error: {exc!r}', exc)
        logger.error('Chord %r raised: %r', group_id, error)
        try:
            chord_error_from_stack(backend, callback, error)
        finally:
            store.forget_size(group_id)
        return
    if not store.extend(group_id, claim, publish_seconds(backend.app, callback)):
        logger.warning(
            'Chord callback for %r not published: dispatch claim is no longer owned by this worker', group_id
        )
        return
    try:
        callback.delay(values)
    except Exception as exc:
        logger.exception('Chord callback for %r raised: %r', group_id, exc)
        chord_error_from_stack(backend, callback, chord_error(f'Callback error: {exc!r}', exc))
    finally:
        if not store.release(group_id, claim):
            logger.warning(
                'Chord callback claim for %r was lost before cleanup; chord data was left for expiry', group_id
            )


def _body(app: Fastq, request: Any) -> Any:
    from fastq.canvas import maybe_signature

    return maybe_signature(request.chord, app=app)


def _join(backend: Backend, store: ChordStore, group_id: str, claim: Claim) -> list[Any]:
    """The header's values in order; a ChordError for the first part (in order) that failed."""
    saved = backend.restore_group(group_id)
    if saved is not None:  # a header with nested groups: its saved structure says how to shape the values
        try:
            return saved.join(timeout=backend.app.conf.result_chord_join_timeout, disable_sync_subtasks=False)
        except Exception as exc:
            # Name the first failed part, as Celery does when it joins a saved header (memcached saves every
            # chord's header, so without this its bodies failed with "Join error: ..." where Celery's say
            # "Dependency <id> raised ...").
            culprit = next((r for r in saved.results if getattr(r, 'state', None) in states.PROPAGATE_STATES), None)
            if culprit is None:
                raise
            raise chord_error(f'Dependency {culprit.id} raised {exc!r}', exc) from exc
    return [_unpack(backend, part) for part in store.parts(group_id, claim)]


def _unpack(backend: Backend, part: bytes) -> Any:
    _, task_id, state, value = backend.decode(part)
    if state in states.EXCEPTION_STATES:
        value = backend.exception_to_python(value)
    if state in states.PROPAGATE_STATES:
        raise chord_error(f'Dependency {task_id} raised {value!r}', value)
    return value


def apply_chord(backend: Backend, header_result_args: tuple[str, list[Any]], body: Any, **kwargs: Any) -> None:
    """Called as a chord is sent, before its header: set up the join (or start polling for it)."""
    from fastq.result import GroupResult

    backend.ensure_chords_allowed()
    header_result = backend.app.GroupResult(*header_result_args)
    if backend.chord_store is None:
        fallback_chord_unlock(backend, header_result, body, **kwargs)
    elif any(isinstance(r, GroupResult) for r in header_result.results):
        backend.save_group(header_result.id or '', header_result)


def fallback_chord_unlock(
    backend: Backend, header_result: GroupResult, body: Any, countdown: float = 1, **kwargs: Any
) -> None:
    """Send `celery.chord_unlock`, which retries until the header is ready, then sends the body."""
    from fastq.builtins import builtin
    from fastq.routing import Exchange, Queue

    app = backend.app
    kwargs['result'] = [r.as_tuple() for r in header_result]
    body_type = app.tasks.get(body.task)
    queue = body.options.get('queue') or getattr(body_type, 'queue', None)
    if queue is None:
        queue = app.router.route({}, body.task, (), {}, body_type)['queue']
    priority = body.options.get('priority', getattr(body_type, 'priority', None))
    routing = {k: body.options[k] for k in ('exchange', 'routing_key', 'headers') if body.options.get(k) is not None}
    exchange = (app.router.queues.get(queue) or Queue(queue)).exchange
    if isinstance(exchange, Exchange):  # the unlock task's retries need it (not in delivery_info), as in Celery
        routing['exchange_type'] = kwargs['_chord_unlock_exchange_type'] = exchange.type
    builtin(app, 'celery.chord_unlock').apply_async(
        (header_result.id, body), kwargs, countdown=countdown, queue=queue, priority=priority, **routing
    )


def chord_error_from_stack(backend: Backend, callback: Any, exc: BaseException) -> None:
    """The chord failed: its body fails with `exc` instead of running, and the body's errbacks run."""
    from fastq.canvas import group

    if isinstance(callback, group):
        _fail_group_body(backend, callback, exc)
    else:
        callback_id = callback.id or callback.options.setdefault('task_id', str(uuid.uuid4()))
        backend.mark_as_failure(callback_id, exc, traceback=_current_traceback(exc), request=None)
        # (a request made up for the body, which never ran: Celery's "fake request" for new-style errbacks)
        request = _request_of(callback, callback_id)
        call_errbacks(backend.app, callback.options.get('link_error'), request, exc)
    fail_chain(backend, callback.options.get('chain'), exc)


def _current_traceback(exc: BaseException) -> str:
    """`exc` formatted with the traceback of the exception being handled (the join's or the send's), as
    Celery's `fail_from_current_stack` stores it for a failed chord's body (and its cause's chain)."""
    return ''.join(format_exception(type(exc), exc, sys.exc_info()[2]))


def _request_of(sig: Any, task_id: str | None) -> Any:
    from fastq.task import Context

    options = sig.options
    return Context({**dict(sig), **options, 'id': task_id, 'group': options.get('group_id')})


def _fail_group_body(backend: Backend, body: Any, exc: BaseException) -> None:
    """A group body: each of its tasks fails with the header's error (never sent, so they cannot run)."""
    original = exc.__cause__ if isinstance(exc, ChordError) and exc.__cause__ is not None else exc
    frozen = body.freeze()
    group_errbacks = as_list(body.options.get('link_error'))
    for task, result in zip(body.tasks, frozen.results, strict=False):
        backend.mark_as_failure(result.id, original, request=None)
        errbacks = [*as_list(task.options.get('link_error')), *group_errbacks]
        call_errbacks(backend.app, errbacks, _request_of(task, result.id), original)
    if frozen.id:
        backend.mark_as_failure(frozen.id, original, request=None)


def call_errbacks(app: Fastq, errbacks: Any, request: Any, exc: BaseException, traceback: str | None = None) -> None:
    """Run a failed task's errbacks as Celery does.

    One whose task takes more than one positional argument besides those its signature already holds
    (`def on_error(request, exc, traceback)`, the style Celery's guides teach) is called here, in the failing
    task's process, with the failed task's request, its exception and its traceback; the others (taking the
    failed task's id alone, the older style, and any bound task or a task this process does not know) are
    sent with it, together as one group, as Celery 5.7's `_call_task_errbacks` sends them: each has the
    group's id in `request.group` (and, with `result_extended`, in its stored result). One that fails is
    logged and does not keep the others from running.
    """
    from fastq.canvas import group, maybe_signature

    task_id = request.id
    root_id = request.root_id or task_id
    old_style = []
    for raw in as_list(errbacks):
        sig = maybe_signature(raw, app=app)
        if sig is None:
            continue
        if not _takes_request(app.tasks.get(sig.task), sig):
            old_style.append(sig)
            continue
        try:
            sig(request, exc, traceback)
        except Exception:
            logger.exception('Errback %r of %s failed', sig, task_id)
    if not old_style:
        return
    sent = group(old_style, app=app)
    try:
        if request.is_eager:
            sent.apply((task_id,), parent_id=task_id, root_id=root_id)
        else:
            sent.apply_async((task_id,), parent_id=task_id, root_id=root_id)
    except Exception:
        logger.exception('Errbacks %r of %s failed', old_style, task_id)


def _takes_request(task: Any, sig: Any) -> bool:
    """A new-style errback: an unbound task whose function takes more than one positional argument, not
    counting the arguments a mutable signature already holds (Celery's `_errback_arity_greater`)."""
    fun = getattr(type(task), '__wrapped__', None) if task is not None else None
    if fun is None or getattr(task, '_bound', False):
        return False
    try:
        spec = inspect.getfullargspec(fun)
    except TypeError:
        return False
    if not sig.immutable and (sig.args or sig.kwargs):
        try:  # (what is left once they are bound from the left, as partial() binds them)
            spec = inspect.getfullargspec(functools.partial(fun, *sig.args, **sig.kwargs))
        except (TypeError, ValueError):
            pass  # (a call that cannot work: classified by the function alone, as Celery does)
    return bool(spec.varargs) or len(spec.args) > 1


def fail_chain(backend: Backend, chain: Any, exc: BaseException, traceback: str | None = None) -> None:
    """A chain step failed: the steps after it never run, so store the failure for each (its result is
    what a caller waits on), return their part to a chord they belong to, and go into chord bodies."""
    from fastq.canvas import maybe_signature

    pending = deque(chain or ())
    while pending:
        step = maybe_signature(pending.popleft(), app=backend.app)
        options = step.options
        task_id = options.get('task_id')
        request = _request_of(step, task_id)
        in_chord = 'chord' in options
        already_failed = in_chord and task_id is not None and backend.get_state(task_id) in states.PROPAGATE_STATES
        if task_id is not None:
            backend.store_result(task_id, exc, states.FAILURE, traceback=traceback, request=request)
        if in_chord and not already_failed:
            backend.on_chord_part_return(request, states.FAILURE, exc)
        if step.subtask_type == 'chord' and step.kwargs.get('body') is not None:
            pending.append(step.kwargs['body'])
