"""Serializers by name and content type, as kombu's registry knows them, backed by `fastq._core`.

The JSON dialect is kombu's: stdlib-compatible output plus `{"__type__": ..., "__value__": ...}` tags for
datetime, date, time, Decimal, UUID and bytes, so values round-trip with Celery peers. `register_type` adds
tags for application types, as `kombu.utils.json.register_type` does. pickle and yaml exist for parity but a
worker only decodes them when they are named in `accept_content`.
"""

from __future__ import annotations

import base64
import pickle
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import date, datetime, time
from decimal import Decimal
from typing import Any, TypeVar

from fastq import _core
from fastq.exceptions import ContentDisallowed, DecodeError, EncodeError

__all__ = [
    'BINARY_TYPES',
    'Serializer',
    'accept_set',
    'compress',
    'compression_mime',
    'decompress',
    'dumps',
    'json_default',
    'json_tag_hook',
    'loads',
    'register_type',
    'serializer_by_content_type',
    'serializer_by_name',
]

T = TypeVar('T')

# marker -> decoder; type -> (marker, encoder). Order matters: datetime before date (a datetime is a date).
_encoders: dict[type, tuple[str | None, Callable[[Any], Any]]] = {}
_decoders: dict[str, Callable[[Any], Any]] = {
    'bytes': lambda o: o.encode('utf-8'),
    'base64': lambda o: base64.b64decode(o.encode('utf-8')),
}


def register_type(
    t: type[T], marker: str | None, encoder: Callable[[T], Any], decoder: Callable[[Any], T] = lambda d: d
) -> None:
    """Teach the JSON serializer a type, with kombu's `register_type` signature and wire format.

    With `marker=None` the encoder's result is written bare and nothing decodes it back.
    """
    _encoders[t] = (marker, encoder)
    if marker is not None:
        _decoders[marker] = decoder


register_type(datetime, 'datetime', datetime.isoformat, datetime.fromisoformat)
register_type(date, 'date', lambda o: o.isoformat(), lambda o: datetime.fromisoformat(o).date())
register_type(time, 'time', lambda o: o.isoformat(), time.fromisoformat)
register_type(Decimal, 'decimal', str, Decimal)
register_type(uuid.UUID, 'uuid', lambda o: {'hex': o.hex}, lambda o: uuid.UUID(**o))


def json_default(o: Any) -> Any:
    """kombu's `JSONEncoder.default`: `__json__`, registered types, then bytes (utf-8 text or base64)."""
    reducer = getattr(o, '__json__', None)
    if reducer is not None:
        return reducer()
    for t, (marker, encoder) in _encoders.items():
        if isinstance(o, t):
            value = encoder(o)
            return value if marker is None else {'__type__': marker, '__value__': value}
    if isinstance(o, bytes | bytearray | memoryview):
        raw = bytes(o)
        try:
            return {'__type__': 'bytes', '__value__': raw.decode('utf-8')}
        except UnicodeDecodeError:
            return {'__type__': 'base64', '__value__': base64.b64encode(raw).decode('utf-8')}
    raise TypeError(f'Object of type {type(o).__name__} is not JSON serializable')


def json_tag_hook(o: dict[str, Any]) -> Any:
    """kombu's `object_hook`: a tagged object of an unknown type is an error, not a silent dict."""
    decoder = _decoders.get(o['__type__'])
    if decoder is None:
        raise ValueError('Unsupported type', type, o)
    return decoder(o['__value__'])


@dataclass(frozen=True, slots=True)
class Serializer:
    name: str
    content_type: str
    content_encoding: str
    encode: Callable[[Any], bytes]
    decode: Callable[[bytes], Any]


def _yaml_encode(obj: Any) -> bytes:
    import yaml  # type: ignore[import-untyped]

    return yaml.safe_dump(obj).encode('utf-8')  # type: ignore[no-any-return]


