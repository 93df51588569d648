"""fastq's compiled core (Rust, pyo3): the one definition of Celery's task message protocol v2.

Everything here is a leaf: it takes bytes and primitives and returns bytes, primitives or plain containers.
Policy (which serializers are accepted, error wrapping into `fastq.exceptions`, defaults) lives in Python,
in `fastq.serialization` and `fastq.protocol`. The codecs reproduce what Celery's stack (kombu + the stdlib
`json` module, `msgpack`, `zlib`, `bz2`) produces byte for byte, so that a Celery peer and a fastq peer read
each other's messages and the real `celery` package can be used as the test oracle.
"""

from collections.abc import Callable, Container, Iterable, Mapping, Sequence
from typing import Any, Final, Literal, final

__version__: Final[str]
"""The package version; set once, in rust/Cargo.toml."""

build_profile: Final[Literal['debug', 'release']]
"""Whether this extension was built with optimisations; tests skip deep cases on debug builds."""

# --------------------------------------------------------------------------------------------------------
# JSON, exactly as kombu.utils.json.dumps / loads (the stdlib json module with kombu's hooks)
# --------------------------------------------------------------------------------------------------------

def json_dumps(obj: Any, default: Callable[[Any], Any] | None) -> bytes:
    """Serialize `obj` to the bytes `json.dumps(obj, default=default).encode()` gives.

    Output is ASCII (ensure_ascii), with separators `', '` and `': '`; NaN and +/-Infinity are written as
    `NaN`, `Infinity`, `-Infinity`; ints of any size; floats as `float.__repr__`; tuples as arrays; subclasses
    of str/int/float/list/tuple/dict encoded as their base type (as the stdlib does); dict keys converted as the
    stdlib does (str kept, int and float via repr, True -> "true", None -> "null").

    Any other object is passed to `default` and its return value is encoded in its place (kombu's encoder
    uses this for datetime, Decimal, UUID, bytes and `__json__`).

    Raises:
        TypeError: `Object of type X is not JSON serializable` when `default` is None (or raises it), and
            `keys must be str, int, float, bool or None, not X` for other dict keys.
        ValueError: `Circular reference detected` for self-containing lists/dicts.
        RecursionError: nesting deeper than the interpreter's recursion limit.
    """

def json_loads(data: bytes | str, tag_hook: Callable[[dict[str, Any]], Any] | None) -> Any:
    """Parse JSON the way `json.loads(data, object_hook=...)` does, calling the hook only for tagged objects.

    Accepts what the stdlib accepts and serde_json does not: `NaN`, `Infinity`, `-Infinity`, integers wider
    than 64 bits (returned as Python ints), `\\uXXXX` escapes of lone surrogates (kept in the str), duplicate
    keys (last wins). Every object whose keys are exactly `{"__type__", "__value__"}` (kombu's type tag) is
    passed to `tag_hook` and replaced by what it returns; other objects never reach Python code.

    Raises:
        ValueError: malformed JSON or invalid UTF-8, with the position of the error in the message
            (the wording and position of `json.JSONDecodeError`; invalid UTF-8 is a UnicodeDecodeError).
        RecursionError: nesting deeper than the interpreter's recursion limit (as `json.loads`).
    """

# --------------------------------------------------------------------------------------------------------
# msgpack, exactly as msgpack.packb(obj, use_bin_type=True) / msgpack.unpackb(data, raw=False)
# --------------------------------------------------------------------------------------------------------

def msgpack_packb(obj: Any) -> bytes:
    """Serialize `obj` as `msgpack.packb(obj, use_bin_type=True)` does (smallest int/str/bin/array/map forms).

    Raises:
        OverflowError: an int outside [-2**63, 2**64).
        TypeError: `can not serialize 'X' object` for unsupported types.
        UnicodeEncodeError: a str with lone surrogates.
        ValueError: nesting deeper than msgpack's default limit (1024 containers).
    """

def msgpack_unpackb(data: bytes) -> Any:
    """Deserialize as `msgpack.unpackb(data, raw=False)` does (arrays -> lists, strict map keys: str/bytes only).

    Raises:
        ValueError: truncated or trailing data, unknown type bytes, ext types, non-str/bytes map keys,
            containers nested deeper than 1024.
        UnicodeDecodeError: a str that is not valid UTF-8.
    """

# --------------------------------------------------------------------------------------------------------
# Compression, flagged on the wire by the `compression` header (kombu's mime names)
# --------------------------------------------------------------------------------------------------------

