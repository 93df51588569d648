"""Python's side of the task message: resolve a call into primitives, let `fastq._core` build the message.

The message format itself (header names and order, body layout, envelope) is defined once, in Rust. This
module turns Python values into what the codec takes (ISO timestamps, repr strings, serializer names) and
turns decoded messages into a `TaskRequest` the worker can act on, wrapping codec errors in the exception
classes Celery users know (EncodeError, DecodeError, ContentDisallowed).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, tzinfo
from typing import TYPE_CHECKING, Any, Literal, cast

from fastq import _core
from fastq.exceptions import ContentDisallowed, DecodeError, EncodeError, InvalidTaskError
from fastq.serialization import (
    compression_mime,
    decompress,
    json_default,
    json_tag_hook,
    loads,
    serializer_by_name,
)
from fastq.utils.text import saferepr
from fastq.utils.time import from_iso, maybe_make_aware

if TYPE_CHECKING:
    from fastq.brokers.base import Delivery

__all__ = [
    'SENT_AT_HEADER',
    'TaskRequest',
    'build_task_message',
    'decode_body',
    'message_from_fields',
    'new_ids',
    'parse_delivery',
    'parse_task_headers',
    'resolve_eta',
    'resolve_expires',
    'task_envelopes',
]

Message = _core.Message

#: The header fastq clients add to every task message: when it was sent (unix seconds), for the workers'
#: time-in-queue metric. Celery's workers ignore headers they do not know (the task sees it in
#: `self.request`, as any custom header), and Celery's clients do not send it.
SENT_AT_HEADER = 'fastq_sent_at'


def _iso(value: datetime | str | None) -> str | None:
    if value is None or isinstance(value, str):
        return value
    return maybe_make_aware(value, UTC).isoformat()


def resolve_eta(countdown: float | None, eta: datetime | str | None, now: datetime, tz: tzinfo) -> str | None:
    """The `eta` header: `countdown` seconds from now (in the app's zone) or the given datetime, as ISO-8601.

    A naive `eta` (or `expires`) is UTC whatever the app's zone: Celery sends it as it is and its worker
    reads it as UTC, so reading it in the app's zone ran it hours early or late. It leaves here with the
    offset spelled out."""
    if countdown:
        if isinstance(countdown, bool) or not isinstance(countdown, int | float):
            raise TypeError(f'countdown must be a number of seconds, got {countdown!r}')
        return maybe_make_aware(now + timedelta(seconds=float(countdown)), tz).isoformat()
    return _iso(eta)


def resolve_expires(expires: float | datetime | str | None, now: datetime, tz: tzinfo) -> tuple[str | None, str | None]:
    """`(expires header, expiration property)`: absolute ISO time, and the TTL in ms that AMQP brokers enforce."""
    if expires is None:
        return None, None
    if isinstance(expires, int | float) and not isinstance(expires, bool):
        seconds = float(expires)
        header = maybe_make_aware(now + timedelta(seconds=seconds), tz).isoformat()
    elif isinstance(expires, str | datetime):
        when = from_iso(expires) if isinstance(expires, str) else maybe_make_aware(expires, UTC)
        header = when.isoformat()
        seconds = (when - now).total_seconds()
    else:  # (a timedelta too: Celery takes seconds or a datetime, and raises TypeError for the rest)
        raise TypeError(f'expires must be seconds, a datetime or an ISO-8601 string, got {expires!r}')
    seconds = max(seconds, 0.0)
    return header, str(int(seconds * 1000))


def encode_body(
    args: Sequence[Any],
    kwargs: Mapping[str, Any],
    embed: Mapping[str, Any],
    serializer: str,
) -> tuple[bytes, str, str]:
    """Serialize the `[args, kwargs, embed]` body; json and msgpack in Rust, pickle and yaml in Python."""
    callbacks, errbacks = embed.get('callbacks'), embed.get('errbacks')
    chain, chord = embed.get('chain'), embed.get('chord')
    if serializer == 'json' or serializer == 'msgpack':
        try:
            return _core.encode_task_body(
                args,
                kwargs,
                callbacks,
                errbacks,
                chain,
                chord,
                cast(Literal['json', 'msgpack'], serializer),
                json_default,
            )
        except (TypeError, ValueError, OverflowError, UnicodeEncodeError) as exc:
            raise EncodeError(exc) from exc  # (kombu's: the error itself as the argument)
    s = serializer_by_name(serializer)
    body = (list(args), dict(kwargs), {'callbacks': callbacks, 'errbacks': errbacks, 'chain': chain, 'chord': chord})
    try:
        return s.encode(body), s.content_type, s.content_encoding
    except Exception as exc:
        raise EncodeError(exc) from exc  # (kombu's: the error itself as the argument)


def build_task_message(
    *,
    task_id: str,
    name: str,
    args: Sequence[Any],
    kwargs: Mapping[str, Any],
    embed: Mapping[str, Any],
    serializer: str,
    compression: str | None,
    eta: str | None,
    expires: str | None,
    reply_to: str,
    origin: str,
    root_id: str | None = None,
    parent_id: str | None = None,
    shadow: str | None = None,
    group_id: str | None = None,
    group_index: int | None = None,
    retries: int = 0,
    time_limit: float | None = None,
    soft_time_limit: float | None = None,
    ignore_result: bool | None = False,
    replaced_task_nesting: int = 0,
    stamped_headers: list[str] | None = None,
    stamps: dict[str, Any] | None = None,
    headers: Mapping[str, Any] | None = None,
    argsrepr: str | None = None,
    kwargsrepr: str | None = None,
    mime: str | None = None,
) -> Message:
    """A protocol-v2 task message, as Celery's `as_task_v2` would build it for the same call.

    `compression` is a method name or alias; `mime` its wire name, when the caller resolved it already.
    """
    if not isinstance(args, list | tuple):
        raise TypeError('task args must be a list or tuple')
    if not isinstance(kwargs, Mapping):
        raise TypeError('task keyword arguments must be a mapping')
    body, content_type, content_encoding = encode_body(args, kwargs, embed, serializer)
    if compression:
        mime = compression_mime(compression)
    return _core.task_message(
        task_id,
        name,
        shadow,
        eta,
        expires,
        group_id,
        group_index,
        retries,
        time_limit,
        soft_time_limit,
        root_id or task_id,
        parent_id,
        argsrepr if argsrepr is not None else saferepr(args),
        kwargsrepr if kwargsrepr is not None else saferepr(kwargs),
        origin,
        None if ignore_result is None else bool(ignore_result),  # (None: send_task left it to the task)
        replaced_task_nesting,
        stamped_headers,
        stamps or {},
        headers,
        reply_to,
        body,
        content_type,
        content_encoding,
        mime,
    )


def new_ids(n: int) -> list[str]:
    """`n` random (version 4) UUID strings, as `str(uuid.uuid4())` gives, from one read of `os.urandom`."""
    return _core.uuid4s(os.urandom(16 * n))


def task_envelopes(messages: list[tuple[Any, ...]]) -> list[bytes]:
    """The kombu envelopes of messages described field by field (see `_core.task_envelopes`), in one call.

    Raises:
        EncodeError: an argument the serializer cannot encode (nothing is built then).
    """
    try:
        return _core.task_envelopes(messages, json_default, saferepr)
    except (TypeError, ValueError, OverflowError, UnicodeEncodeError) as exc:
        raise EncodeError(exc) from exc  # (kombu's: the error itself as the argument)


#: How many calls of a batch, from a start, are alike (see `_core.uniform_run`).
uniform_run = _core.uniform_run


def uniform_envelopes(
    template: tuple[Any, ...], calls: list[Any], start: int, stop: int, ids: list[str]
) -> tuple[list[bytes], list[str]]:
    """The envelopes and task ids of a run of alike calls (see `_core.uniform_envelopes`), in one call.

    Raises:
        EncodeError: an argument the serializer cannot encode (nothing is built then).
    """
    try:
        return _core.uniform_envelopes(template, calls, start, stop, ids, json_default, saferepr)
    except (TypeError, ValueError, OverflowError, UnicodeEncodeError) as exc:
        raise EncodeError(exc) from exc  # (kombu's: the error itself as the argument)


def message_from_fields(f: tuple[Any, ...]) -> Message:
    """The `Message` the same fields describe: for serializers Rust does not implement, and for signal
    receivers that want the headers as a dict."""
    return build_task_message(
        task_id=f[0],
        name=f[1],
        shadow=f[2],
        eta=f[3],
        expires=f[4],
        group_id=f[5],
        group_index=f[6],
        retries=f[7],
        time_limit=f[8],
        soft_time_limit=f[9],
        root_id=f[10],
        parent_id=f[11],
        argsrepr=f[12],
        kwargsrepr=f[13],
        origin=f[14],
        ignore_result=f[15],
        replaced_task_nesting=f[16],
        stamped_headers=f[17],
        stamps=f[18],
        headers=f[19],
        reply_to=f[20],
        args=f[21],
        kwargs=f[22],
        embed={'callbacks': f[23], 'errbacks': f[24], 'chain': f[25], 'chord': f[26]},
        serializer=f[27],
        compression=None,
        mime=f[28],
    )


# --------------------------------------------------------------------------------------------------------
# Worker side
# --------------------------------------------------------------------------------------------------------


@dataclass(slots=True)
class TaskRequest:
    """What the worker parent needs from a task message before running it (the body stays encoded)."""

    id: str
    task: str
    eta: float | None
    expires: float | None
    retries: int
    time_limit: float | None
    soft_time_limit: float | None
    ignore_result: bool
    argsrepr: str
    kwargsrepr: str
    root_id: str | None
    parent_id: str | None
    group: str | None
    shadow: str | None
    sent_at: Any  # the `fastq_sent_at` header as sent (a number from fastq's clients; None from Celery's)
    # All the headers: given, or decoded from `_source` (a `Delivery`) the first time they are read.
    _headers: dict[str, Any] | None = None
    _source: Any = None

    @property
    def headers(self) -> dict[str, Any]:
        headers = self._headers
        if headers is None:
            message = self._source.message if self._source is not None else None
            headers = self._headers = message.headers if message is not None else {}
        return headers

    @property
    def display_name(self) -> str:
        return self.shadow or self.task


#: The headers a `TaskRequest` is made of, in the order `TaskHead.fields` has them (the list is in Rust).
_REQUEST_FIELDS: tuple[str, ...] = (
    *('id', 'task', 'eta', 'expires', 'retries', 'timelimit', 'ignore_result', 'argsrepr', 'kwargsrepr'),
    *('root_id', 'parent_id', 'group', 'shadow', SENT_AT_HEADER),
)
if tuple(_core.TASK_HEAD_FIELDS[: len(_REQUEST_FIELDS)]) != _REQUEST_FIELDS:  # pragma: no cover
    raise ImportError('fastq._core.TASK_HEAD_FIELDS does not start with the fields a TaskRequest takes')


_NO_LIMITS = [None, None]


def _number(value: Any, field: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, int | float) and not isinstance(value, bool):
        return value  # (as sent: Celery's words say 'Hard time limit (1s)' and TimeLimitExceeded(1) for a 1)
    raise InvalidTaskError(f'header {field!r} must be a number or null, got {value!r}')


def parse_task_headers(message: Message) -> TaskRequest:
    """Validate the protocol-v2 headers of a message; InvalidTaskError says which header is wrong."""
    h = message.headers
    task = h.get('task')
    if (not isinstance(task, str) or not task) and isinstance(message.body, bytes) and 'task' not in h:
        raise InvalidTaskError('not a protocol v2 task message (no "task" header); protocol v1 is not supported')
    return _request(h, None, *[h.get(name) for name in _REQUEST_FIELDS])


def parse_delivery(d: Delivery) -> TaskRequest:
    """`parse_task_headers` of a delivery's message, from its head when the broker gave one (no decode)."""
    head = d.head
    if head is None:
        assert d.message is not None
        return parse_task_headers(d.message)
    fields = head.fields
    (task_id, task, eta, expires, retries, timelimit, ignore_result, argsrepr, kwargsrepr) = fields[:9]
    # The usual message (no ETA or expiry, no time limits, the types right) without `_request`'s general
    # checks: this runs once per task in the worker's one busy thread. Anything else takes the general path.
    if (
        type(task) is str
        and task
        and type(task_id) is str
        and task_id
        and eta is None
        and expires is None
        and (timelimit is None or (type(timelimit) is list and timelimit == _NO_LIMITS))
        and type(retries) is int
        and type(argsrepr) is str
        and type(kwargsrepr) is str
    ):
        root_id, parent_id, group, shadow, sent_at = fields[9:14]
        return TaskRequest(
            task_id, task, None, None, retries, None, None, bool(ignore_result), argsrepr, kwargsrepr,
            root_id, parent_id, group, shadow, sent_at, None, d,
        )  # fmt: skip
    try:
        return _request(None, d, *fields[: len(_REQUEST_FIELDS)])
    except InvalidTaskError:
        assert d.message is not None
        return parse_task_headers(d.message)  # in the full decode's words


def _request(
    headers: dict[str, Any] | None,
    source: Delivery | None,
    task_id: Any,
    task: Any,
    eta: Any,
    expires: Any,
    retries: Any,
    timelimit: Any,
    ignore_result: Any,
    argsrepr: Any,
    kwargsrepr: Any,
    root_id: Any,
    parent_id: Any,
    group: Any,
    shadow: Any,
    sent_at: Any,
) -> TaskRequest:
    if not isinstance(task, str) or not task:
        raise InvalidTaskError(f'header "task" must be a non-empty string, got {task!r}')
    if not isinstance(task_id, str) or not task_id:
        raise InvalidTaskError(f'header "id" must be a non-empty string, got {task_id!r}')
    try:
        eta = from_iso(eta).timestamp() if eta else None
        expires = from_iso(expires).timestamp() if expires else None
    except (TypeError, ValueError) as exc:
        raise InvalidTaskError(f'bad eta/expires header: {exc}') from exc
    timelimit = timelimit or (None, None)
    if not isinstance(timelimit, list | tuple) or len(timelimit) != 2:
        raise InvalidTaskError(f'header "timelimit" must be [hard, soft], got {timelimit!r}')
    retries = retries or 0
    if not isinstance(retries, int):
        raise InvalidTaskError(f'header "retries" must be an integer, got {retries!r}')
    return TaskRequest(
        task_id,
        task,
        eta,
        expires,
        retries,
        _number(timelimit[0], 'timelimit'),
        _number(timelimit[1], 'timelimit'),
        bool(ignore_result),
        '' if argsrepr is None else str(argsrepr),
        '' if kwargsrepr is None else str(kwargsrepr),
        root_id,
        parent_id,
        group,
        shadow,
        sent_at,
        headers,
        source,
    )


def decode_body(
    body: bytes, content_type: str, compression: str | None, accept: frozenset[str]
) -> tuple[list[Any], dict[str, Any], dict[str, Any]]:
    """Decode a task body, refusing content types outside `accept` before any deserializer runs."""
    if content_type not in accept:
        raise ContentDisallowed(f'Refusing to deserialize untrusted content of type {content_type!r}')
    if compression:
        body = decompress(body, compression)
    if content_type in (_core.CONTENT_TYPE_JSON, _core.CONTENT_TYPE_MSGPACK):
        try:
            return _core.decode_task_body(body, content_type, json_tag_hook)
        except (ValueError, UnicodeDecodeError) as exc:
            raise DecodeError(str(exc)) from exc
    decoded = loads(body, content_type, accept)
    if not isinstance(decoded, list | tuple) or len(decoded) != 3:
        raise DecodeError(f'task body must be [args, kwargs, embed], got {type(decoded).__name__}')
    args, kwargs, embed = decoded
    if not isinstance(args, list | tuple) or not isinstance(kwargs, dict) or not isinstance(embed, dict | None):
        raise DecodeError('task body must be [args (list), kwargs (dict), embed (dict)]')
    embed = dict(embed or {})
    for key in ('callbacks', 'errbacks', 'chain', 'chord'):
        embed.setdefault(key, None)
    return list(args), kwargs, embed
