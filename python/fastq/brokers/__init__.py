"""Brokers by URL scheme, imported on first use so a client never loads drivers it does not need."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from fastq.exceptions import ImproperlyConfigured
from fastq.utils.imports import resolve_scheme

if TYPE_CHECKING:
    from fastq.brokers.base import Broker
    from fastq.config import Settings

BROKERS = {
    'memory': 'fastq.brokers.memory:MemoryBroker',
    'sqlite': 'fastq.brokers.sqlite:SQLiteBroker',
    'redis': 'fastq.brokers.redis:RedisBroker',
    'rediss': 'fastq.brokers.redis:RedisBroker',
    'sentinel': 'fastq.brokers.redis:RedisBroker',
    'socket': 'fastq.brokers.redis:RedisBroker',
    'amqp': 'fastq.brokers.amqp:AMQPBroker',
    'amqps': 'fastq.brokers.amqp:AMQPBroker',
    'pyamqp': 'fastq.brokers.amqp:AMQPBroker',
    'librabbitmq': 'fastq.brokers.amqp:AMQPBroker',
    'sqs': 'fastq.brokers.sqs:SQSBroker',
}

# Schemes Celery users have in their configs that fastq does not serve (yet): a clear error, not a guess.
PLANNED: dict[str, str] = {}

DEFAULT_BROKER_FILE = 'fastq-broker.sqlite3'


def scheme_of(url: str) -> str:
    scheme, sep, _ = url.partition('://')
    if not sep:
        raise ImproperlyConfigured(f'broker_url: {url!r} is not a URL (expected e.g. sqlite:///fastq.db)')
    return scheme.split('+', 1)[0].lower()


def default_broker_url(directory: str | None = None) -> str:
    return f'sqlite:///{os.path.join(directory or os.getcwd(), DEFAULT_BROKER_FILE)}'


def broker_class(url: str) -> type[Broker]:
    cls: type[Broker] = resolve_scheme('broker_url', 'broker', scheme_of(url), BROKERS, PLANNED)
    return cls


def create_broker(url: str, conf: Settings) -> Broker:
    return broker_class(url)(url, conf)