def compress(data: bytes, mime: str) -> bytes:
    """Compress `data`: `application/x-gzip` is a zlib stream at level 6 (== zlib.compress(data)),
    `application/x-bz2` is bzip2 at level 9 (== bz2.compress(data)).

    Raises:
        ValueError: any other mime name.
    """

def decompress(data: bytes, mime: str) -> bytes:
    """Inverse of `compress`.

    Raises:
        ValueError: unknown mime name or corrupt/truncated data.
    """

# --------------------------------------------------------------------------------------------------------
# Task message protocol v2
# --------------------------------------------------------------------------------------------------------

CONTENT_TYPE_JSON: Final[str]  # 'application/json'
CONTENT_TYPE_MSGPACK: Final[str]  # 'application/x-msgpack'

def encode_task_body(
    args: Sequence[Any],
    kwargs: Mapping[str, Any],
    callbacks: list[Any] | None,
    errbacks: list[Any] | None,
    chain: list[Any] | None,
    chord: Any | None,
    serializer: Literal['json', 'msgpack'],
    default: Callable[[Any], Any] | None,
) -> tuple[bytes, str, str]:
    """Serialize the protocol-v2 body `[args, kwargs, {callbacks, errbacks, chain, chord}]`.

    Returns `(body, content_type, content_encoding)`: `('application/json', 'utf-8')` or
    `('application/x-msgpack', 'binary')`. `default` is used by the json serializer only.

    Raises:
        TypeError, ValueError, OverflowError, UnicodeEncodeError: as json_dumps / msgpack_packb.
    """

def decode_task_body(
    body: bytes,
    content_type: str,
    tag_hook: Callable[[dict[str, Any]], Any] | None,
) -> tuple[list[Any], dict[str, Any], dict[str, Any]]:
    """Deserialize a protocol-v2 body (already decompressed) of content type json or msgpack.

    Returns `(args, kwargs, embed)`; `embed` always has the keys callbacks, errbacks, chain and chord
    (missing ones filled with None).

    Raises:
        ValueError: malformed data, an unsupported content type, or a body that is not a 3-item array of
            [array, object, object-or-null] (the message says which part is wrong).
    """

def task_message(
    task_id: str,
    name: str,
    shadow: str | None,
    eta: str | None,
    expires: str | None,
    group_id: str | None,
    group_index: int | None,
    retries: int,
    time_limit: float | None,
    soft_time_limit: float | None,
    root_id: str,
    parent_id: str | None,
    argsrepr: str,
    kwargsrepr: str,
    origin: str,
    ignore_result: bool | None,
    replaced_task_nesting: int,
    stamped_headers: list[str] | None,
    stamps: dict[str, Any],
    extra_headers: Mapping[str, Any] | None,
    reply_to: str,
    body: bytes,
    content_type: str,
    content_encoding: str,
    compression: str | None,
) -> Message:
    """Build a protocol-v2 task message, with headers in the order and shape celery's `as_task_v2` emits.

    Headers: lang='py', task, id, shadow, eta, expires, group, group_index, retries,
    timelimit=[time_limit, soft_time_limit], root_id, parent_id, argsrepr, kwargsrepr, origin, ignore_result,
    replaced_task_nesting, stamped_headers, stamps, then `extra_headers` in their order, then `compression`
    when given. Properties: correlation_id=task_id, reply_to. When `compression` (a mime name) is given the
    body is compressed here and the header added.

    Raises:
        ValueError: unknown compression mime name.
    """

def task_envelopes(
    messages: list[tuple[Any, ...]],
    default: Callable[[Any], Any] | None,
    saferepr: Callable[[Any], str],
) -> list[bytes]:
    """The kombu envelope of each message, byte for byte what `task_message(...)` followed by
    `Message.to_envelope(...)` gives for the same values, without the dicts in between (one call for a
    whole batch).

    Each message is a tuple of 35 fields: the parameters of `task_message` up to `reply_to` (task_id,
    name, shadow, eta, expires, group_id, group_index, retries, time_limit, soft_time_limit, root_id,
    parent_id, argsrepr, kwargsrepr, origin, ignore_result, replaced_task_nesting, stamped_headers, stamps,
    extra_headers, reply_to), then those of `encode_task_body` (args, kwargs, callbacks, errbacks, chain,
    chord, serializer), then compression (a mime name or None), then those of `to_envelope` (exchange,
    routing_key, priority, delivery_mode, expiration, delivery_tag). `args` must be a list or tuple and
    `kwargs` a dict. An `argsrepr`/`kwargsrepr` of None is `repr()` of the value when that works and is at
    most 1024 characters long, else `saferepr(value)`. `default` is used by the json serializer only.

    Raises:
        TypeError, ValueError, OverflowError, UnicodeEncodeError: as task_message / encode_task_body, for
            the first message that fails (no envelope is returned then); ValueError for a tuple of another
            length or a serializer other than json and msgpack.
    """

