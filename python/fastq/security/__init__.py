"""Message signing (Celery's Security guide): task messages signed with a private key, verified against a
store of certificates, so a worker runs only what a holder of a trusted key sent.

    app.conf.update(
        security_key='/etc/ssl/private/worker.key',
        security_certificate='/etc/ssl/certs/worker.pem',
        security_cert_store='/etc/ssl/certs/*.pem',
        security_digest='sha256',
        task_serializer='auth',
        event_serializer='auth',
        accept_content=['auth'],
    )
    app.setup_security()

The wire format is Celery's `auth` serializer (kombu content type `application/data`): Celery and fastq
sign and verify each other's messages (task messages and results with `result_serializer='auth'`; events a
Celery worker signs are verified by fastq's receivers, while fastq's workers send theirs as json, which
Celery's receivers accept too). Needs the `cryptography` package (`pip install "fastq[auth]"`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from fastq.exceptions import ImproperlyConfigured

if TYPE_CHECKING:
    from fastq.app import Fastq

__all__ = ['setup_security']

CRYPTOGRAPHY_NOT_INSTALLED = """\
You need to install the cryptography library to use the auth serializer.
Please install by:

    $ pip install cryptography
"""

# The messages and their names are Celery's (celery.security), as users and their tests know them.
SECURITY_SETTING_MISSING = """\
Sorry, but you have to configure the
    * security_key
    * security_certificate, and the
    * security_cert_store
configuration settings to use the auth serializer.

Please see the configuration reference for more information.
"""

SETTING_MISSING = """\
You have to configure a special task serializer
for signing and verifying tasks:
    * task_serializer = 'auth'

You have to accept only tasks which are serialized with 'auth'.
There is no point in signing messages if they are not verified.
    * accept_content = ['auth']
"""


def setup_security(
    app: Fastq,
    allowed_serializers: Any = None,
    key: str | None = None,
    key_password: Any = None,
    cert: str | None = None,
    store: str | None = None,
    digest: str | None = None,
    serializer: str = 'json',
) -> None:
    """Register the `auth` serializer with this app's key, certificate and certificate store (the settings
    unless given); refuses to run unless tasks are sent and accepted signed only."""
    try:
        import cryptography  # noqa: F401
    except ImportError:
        raise ImproperlyConfigured(CRYPTOGRAPHY_NOT_INSTALLED) from None
    conf = app.conf
    if conf.task_serializer != 'auth' or list(conf.accept_content or ()) != ['auth']:
        raise ImproperlyConfigured(SETTING_MISSING)
    key = key or conf.security_key
    key_password = key_password or conf.security_key_password
    cert = cert or conf.security_certificate
    store = store or conf.security_cert_store
    digest = digest or conf.security_digest
    if not (key and cert and store):
        raise ImproperlyConfigured(SECURITY_SETTING_MISSING)
    from fastq.security.serialization import register_auth

    with open(key) as key_file, open(cert) as cert_file:
        register_auth(key_file.read(), key_password, cert_file.read(), store, digest, serializer)
