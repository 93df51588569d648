"""`celery.app.control`'s names, where code ported from Celery imports them (type hints of `app.control`)."""

from fastq.control import Control, Inspect

__all__ = ['Control', 'Inspect']
