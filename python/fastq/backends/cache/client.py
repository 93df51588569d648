"""The memcached client, made exactly as Celery 5.7's cache backend makes it (`get_memcache_client`), with
pymemcache: the same class for the same servers (a `HashClient` for several), so Celery and fastq send every key
to the same server, and the same option handling.
"""

from __future__ import annotations

import logging
import os
import threading
import weakref
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


class _Owned:
    """A thread's client, closed when that thread ends: its thread-local slot is dropped then, and with it
    this holder. (Clients were kept in a list until `close()`, so every thread that ever used the backend, e.g.
    each `AsyncResult.then()` or each request thread of a web server, left a memcached connection open.)"""

    __slots__ = ('__weakref__', 'client', 'pid')

    def __init__(self, client: Any) -> None:
        self.client = client
        self.pid = os.getpid()

    def close(self) -> None:
        client, self.client = self.client, None
        if client is None or self.pid != os.getpid():  # (never the socket of the parent of a fork)
            return
        try:
            client.close()
        except Exception:  # closing is best effort
            logger.debug('closing a memcached client failed', exc_info=True)

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # interpreter shutdown: nothing left to do
            pass


#: Every ClientPerThread, so a forked child can start afresh (see `_after_fork_in_child`).
_LIVE: weakref.WeakSet[ClientPerThread] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    # Another thread of the parent may have held the lock as it forked: the child would wait for it forever.
    for clients in list(_LIVE):
        clients._reset()


os.register_at_fork(after_in_child=_after_fork_in_child)


class ClientPerThread:
    """One client per thread (a pymemcache client is one socket, not safe to share) and per process (a forked
    child must not talk on its parent's sockets); a thread's client is closed when the thread ends."""

    def __init__(self, servers: list[str], options: dict[str, Any]) -> None:
        self.servers = servers
        self.options = options
        self._reset()
        _LIVE.add(self)

    def _reset(self) -> None:
        self._local = threading.local()
        self._lock = threading.Lock()
        self._all: weakref.WeakSet[_Owned] = weakref.WeakSet()
        self._pid = os.getpid()

    def get(self) -> Any:
        if self._pid != os.getpid():  # a forked child: the parent's clients are the parent's
            self._reset()
        owned: _Owned | None = getattr(self._local, 'client', None)
        if owned is None or owned.client is None:
            owned = self._local.client = _Owned(make_client(self.servers, self.options))
            with self._lock:
                self._all.add(owned)
        return owned.client

    def close(self) -> None:
        with self._lock:
            owned, self._all, self._local = list(self._all), weakref.WeakSet(), threading.local()
        for slot in owned:
            slot.close()
