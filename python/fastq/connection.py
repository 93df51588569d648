"""`app.connection()`: kombu's `Connection` interface over the app's broker, for code written against Celery.

Celery's guides pass connections around explicitly (`with app.connection() as conn:` around an event
receiver or `inspect`, `app.pool.acquire()`, `app.producer_or_acquire()`). fastq's clients, receivers and
workers manage their connections themselves (one per process and thread, reconnecting on their own), so a
`Connection` here is a handle: it names the broker (`as_uri()`, `hostname`, ...), checks it is reachable
(`connect`, `ensure_connection`), and is accepted wherever Celery takes `connection=` or `producer=`.
Nothing has to be closed; `release()` and leaving the `with` block are there for the code that does.
"""

from __future__ import annotations

import contextlib
import importlib
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from fastq.exceptions import BrokerConnectionError, OperationalError, publish_failed
from fastq.utils.text import mask_url

if TYPE_CHECKING:
    from fastq.app import Fastq

__all__ = ['Connection', 'ConnectionPool', 'Producer', 'ProducerPool']


class Connection:
    """A handle on the app's broker with kombu's `Connection` methods (see the module docstring)."""

    def __init__(self, app: Fastq, url: str | None = None, **kwargs: Any) -> None:
        self.app = app
        self.url = url or app.broker_url
        self.options = kwargs
        self._connected = False

    # --- what it points at (kombu's attributes) -------------------------------------------------------------

    @property
    def transport_cls(self) -> str:
        return self.url.partition('://')[0]

    @property
    def hostname(self) -> str | None:
        return urlsplit(self.url.split(';')[0]).hostname

    @property
    def port(self) -> int | None:
        try:
            return urlsplit(self.url.split(';')[0]).port
        except ValueError:
            return None

    @property
    def userid(self) -> str | None:
        return urlsplit(self.url.split(';')[0]).username

    @property
    def virtual_host(self) -> str:
        return urlsplit(self.url.split(';')[0]).path.lstrip('/') or '/'

    def as_uri(self, include_password: bool = False, mask: str = '**', **kwargs: Any) -> str:
        if include_password:
            return self.url
        masked = mask_url(self.url)
        return masked.replace(':**@', f':{mask}@') if mask != '**' else masked

    def info(self) -> dict[str, Any]:
        return {
            'hostname': self.hostname,
            'userid': self.userid,
            'port': self.port,
            'virtual_host': self.virtual_host,
            'transport': self.transport_cls,
        }

    # --- reaching it -------------------------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        return self._connected

    def connect(self) -> Connection:
        """Check the broker is reachable (raises `OperationalError` naming the masked URL if not)."""
        try:
            self.app.broker.connect()
        except BrokerConnectionError as exc:
            raise publish_failed(str(exc)) from exc
        self._connected = True
        return self

    def ensure_connection(
        self,
        errback: Callable[[Exception, float], Any] | None = None,
        max_retries: int | None = None,
        interval_start: float = 2,
        interval_step: float = 2,
        interval_max: float = 30,
        callback: Callable[[], Any] | None = None,
        reraise_as_library_errors: bool = True,
        timeout: float | None = None,
    ) -> Connection:
        """`connect`, retried as kombu's (`errback(exc, interval)` before each wait) until it works or
        `max_retries` (None: forever) or `timeout` seconds run out."""
        deadline = None if timeout is None else time.monotonic() + timeout
        interval, retries = float(interval_start), 0
        while True:
            try:
                return self.connect()
            except OperationalError as exc:
                retries += 1
                out_of_time = deadline is not None and time.monotonic() + interval > deadline
                if (max_retries is not None and retries > max_retries) or out_of_time:
                    raise
                if errback is not None:
                    errback(exc, interval)
                if callback is not None:
                    callback()
                time.sleep(interval)
                interval = min(interval + interval_step, interval_max)

    ensure_connection_ready = ensure_connection

    @property
    def default_channel(self) -> Connection:
        return self.connect() if not self._connected else self

    def channel(self) -> Connection:
        return self.default_channel

    def clone(self, **kwargs: Any) -> Connection:
        return Connection(self.app, self.url, **{**self.options, **kwargs})

    def release(self) -> None:
        self._connected = False

    close = release

    def __enter__(self) -> Connection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    def __repr__(self) -> str:
        return f'<Connection: {self.as_uri()} at {id(self):#x}>'


class Producer:
    """What `app.producer_or_acquire()` yields: accepted as `producer=` by `apply_async` (fastq publishes on
    its own connection either way), with the connection it came from."""

    def __init__(self, connection: Connection) -> None:
        self.connection = connection
        self._kombu: Any = None

    def publish(self, body: Any, routing_key: str | None = None, **kwargs: Any) -> Any:
        """kombu's `Producer.publish`, for messages that are not tasks (the Extensions guide's custom
        consumers read them): sent with kombu, which must be installed, on a connection to the same broker."""
        try:
            kombu: Any = importlib.import_module('kombu')  # (optional, and untyped)
        except ImportError:
            raise NotImplementedError(
                'Producer.publish of a non-task message needs kombu (pip install kombu)'
            ) from None
        if self._kombu is None:
            conf = self.connection.app.conf
            self._kombu = kombu.Connection(
                self.connection.url,
                ssl=conf.broker_use_ssl or False,
                transport_options=dict(conf.broker_transport_options or {}),
            )
        return self._kombu.Producer().publish(body, routing_key=routing_key, **kwargs)

    def release(self) -> None:
        conn, self._kombu = self._kombu, None
        if conn is not None:
            conn.release()

    close = release

    def __enter__(self) -> Producer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


class ConnectionPool:
    """`app.pool`: `acquire()` gives a `Connection` (there is no limit to wait on: they hold nothing)."""

    def __init__(self, app: Fastq) -> None:
        self.app = app

    def acquire(self, block: bool = False, timeout: float | None = None) -> Connection:
        return Connection(self.app)

    def release(self, connection: Connection) -> None:
        connection.release()

    def force_close_all(self) -> None:
        pass


class ProducerPool:
    """`app.producer_pool` (`app.amqp.producer_pool`, `publisher_pool`): `acquire()` gives a `Producer` for
    `apply_async(producer=...)`, as the Calling guide's connection reuse does; leaving its `with` block, or
    `release(producer)`, gives it back (there is nothing to wait for: producers hold no connection)."""

    def __init__(self, app: Fastq) -> None:
        self.app = app

    @property
    def limit(self) -> int | None:
        return self.app.conf.broker_pool_limit  # type: ignore[no-any-return]

    def acquire(self, block: bool = False, timeout: float | None = None) -> Producer:
        return Producer(Connection(self.app))

    def release(self, producer: Producer) -> None:
        producer.release()

    def force_close_all(self) -> None:
        pass


@contextlib.contextmanager
def connection_or_acquire(app: Fastq, connection: Any = None) -> Iterator[Any]:
    """`connection` as it is (the caller's to close), or one for the block, released after it (Celery's
    `FallbackContext` over its pool)."""
    if connection is not None:
        yield connection
        return
    with Connection(app) as connection:
        yield connection


@contextlib.contextmanager
def producer_or_acquire(app: Fastq, producer: Any = None) -> Iterator[Any]:
    if producer is not None:
        yield producer
        return
    with Connection(app) as connection, Producer(connection) as producer:
        yield producer
