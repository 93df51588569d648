"""Result backends by URL scheme, imported on first use."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from fastq.utils.imports import resolve_scheme

if TYPE_CHECKING:
    from fastq.app import Fastq
    from fastq.backends.base import Backend

BACKENDS = {
    'memory': 'fastq.backends.memory:MemoryBackend',
    'cache+memory': 'fastq.backends.memory:MemoryBackend',
    'sqlite': 'fastq.backends.sqlite:SQLiteBackend',
    # Celery's SQLAlchemy backend: `db+<any SQLAlchemy URL>`, or 'database'/'db' with database_url set
    'db': 'fastq.backends.database:DatabaseBackend',
    'database': 'fastq.backends.database:DatabaseBackend',
    'disabled': 'fastq.backends.base:DisabledBackend',
    'redis': 'fastq.backends.redis:RedisBackend',
    'rediss': 'fastq.backends.redis:RedisBackend',
    'redis+socket': 'fastq.backends.redis:RedisBackend',
    'sentinel': 'fastq.backends.redis:SentinelBackend',
    'rpc': 'fastq.backends.rpc:RPCBackend',
    # django-celery-results' backends: its tables through its models, Celery's cache keys in Django's cache
    'django-db': 'fastq.backends.django.database:DjangoDatabaseBackend',
    'django-cache': 'fastq.backends.django.cache:DjangoCacheBackend',
    # Celery's cache backend on memcached (pymemcache); bare 'cache' takes the servers from cache_backend
    'cache': 'fastq.backends.cache:CacheBackend',
    'cache+memcached': 'fastq.backends.cache:CacheBackend',
    'cache+memcache': 'fastq.backends.cache:CacheBackend',
    'cache+pymemcache': 'fastq.backends.cache:CacheBackend',
    'cache+pylibmc': 'fastq.backends.cache:CacheBackend',
    'file': 'fastq.backends.filesystem:FilesystemBackend',
}
PLANNED: dict[str, str] = {}
DEFAULT_RESULTS_FILE = 'fastq-results.sqlite3'


def default_backend_url(directory: str | None = None) -> str:
    return f'sqlite:///{os.path.join(directory or os.getcwd(), DEFAULT_RESULTS_FILE)}'


def backend_class(url: str) -> type[Backend]:
    scheme = url.partition('://')[0].lower() if '://' in url else url.lower()
    if scheme.startswith('db+'):
        scheme = 'db'
    cls: type[Backend] = resolve_scheme('result_backend', 'backend', scheme, BACKENDS, PLANNED)
    return cls


def create_backend(app: Fastq, url: str | None) -> Backend:
    if not url:
        from fastq.backends.base import DisabledBackend

        return DisabledBackend(app)
    return backend_class(url)(app, url)
