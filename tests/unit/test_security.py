"""Message signing (Celery's Security guide): `auth` messages signed with a key, verified against a store of
certificates; byte-compatible with Celery's SecureSerializer both ways; a tampered or unknown-signer message
refused; a task sent and run signed through an embedded worker."""

from __future__ import annotations

import datetime
from pathlib import Path
from typing import Any

import pytest

cryptography = pytest.importorskip('cryptography')

from cryptography import x509  # noqa: E402
from cryptography.hazmat.primitives import hashes, serialization  # noqa: E402
from cryptography.hazmat.primitives.asymmetric import rsa  # noqa: E402
from cryptography.x509.oid import NameOID  # noqa: E402

from fastq.exceptions import ImproperlyConfigured, SecurityError  # noqa: E402


def _identity(directory: Path, name: str, serial: int) -> tuple[Path, Path]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(serial)
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=30))
        .sign(key, hashes.SHA256())
    )
    key_path, cert_path = directory / f'{name}.key', directory / 'certs' / f'{name}.pem'
    cert_path.parent.mkdir(exist_ok=True)
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return key_path, cert_path


def test_signed_both_ways_with_celery(tmp_path: Path) -> None:
    from celery.security.certificate import Certificate as CeleryCertificate
    from celery.security.certificate import FSCertStore as CeleryStore
    from celery.security.key import PrivateKey as CeleryKey
    from celery.security.serialization import SecureSerializer as CelerySecure

    from fastq.security.serialization import register_auth

    key, cert = _identity(tmp_path, 'worker', 1001)
    ours = register_auth(key.read_text(), None, cert.read_text(), str(tmp_path / 'certs'))
    theirs = CelerySecure(
        CeleryKey(key.read_text()), CeleryCertificate(cert.read_text()), CeleryStore(str(tmp_path / 'certs'))
    )
    body = [[2, 3], {'k': 'v'}, {'callbacks': None}]
    assert theirs.deserialize(ours.serialize(body)) == body
    assert ours.deserialize(theirs.serialize(body)) == body
    import base64

    packed = base64.b64decode(ours.serialize(body))
    tampered = base64.b64encode(packed.replace(b'"k"', b'"K"'))
    with pytest.raises(SecurityError) as refused:
        ours.deserialize(tampered)
    # (Celery means the same words; its own reraise_errors trips on a module in its except clause instead)
    assert str(refused.value) == "Unable to deserialize: SecurityError('Bad signature: InvalidSignature()')"
    with pytest.raises(SecurityError) as refused:
        ours.deserialize(base64.b64encode(b'not a signed message'))
    with pytest.raises(Exception) as celery_refused:
        theirs.deserialize(base64.b64encode(b'not a signed message'))
    assert str(refused.value).startswith('Unable to deserialize: ')
    assert str(celery_refused.value).startswith('Unable to deserialize: ')
    from fastq.security.keys import Certificate, PrivateKey
    from fastq.security.serialization import SecureSerializer

    elsewhere = tmp_path / 'elsewhere'
    elsewhere.mkdir()
    stranger_key, stranger_cert = _identity(elsewhere, 'stranger', 7)  # (a certificate not in the store)
    stranger = SecureSerializer(PrivateKey(stranger_key.read_text()), Certificate(stranger_cert.read_text()))
    with pytest.raises(SecurityError) as refused:
        ours.deserialize(stranger.serialize(body))
    with pytest.raises(Exception) as celery_refused:
        theirs.deserialize(stranger.serialize(body))
    # what a worker logs for a stranger's message, in Celery's words
    assert str(refused.value) == str(celery_refused.value)
    assert str(refused.value) == 'Unable to deserialize: SecurityError("Unknown certificate: b\'stranger 7\'")'
    with pytest.raises(SecurityError, match=r'^Unable to serialize: EncodeError\('):
        ours.serialize(object())


