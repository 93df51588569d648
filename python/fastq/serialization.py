"""Serializers by name and content type, as kombu's registry knows them, backed by `fastq._core`.

The JSON dialect is kombu's: stdlib-compatible output plus `{"__type__": ..., "__value__": ...}` tags for
datetime, date, time, Decimal, UUID and bytes, so values round-trip with Celery peers. `register_type` adds
tags for application types, as `kombu.utils.json.register_type` does. pickle and yaml exist for parity but a
worker only decodes them when they are named in `accept_content`.
"""

from __future__ import annotations

import base64
import importlib
import importlib.util
import pickle
import sys
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import date, datetime, time
from decimal import Decimal
from typing import Any, TypeVar

from fastq import _core
from fastq.exceptions import ContentDisallowed, DecodeError, EncodeError, SerializerNotInstalled

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
    'python_compress',
    'register',
    'register_compression',
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


def register(
    name: str,
    encoder: Callable[[Any], bytes | str],
    decoder: Callable[[bytes], Any],
    content_type: str,
    content_encoding: str = 'utf-8',
) -> None:
    """Add a serializer (kombu's `kombu.serialization.register`, same arguments): `serializer='name'` on a
    call or `task_serializer`, and `accept_content=['name']` on the workers that should decode it."""

    def encode(obj: Any) -> bytes:
        data = encoder(obj)
        return (
            data.encode(content_encoding if content_encoding != 'binary' else 'utf-8')
            if isinstance(data, str)
            else data
        )

    serializer = Serializer(name, content_type, content_encoding, encode, decoder)
    _BY_NAME[name] = serializer
    _BY_CONTENT_TYPE[content_type] = serializer


def _serializer_from_kombu(name: str | None = None, content_type: str | None = None) -> Serializer | None:
    """A serializer registered with kombu (by a Celery app's code) and not with fastq: adopted."""
    kombu = sys.modules.get('kombu.serialization')
    if kombu is None:
        return None
    registry = kombu.registry
    if name is None:
        name = registry.type_to_name.get(content_type)
    codec = registry._encoders.get(name) if name else None
    if codec is None or codec.content_type not in registry._decoders:
        return None
    register(name, codec.encoder, registry._decoders[codec.content_type], codec.content_type, codec.content_encoding)
    return _BY_NAME[name]


def serializer_by_name(name: str) -> Serializer:
    try:
        return _BY_NAME[name]
    except KeyError:
        adopted = _serializer_from_kombu(name=name)
        if adopted is not None:
            return adopted
        raise SerializerNotInstalled(f'No encoder installed for {name!r} (known: {", ".join(_BY_NAME)})') from None


def serializer_by_content_type(content_type: str) -> Serializer:
    try:
        return _BY_CONTENT_TYPE[content_type]
    except KeyError:
        adopted = _serializer_from_kombu(content_type=content_type)
        if adopted is not None:
            return adopted
        raise DecodeError(f'No decoder installed for content type {content_type!r}') from None


def accept_set(accept: Iterable[str]) -> frozenset[str]:
    """Content types for an `accept_content` list, which (as in Celery) may name serializers or mime types."""
    out = set()
    for item in accept:
        s = _BY_NAME.get(item) or (None if '/' in item else _serializer_from_kombu(name=item))
        out.add(s.content_type if s else item)
    return frozenset(out)


def dumps(obj: Any, serializer: str) -> tuple[bytes, str, str]:
    """Serialize with the named serializer: `(payload, content_type, content_encoding)`."""
    s = serializer_by_name(serializer)
    try:
        return s.encode(obj), s.content_type, s.content_encoding
    except Exception as exc:
        raise EncodeError(exc) from exc  # (kombu's: the error itself as the argument)


def loads(data: bytes, content_type: str, accept: frozenset[str] | None) -> Any:
    """Deserialize `data`, refusing content types outside `accept` (content types, see `accept_set`)."""
    if accept is not None and content_type not in accept and content_type not in BINARY_TYPES:
        raise ContentDisallowed(f'Refusing to deserialize untrusted content of type {content_type!r}')
    if content_type in BINARY_TYPES and content_type not in _BY_CONTENT_TYPE:
        return data  # (raw data; application/data is the signed `auth` payload once that is registered)
    s = serializer_by_content_type(content_type)
    try:
        return s.decode(data)
    except Exception as exc:
        raise DecodeError(exc) from exc


