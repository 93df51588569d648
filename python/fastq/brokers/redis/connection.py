"""Redis connections from Celery-style URLs and settings.

    redis://[[user]:password@]host[:port][/db]     rediss:// for TLS (options: the URL's ssl_* or `broker_use_ssl`)
    redis+socket:///path/to/redis.sock[?virtual_host=db]
    sentinel://[:password@]host:port[;sentinel://host2:port...] with transport option `master_name`

Every connection made here has a socket timeout (a dead peer must not hang a worker forever) and keepalive.
"""

from __future__ import annotations

import logging
import ssl
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, cast
from urllib.parse import parse_qs, unquote, urlsplit

from fastq import _core
from fastq.exceptions import ImproperlyConfigured

if TYPE_CHECKING:
    import redis

    from fastq.utils.rediswire import Link

#: What redis-py raises when the server cannot be reached or stops answering.
CONNECTION_ERRORS: tuple[type[Exception], ...] = (OSError,)
try:
    import redis as _redis

    CONNECTION_ERRORS += (_redis.ConnectionError, _redis.TimeoutError)
except ImportError:  # reported when a Redis URL is used (see _import_redis)
    pass

DEFAULT_PORT = 6379
DEFAULT_SENTINEL_PORT = 26379
SOCKET_TIMEOUT = 30.0
CONNECT_TIMEOUT = 5.0


def _import_redis() -> Any:
    try:
        import redis
        import redis.backoff
        import redis.retry
    except ImportError:
        raise ImproperlyConfigured(
            'broker_url: the Redis broker needs the redis package: pip install "fastq[redis]"'
        ) from None
    return redis


#: kombu's `parse_ssl_cert_reqs` spellings (any other is an error there too: a KeyError).
_SSL_REQS = {
    'CERT_NONE': ssl.CERT_NONE,
    'CERT_OPTIONAL': ssl.CERT_OPTIONAL,
    'CERT_REQUIRED': ssl.CERT_REQUIRED,
    'none': ssl.CERT_NONE,
    'optional': ssl.CERT_OPTIONAL,
    'required': ssl.CERT_REQUIRED,
}
W_NO_SSL_OPTIONS = 'Secure redis scheme specified (rediss) with no ssl options, defaulting to insecure SSL behaviour.'


def _ssl_kwargs(scheme: str, ssl_options: Any, query: dict[str, list[str]], setting: str) -> dict[str, Any]:
    """redis-py's TLS keywords as kombu derives them, or {} for a plain connection.

    kombu: the URL's `ssl_*` parameters replace `broker_use_ssl` as a whole (not key by key); a dict of them
    turns TLS on for a redis:// URL as well; and rediss:// with neither connects without verifying the
    server's certificate, with a warning.
    """
    from_url = {key: values[-1] for key, values in query.items() if key.startswith('ssl_')}
    if from_url:
        options: dict[str, Any] = from_url
        if 'ssl_check_hostname' in options:
            options['ssl_check_hostname'] = options['ssl_check_hostname'].lower() != 'false'
    elif isinstance(ssl_options, dict):
        options = dict(ssl_options)
    else:
        options = {}
    if not options and scheme != 'rediss':
        return {}
    if not options and not ssl_options:
        logging.getLogger('fastq.brokers.redis').warning(W_NO_SSL_OPTIONS)
        options = {'ssl_cert_reqs': ssl.CERT_NONE}
    reqs = options.get('ssl_cert_reqs')
    if isinstance(reqs, str):
        if reqs not in _SSL_REQS and reqs.lower() not in _SSL_REQS:
            raise ImproperlyConfigured(
                f'{setting}: ssl_cert_reqs must be CERT_REQUIRED, CERT_OPTIONAL or CERT_NONE, got {reqs!r}'
            )
        options['ssl_cert_reqs'] = _SSL_REQS.get(reqs, _SSL_REQS.get(reqs.lower()))
    return {'ssl': True, **{key: value for key, value in options.items() if key.startswith('ssl_')}}


