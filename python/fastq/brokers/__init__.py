"""Brokers by URL scheme, imported on first use so a client never loads drivers it does not need."""

from __future__ import annotations

import difflib
import os
from typing import TYPE_CHECKING

from fastq.exceptions import ImproperlyConfigured
from fastq.utils.imports import symbol_by_name

if TYPE_CHECKING:
    from fastq.brokers.base import Broker
    from fastq.config import Settings

BROKERS = {
    'memory': 'fastq.brokers.memory:MemoryBroker',
    'sqlite': 'fastq.brokers.sqlite:SQLiteBroker',
}

# Schemes Celery users have in their configs that fastq does not serve (yet): a clear error, not a guess.
PLANNED = {
    'redis': 'the Redis broker',
    'rediss': 'the Redis broker',
    'sentinel': 'the Redis broker',
    'amqp': 'the RabbitMQ broker',
    'amqps': 'the RabbitMQ broker',
    'pyamqp': 'the RabbitMQ broker',
    'librabbitmq': 'the RabbitMQ broker',
}

DEFAULT_BROKER_FILE = 'fastq-broker.sqlite3'


def scheme_of(url: str) -> str:
    scheme, sep, _ = url.partition('://')
    if not sep:
        raise ImproperlyConfigured(f'broker_url: {url!r} is not a URL (expected e.g. sqlite:///fastq.db)')
    return scheme.split('+', 1)[0].lower()


def default_broker_url(directory: str | None = None) -> str:
    return f'sqlite:///{os.path.join(directory or os.getcwd(), DEFAULT_BROKER_FILE)}'


def broker_class(url: str) -> type[Broker]:
    scheme = scheme_of(url)
    path = BROKERS.get(scheme)
    if path is None:
        if scheme in PLANNED:
            raise ImproperlyConfigured(
                f'broker_url: the {scheme}:// scheme needs {PLANNED[scheme]}, which this fastq build does not '
                f'include yet; use sqlite:// (the embedded default) or memory://'
            )
        known = sorted({*BROKERS, *PLANNED})
        close = difflib.get_close_matches(scheme, known, n=1, cutoff=0.5)
        hint = f'; did you mean {close[0]}://?' if close else f' (known: {", ".join(known)})'
        raise ImproperlyConfigured(f'broker_url: unknown broker scheme {scheme!r}{hint}')
    cls: type[Broker] = symbol_by_name(path)
    return cls


def create_broker(url: str, conf: Settings) -> Broker:
    return broker_class(url)(url, conf)