_COMPRESSION_ALIASES = {
    'zlib': 'application/x-gzip',
    'gzip': 'application/x-gzip',
    'application/x-gzip': 'application/x-gzip',
    'bzip2': 'application/x-bz2',
    'bzip': 'application/x-bz2',
    'application/x-bz2': 'application/x-bz2',
}
#: Wire names compressed in Rust (zlib and bzip2, byte-identical to kombu's); the others by Python codecs.
_NATIVE_COMPRESSION = frozenset({'application/x-gzip', 'application/x-bz2'})
#: Python codecs by wire name: (compress, decompress).
_PYTHON_CODECS: dict[str, tuple[Callable[[bytes], bytes], Callable[[bytes], bytes]]] = {}


def register_compression(
    encoder: Callable[[bytes], bytes],
    decoder: Callable[[bytes], bytes],
    content_type: str,
    aliases: Iterable[str] = (),
) -> None:
    """Add a compression method (kombu's `kombu.compression.register`, same arguments): `compression='name'`
    on a call or `task_compression` then use it, and workers decompress bodies flagged with `content_type`."""
    _PYTHON_CODECS[content_type] = (encoder, decoder)
    _COMPRESSION_ALIASES[content_type] = content_type
    for alias in aliases:
        _COMPRESSION_ALIASES[alias] = content_type


def _lazy(module: str, compress: str, decompress: str) -> tuple[Callable[[bytes], bytes], Callable[[bytes], bytes]]:
    def encode(data: bytes) -> bytes:
        return getattr(importlib.import_module(module), compress)(data)  # type: ignore[no-any-return]

    def decode(data: bytes) -> bytes:
        return getattr(importlib.import_module(module), decompress)(data)  # type: ignore[no-any-return]

    return encode, decode


def _zstd() -> tuple[Callable[[bytes], bytes], Callable[[bytes], bytes]]:
    def encode(data: bytes) -> bytes:
        import zstandard  # type: ignore[import-not-found]

        return zstandard.ZstdCompressor().compress(data)  # type: ignore[no-any-return]

    def decode(data: bytes) -> bytes:
        import zstandard

        return zstandard.ZstdDecompressor().decompress(data)  # type: ignore[no-any-return]

    return encode, decode


# kombu's other built-in methods, under its names: lzma always (the standard library's), brotli and zstd
# when their packages are installed (as kombu registers them).
register_compression(*_lazy('lzma', 'compress', 'decompress'), 'application/x-lzma', aliases=('lzma', 'xz'))
if importlib.util.find_spec('brotli') is not None:
    register_compression(*_lazy('brotli', 'compress', 'decompress'), 'application/x-brotli', aliases=('brotli',))
if importlib.util.find_spec('zstandard') is not None:
    register_compression(*_zstd(), 'application/zstd', aliases=('zstd', 'zstandard'))


def _from_kombu(name: str) -> str | None:
    """A compression method registered with kombu (by a Celery app's code) and not with fastq: adopted."""
    kombu = sys.modules.get('kombu.compression')
    if kombu is None:
        return None
    mime = kombu._aliases.get(name, name)
    if mime not in kombu._encoders:
        return None
    register_compression(kombu._encoders[mime], kombu._decoders[mime], mime, aliases=(name,))
    return str(mime)


def compression_mime(name: str) -> str:
    """The wire name (`compression` header value) for a compression method or alias."""
    try:
        return _COMPRESSION_ALIASES[name]
    except KeyError:
        adopted = _from_kombu(name)
        if adopted is not None:
            return adopted
        known = ', '.join(sorted({k for k in _COMPRESSION_ALIASES if '/' not in k}))
        raise EncodeError(f'Unknown compression method {name!r} (known: {known})') from None


def python_compress(data: bytes, mime: str) -> bytes:
    """`data` compressed by a Python codec (called from the compiled envelope builders for non-native ones)."""
    codec = _PYTHON_CODECS.get(mime)
    if codec is None:
        raise EncodeError(f'Unknown compression method {mime!r}')
    return codec[0](data)


def compress(data: bytes, name: str) -> tuple[bytes, str]:
    mime = compression_mime(name)
    if mime in _NATIVE_COMPRESSION:
        return _core.compress(data, mime), mime
    return python_compress(data, mime), mime


def decompress(data: bytes, mime: str) -> bytes:
    resolved = _COMPRESSION_ALIASES.get(mime) or _from_kombu(mime) or mime
    try:
        if resolved in _NATIVE_COMPRESSION:
            return _core.decompress(data, resolved)
        codec = _PYTHON_CODECS.get(resolved)
        if codec is None:
            raise ValueError(f'unknown compression {mime!r}')
        return codec[1](data)
    except DecodeError:
        raise
    except Exception as exc:
        raise DecodeError(f'cannot decompress {mime} body: {exc}') from exc
