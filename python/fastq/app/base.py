"""`celery.app.base`'s names, where code ported from Celery imports them (`from fastq.app.base import Celery`)."""

from fastq.app import Celery, Fastq

__all__ = ['Celery', 'Fastq']
