"""Compression and serializers beyond the built-in ones, as Celery's Calling guide lists them: kombu's lzma
(and brotli/zstd when installed), and methods registered by the app, with fastq's `register` functions or
with kombu's (adopted), end to end through an embedded worker; lzma bodies byte-identical to kombu's."""

from __future__ import annotations

import json
from typing import Any

import pytest

from fastq.contrib.testing.app import TestApp, setup_default_app
from fastq.contrib.testing.worker import start_worker
from fastq.exceptions import EncodeError
from fastq.serialization import compress, decompress, register, register_compression


def test_lzma_is_kombus(memory_app: Any) -> None:
    import kombu.compression

    body = json.dumps([[1, 2], {}, {}]).encode() * 20
    packed, mime = compress(body, 'lzma')
    assert mime == 'application/x-lzma'
    assert (packed, mime) == kombu.compression.compress(body, 'lzma')
    assert decompress(packed, mime) == body and decompress(packed, 'xz') == body
    with pytest.raises(EncodeError, match="Unknown compression method 'nope'"):
        compress(body, 'nope')


def test_registered_codecs_end_to_end() -> None:
    import kombu.compression
    import kombu.serialization

    register('reversed-json', lambda o: json.dumps(o)[::-1], lambda b: json.loads(b.decode()[::-1]), 'application/x-rj')
    register_compression(lambda b: b[::-1], lambda b: b[::-1], 'application/x-backwards', aliases=('backwards',))
    kombu.serialization.register(
        'kombu-json', json.dumps, json.loads, content_type='application/x-kombu-json', content_encoding='utf-8'
    )
    kombu.compression.register(lambda b: b'K' + b, lambda b: b[1:], 'application/x-kprefix', aliases=['kprefix'])
    app = TestApp(config={'accept_content': ['json', 'reversed-json', 'kombu-json']})
    with setup_default_app(app):

        @app.task
        def add(x: int, y: int) -> int:
            return x + y

        with start_worker(app, pool='threads'):
            for serializer, compression in (
                ('json', 'lzma'),
                ('reversed-json', 'backwards'),
                ('kombu-json', 'kprefix'),
                ('reversed-json', None),
            ):
                result = add.apply_async((2, 3), serializer=serializer, compression=compression)
                assert result.get(timeout=10) == 5, (serializer, compression)


def test_an_unknown_serializer_is_serializer_not_installed(memory_app: Any) -> None:
    """Celery's `apply_async(serializer='nope')` raises kombu's SerializerNotInstalled ('No encoder installed
    for nope') in the caller, which code catches by that name; fastq's is an EncodeError as well."""
    from fastq.exceptions import SerializerNotInstalled

    add = memory_app.task(name='codecs.add', shared=False)(lambda x, y: x + y)
    with pytest.raises(SerializerNotInstalled, match="No encoder installed for 'nope'") as raised:
        add.apply_async((1, 2), serializer='nope')
    assert isinstance(raised.value, EncodeError)