def uniform_run(calls: list[tuple[Any, ...]], start: int, plain: Container[str]) -> int:
    """How many of `calls` (`send_batch`'s: name, task type, args, kwargs, keywords, options), from
    `start`, share the first one's name, task type and options (the same objects: one send plan) and have
    keywords (a dict) whose names are all in `plain`; 0 when `start` is past the end.

    Raises:
        TypeError, ValueError: a call that is not a tuple of 6 items.
    """

def uniform_envelopes(
    template: tuple[Any, ...],
    calls: list[tuple[Any, ...]],
    start: int,
    stop: int,
    ids: list[str],
    default: Callable[[Any], Any] | None,
    saferepr: Callable[[Any], str],
) -> tuple[list[bytes], list[str]]:
    """The envelopes and task ids of `calls[start:stop]`, a run `uniform_run` found: each message is
    `template` (35 fields, as `task_envelopes` reads them) with, from call `i` and its keywords `kw`: task_id
    `kw.get('task_id') or ids[2 * i]`, group_id and group_index from `kw`, root_id `kw.get('root_id') or
    task_id`, reply_to `kw.get('reply_to') or template's`, args and kwargs from the call, delivery tag
    `ids[2 * i + 1]`. The same bytes `task_envelopes` gives for those tuples.

    Raises:
        As `task_envelopes`; ValueError when the range or the ids do not fit the calls.
    """

def uuid4s(random: bytes) -> list[str]:
    """`str(uuid.UUID(bytes=b, version=4))` for each 16 bytes `b` of `random` (version and variant bits set).

    Raises:
        ValueError: `random` is not a multiple of 16 bytes long.
    """

@final
class Message:
    """A message as a broker carries it: kombu's (headers, properties, body, content type/encoding).

    The attributes are plain, mutable Python objects; brokers add routing properties when they publish.
    """

    headers: dict[str, Any]
    properties: dict[str, Any]
    body: bytes
    content_type: str
    content_encoding: str

    def __new__(
        cls,
        body: bytes,
        content_type: str,
        content_encoding: str,
        headers: dict[str, Any],
        properties: dict[str, Any],
    ) -> Message: ...
    def to_envelope(
        self,
        exchange: str,
        routing_key: str,
        priority: int,
        delivery_mode: int,
        expiration: str | None,
        delivery_tag: str,
    ) -> bytes:
        """The JSON document kombu's virtual transports (Redis, SQLite) store for this message.

        Byte-identical to what kombu writes: keys body (base64), content-encoding, content-type, headers,
        properties; properties are this message's own, followed by delivery_mode, expiration (only when
        not None), delivery_info {exchange, routing_key}, priority, body_encoding='base64', delivery_tag
        (keys already present in `self.properties` keep their position and are overwritten).
        Does not modify `self`.
        """
    @staticmethod
    def from_envelope(data: bytes | str, tag_hook: Callable[[dict[str, Any]], Any] | None) -> Message:
        """Parse a kombu virtual-transport envelope; the body is base64-decoded when body_encoding is base64
        (a str body without body_encoding is UTF-8 encoded). `tag_hook` is applied to headers and properties.

        Raises:
            ValueError: not JSON, not an object, missing/ill-typed body, content-type, content-encoding,
                headers or properties, or a body that does not decode (bad base64, unknown body_encoding).
        """

#: The headers `TaskHead.fields` holds, in this order.
TASK_HEAD_FIELDS: Final[tuple[str, ...]]

def task_head(data: bytes) -> TaskHead | None:
    """The headers a worker's parent acts on, from a kombu envelope, without decoding the rest.

    The whole document is checked as `Message.from_envelope` checks it (JSON syntax, the members' types,
    the body's base64); None for anything this does not vouch for, so the caller decodes it the full way
    (which then says what is wrong). Only bytes are read; a str gives None.
    """

def fetched_deliveries(
    reply: list[Any],
    queues: list[str],
    now: float,
    delivery: Callable[..., Any],
    decoded: Callable[[str, str, bytes], Any],
    counts: Callable[[Any, Any], tuple[bool, int]],
) -> tuple[list[Any], list[str]]:
    """The deliveries of the Redis fetch script's reply, and their tags, in order.

    `reply` is the script's flat array of (1-based queue key index, tag, envelope) triples; `queues[i - 1]`
    names key i's queue. Each envelope with a head (`task_head`) becomes `delivery(tag, queue, None,
    envelope, redelivered, deliveries, None, now, head)`, the counts `(False, 1)` for a message never handed
    out before and `counts(earlier, redelivered)` otherwise; one without a head becomes `decoded(tag, queue,
    envelope)`. Tags are str (bytes decoded as UTF-8). ValueError for a reply that is not triples or names
    a key outside `queues`.
    """

