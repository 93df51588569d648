"""The memcached client, made exactly as Celery 5.7's cache backend makes it (`get_memcache_client`), with
pymemcache: the same class for the same servers (a `HashClient` for several), so Celery and fastq send every key
to the same server, and the same option handling.
"""

from __future__ import annotations

import logging
import os
import threading
from typing import Any

from fastq.exceptions import ImproperlyConfigured

__all__ = ['DEFAULT_CLIENT_OPTIONS', 'ClientPerThread', 'make_client', 'parse_servers']

logger = logging.getLogger('fastq.backends.cache')

try:
    from pymemcache.client.base import Client
    from pymemcache.client.hash import HashClient
    from pymemcache.client.retrying import RetryingClient
except ImportError as exc:  # pragma: no cover - the message is the point
    raise ImproperlyConfigured(
        'The memcached result backend (cache+memcached://) requires pymemcache, the client Celery 5.7 uses: '
        'pip install pymemcache (or pip install "fastq[memcache]")'
    ) from exc

#: Celery's defaults under `cache_backend_options`: wait for the server's reply (a failed write raises) and
#: never block forever on a server that does not answer.
DEFAULT_CLIENT_OPTIONS: dict[str, Any] = {'default_noreply': False, 'connect_timeout': 5.0, 'timeout': 5.0}
#: pylibmc's options, which Celery drops (with a deprecation warning) before making the client.
PYLIBMC_ONLY_OPTIONS = ('behaviors', 'binary')
#: `cache_backend_options` that make Celery wrap the client in a RetryingClient, by RetryingClient's names.
RETRY_OPTIONS = {
    'retry_attempts': 'attempts',
    'retry_delay': 'retry_delay',
    'retry_for': 'retry_for',
    'do_not_retry_for': 'do_not_retry_for',
}


def parse_servers(spec: str) -> tuple[str, list[str]]:
    """`memcached://host:port;host2:port/` -> ('memcached', ['host:port', 'host2:port']), as Celery splits it."""
    kind, _, servers = spec.partition('://')
    return kind, [server for server in servers.rstrip('/').split(';') if server]


def make_client(servers: list[str], options: dict[str, Any]) -> Any:
    """A pymemcache client for `servers`, with `cache_backend_options` applied over Celery's defaults."""
    kwargs = dict(options)
    for option in PYLIBMC_ONLY_OPTIONS:
        if kwargs.pop(option, None) is not None:
            logger.warning('The %r cache backend option is only supported by pylibmc and is ignored', option)
    kwargs = {**DEFAULT_CLIENT_OPTIONS, **kwargs}
    retry = {name: kwargs.pop(option) for option, name in RETRY_OPTIONS.items() if option in kwargs}
    if not servers:
        raise ImproperlyConfigured('result_backend: no memcache servers provided')
    client = HashClient(servers, **kwargs) if len(servers) > 1 else Client(servers[0], **kwargs)
    if retry.get('attempts') is not None:
        return RetryingClient(client, **{k: v for k, v in retry.items() if v is not None})
    return client


class ClientPerThread:
    """One client per thread (a pymemcache client is one socket, not safe to share) and per process (a forked
    child must not talk on its parent's sockets)."""

    def __init__(self, servers: list[str], options: dict[str, Any]) -> None:
        self.servers = servers
        self.options = options
        self._local = threading.local()
        self._lock = threading.Lock()
        self._all: list[Any] = []
        self._pid = os.getpid()

    def get(self) -> Any:
        if self._pid != os.getpid():  # a forked child: the parent's clients are the parent's
            with self._lock:
                self._pid, self._all, self._local = os.getpid(), [], threading.local()
        client = getattr(self._local, 'client', None)
        if client is None:
            client = self._local.client = make_client(self.servers, self.options)
            with self._lock:
                self._all.append(client)
        return client

    def close(self) -> None:
        with self._lock:
            clients, self._all, self._local = self._all, [], threading.local()
        if self._pid != os.getpid():
            return
        for client in clients:
            try:
                client.close()
            except Exception:  # closing is best effort
                logger.debug('closing a memcached client failed', exc_info=True)
