"""More tasks for the task-semantics tests, on `worker_tasks.app` (workers load them with `-I semantics_tasks`)."""

from __future__ import annotations

import os
import threading
import time
from typing import Any

from worker_tasks import _record, app

from fastq import Task, signals
from fastq.exceptions import Ignore, Reject

SIGNAL_LOG = os.environ.get('FASTQ_TEST_SIGNAL_LOG')


class Flaky(Exception):
    pass


@app.task(bind=True, autoretry_for=(Flaky,), retry_backoff=0.1, retry_jitter=False, max_retries=3)
def auto(self: Any, path: str, fail_times: int) -> int:
    _record(path, f'try {self.request.retries}')
    if self.request.retries < fail_times:
        raise Flaky(f'attempt {self.request.retries}')
    return int(self.request.retries)


@app.task(bind=True, max_retries=1, default_retry_delay=0)
def give_up(self: Any, with_exc: bool) -> None:
    try:
        raise KeyError('original')
    except KeyError as exc:
        raise self.retry(exc=exc if with_exc else None, countdown=0) from None


@app.task(bind=True, max_retries=1)
def slow_retry(self: Any) -> str:
    if self.request.retries == 0:
        raise self.retry(countdown=2)
    return 'second time'


@app.task(bind=True, track_started=True)
def tracked(self: Any, seconds: float) -> str:
    time.sleep(seconds)
    return 'done'


@app.task(ignore_result=True)
def forgetful(path: str) -> str:
    _record(path, 'ran')
    return 'not stored'


@app.task(bind=True)
def progress(self: Any, steps: int, path: str) -> int:
    for i in range(steps):
        self.update_state(state='PROGRESS', meta={'current': i, 'total': steps})
        _record(path, f'step {i}')
        time.sleep(0.3)
    return steps


@app.task(acks_late=True)
def rejecting(requeue: bool) -> None:
    raise Reject('not for me', requeue=requeue)


@app.task
def ignoring() -> None:
    raise Ignore()


class Hooked(Task):  # type: ignore[type-arg]
    def on_success(self, retval: Any, task_id: str, args: Any, kwargs: Any) -> None:
        _record(args[0], f'on_success {retval}')

    def on_failure(self, exc: BaseException, task_id: str, args: Any, kwargs: Any, einfo: Any) -> None:
        _record(args[0], f'on_failure {type(exc).__name__}')

    def after_return(self, status: str, retval: Any, task_id: str, args: Any, kwargs: Any, einfo: Any) -> None:
        _record(args[0], f'after_return {status}')


@app.task(base=Hooked)
def hooked(path: str, fail: bool) -> str:
    if fail:
        raise RuntimeError('hooked failure')
    return 'hooked ok'


@app.task(rate_limit='4/s')
def limited(path: str, key: str) -> str:
    _record(path, f'{key} {time.time()}')
    return key


@app.task(global_rate_limit='4/s')
def fleet_limited(path: str, key: str) -> str:
    _record(path, f'{key} {time.time()} {os.getpid()}')
    return key


@app.task
def routed(path: str, key: str) -> str:
    _record(path, f'{key}')
    return key


def _log_signal(name: str) -> Any:
    def receiver(sender: Any = None, **kwargs: Any) -> None:
        if SIGNAL_LOG:
            _record(SIGNAL_LOG, f'{name} {os.getpid()} {threading.current_thread().name}')

    return receiver


_receivers = []
for _name in (
    'worker_init', 'worker_process_init', 'worker_ready', 'worker_shutdown', 'task_prerun', 'task_postrun',
    'task_success', 'task_failure', 'task_retry', 'task_revoked', 'task_unknown', 'task_received',
    'celeryd_init', 'after_setup_logger',
):  # fmt: skip
    _receiver = _log_signal(_name)
    _receivers.append(_receiver)  # keep a strong reference: signals hold weak ones
    getattr(signals, _name).connect(_receiver)
