"""`celery.app.task`'s names, where code ported from Celery imports them (`from fastq.app.task import Task`)."""

from fastq.task import Context, Task

__all__ = ['Context', 'Task']
