"""The `auth` serializer: a payload serialized as usual (`json`), signed, and packed as Celery's is.

On the wire (the message body, content type `application/data`): base64 of five fields joined by
b'\\x00\\x01': the signer's certificate id (base64), the signature (base64), the inner content type, its
encoding, and the serialized payload. What is signed is the serialized payload itself, so a receiver checks
the signature before decoding anything.
"""

from __future__ import annotations

import base64
from typing import Any

from fastq.exceptions import SecurityError
from fastq.security.keys import Certificate, CertStore, FSCertStore, PrivateKey, digest_algorithm

__all__ = ['SecureSerializer', 'register_auth']

SEPARATOR = b'\x00\x01'


class SecureSerializer:
    def __init__(
        self,
        key: PrivateKey | None = None,
        cert: Certificate | None = None,
        cert_store: CertStore | None = None,
        digest: str = 'sha256',
        serializer: str = 'json',
    ) -> None:
        self._key = key
        self._cert = cert
        self._cert_store = cert_store
        self._digest = digest_algorithm(digest)
        self._serializer = serializer

    def serialize(self, data: Any) -> bytes:
        """Sign and pack `data`; any failure is a SecurityError worded as Celery's ('Unable to serialize: ')."""
        from fastq.serialization import dumps

        if self._key is None or self._cert is None:
            raise SecurityError('Unable to serialize: no key and certificate to sign with')
        try:
            body, content_type, content_encoding = dumps(data, self._serializer)
            signature = self._key.sign(body, self._digest)
            fields = [
                base64.b64encode(self._cert.get_id().encode()),
                base64.b64encode(signature),
                content_type.encode(),
                content_encoding.encode(),
                body,
            ]
        except Exception as exc:
            raise SecurityError(f'Unable to serialize: {exc!r}') from exc
        return base64.b64encode(SEPARATOR.join(fields))

    def deserialize(self, data: bytes | str) -> Any:
        """Verify, then decode. A refusal reads as Celery's: 'Unable to deserialize: ' and the reason (an
        unknown signer, a bad signature, an expired certificate, a malformed payload), which a worker logs."""
        from fastq.serialization import loads

        if self._cert_store is None:
            raise SecurityError('Unable to deserialize: no certificate store to verify with')
        try:
            raw = base64.b64decode(data.encode() if isinstance(data, str) else data)
            signer, signature, content_type, _content_encoding, body = raw.split(SEPARATOR, 4)
            signer, signature = base64.b64decode(signer), base64.b64decode(signature)
            self._cert_store[signer].verify(body, signature, self._digest)
        except Exception as exc:
            raise SecurityError(f'Unable to deserialize: {exc!r}') from exc
        return loads(body, content_type.decode(), None)


def register_auth(
    key: str | None = None,
    key_password: Any = None,
    cert: str | None = None,
    store: str | None = None,
    digest: str = 'sha256',
    serializer: str = 'json',
) -> SecureSerializer:
    """Register `auth` (content type `application/data`, Celery's) signing with `key`/`cert` and verifying
    against the certificates in `store` (a directory or a glob)."""
    from fastq.serialization import register

    secure = SecureSerializer(
        PrivateKey(key, password=key_password) if key else None,
        Certificate(cert) if cert else None,
        FSCertStore(store) if store else None,
        digest,
        serializer,
    )
    register('auth', secure.serialize, secure.deserialize, 'application/data', 'utf-8')
    return secure
