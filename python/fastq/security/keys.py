"""Private keys and X.509 certificates for message signing (RSA, PSS padding, as Celery's)."""

from __future__ import annotations

import datetime
import glob
import os
from typing import Any

from fastq.exceptions import SecurityError

__all__ = ['CertStore', 'Certificate', 'FSCertStore', 'PrivateKey', 'digest_algorithm']


def _cryptography() -> Any:
    try:
        import cryptography  # noqa: F401
    except ImportError:
        raise ImportError('message signing needs the cryptography package: pip install "fastq[auth]"') from None
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import padding, rsa
    from cryptography.x509 import load_pem_x509_certificate

    return hashes, serialization, padding, rsa, load_pem_x509_certificate


def _bytes(value: Any) -> bytes | None:
    return value.encode() if isinstance(value, str) else value


def digest_algorithm(name: str = 'sha256') -> Any:
    """The `cryptography` hash named by `security_digest` ('sha256', 'sha512', ...)."""
    hashes = _cryptography()[0]
    try:
        return getattr(hashes, name.upper())()
    except AttributeError:
        raise SecurityError(f'Unknown digest: {name!r}') from None


def _pss(digest: Any) -> Any:
    padding = _cryptography()[2]
    return padding.PSS(mgf=padding.MGF1(digest), salt_length=padding.PSS.MAX_LENGTH)


class PrivateKey:
    """An RSA private key (PEM), signing with PSS padding."""

    def __init__(self, key: str | bytes, password: Any = None) -> None:
        _, serialization, _, rsa, _ = _cryptography()
        try:
            self._key = serialization.load_pem_private_key(_bytes(key), password=_bytes(password))
        except (ValueError, TypeError) as exc:
            raise SecurityError(f'Invalid private key: {exc!r}') from exc
        if not isinstance(self._key, rsa.RSAPrivateKey):
            raise SecurityError('Invalid private key: Non-RSA keys are not supported.')

    def sign(self, data: bytes, digest: Any) -> bytes:
        return self._key.sign(data, _pss(digest), digest)  # type: ignore[no-any-return]


class Certificate:
    """An X.509 certificate (PEM) with an RSA public key; identified by its issuer and serial number."""

    def __init__(self, cert: str | bytes) -> None:
        _, _, _, rsa, load = _cryptography()
        try:
            self._cert = load(_bytes(cert))
        except ValueError as exc:
            raise SecurityError(f'Invalid certificate: {exc!r}') from exc
        if not isinstance(self._cert.public_key(), rsa.RSAPublicKey):
            raise SecurityError('Invalid certificate: Non-RSA certificates are not supported.')

    def has_expired(self) -> bool:
        return bool(datetime.datetime.now(datetime.UTC) >= self._cert.not_valid_after_utc)

    def get_serial_number(self) -> int:
        return int(self._cert.serial_number)

    def get_issuer(self) -> str:
        return ' '.join(str(attribute.value) for attribute in self._cert.issuer)

    def get_id(self) -> str:
        """Issuer and serial number: what a signed message names its signer by."""
        return f'{self.get_issuer()} {self.get_serial_number()}'

    def verify(self, data: bytes, signature: bytes, digest: Any) -> None:
        if self.has_expired():
            raise SecurityError(f'Expired certificate: {self.get_id()!r}')
        try:
            self._cert.public_key().verify(signature, data, _pss(digest), digest)
        except Exception as exc:
            raise SecurityError(f'Bad signature: {exc!r}') from exc


class CertStore:
    """Certificates by id: whose signatures are trusted."""

    def __init__(self) -> None:
        self._certs: dict[str, Certificate] = {}

    def __getitem__(self, cert_id: str | bytes) -> Certificate:
        key = cert_id.decode() if isinstance(cert_id, bytes) else cert_id
        try:
            return self._certs[key]
        except KeyError:  # (the id as given, bytes from a message: Celery's words, b'issuer serial')
            raise SecurityError(f'Unknown certificate: {cert_id!r}') from None

    def add_cert(self, cert: Certificate) -> None:
        if cert.get_id() in self._certs:
            raise SecurityError(f'Duplicate certificate: {cert.get_id()!r}')
        self._certs[cert.get_id()] = cert


class FSCertStore(CertStore):
    """The certificates in a directory, or matching a glob pattern (`/etc/ssl/certs/*.pem`)."""

    def __init__(self, path: str) -> None:
        super().__init__()
        if os.path.isdir(path):
            path = os.path.join(path, '*')
        for name in glob.glob(path):
            with open(name) as f:
                cert = Certificate(f.read())
            if cert.has_expired():
                raise SecurityError(f'Expired certificate: {cert.get_id()!r}')
            self.add_cert(cert)
