"""From a `result_backend` URL and Celery's `redis_*` settings to redis-py connection arguments.

Celery's precedence: the settings give defaults, the URL overrides them, and query parameters override both.
Errors are raised here, at startup, naming what is wrong, rather than as a TypeError from deep inside redis-py
on the first connection.
"""

from __future__ import annotations

import logging
import ssl
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, unquote, urlparse

import redis
from redis.connection import URL_QUERY_ARGUMENT_PARSERS

from fastq.exceptions import ImproperlyConfigured
from fastq.utils.imports import symbol_by_name

__all__ = ['UrlParts', 'connection_params', 'sentinel_params', 'split_url']

SSL_PARAMS = ('ssl_ca_certs', 'ssl_certfile', 'ssl_keyfile', 'ssl_cert_reqs')
_CERT_REQS = {
    'CERT_REQUIRED': ssl.CERT_REQUIRED,
    'CERT_OPTIONAL': ssl.CERT_OPTIONAL,
    'CERT_NONE': ssl.CERT_NONE,
    'required': ssl.CERT_REQUIRED,
    'optional': ssl.CERT_OPTIONAL,
    'none': ssl.CERT_NONE,
}
E_SSL_ON_REDIS = (
    'result_backend: SSL connection parameters have been provided but the specified URL scheme is redis://. '
    'A Redis SSL connection URL should use the scheme rediss://.'
)
E_CERT_REQS = (
    'result_backend: a rediss:// URL must have parameter ssl_cert_reqs and this must be set to CERT_REQUIRED, '
    'CERT_OPTIONAL, or CERT_NONE'
)
#: Celery's warnings (celery/backends/redis.py) for a TLS connection that may not verify the server.
W_CERT_OPTIONAL = (
    'Setting ssl_cert_reqs=CERT_OPTIONAL when connecting to redis means that celery might not validate the '
    'identity of the redis broker when connecting. This leaves you vulnerable to man in the middle attacks.'
)
W_CERT_NONE = (
    'Setting ssl_cert_reqs=CERT_NONE when connecting to redis means that celery will not validate the identity '
    'of the redis broker when connecting. This leaves you vulnerable to man in the middle attacks.'
)
logger = logging.getLogger('fastq.backends.redis')
# Query parameters redis-py's own URL parser knows, plus the ones Celery adds.
_QUERY_KEYS = {*URL_QUERY_ARGUMENT_PARSERS, *SSL_PARAMS, 'virtual_host', 'credential_provider', 'client_name'}
_QUERY_KEYS -= {'protocol'}  # the listener reads RESP2 pub/sub replies: see connection_params


@dataclass
class UrlParts:
    scheme: str
    host: str | None
    port: int | None
    username: str | None
    password: str | None
    path: str | None
    query: dict[str, str]


def split_url(url: str) -> UrlParts:
    """kombu's `url_to_parts`: host, port and credentials read with HTTP URL rules, unquoted."""
    scheme = urlparse(url).scheme
    parts = urlparse('http://' + url[len(scheme) + 3 :])
    path = parts.path or ''
    path = path[1:] if path.startswith('/') else path
    try:
        port = parts.port
    except ValueError as exc:
        raise ImproperlyConfigured(f'result_backend: bad port in {scheme}:// URL: {exc}') from None
    return UrlParts(
        scheme.lower(),
        unquote(parts.hostname or '') or None,
        port,
        unquote(parts.username or '') or None,
        unquote(parts.password or '') or None,
        unquote(path) or None,
        dict(parse_qsl(parts.query)),
    )


def _credential_provider(value: Any) -> Any:
    provider = symbol_by_name(value)() if isinstance(value, str) else value
    if not isinstance(provider, redis.CredentialProvider):
        raise ImproperlyConfigured(
            'redis_backend_credential_provider: not an instance of a redis.CredentialProvider or a subclass'
        )
    return provider


def settings_params(conf: Any) -> dict[str, Any]:
    """What Celery's RedisBackend reads from the `redis_*` settings, as redis-py keyword arguments."""
    params: dict[str, Any] = {
        'host': conf.redis_host or 'localhost',
        'port': conf.redis_port or 6379,
        'db': conf.redis_db or 0,
        'password': conf.redis_password,
        'max_connections': conf.redis_max_connections,
        'socket_timeout': conf.redis_socket_timeout and float(conf.redis_socket_timeout),
        'socket_connect_timeout': conf.redis_socket_connect_timeout and float(conf.redis_socket_connect_timeout),
        'retry_on_timeout': conf.redis_retry_on_timeout or False,
        'client_name': conf.redis_client_name,
    }
    if conf.redis_username:
        params['username'] = conf.redis_username
    if conf.redis_backend_health_check_interval:
        params['health_check_interval'] = conf.redis_backend_health_check_interval
    if conf.redis_socket_keepalive:
        params['socket_keepalive'] = True
    if conf.redis_backend_credential_provider:
        params['credential_provider'] = _credential_provider(conf.redis_backend_credential_provider)
        params.pop('username', None)
        params.pop('password', None)
    use_ssl = conf.redis_backend_use_ssl
    if use_ssl:
        params.update(use_ssl)
        params['connection_class'] = redis.SSLConnection
    return params