def _yaml_decode(data: bytes) -> Any:
    import yaml

    return yaml.safe_load(data)


_SERIALIZERS = [
    Serializer(
        'json',
        _core.CONTENT_TYPE_JSON,
        'utf-8',
        lambda o: _core.json_dumps(o, json_default),
        lambda b: _core.json_loads(b, json_tag_hook),
    ),
    Serializer('msgpack', _core.CONTENT_TYPE_MSGPACK, 'binary', _core.msgpack_packb, _core.msgpack_unpackb),
    Serializer('pickle', 'application/x-python-serialize', 'binary', lambda o: pickle.dumps(o, 4), pickle.loads),
    Serializer('yaml', 'application/x-yaml', 'utf-8', _yaml_encode, _yaml_decode),
]
_BY_NAME = {s.name: s for s in _SERIALIZERS}
_BY_CONTENT_TYPE = {s.content_type: s for s in _SERIALIZERS}
# Types kombu trusts without an accept entry: raw data, never deserialized into objects.
BINARY_TYPES = frozenset({'application/data', 'application/text'})


def serializer_by_name(name: str) -> Serializer:
    try:
        return _BY_NAME[name]
    except KeyError:
        raise EncodeError(f'No encoder installed for {name!r} (known: {", ".join(_BY_NAME)})') from None


def serializer_by_content_type(content_type: str) -> Serializer:
    try:
        return _BY_CONTENT_TYPE[content_type]
    except KeyError:
        raise DecodeError(f'No decoder installed for content type {content_type!r}') from None


def accept_set(accept: Iterable[str]) -> frozenset[str]:
    """Content types for an `accept_content` list, which (as in Celery) may name serializers or mime types."""
    out = set()
    for item in accept:
        s = _BY_NAME.get(item)
        out.add(s.content_type if s else item)
    return frozenset(out)


def dumps(obj: Any, serializer: str) -> tuple[bytes, str, str]:
    """Serialize with the named serializer: `(payload, content_type, content_encoding)`."""
    s = serializer_by_name(serializer)
    try:
        return s.encode(obj), s.content_type, s.content_encoding
    except Exception as exc:
        raise EncodeError(f'{type(exc).__name__}: {exc}') from exc


def loads(data: bytes, content_type: str, accept: frozenset[str] | None) -> Any:
    """Deserialize `data`, refusing content types outside `accept` (content types, see `accept_set`)."""
    if accept is not None and content_type not in accept and content_type not in BINARY_TYPES:
        raise ContentDisallowed(f'Refusing to deserialize untrusted content of type {content_type!r}')
    if content_type in BINARY_TYPES:
        return data
    s = serializer_by_content_type(content_type)
    try:
        return s.decode(data)
    except Exception as exc:
        raise DecodeError(f'{type(exc).__name__}: {exc}') from exc


_COMPRESSION_ALIASES = {
    'zlib': 'application/x-gzip',
    'gzip': 'application/x-gzip',
    'application/x-gzip': 'application/x-gzip',
    'bzip2': 'application/x-bz2',
    'bzip': 'application/x-bz2',
    'application/x-bz2': 'application/x-bz2',
}


def compression_mime(name: str) -> str:
    """The wire name (`compression` header value) for a compression method or alias."""
    try:
        return _COMPRESSION_ALIASES[name]
    except KeyError:
        known = ', '.join(sorted({k for k in _COMPRESSION_ALIASES if '/' not in k}))
        raise EncodeError(f'Unknown compression method {name!r} (known: {known})') from None


def compress(data: bytes, name: str) -> tuple[bytes, str]:
    mime = compression_mime(name)
    return _core.compress(data, mime), mime


def decompress(data: bytes, mime: str) -> bytes:
    try:
        return _core.decompress(data, _COMPRESSION_ALIASES.get(mime, mime))
    except ValueError as exc:
        raise DecodeError(f'cannot decompress {mime} body: {exc}') from exc
