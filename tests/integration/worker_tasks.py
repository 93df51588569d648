"""Tasks run by real worker processes in the integration tests (`fastq -A worker_tasks worker`).

Broker and backend come from the environment (FASTQ_BROKER_URL / FASTQ_RESULT_BACKEND), set per test.
Tasks that must be counted write lines to files, because a worker's side effects are the only honest record
of how many times something ran.
"""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any

from fastq import Fastq, signals
from fastq.exceptions import SoftTimeLimitExceeded
from fastq.utils.log import get_task_logger

app = Fastq('worker_tasks')
logger = get_task_logger(__name__)


@signals.celeryd_init.connect
def _configure_this_worker(sender: str, conf: Any, options: dict[str, Any], **kwargs: Any) -> None:
    """Celery's way to configure a worker by its name, before it reads its settings and sets up logging
    (tests/integration/test_worker.py: test_celeryd_init_comes_first)."""
    fmt = os.environ.get('WORKER_TASKS_LOG_FORMAT')
    if fmt:
        conf.worker_log_format = fmt
    path = os.environ.get('WORKER_TASKS_INIT_RECORD')
    if path:
        _record(path, f'{sender} {options["loglevel"]} {options["concurrency"]} {sorted(options)}')


@signals.worker_process_init.connect
def _child_started(**kwargs: Any) -> None:
    """With WORKER_TASKS_PROCESS_RECORD: a line per pool child started. With WORKER_TASKS_INIT_BLOCK too, once
    `<that path>.arm` exists, the first child to start afterwards blocks here for a minute (claiming the path)."""
    path = os.environ.get('WORKER_TASKS_PROCESS_RECORD')
    if path:
        _record(path, f'init {os.getpid()}')
    block = os.environ.get('WORKER_TASKS_INIT_BLOCK')
    if block and os.path.exists(f'{block}.arm'):
        try:
            os.close(os.open(block, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        except FileExistsError:
            return
        if path:
            _record(path, f'blocking {os.getpid()}')
        time.sleep(60)


@signals.worker_process_shutdown.connect
def _child_stopping(pid: int, exitcode: int, **kwargs: Any) -> None:
    path = os.environ.get('WORKER_TASKS_PROCESS_RECORD')
    if path:
        _record(path, f'shutdown {pid} {exitcode} {os.getpid()}')


class CustomError(Exception):
    """An application exception: get() must re-raise it with this type."""


def _record(path: str, line: str) -> None:
    with open(path, 'a') as f:
        f.write(f'{line}\n')
        f.flush()
        os.fsync(f.fileno())


@app.task
def add(x: int, y: int) -> int:
    return x + y


@app.task
def fail(message: str) -> None:
    raise ValueError(message)


@app.task
def fail_custom(message: str) -> None:
    raise CustomError(message)


@app.task
def pid() -> int:
    return os.getpid()


@app.task
def record(path: str, key: str) -> str:
    _record(path, f'ran {key} {os.getpid()} {time.time()}')
    return key


@app.task(acks_late=True)
def slow_record(path: str, key: str, seconds: float) -> str:
    _record(path, f'start {key} {os.getpid()}')
    time.sleep(seconds)
    _record(path, f'done {key} {os.getpid()}')
    return key


@app.task
def sleeper(path: str, key: str, seconds: float) -> str:
    _record(path, f'start {key}')
    time.sleep(seconds)
    _record(path, f'done {key}')
    return key


@app.task
def napper(path: str, key: str, seconds: float) -> int:
    """Records its start with the pid of the process running it (unless it sleeps 0), then sleeps."""
    if seconds:
        _record(path, f'start {key} {os.getpid()}')
        time.sleep(seconds)
    return os.getpid()


@app.task(acks_late=True)
def late_add(x: int, y: int) -> int:
    return x + y


@app.task
def crash_child() -> None:
    os._exit(13)


_append_fds: dict[str, int] = {}


@app.task(ignore_result=True)
def tick_or_die(path: str, key: str, die: bool) -> None:
    """A task short enough for the pool to batch: one write to a file kept open (it survives the child's
    death: the kernel has it); one call kills the child right after its write."""
    fd = _append_fds.get(path)
    if fd is None:
        fd = _append_fds[path] = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    os.write(fd, f'ran {key}\n'.encode())
    if die:
        os._exit(13)


@app.task(acks_late=True, reject_on_worker_lost=True)
def crash_child_late(path: str) -> None:
    _record(path, f'attempt {os.getpid()}')
    os._exit(13)


@app.task
def long(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


@app.task
def soft(seconds: float) -> str:
    try:
        time.sleep(seconds)
    except SoftTimeLimitExceeded:
        return 'soft limit caught'
    return 'finished'


@app.task(bind=True)
def whoami(self) -> dict[str, object]:  # type: ignore[no-untyped-def]
    return {
        'id': self.request.id,
        'hostname': self.request.hostname,
        'retries': self.request.retries,
        'routing_key': (self.request.delivery_info or {}).get('routing_key'),
        'called_directly': self.request.called_directly,
    }


@app.task(bind=True)
def request_as_sent(self) -> dict[str, object]:  # type: ignore[no-untyped-def]
    """What the request says of the message itself: its properties and the headers as sent."""
    return {
        'properties': self.request.properties,
        'timelimit': self.request.timelimit,
        'ignore_result': self.request.ignore_result,
    }


@app.task(bind=True)
def retried_limits(self) -> object:  # type: ignore[no-untyped-def]
    """The time limits in the message of its retry (sent from the worker's process)."""
    if self.request.retries == 0:
        raise self.retry(countdown=0)
    return self.request.timelimit


@app.task(bind=True, max_retries=2, default_retry_delay=0)
def flaky(self, path: str) -> int:  # type: ignore[no-untyped-def]
    _record(path, f'try {self.request.retries}')
    if self.request.retries < 2:
        raise self.retry(countdown=0)
    return self.request.retries


@app.task
def when_run() -> float:
    return time.time()


@app.task
def logs(message: str) -> None:
    logger.warning(message)


@app.task(bind=True)
def progress(self, steps: int, pause: float) -> int:  # type: ignore[no-untyped-def]
    for step in range(steps):
        self.update_state(state='PROGRESS', meta={'step': step})
        time.sleep(pause)
    return steps


@app.task(bind=True, backend=os.environ.get('WORKER_TASKS_OWN_BACKEND') or None, max_retries=1, default_retry_delay=0.5)
def own_backend(self, mode: str, pause: float = 0) -> str:  # type: ignore[no-untyped-def]
    """A task with a result backend of its own (a URL the test gives the worker, and the client's task)."""
    if mode == 'progress':
        self.update_state(state='PROGRESS', meta={'step': 1})
        time.sleep(pause)
    elif mode == 'retry' and self.request.retries < 1:
        raise self.retry(exc=ValueError('again'), countdown=pause)
    elif mode == 'fail':
        raise CustomError('own backend')
    return mode


@app.task(bind=True)
def header_of(self, name: str) -> object:  # type: ignore[no-untyped-def]
    return getattr(self.request, name, None)


@app.task
def prints(message: str) -> None:
    import sys

    print(message)
    print(f'{message} (stderr)', file=sys.stderr)


# --- canvas (tests/integration/test_canvas.py, tests/compat/test_canvas_celery.py) -------------------------


@app.task
def mul(x: int, y: int) -> int:
    return x * y


@app.task
def tsum(values: list[int]) -> int:
    return sum(values)


@app.task
def xsum(values: list[object]) -> int:
    """Sum of a chord's results, nested lists included (a group in the header)."""
    return sum(xsum.run(v) if isinstance(v, list) else v for v in values)  # type: ignore[misc]


@app.task(acks_late=True)
def chord_part(path: str, key: str, value: int, seconds: float) -> int:
    _record(path, f'start {key} {os.getpid()}')
    time.sleep(seconds)
    _record(path, f'done {key} {os.getpid()}')
    return value


class _HangAfterReturn(app.Task):  # type: ignore[name-defined,misc]
    """After the first run has returned its chord part, hang before the ack: the test SIGKILLs the worker
    there, so the same header task is redelivered and returns its part a second time."""

    def after_return(self, status: str, retval: object, task_id: str, args: Any, kwargs: Any, einfo: Any) -> None:
        path, key = args[0], args[1]
        _record(path, f'returned {key} {os.getpid()}')
        marker = f'{path}.{key}.hung'
        if not os.path.exists(marker):
            open(marker, 'w').close()
            time.sleep(60)


@app.task(base=_HangAfterReturn, acks_late=True)
def chord_part_hang(path: str, key: str, value: int) -> int:
    return value


@app.task
def record_body(values: list[object], path: str) -> list[object]:
    _record(path, f'body {values!r} {os.getpid()}')
    return values


@app.task
def on_error(request: Any, exc: BaseException, traceback: str | None, path: str) -> None:
    """An errback in the style Celery's guides teach: called in the failed task's process."""
    _record(path, f'error {request.id} {type(exc).__name__} {bool(traceback)}')


@app.task
def on_error_id(task_id: str, *, path: str) -> None:
    """An errback in the older style: sent as a task with the failed task's id."""
    _record(path, f'error-id {task_id}')


# --- the asyncio pool (tests/integration/test_asyncio_pool.py) ---------------------------------------------


@app.task
async def asleep(path: str, key: str, seconds: float) -> str:
    _record(path, f'start {key} {os.getpid()} {time.time()}')
    await asyncio.sleep(seconds)
    _record(path, f'done {key} {os.getpid()} {time.time()}')
    return key


@app.task(acks_late=True)
async def asleep_late(path: str, key: str, seconds: float) -> str:
    return await asleep.run(path, key, seconds)  # type: ignore[no-any-return,misc]


@app.task
def tsleep(path: str, key: str, seconds: float) -> str:
    """A sync task: under -P asyncio it runs in its child's thread pool."""
    _record(path, f'start {key} {os.getpid()} {time.time()}')
    time.sleep(seconds)
    _record(path, f'done {key} {os.getpid()} {time.time()}')
    return key


@app.task
async def acancellable(path: str, key: str, seconds: float) -> str:
    _record(path, f'start {key} {os.getpid()}')
    try:
        await asyncio.sleep(seconds)
    except asyncio.CancelledError:
        _record(path, f'cancelled {key} {os.getpid()}')
        raise
    return key


@app.task
async def ablock(path: str, key: str, seconds: float) -> str:
    """Blocks its event loop (a sync sleep in a coroutine): cancellation cannot reach it."""
    _record(path, f'start {key} {os.getpid()}')
    time.sleep(seconds)
    return key


@app.task
async def asoft(seconds: float) -> str:
    try:
        await asyncio.sleep(seconds)
    except SoftTimeLimitExceeded:
        await asyncio.sleep(0)  # the task goes on awaiting after catching it
        return 'soft limit caught'
    return 'finished'


@app.task(bind=True)
async def aself(self, seconds: float) -> str:  # type: ignore[no-untyped-def]
    """Its own request id, read before and after awaiting while many others run in the same loop."""
    before = self.request.id
    await asyncio.sleep(seconds)
    after = self.request.id
    logger.warning('aself %s', after)
    return f'{before} {after}'


@app.task(acks_late=True, reject_on_worker_lost=True)
async def alate_requeue(path: str, key: str, seconds: float) -> str:
    _record(path, f'start {key} {os.getpid()}')
    await asyncio.sleep(seconds)
    _record(path, f'done {key} {os.getpid()}')
    return key


@app.task(acks_late=True)
async def alate(path: str, key: str, seconds: float) -> str:
    _record(path, f'start {key} {os.getpid()}')
    await asyncio.sleep(seconds)
    _record(path, f'done {key} {os.getpid()}')
    return key


# --- Task.replace (tests/integration/test_canvas.py) ------------------------------------------------------


@app.task(bind=True)
def replaced(self, x: int) -> Any:  # type: ignore[no-untyped-def]
    raise self.replace(add.s(x, 1))


@app.task(bind=True)
def replaced_by_group(self, n: int) -> Any:  # type: ignore[no-untyped-def]
    from fastq import group

    raise self.replace(group(add.s(i, i) for i in range(n)))


@app.task
def fan_out(n: int) -> int:
    """Sends `n` add tasks (its children) and returns without waiting for them."""
    for i in range(n):
        add.delay(i, i)
    return n


@app.task(bind=True)
def announce(self, step: int) -> int:  # type: ignore[no-untyped-def]
    """Sends a custom event about itself (Celery's Task.send_event)."""
    self.send_event('task-progress', current=step, total=3)
    return step


@app.task(bind=True)
def stamps_of(self) -> object:  # type: ignore[no-untyped-def]
    """The stamps this task was sent with (Celery's stamping API)."""
    return {'stamps': self.request.stamps, 'stamped_headers': sorted(self.request.stamped_headers or [])}


# --- the Tasks guide's custom request (hooks run in the worker's parent) -------------------------------------

import logging as _logging  # noqa: E402

from fastq import Task as _Task  # noqa: E402
from fastq.worker.request import Request as _Request  # noqa: E402

_request_logger = _logging.getLogger('my.package')


class MyRequest(_Request):
    """A minimal custom request to log failures and hard time limits."""

    def on_timeout(self, soft: bool, timeout: float | None) -> None:
        super().on_timeout(soft, timeout)
        if not soft:
            _request_logger.warning('A hard timeout was enforced for task %s', self.task.name)

    def on_failure(self, exc_info: Any, send_failed_event: bool = True, return_ok: bool = False) -> None:
        super().on_failure(exc_info, send_failed_event=send_failed_event, return_ok=return_ok)
        _request_logger.warning('Failure detected for task %s: %s', self.task.name, exc_info.exception)


class MyTask(_Task):
    Request = MyRequest


@app.task(base=MyTask, time_limit=1)
def watched(seconds: float, fail: bool) -> float:
    if fail:
        raise ValueError('watched failed')
    time.sleep(seconds)
    return seconds


class HookedTask(MyTask):
    """MyTask with the task's own failure hooks, which log (with the process they run in) too."""

    def on_failure(self, exc: BaseException, task_id: str, args: Any, kwargs: Any, einfo: Any) -> None:
        _request_logger.warning('Task.on_failure of %s: %r %r', self.name, exc, args)

    def after_return(self, status: str, retval: Any, task_id: str, args: Any, kwargs: Any, einfo: Any) -> None:
        _request_logger.warning('Task.after_return of %s: %s %r', self.name, status, retval)


@app.task(base=HookedTask, time_limit=1)
def watched_hooks(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


class ReturnOkRequest(_Request):
    """Logs what its on_failure is told: return_ok is True for a run the child answered (Celery's pool)."""

    def on_failure(self, exc_info: Any, send_failed_event: bool = True, return_ok: bool = False) -> None:
        _request_logger.warning('Request.on_failure of %s: return_ok=%s', self.task.name, return_ok)


@app.task(base=_Task, Request=ReturnOkRequest)
def watched_reject(requeue: bool) -> None:
    from fastq.exceptions import Reject

    raise Reject('watched', requeue=requeue)


@app.task(base=_Task, Request=ReturnOkRequest)
def watched_fail() -> None:
    raise ValueError('watched')


@app.task
def debugged(x: int, y: int) -> int:
    """Stops in the remote debugger (the Debugging guide's example)."""
    from fastq.contrib import rdb

    result = x + y
    rdb.set_trace()
    return result


@app.task(bind=True, acks_late=True, retry_on_worker_lost=True, max_retries=2, default_retry_delay=0)
def dies_once(self, path: str) -> int:  # type: ignore[no-untyped-def]
    """Kills its own process on the first run (Celery 5.7's retry_on_worker_lost sends it again)."""
    import signal as _signal

    if not os.path.exists(path):
        _record(path, 'died')
        os.kill(os.getpid(), _signal.SIGKILL)
    return int(self.request.retries)


# --- the Workers guide's own remote control commands ---------------------------------------------------------

from fastq.worker.control import control_command, inspect_command  # noqa: E402

_bumps: list[int] = []


@control_command(args=[('n', int)], signature='[N=1]')
def bump(state: Any, n: int = 1) -> dict[str, Any]:
    """Bump the worker's counter by n.

    (Only the first line is --list's help.)
    """
    _bumps.append(n)
    return {'ok': f'bumped by {n} on {state.hostname}'}


@inspect_command(alias='bumps')
def bumped(state: Any) -> dict[str, Any]:
    return {'total': sum(_bumps), 'app': state.app.main}


@control_command(visible=False)
def unbump(state: Any) -> dict[str, Any]:
    """Not listed."""
    _bumps.clear()
    return {'ok': 'cleared'}


@control_command(args=[('n', int)], signature='[N=1]')
def increase_prefetch_count(state: Any, n: int = 1) -> dict[str, Any]:
    """The guide's example, as written there: kombu's QoS of the consumer."""
    state.consumer.qos.increment_eventually(n)
    return {'ok': 'prefetch count incremented'}


@inspect_command()
def current_prefetch_count(state: Any) -> dict[str, Any]:
    return {'prefetch_count': state.consumer.qos.value}


@app.task(bind=True, acks_late=True)
def long_first_time(self: Any, path: str, key: str) -> str:
    """Sleeps ten minutes unless its message was delivered before (then returns at once)."""
    redelivered = bool((self.request.delivery_info or {}).get('redelivered'))
    _record(path, f'start {key} {redelivered}')
    if not redelivered:
        time.sleep(600)
    return key


@app.task(acks_late=True, acks_on_failure_or_timeout=False, time_limit=1)
def long_first_run_kept(path: str, key: str) -> str:
    """Sleeps ten minutes on its first run (as `path` tells), returns at once after: with a hard time limit
    of 1 s and its message not acked on timeout, its second run (the message requeued) returns."""
    first = not os.path.exists(path)
    _record(path, f'start {key}')
    if first:
        time.sleep(600)
    return key


@app.task
def rejects(reason: str) -> None:
    """Rejects its message for good (Reject(requeue=False)): stored as FAILURE, with a `task-failed` event."""
    from fastq.exceptions import Reject

    raise Reject(reason, requeue=False)


# --- the Workers guide's custom autoscaler (worker_autoscaler) ------------------------------------------------

from fastq.worker.autoscale import Autoscaler  # noqa: E402


class AlwaysMax(Autoscaler):
    """Celery's way of writing one: override _maybe_scale with qty/processes/scale_up."""

    def _maybe_scale(self, req: Any = None) -> bool | None:
        if self.processes < self.max_concurrency:
            self.scale_up(self.max_concurrency - self.processes)
            return True
        return None