def _apply_query(params: dict[str, Any], query: dict[str, str]) -> None:
    if query.pop('protocol', '2') != '2':
        raise ImproperlyConfigured('result_backend: only protocol=2 (RESP2) is supported by the Redis result backend')
    unknown = sorted(set(query) - _QUERY_KEYS)
    if unknown:
        raise ImproperlyConfigured(f'result_backend: unknown query parameter(s) {", ".join(unknown)} in the URL')
    if 'credential_provider' in query:
        params['credential_provider'] = _credential_provider(query.pop('credential_provider'))
        params.pop('username', None)
        params.pop('password', None)
    for key, value in query.items():
        parse: Any = URL_QUERY_ARGUMENT_PARSERS.get(key)
        try:
            params[key] = parse(value) if parse is not None else value
        except (TypeError, ValueError):
            raise ImproperlyConfigured(f'result_backend: invalid value for {key!r} in the URL: {value!r}') from None


def _check_ssl(params: dict[str, Any]) -> None:
    cls = params.get('connection_class')
    if not (isinstance(cls, type) and issubclass(cls, redis.SSLConnection)):
        return
    reqs = params.get('ssl_cert_reqs')
    reqs = _CERT_REQS.get(reqs, reqs) if isinstance(reqs, str) else reqs
    if reqs not in _CERT_REQS.values():
        raise ImproperlyConfigured(E_CERT_REQS)
    if reqs == ssl.CERT_OPTIONAL:
        logger.warning(W_CERT_OPTIONAL)
    elif reqs == ssl.CERT_NONE:
        logger.warning(W_CERT_NONE)
    params['ssl_cert_reqs'] = reqs


def _params_from_parts(parts: UrlParts, defaults: dict[str, Any]) -> dict[str, Any]:
    """Celery's `RedisBackend._params_from_url` for one URL."""
    query = dict(parts.query)
    params = dict(defaults)
    for name, value in (
        ('host', parts.host),
        ('port', parts.port),
        ('username', parts.username),
        ('password', parts.password),
        ('db', query.pop('virtual_host', None)),
    ):
        if value is not None:
            params[name] = value
    if parts.scheme in ('redis+socket', 'socket'):
        params['connection_class'] = redis.UnixDomainSocketConnection
        params['path'] = '/' + (parts.path or '')
        for name in ('host', 'port', 'socket_keepalive'):
            params.pop(name, None)
    else:
        params['db'] = parts.path
    if parts.scheme == 'redis' and any(key in query for key in SSL_PARAMS):
        raise ImproperlyConfigured(E_SSL_ON_REDIS)
    if parts.scheme == 'rediss':
        params['connection_class'] = redis.SSLConnection
        for key in SSL_PARAMS:
            value = query.pop(key, None)
            if value:
                params[key] = value
    db = params.get('db') or 0
    try:
        params['db'] = int(db.strip('/') or 0) if isinstance(db, str) else int(db)
    except ValueError:
        raise ImproperlyConfigured(f'result_backend: the database must be a number, got {db!r}') from None
    _apply_query(params, query)
    return params


def _finish(params: dict[str, Any]) -> dict[str, Any]:
    _check_ssl(params)
    # Results are bytes (compressed ones are not text), and the listener parses RESP2 pub/sub replies itself.
    params['decode_responses'] = False
    params['protocol'] = 2
    return {key: value for key, value in params.items() if value is not None}


def connection_params(conf: Any, url: str) -> dict[str, Any]:
    """Keyword arguments for `redis.ConnectionPool` from a redis://, rediss:// or redis+socket:// URL."""
    return _finish(_params_from_parts(split_url(url), settings_params(conf)))


def sentinel_params(conf: Any, url: str) -> tuple[list[tuple[str, int]], dict[str, Any]]:
    """The sentinels of a `sentinel://h1:26379;sentinel://h2:26379/0` URL, and the master's connection arguments.

    Database, username and password come from the first URL, as in Celery.
    """
    defaults = settings_params(conf)
    chunks = [chunk for chunk in url.split(';') if chunk.strip()]
    hosts: list[tuple[str, int]] = []
    first: dict[str, Any] = {}
    for index, chunk in enumerate(chunks):
        parts = split_url(chunk.strip())
        if parts.scheme != 'sentinel':
            raise ImproperlyConfigured(f'result_backend: expected sentinel:// URLs separated by ";", got {chunk!r}')
        params = _params_from_parts(parts, defaults)
        hosts.append((params['host'], params['port']))
        if index == 0:
            first = params
    master = {key: value for key, value in first.items() if key not in ('host', 'port')}
    _check_ssl(master)
    if master.get('connection_class') is redis.SSLConnection:
        # SentinelConnectionPool picks its TLS connection class from this flag.
        del master['connection_class']
        master['ssl'] = True
    return hosts, _finish(master)