def moved_deliveries(
    replies: list[Any],
    queue: str,
    now: float,
    delivery: Callable[..., Any],
    decoded: Callable[[str, str, bytes], Any],
    counts: Callable[[Any, Any], tuple[bool, int]],
    tag_of: Callable[[bytes], str],
) -> tuple[list[Any], list[str]]:
    """The deliveries among the replies of a batch of `LMOVE`s into a hold, and their tags, in order.

    Each bytes reply is an envelope taken from `queue`, made into a delivery as `fetched_deliveries` makes
    one; its tag is read from the envelope as the fetch script reads it (the key `"delivery_tag": "` found
    once, a plain string), or is `tag_of(envelope)` for anything else. Other replies (nil, errors) are skipped.
    """

def task_request(
    headers: dict[str, Any],
    properties: dict[str, Any],
    queue: str,
    redelivered: bool,
    hostname: str | None,
) -> dict[str, Any]:
    """The request dict a task runs with (what `Context` is built from), from a task message's headers and
    properties: Celery's request fields (`timelimit` and `ignore_result` as the headers have them, the
    latter left out when absent), `headers` (the same dict), `delivery_info` (a copy of the property's, with
    `routing_key` defaulting to `queue`, and `priority`, `redelivered`), `hostname`. The body's embed keys
    and the properties themselves are not in it."""

def job_request(
    data: bytes,
    queue: str,
    redelivered: bool,
    hostname: str | None,
    accept: frozenset[str],
    tag_hook: Callable[[dict[str, Any]], Any] | None,
) -> tuple[list[Any], dict[str, Any], dict[str, Any]] | None:
    """`(args, kwargs, request)` of a kombu task envelope in one call: the request as `task_request` makes
    it, plus the body's embed keys (callbacks, errbacks, chain, chord).

    None when the envelope needs the general path: a content type other than json or msgpack, or not in
    `accept`; a compressed body; anything malformed (the general path then says what is wrong). Never
    raises for the message's content.
    """

@final
class TaskHead:
    """`task_head`'s result: the `TASK_HEAD_FIELDS` headers (None where absent or null) and the content type."""

    @property
    def fields(self) -> tuple[Any, ...]: ...
    @property
    def content_type(self) -> str: ...

# --------------------------------------------------------------------------------------------------------
# Framing for the prefork pool's pipes (carried by fastq._ipc)
# --------------------------------------------------------------------------------------------------------

FRAME_HEADER_SIZE: Final[int]
"""Bytes before each payload: u32 little-endian payload length, u64 little-endian job id, u8 kind."""

MAX_FRAME_PAYLOAD: Final[int]
"""Largest payload a frame may carry (1 GiB); larger lengths mean a corrupt stream."""

def encode_frame(job_id: int, kind: int, payload: bytes) -> bytes:
    """One frame: header then payload.

    Raises:
        OverflowError: job_id outside u64 or kind outside u8.
        ValueError: payload longer than MAX_FRAME_PAYLOAD.
    """

def encode_frames(frames: Sequence[tuple[int, int, bytes]]) -> bytes:
    """Several frames concatenated into one buffer (one write for a batch of jobs or results)."""

def resp_pack(
    commands: Iterable[Sequence[bytes | str | int | float]], buffer_size: int, pass_through: int
) -> list[bytes]:
    """Redis commands in RESP, in buffers of about `buffer_size` bytes.

    A bytes value of at least `pass_through` bytes is an item of the list by itself (the object given, not
    a copy); values that are neither bytes nor str are written as `str(value)`.
    """

@final
class FrameDecoder:
    """Incremental decoder: bytes go in as they arrive from a pipe, whole frames come out."""

    def __init__(self) -> None: ...
    def feed(self, data: bytes) -> list[tuple[int, int, bytes]]:
        """Append `data` and return every frame now complete, as `(job_id, kind, payload)`, in order.

        Raises:
            ValueError: a header announces a payload longer than MAX_FRAME_PAYLOAD (the stream is corrupt;
                the decoder must not be used afterwards).
        """
    @property
    def buffered(self) -> int:
        """Bytes received that do not yet form a whole frame."""

# --------------------------------------------------------------------------------------------------------
# Prefetch / ack bookkeeping of a worker
# --------------------------------------------------------------------------------------------------------