def parse_url(url: str, setting: str = 'broker_url') -> dict[str, Any]:
    """Connection keywords for one URL (not sentinel): host/port/db/password/username or unix socket path."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    query = parse_qs(parts.query)
    kwargs: dict[str, Any] = {}
    if parts.password is not None:
        kwargs['password'] = unquote(parts.password)
    if parts.username:
        kwargs['username'] = unquote(parts.username)
    if scheme in ('redis+socket', 'socket'):
        kwargs['unix_socket_path'] = parts.path
        db = query.get('virtual_host', query.get('db', ['0']))[-1]
    else:
        kwargs['host'] = parts.hostname or 'localhost'
        try:
            kwargs['port'] = parts.port or DEFAULT_PORT
        except ValueError:
            raise ImproperlyConfigured(f'{setting}: bad port in {url!r}') from None
        db = parts.path.strip('/') or query.get('virtual_host', ['0'])[-1]
    try:
        kwargs['db'] = int(db or 0)
    except ValueError:
        raise ImproperlyConfigured(f'{setting}: the database in {url!r} must be a number, got {db!r}') from None
    return kwargs


def client_for(url: str, conf: Any, transport_options: dict[str, Any], setting: str = 'broker_url') -> redis.Redis:
    """A redis-py client (with its own connection pool) for a broker or backend URL."""
    rp = _import_redis()
    common: dict[str, Any] = {
        'socket_timeout': transport_options.get('socket_timeout', SOCKET_TIMEOUT),
        'socket_connect_timeout': transport_options.get('socket_connect_timeout', CONNECT_TIMEOUT),
        'socket_keepalive': transport_options.get('socket_keepalive', True),
        'health_check_interval': transport_options.get('health_check_interval', 25),
        'client_name': transport_options.get('client_name'),
    }
    # One immediate retry (a pooled connection the server closed meanwhile reconnects), not redis-py 6's
    # default of ten with backoff: with the server down, that held every call for seconds before fastq's
    # own retry policies (broker_connection_retry, a publish's retry_policy, the fetcher's backoff), which
    # log what they do, even began. kombu builds its pools without that default too.
    common['retry'] = transport_options.get('retry') or rp.retry.Retry(rp.backoff.NoBackoff(), 1)
    if 'retry_on_timeout' in transport_options:  # deprecated in redis-py 6: passed only when asked for
        common['retry_on_timeout'] = transport_options['retry_on_timeout']
    max_connections = transport_options.get('max_connections')
    first = url.split(';')[0]
    scheme = first.partition('://')[0].lower()
    if scheme == 'sentinel':
        return cast('redis.Redis', _sentinel_client(rp, url, conf, transport_options, common, setting))
    kwargs = parse_url(first, setting)
    if 'unix_socket_path' not in kwargs:
        kwargs.update(_ssl_kwargs(scheme, _use_ssl(conf, setting), parse_qs(urlsplit(first).query), setting))
    kwargs.update({k: v for k, v in common.items() if v is not None})
    if 'unix_socket_path' in kwargs:
        kwargs.pop('socket_keepalive', None)
        pool = rp.ConnectionPool(
            connection_class=rp.UnixDomainSocketConnection,
            path=kwargs.pop('unix_socket_path'),
            max_connections=max_connections,
            **kwargs,
        )
        return cast('redis.Redis', rp.Redis(connection_pool=pool))
    return cast('redis.Redis', rp.Redis(max_connections=max_connections, **kwargs))


def _use_ssl(conf: Any, setting: str) -> Any:
    return conf.broker_use_ssl if setting == 'broker_url' else conf.redis_backend_use_ssl


def _sentinel_client(
    redis: Any, url: str, conf: Any, transport_options: dict[str, Any], common: dict[str, Any], setting: str
) -> Any:
    master = transport_options.get('master_name')
    if not master:
        raise ImproperlyConfigured(
            f"{setting}: a sentinel:// URL needs the master's name: "
            "broker_transport_options={'master_name': 'mymaster'}"
        )
    nodes = []
    password = username = None
    db = 0
    for part in url.split(';'):
        parts = urlsplit(part.strip())
        nodes.append((parts.hostname or 'localhost', parts.port or DEFAULT_SENTINEL_PORT))
        password = password or (unquote(parts.password) if parts.password else None)
        username = username or (unquote(parts.username) if parts.username else None)
        if parts.path.strip('/'):
            db = int(parts.path.strip('/'))
    # As kombu: without sentinel_kwargs, redis-py gives the sentinels the socket_* settings (not the master's
    # credentials); min_other_sentinels as given.
    sentinel = redis.sentinel.Sentinel(
        nodes,
        min_other_sentinels=int(transport_options.get('min_other_sentinels') or 0),
        sentinel_kwargs=transport_options.get('sentinel_kwargs') or None,
        **{k: v for k, v in common.items() if v is not None},
    )
    # kombu's Sentinel channel connects to the master with TLS when `broker_use_ssl` says so.
    tls = _ssl_kwargs('sentinel', _use_ssl(conf, setting), {}, setting)
    credentials = {'username': username} if username else {}
    return sentinel.master_for(master, db=db, password=password, **credentials, **tls)


def database_of(url: str) -> int:
    first = url.split(';')[0]
    if first.partition('://')[0].lower() == 'sentinel':
        path = urlsplit(first).path.strip('/')
        return int(path or 0)
    return int(parse_url(first).get('db', 0))


class Commands:
    """Pipelines of commands, one round trip each, on connections of its own that stay open between uses.

    Publishing is a single LPUSH most of the time, and redis-py's client costs as much as the round trip
    around it: its pool polls every borrowed connection for stray data, and each call passes through retry,
    parsing and response-callback layers. Here a connection (a `Link`) is taken from an idle stack, the
    commands are written in one write, the replies read, and the connection put back. Each connection is used
    by one thread at a time (taking and returning one is a single list operation, atomic in CPython); a
    connection that failed is closed before it is returned, so no reply of an interrupted call is ever read as
    another's. A forked child starts with no connections (its parent's sockets are not shared).
    """

    def __init__(self, client: redis.Redis) -> None:
        self.client = client
        from fastq.utils import rediswire  # (needs redis-py, which this module must not import first)

        self._wire = rediswire
        self._idle: list[Link] = []
        self._generation = rediswire.generation

    def take(self) -> Link:
        """A connection for this thread alone until it is given back (`give`)."""
        wire = self._wire
        if self._generation != wire.generation:  # a forked child: its parent's connections are not its own
            self._idle = []
            self._generation = wire.generation
        try:
            return self._idle.pop()
        except IndexError:
            return cast('Link', wire.Link(self.client))

    def give(self, link: Link) -> None:
        self._idle.append(link)

    def execute(self, commands: Sequence[tuple[Any, ...]]) -> list[Any]:
        """Send `commands` in one write and return their replies; an error reply is raised (ResponseError)."""
        link = self.take()
        try:
            replies = link.execute_packed(pack(commands), len(commands))
        finally:
            self.give(link)  # closed by a failure: it connects again when next used
        for reply in replies:
            if isinstance(reply, Exception):
                raise reply
        return replies

    def close(self) -> None:
        idle, self._idle = self._idle, []
        for link in idle:
            link.close()


#: Commands are packed into buffers of about this size: one `sendall` for a publish, a few for a batch,
#: without copying a whole batch into one buffer.
PACK_BUFFER = 256 * 1024
#: Arguments at least this long are sent as they are, not copied into a buffer (event batches of a worker
#: with -E are 50-100 KiB each).
PASS_THROUGH = 32 * 1024


def pack(commands: Sequence[Sequence[Any]]) -> list[bytes]:
    """The RESP encoding of `commands` (str, bytes, int arguments), in buffers of about PACK_BUFFER bytes."""
    return _core.resp_pack(commands, PACK_BUFFER, PASS_THROUGH)