def test_setup_security_refuses_in_celerys_words(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The ImproperlyConfigured messages of the guide's misconfigurations are Celery's, word for word."""
    import sys

    from celery.security import SECURITY_SETTING_MISSING, SETTING_MISSING

    from fastq import Fastq

    key, cert = _identity(tmp_path, 'app', 3003)
    app = Fastq('sec', broker='memory://', set_as_current=False)
    app.conf.update(security_key=str(key), security_certificate=str(cert), security_cert_store=str(cert))
    with pytest.raises(ImproperlyConfigured) as refused:
        app.setup_security()  # (task_serializer is still json)
    assert str(refused.value) == SETTING_MISSING
    app.conf.update(task_serializer='auth', accept_content=['auth'], security_cert_store=None)
    with pytest.raises(ImproperlyConfigured) as refused:
        app.setup_security()
    assert str(refused.value) == SECURITY_SETTING_MISSING
    monkeypatch.setitem(sys.modules, 'cryptography', None)  # (as if not installed)
    with pytest.raises(ImproperlyConfigured, match='You need to install the cryptography library'):
        app.setup_security()


def test_a_task_sent_and_run_signed(tmp_path: Path) -> None:
    from fastq.contrib.testing.app import TestApp, setup_default_app
    from fastq.contrib.testing.worker import start_worker

    key, cert = _identity(tmp_path, 'app', 2002)
    app = TestApp(config={'task_serializer': 'auth', 'accept_content': ['auth'], 'result_accept_content': ['json']})
    with setup_default_app(app):
        with pytest.raises(ImproperlyConfigured, match='security_key'):
            app.setup_security()
        app.conf.update(security_key=str(key), security_certificate=str(cert), security_cert_store=str(cert))
        app.setup_security()

        @app.task
        def add(x: int, y: int) -> int:
            return x + y

        sent: list[Any] = []
        result = add.delay(2, 3)
        sent.append(next(iter(app.broker._state.messages.values())))  # type: ignore[attr-defined]
        import json

        assert json.loads(sent[0].payload)['content-type'] == 'application/data'
        with start_worker(app, pool='threads', perform_ping_check=False):
            assert result.get(timeout=10) == 5


def test_events_signed_by_celery_are_received(tmp_path: Path) -> None:
    """The guide sets `event_serializer='auth'`: a Celery worker then signs its events, and a fastq receiver
    (`fastq events`, the dashboard, `app.events.Receiver`) must verify and read them, as Celery's receiver
    (which accepts the event serializer and json) does; a stranger's event is dropped, not handed over."""
    import base64
    import json

    from celery.security.certificate import Certificate as CeleryCertificate
    from celery.security.key import PrivateKey as CeleryKey
    from celery.security.serialization import SecureSerializer as CelerySecure

    from fastq.events.event import decode_events, encode_events
    from fastq.security.serialization import register_auth

    key, cert = _identity(tmp_path, 'worker', 1001)
    register_auth(key.read_text(), None, cert.read_text(), str(tmp_path / 'certs'))
    celery = CelerySecure(CeleryKey(key.read_text()), CeleryCertificate(cert.read_text()))
    event = {'type': 'task-succeeded', 'uuid': 'u1', 'hostname': 'celery@h', 'clock': 3}

    def envelope(signed: str) -> bytes:  # (as kombu publishes Celery's signed event)
        plain = json.loads(encode_events(event, 'celery@h', 'task.succeeded'))
        plain.update(
            {
                'body': base64.b64encode(signed.encode()).decode(),
                'content-type': 'application/data',
                'content-encoding': 'utf-8',
            }
        )
        plain['properties']['body_encoding'] = 'base64'
        return json.dumps(plain).encode()

    assert decode_events(envelope(celery.serialize(event))) == [event]
    elsewhere = tmp_path / 'elsewhere'
    elsewhere.mkdir()
    stranger_key, stranger_cert = _identity(elsewhere, 'stranger', 7)
    stranger = CelerySecure(CeleryKey(stranger_key.read_text()), CeleryCertificate(stranger_cert.read_text()))
    assert decode_events(envelope(stranger.serialize(event))) == []
    assert decode_events(encode_events(event, 'fastq@h', 'task.succeeded')) == [event]  # (json, as before)
