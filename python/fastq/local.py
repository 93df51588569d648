"""`celery.local`'s `Proxy`, where code ported from Celery imports it (`from fastq.local import Proxy`)."""

from fastq.utils.local import Proxy

__all__ = ['Proxy']
