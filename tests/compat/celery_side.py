"""The Celery half of the compatibility tests: the same task names as `worker_tasks`, on the same Redis.

Run by a real `celery worker` (and used as a Celery client) with the URL from CELERY_BROKER_URL.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

from celery import Celery

url = os.environ.get('CELERY_BROKER_URL', 'redis://127.0.0.1:6379/0')
app = Celery('celery_side', broker=url, backend=os.environ.get('CELERY_RESULT_BACKEND', url))
app.conf.accept_content = ['json', 'msgpack']
if os.environ.get('CELERY_QUEUE_MAX_PRIORITY'):
    app.conf.task_queue_max_priority = int(os.environ['CELERY_QUEUE_MAX_PRIORITY'])
if os.environ.get('CELERY_DEFAULT_QUEUE_TYPE'):
    app.conf.task_default_queue_type = os.environ['CELERY_DEFAULT_QUEUE_TYPE']
    app.conf.task_default_exchange_type = os.environ.get('CELERY_DEFAULT_EXCHANGE_TYPE', 'direct')
if os.environ.get('CELERY_RESULT_EXTENDED'):
    app.conf.result_extended = True
if os.environ.get('CELERY_CONTROL_EXCHANGE'):
    app.conf.control_exchange = os.environ['CELERY_CONTROL_EXCHANGE']
app.conf.broker_transport_options = {
    'visibility_timeout': float(os.environ.get('VISIBILITY_TIMEOUT', '3600')),
    'unacked_restore_interval': 1,
    'unacked_restore_throttle': 1,
}
if os.environ.get('CELERY_BROKER_TRANSPORT_OPTIONS'):  # (SQS: a queue-name prefix, short polls)
    app.conf.broker_transport_options = json.loads(os.environ['CELERY_BROKER_TRANSPORT_OPTIONS'])
app.conf.worker_prefetch_multiplier = 1


def _record(path: str, line: str) -> None:
    with open(path, 'a') as f:
        f.write(f'{line}\n')
        f.flush()
        os.fsync(f.fileno())


@app.task(name='worker_tasks.add')
def add(x: int, y: int) -> int:
    return x + y


@app.task(name='worker_tasks.fail')
def fail(message: str) -> None:
    raise ValueError(message)


@app.task(name='worker_tasks.when_run')
def when_run() -> float:
    return time.time()


@app.task(name='worker_tasks.record')
def record(path: str, key: str) -> str:
    _record(path, f'ran {key} celery {time.time()}')
    return key


@app.task(name='worker_tasks.slow_record', acks_late=True)
def slow_record(path: str, key: str, seconds: float) -> str:
    _record(path, f'start {key} celery')
    time.sleep(seconds)
    _record(path, f'done {key} celery')
    return key


@app.task(name='worker_tasks.flaky', bind=True, max_retries=2, default_retry_delay=0)
def flaky(self, path: str) -> int:  # type: ignore[no-untyped-def]
    _record(path, f'try {self.request.retries} celery')
    if self.request.retries < 2:
        raise self.retry(countdown=0)
    return int(self.request.retries)


@app.task(name='worker_tasks.mul')
def mul(x: int, y: int) -> int:
    return x * y


@app.task(name='worker_tasks.tsum')
def tsum(values: list[int]) -> int:
    return sum(values)


@app.task(name='worker_tasks.xsum')
def xsum(values: list[object]) -> int:
    return sum(xsum.run(v) if isinstance(v, list) else v for v in values)  # type: ignore[misc]


@app.task(name='worker_tasks.record_body')
def record_body(values: list[object], path: str) -> list[object]:
    _record(path, f'body {values!r} celery')
    return values


@app.task(name='worker_tasks.on_error')
def on_error(request: Any, exc: BaseException, traceback: str | None, path: str) -> None:
    _record(path, f'error {request.id} {type(exc).__name__} {bool(traceback)}')


@app.task(name='worker_tasks.request_as_sent', bind=True)
def request_as_sent(self) -> dict[str, object]:  # type: ignore[no-untyped-def]
    """What the request says of the message itself (worker_tasks' twin)."""
    return {
        'properties': self.request.properties,
        'timelimit': self.request.timelimit,
        'ignore_result': self.request.ignore_result,
    }