@final
class Ledger:
    """What a worker holds from its broker, so that it never takes more than its prefetch window and
    can say at any time which deliveries are waiting, which are running, and which to hand back.

    A delivery tag (int or str, as the broker issued it) is *held* from `add` until `settle`.
    Held deliveries are either reserved (not started) or active (started). `window` 0 means unlimited.
    """

    def __new__(cls, window: int) -> Ledger: ...
    @property
    def window(self) -> int: ...
    @window.setter
    def window(self, value: int) -> None: ...
    def free(self) -> int:
        """How many more deliveries may be fetched now (window - held, at least 0; 2**31 - 1 if unlimited)."""
    def add(self, tag: int | str) -> None:
        """Record a fetched delivery as reserved.

        Raises:
            KeyError: the tag is already held (a broker handed the same delivery out twice).
        """
    def start(self, tag: int | str) -> None:
        """Mark a reserved delivery as active (its task started).

        Raises:
            KeyError: the tag is not held.
        """
    def settle(self, tag: int | str) -> bool:
        """Forget a delivery (acked, rejected, deferred or handed back). Returns whether it was held."""
    def is_active(self, tag: int | str) -> bool: ...
    def reserved(self) -> list[int | str]:
        """Held, not started, oldest first."""
    def active(self) -> list[int | str]:
        """Held and started, oldest first."""
    def held(self) -> list[int | str]:
        """Every held tag, oldest first."""
    def __len__(self) -> int: ...
    def __contains__(self, tag: object, /) -> bool: ...

# --------------------------------------------------------------------------------------------------------
# Task events of a worker
# --------------------------------------------------------------------------------------------------------

@final
class EventBuffer:
    """A worker's events, each written as a JSON object when pushed, taken out as `task.multi` bodies.

    Every event starts with `hostname`, `utcoffset`, `pid` (given here), `clock` and `uuid` (given to
    `push`), has the fields of its type, then `timestamp` (the time of the push) and `type`.
    """

    def __new__(cls, hostname: str, utcoffset: float, pid: int, default: Callable[[Any], Any] | None) -> EventBuffer:
        """`default` converts values JSON has no type for, as `json.dumps`'s does (None: they raise TypeError)."""
    def define(self, type: str, fields: Sequence[str]) -> int:
        """Declare an event type and its fields (after `uuid`); returns the kind `push` takes."""
    def push(self, kind: int, clock: int, uuid: str, *values: Any) -> int:
        """Append an event of `kind` with one value per field; returns how many events wait.

        Raises:
            IndexError: no such kind.
            ValueError: not one value per field.
            TypeError: a value JSON cannot encode (and `default` did not convert); nothing is appended.
        """
    def worker(
        self, is_muted: Callable[[str], bool], wakeup: Callable[[], object], clock: Callable[[], int], limit: int
    ) -> None:
        """Make this the buffer of a worker's task events (the `task_*` methods below): tasks for which
        `is_muted(name)` is true (asked once per name) send none, each event's Lamport time is `clock()`, and
        `wakeup()` is called when `limit` events wait. Defines the event types it writes."""
    def task_received(self, job: Any) -> None:
        """`task-received` of a worker `Job`: its `request` (`id`, `task`, `argsrepr`, `kwargsrepr`, `root_id`,
        `parent_id`, `retries`, `headers` for `eta`, `expires`, `fastq_sent_at`) and `delivery.queue`."""
    def task_started(self, job: Any) -> None:
        """`task-started` of a worker `Job`."""
    def task_finished(self, job: Any, outcome: Any) -> None:
        """`task-succeeded`, `-failed`, `-retried` or `-rejected` from an `Outcome` (nothing for other states)."""
    def task_lost(self, request: Any, exception: str) -> None:
        """`task-failed` of a worker `TaskRequest` that failed outside its executor (no traceback)."""
    def task_revoked(self, request: Any, terminated: bool, signum: int | None, expired: bool) -> None:
        """`task-revoked` of a worker `TaskRequest`."""
    def take(self, limit: int) -> bytes | None:
        """The oldest `limit` events (or fewer) as a JSON array, removed; None when none wait."""
    def clear(self) -> int:
        """Drop every waiting event; returns how many there were."""
    def __len__(self) -> int: ...

def utc_isoformat(micros: int | None) -> str:
    """`micros` after the epoch (None: now, truncated to the microsecond) as `datetime.isoformat()` writes the
    same aware UTC datetime, e.g. '2026-12-06T11:30:00.123456+00:00' (no fraction when it is zero).

    Raises ValueError outside datetime's years 1-9999.
    """
