"""A task on its way through the worker parent, and the payload an executor needs to run it."""

from __future__ import annotations

import functools
import logging
import marshal
import signal
import threading
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from fastq import _core, protocol, states
from fastq.exceptions import ContentDisallowed, DecodeError, SoftTimeLimitExceeded
from fastq.serialization import json_tag_hook
from fastq.task import ENVELOPE
from fastq.worker.trace import Outcome, execute, execute_async

if TYPE_CHECKING:
    from fastq._core import Message
    from fastq.app import Fastq
    from fastq.brokers.base import Delivery
    from fastq.protocol import TaskRequest

#: Outcome state for a body that could not be decoded in the executor (the parent dead-letters it).
DECODE_ERROR = 'DECODE_ERROR'


@dataclass(slots=True, eq=False)
class Job:
    """One delivery accepted for execution, from dispatch until it is settled."""

    id: int
    delivery: Delivery
    request: TaskRequest
    acks_late: bool
    reject_on_worker_lost: bool
    time_limit: float | None
    soft_time_limit: float | None
    hostname: str
    received: float  # monotonic
    started: float | None = None  # monotonic, when an executor began it
    pid: int | None = None  # process running it (prefork)
    acked: bool = False

    @property
    def tag(self) -> Any:
        return self.delivery.tag

    @property
    def name(self) -> str:
        return self.request.display_name

    def payload(self) -> bytes:
        """What the executor needs: the envelope as the broker stored it and what the parent decided about it.

        The executor decodes the envelope itself: marshalling the parent's decoded copy cost the parent, the
        one process every task goes through, more than decoding costs a child.
        """
        d = self.delivery
        return marshal.dumps((d.raw, d.queue, d.redelivered, self.time_limit, self.soft_time_limit, self.hostname))


def request_of(message: Message, queue: str, redelivered: bool, hostname: str) -> dict[str, Any]:
    """The request dict `execute` takes, from a task message's headers and properties."""
    return _core.task_request(message.headers, message.properties, queue, redelivered, hostname)


def embed_into(request: dict[str, Any], embed: dict[str, Any]) -> None:
    """Add the workflow fields a task body carries (protocol v2's `embed`) to a request dict."""
    for key in ('callbacks', 'errbacks', 'chain', 'chord'):
        request[key] = embed.get(key)


def _internal_error(
    app: Fastq, task: Any, request: dict[str, Any], exc: Exception, args: Any = None, kwargs: Any = None
) -> Outcome:
    """Report what Celery calls an internal error outside a trace (the trace reports its own: see
    `trace._on_internal_error`): the task ran (or not) but the worker's own code failed."""
    import logging

    from fastq.worker.trace import _results, signal_internal_error

    logging.getLogger('celery.app.trace').critical(
        'Task %s[%s] INTERNAL ERROR: %r', task.name, request.get('id'), exc, exc_info=True
    )
    signal_internal_error(task, request, exc, args, kwargs)
    try:
        _results(task).mark_as_failure(request['id'], exc, None)  # (the task's backend, as Celery's on_error)
    except Exception:  # the backend is what failed, most likely
        pass
    return Outcome(states.FAILURE, 0.0, exc_repr=repr(exc))


def _soft_limit_handler(limit: float | None, signum: int, frame: Any) -> None:
    from fastq import _state

    task = _state.get_current_task()
    if task is not None:
        request = task.request
        logging.getLogger('celery.worker.request').warning(
            'Soft time limit (%ss) exceeded for %s[%s]', limit, request.shadow or task.name, request.id
        )
    raise SoftTimeLimitExceeded()


@dataclass(slots=True, eq=False)
class Prepared:
    """A decoded job payload, ready to run."""

    task: Any
    args: list[Any]
    kwargs: dict[str, Any]
    request: dict[str, Any]
    time_limit: float | None
    soft_time_limit: float | None


def prepare_payload(app: Fastq, payload: bytes | tuple[Any, ...], accept: frozenset[str]) -> Prepared | Outcome:
    """Decode a job payload (or take its fields as they are: a task a pool child took itself); an Outcome
    instead when it cannot run (undecodable, or an unknown task)."""
    fields: tuple[Any, ...] = marshal.loads(payload) if type(payload) is bytes else payload  # type: ignore[assignment]
    raw, queue, redelivered, time_limit, soft_limit, hostname = fields
    try:
        decoded = _core.job_request(raw, queue, redelivered, hostname, accept, json_tag_hook)
    except Exception:  # (a tag hook's error, say) the general path below reports it in its own words
        decoded = None
    if decoded is not None:
        args, kwargs, request = decoded
    else:
        try:
            message = _core.Message.from_envelope(raw, None)
            request = request_of(message, queue, redelivered, hostname)
            args, kwargs, embed = protocol.decode_body(
                message.body, message.content_type, message.headers.get('compression'), accept
            )
        except (DecodeError, ContentDisallowed, ValueError) as exc:
            return Outcome(DECODE_ERROR, 0.0, exc_repr=f'{type(exc).__name__}: {exc}')
        embed_into(request, embed)
    request[ENVELOPE] = raw  # (`Context.properties` are read from it, for the few tasks that ask)
    name = request['task']
    task = app.tasks.get(name)
    if task is None:  # the parent checks this; a child with a different import state still must not crash
        return Outcome(states.FAILURE, 0.0, exc_repr=f'NotRegistered({name!r})')
    return Prepared(task, args, kwargs, request, time_limit, soft_limit)


def run_payload(app: Fastq, payload: bytes | tuple[Any, ...], accept: frozenset[str]) -> Outcome:
    """Decode and execute a job payload (in a prefork child, a pool thread or the solo loop)."""
    prepared = prepare_payload(app, payload, accept)
    if isinstance(prepared, Outcome):
        return prepared
    return run_prepared(app, prepared)


def run_prepared(app: Fastq, job: Prepared) -> Outcome:
    """Execute a decoded job; a soft time limit is delivered by SIGALRM, so only in the main thread."""
    soft_limit = job.soft_time_limit
    use_alarm = bool(soft_limit) and threading.current_thread() is threading.main_thread()
    if use_alarm:
        previous = signal.signal(signal.SIGALRM, functools.partial(_soft_limit_handler, soft_limit))
        signal.setitimer(signal.ITIMER_REAL, float(soft_limit or 0))
    try:
        return execute(job.task, job.args, job.kwargs, job.request)
    except Exception as exc:  # a failure outside the task body (e.g. its result cannot be stored)
        return _internal_error(app, job.task, job.request, exc, job.args, job.kwargs)
    finally:
        if use_alarm:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, previous)


async def run_prepared_async(
    app: Fastq, job: Prepared, guard: Callable[[Awaitable[Any]], Awaitable[Any]] | None = None
) -> Outcome:
    """Execute a decoded job of an `async def` task on the running loop (the asyncio pool's children)."""
    try:
        return await execute_async(job.task, job.args, job.kwargs, job.request, guard)
    except Exception as exc:
        return _internal_error(app, job.task, job.request, exc, job.args, job.kwargs)
