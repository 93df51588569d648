"""Beat, the periodic task scheduler: `fastq -A proj beat`, or `fastq -A proj worker -B` to embed it.

    entry.py      ScheduleEntry: one `beat_schedule` item (Celery's dict format) and its last run
    scheduler.py  Scheduler: what is due, claiming each run in the broker, sending it; the catch-up policy
    store.py      ScheduleStore: the schedule file (-s) keeping last runs across restarts (SQLite, WAL)
    lock.py       LeaderLock: one leading beat per app and broker, the others standing by
    service.py    Service / EmbeddedService: the loop, standalone or in a worker thread
    hosted.py     HostedScheduler: a Celery scheduler class (django-celery-beat's ...) run by that loop

Schedules themselves (`schedule`, `crontab`, `solar`) live in `fastq.schedules`, where Celery keeps them.
"""

from fastq.beat.entry import BeatLazyFunc, ScheduleEntry
from fastq.beat.scheduler import Scheduler, SchedulingError
from fastq.beat.service import EmbeddedService, Service

#: Celery's default scheduler's name, for code that subclasses it or names it: fastq's scheduler keeps its
#: last runs in the schedule file (-s) too.
PersistentScheduler = Scheduler

__all__ = [
    'BeatLazyFunc',
    'EmbeddedService',
    'PersistentScheduler',
    'ScheduleEntry',
    'Scheduler',
    'SchedulingError',
    'Service',
]
