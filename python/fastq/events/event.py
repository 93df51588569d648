"""Celery's event format: what one event is, how a batch of them travels, and the clock that orders them.

An event is a plain mapping with `type`, `hostname`, `timestamp` (unix seconds), `utcoffset` (hours), `pid`
and `clock` (Lamport), plus fields per type (`task-succeeded` has `uuid`, `result`, `runtime`; see
docs/monitoring.md). On the wire it is a kombu envelope published to the `celeryev` exchange (on Redis the
pub/sub channel `/<db>.celeryev/<routing key>`) with the header `hostname`, delivery mode 1, JSON body: one
event, or a list of them under the routing key `<group>.multi` (Celery's buffered `task.multi`).
"""

from __future__ import annotations

import logging
import os
import platform
import time
from collections.abc import Iterable
from typing import Any

from fastq import __version__, _core, control
from fastq.control import encode_envelope, tick
from fastq.exceptions import FastqError, SerializationError
from fastq.serialization import json_tag_hook, loads

__all__ = [
    'EVENT_EXCHANGE',
    'SOFTWARE_INFO',
    'Event',
    'decode_events',
    'encode_events',
    'group_from',
    'routing_key_of',
    'utcoffset',
]

EVENT_EXCHANGE = 'celeryev'

logger = logging.getLogger('celery.events')

#: The next value of this process's Lamport clock (`fastq.control.tick` without its lock: `next()` on an
#: `itertools.count` is atomic under the GIL), for senders that stamp an event per task.
next_clock = control._clock.__next__

#: What `worker-*` events say about the software (Celery sends sw_ident 'py-celery').
SOFTWARE_INFO = {'sw_ident': 'fastq', 'sw_ver': __version__, 'sw_sys': platform.system()}


def utcoffset() -> float:
    """This host's offset from UTC in hours, as Celery 5.7 computes it (west of UTC is positive; a float, so
    a half-hour zone, UTC+5:30, is -5.5: receivers move the sender's timestamps by it)."""
    if time.localtime().tm_isdst and time.daylight:
        return time.altzone / 3600
    return time.timezone / 3600


def Event(type: str, _fields: dict[str, Any] | None = None, **fields: Any) -> dict[str, Any]:
    """An event mapping (Celery's `celery.events.Event`): `timestamp` is set to now unless given."""
    event = dict(_fields, **fields) if _fields else fields
    if 'timestamp' not in event:
        event['timestamp'] = time.time()
    event['type'] = type
    return event


def group_from(type: str) -> str:
    """The group of an event type: `task` for `task-sent`, `worker` for `worker-heartbeat`."""
    return type.split('-', 1)[0]


def routing_key_of(type: str) -> str:
    """Celery's routing key for an event type: `task-succeeded` -> `task.succeeded`."""
    return type.replace('-', '.')


def stamp(event: dict[str, Any], hostname: str, offset: float, pid: int | None = None) -> dict[str, Any]:
    """Add the fields every event carries (a clock tick each, in the order they are stamped)."""
    event['hostname'] = hostname
    event['utcoffset'] = offset
    event['pid'] = os.getpid() if pid is None else pid
    event['clock'] = tick()
    return event


def encode_events(events: Any, hostname: str, routing_key: str, exchange: str = EVENT_EXCHANGE) -> bytes:
    """The envelope of one event (a mapping) or a batch (a list, or its JSON as bytes), as Celery's
    dispatcher publishes it."""
    return encode_envelope(events, {'hostname': hostname}, exchange, routing_key, 1)


def decode_events(raw: bytes, accept: frozenset[str] | None = None) -> list[dict[str, Any]]:
    """The events in one `celeryev` message (none if it is not one).

    A Celery worker with `event_serializer='auth'` (the Security guide's setting) sends them signed
    (`application/data`): they are verified by the `auth` serializer `setup_security` registered, and one that
    fails (a stranger's, tampered with) or is outside `accept` (content types) is dropped, not handed over.
    """
    try:
        message = _core.Message.from_envelope(raw, None)
        if message.content_type in ('application/json', ''):
            body = _core.json_loads(message.body, json_tag_hook)
        else:
            body = loads(message.body, message.content_type, accept)
    except (ValueError, FastqError, SerializationError) as exc:
        if raw[:1] == b'{':  # (an envelope that said too little to be one is not worth a word)
            logger.warning('Dropped an event that could not be decoded: %r', exc)
        return []
    items: Iterable[Any] = body if isinstance(body, list) else (body,)
    return [item for item in items if isinstance(item, dict) and isinstance(item.get('type'), str)]
