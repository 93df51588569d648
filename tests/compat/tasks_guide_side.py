"""Tasks from Celery's Tasks guide, for a worker of either kind: `celery -A tasks_guide_side worker` with
TASKS_GUIDE_KIND=celery, `fastq -A tasks_guide_side worker` without. The same code on both sides, so a test
can hold a fastq worker to what the real Celery worker does with it (tests/compat/test_celery_tasks_guide.py).
"""

from __future__ import annotations

import logging
import os
import time
from typing import Any

from pydantic import BaseModel

if os.environ.get('TASKS_GUIDE_KIND') == 'celery':
    from celery import Celery as App
    from celery import signals
    from celery.exceptions import Reject, SoftTimeLimitExceeded
else:
    from fastq import Fastq as App  # type: ignore[assignment]
    from fastq import signals  # type: ignore[no-redef]
    from fastq.exceptions import Reject, SoftTimeLimitExceeded  # type: ignore[assignment]

url = os.environ['CELERY_BROKER_URL']
app = App('tasks_guide_side', broker=url, backend=os.environ.get('CELERY_RESULT_BACKEND', url))
app.conf.worker_prefetch_multiplier = 1
if os.environ.get('TASKS_GUIDE_LOG_FORMAT'):
    app.conf.worker_log_format = os.environ['TASKS_GUIDE_LOG_FORMAT']


@signals.worker_ready.connect
def _ready(**kwargs: Any) -> None:
    logging.getLogger('guide').warning('worker_ready received')


@signals.task_failure.connect
def _record_failure(sender: Any = None, task_id: str | None = None, exception: Any = None, **kwargs: Any) -> None:
    """One line per task_failure sent, wherever the worker sends it (Celery: the parent, for a Reject)."""
    path = os.environ.get('TASKS_GUIDE_FAILURES')
    if path:
        with open(path, 'a') as f:
            f.write(f'{task_id} {type(exception).__name__}\n')


@app.task(name='guide.reject')
def reject() -> None:
    raise Reject('bad', requeue=False)


@app.task(name='guide.limited', bind=True)
def limited(self: Any) -> list[Any]:
    """Sleeps into its soft time limit, then reports the limits its request carries."""
    try:
        time.sleep(10)
    except SoftTimeLimitExceeded:
        pass
    return [self.request.time_limit, self.request.soft_time_limit]


@app.task(name='guide.ignored', ignore_result=True)
def ignored() -> str:
    return 'kept'


@app.task(name='guide.ignored_retry', bind=True, ignore_result=True)
def ignored_retry(self: Any) -> str:
    """Retried once, then writes '<id> done' to the failures file (so a test knows its run is over)."""
    if not self.request.retries:
        raise self.retry(countdown=0)
    with open(os.environ['TASKS_GUIDE_FAILURES'], 'a') as f:
        f.write(f'{self.request.id} done\n')
    return 'kept'


class _RetryHooked(app.Task):  # type: ignore[name-defined,misc]
    def on_retry(self, exc: Any, task_id: str, args: Any, kwargs: Any, einfo: Any) -> None:
        with open(os.environ['TASKS_GUIDE_FAILURES'], 'a') as f:
            f.write(f'{task_id} on_retry {exc!r} {einfo.type.__name__}\n')


@app.task(name='guide.retry_later', bind=True, base=_RetryHooked)
def retry_later(self: Any, with_exc: bool) -> None:
    """Retried in a minute, with the exception being handled or with no exception at all."""
    try:
        raise KeyError('later')
    except KeyError as exc:
        raise self.retry(exc=exc if with_exc else None, countdown=60) from None


class ArgModel(BaseModel):
    value: int


class ReturnModel(BaseModel):
    value: str


@app.task(pydantic=True, name='guide.pydantic')
def pydantic_task(arg: ArgModel) -> ReturnModel:
    """The guide's argument validation with Pydantic: the dict sent arrives as the model, the model
    returned is stored as its dump."""
    assert isinstance(arg, ArgModel)
    return ReturnModel(value=f'example: {arg.value}')
