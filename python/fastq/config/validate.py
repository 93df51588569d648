"""Value checks run when an app is finalized; each error names the setting and what was expected."""

from __future__ import annotations

import zoneinfo
from datetime import tzinfo
from typing import TYPE_CHECKING, Any

from fastq.config.defaults import SETTINGS
from fastq.exceptions import ImproperlyConfigured

if TYPE_CHECKING:
    from fastq.config import Settings

POOLS = ('prefork', 'asyncio', 'threads', 'gevent', 'solo')
UNSUPPORTED_POOLS = {
    'eventlet': 'fastq has no eventlet pool (eventlet is deprecated upstream): write I/O-bound tasks as '
    'async def tasks and use -P asyncio, or use -P threads',
    'processes': '',
    'custom': 'fastq has no custom pools: use prefork, asyncio, threads, gevent or solo',
}


def _fail(name: str, message: str) -> ImproperlyConfigured:
    return ImproperlyConfigured(f'{name}: {message}')


def _check_serializer(conf: Settings, name: str) -> None:
    from fastq.exceptions import EncodeError
    from fastq.serialization import serializer_by_name

    value = conf[name]
    try:
        serializer_by_name(value)
    except EncodeError as exc:
        raise _fail(name, str(exc)) from None


def _check_accept(conf: Settings, name: str) -> None:
    from fastq.serialization import _BY_CONTENT_TYPE, _BY_NAME, BINARY_TYPES, _serializer_from_kombu

    value = conf[name]
    if value is None:
        return
    if isinstance(value, str):
        raise _fail(name, f'expected a list of serializer names, got the string {value!r} (write [{value!r}])')
    for item in value:
        known = item in _BY_NAME or item in _BY_CONTENT_TYPE or item in BINARY_TYPES
        if not known and '/' not in item and _serializer_from_kombu(name=item) is not None:
            continue  # registered with kombu by the app's code: adopted
        if not known:
            raise _fail(name, f'unknown serializer {item!r} (known: {", ".join(_BY_NAME)})')


def _check_compression(conf: Settings, name: str) -> None:
    from fastq.exceptions import EncodeError
    from fastq.serialization import compression_mime

    value = conf[name]
    if value:
        try:
            compression_mime(value)
        except EncodeError as exc:
            raise _fail(name, str(exc)) from None


def _check_timezone(conf: Settings, name: str) -> None:
    value = conf[name]
    if isinstance(value, tzinfo):
        return
    if value and not isinstance(value, str):
        raise _fail(name, f'expected a time zone name or a tzinfo, got {type(value).__name__} {value!r}')
    if value:
        try:
            zoneinfo.ZoneInfo(value)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError):
            raise _fail(name, f'unknown time zone {value!r}') from None


def _check_pool(conf: Settings, name: str) -> None:
    value = conf[name]
    if value in POOLS or value == 'processes':  # (Celery's other name for prefork)
        return
    if UNSUPPORTED_POOLS.get(value):
        raise _fail(name, UNSUPPORTED_POOLS[value])
    raise _fail(name, f'unknown pool {value!r} (choose from {", ".join(POOLS)})')


def _check_start_method(conf: Settings, name: str) -> None:
    value = conf[name]
    if value not in ('fork', 'spawn'):  # (Celery's worker refuses the others so, with this text)
        raise ImproperlyConfigured(f"worker_pool_start_method must be 'fork' or 'spawn', got {value!r}.")


def _check_non_negative(conf: Settings, name: str) -> None:
    value = conf[name]
    if value is not None and value < 0:
        raise _fail(name, f'must not be negative, got {value!r}')


def _check_concurrency(conf: Settings, name: str) -> None:
    value = conf[name]
    if value is None or value == 'auto' or (isinstance(value, str) and value.strip().isdigit()):
        return  # ('auto': the CPUs, as Celery 5.7; a number as text, from an environment or ini file)
    if not isinstance(value, int) or isinstance(value, bool):
        raise _fail(name, f"expected a number of processes or 'auto', got {value!r}")
    _check_positive(conf, name)


def _check_positive(conf: Settings, name: str) -> None:
    value = conf[name]
    if value is not None and value <= 0:
        raise _fail(name, f'must be positive, got {value!r}')


def _check_rate(conf: Settings, name: str) -> None:
    from fastq.utils.time import parse_rate

    value = conf[name]
    if value is not None:
        try:
            parse_rate(value)
        except ValueError as exc:
            raise _fail(name, str(exc)) from None


_VALUE_CHECKS: dict[str, Any] = {
    'task_serializer': _check_serializer,
    'result_serializer': _check_serializer,
    'event_serializer': _check_serializer,
    'accept_content': _check_accept,
    'result_accept_content': _check_accept,
    'task_compression': _check_compression,
    'result_compression': _check_compression,
    'timezone': _check_timezone,
    'worker_pool': _check_pool,
    'worker_concurrency': _check_concurrency,
    'worker_pool_start_method': _check_start_method,
    'worker_asyncio_processes': _check_positive,
    'worker_prefetch_multiplier': _check_non_negative,
    'worker_max_tasks_per_child': _check_positive,
    'worker_max_memory_per_child': _check_positive,
    'task_time_limit': _check_positive,
    'task_soft_time_limit': _check_positive,
    'task_max_redeliveries': _check_non_negative,
    'task_default_rate_limit': _check_rate,
    'result_expires': _check_non_negative,
}


def validate_settings(conf: Settings) -> None:
    from fastq.config import check_type

    for name, setting in SETTINGS.items():
        check_type(setting, conf[name])
    for name, check in _VALUE_CHECKS.items():
        value = conf[name]
        if name == 'result_expires' and hasattr(value, 'total_seconds'):
            continue
        check(conf, name)
