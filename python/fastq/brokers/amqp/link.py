"""One AMQP connection and the thread that owns it.

rabbitmq-c is not thread-safe and answers heartbeats only inside its own calls, so every call on a
connection happens in one I/O thread: other threads hand it commands (a function of the connection) through a
queue and a wakeup pipe, and wait on a future with a timeout (so Ctrl-C reaches them). Between commands the
thread sits in `Connection.wait`, which reads deliveries and publisher confirms and answers heartbeats with the
GIL released, so a busy worker or an idle web process keeps its connection.

When the connection is lost, every pending command and unconfirmed publish fails with BrokerConnectionError,
and the thread reconnects with backoff (logging the URL with its password masked), runs the `on_connect` hooks
(declare, consume) and goes on; what a consumer held unacked comes back from the broker by itself.
"""

from __future__ import annotations

import logging
import os
import select
import threading
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any, TypeVar

from fastq import _amqp
from fastq.exceptions import AMQPChannelError, BrokerConnectionError, OperationalError

logger = logging.getLogger('fastq.brokers.amqp')

T = TypeVar('T')

#: Channels of every link: publishing (confirms on), consuming (qos, acks), everything else (declarations, get,
#: purge), so a 406 from a declaration never closes the channel that has unconfirmed publishes or deliveries.
CH_PUBLISH = 1
CH_CONSUME = 2
CH_ADMIN = 3
MAX_BACKOFF = 5.0


@dataclass(frozen=True, slots=True)
class Endpoint:
    """Where and how to connect: one of the `;`-separated failover URLs."""

    url: str  # for logs, password masked
    host: str
    port: int
    vhost: str
    user: str
    password: str
    heartbeat: int
    connect_timeout: float
    ssl: dict[str, Any] | None


class _Batch:
    """Publishes waiting for the broker's confirms: done when all are acked, failed on a nack."""

    __slots__ = ('error', 'future', 'remaining')

    def __init__(self, count: int) -> None:
        self.remaining = count
        self.error: Exception | None = None
        self.future: Future[None] = Future()

    def settle(self, ok: bool) -> None:
        if not ok and self.error is None:
            self.error = OperationalError('the broker refused a published message (basic.nack)')
        self.remaining -= 1
        if self.remaining == 0 and not self.future.done():
            if self.error is None:
                self.future.set_result(None)
            else:
                self.future.set_exception(self.error)


class Link:
    """A connection owned by a thread of its own; `call` runs a function of the connection in that thread."""

    def __init__(self, endpoints: Sequence[Endpoint], name: str, confirms: bool = True) -> None:
        self.endpoints = list(endpoints)
        self.name = name
        self.confirms = confirms
        self.conn: _amqp.Connection | None = None
        self.generation = 0  # bumped on every new connection: delivery tags of older ones are void
        self.on_connect: list[Callable[[_amqp.Connection], None]] = []
        self.on_deliver: Callable[[tuple[Any, ...]], None] | None = None
        #: Called after the events of each read (the deliveries of one read are handed on together).
        self.on_events_done: Callable[[], None] | None = None
        self.on_lost: list[Callable[[], None]] = []
        self._commands: deque[tuple[Callable[[_amqp.Connection], Any], Future[Any]]] = deque()
        self._unconfirmed: deque[tuple[int, _Batch]] = deque()
        self._seq = 0
        self._open_channels: set[int] = set()
        self._lock = threading.Lock()
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._thread: threading.Thread | None = None
        self._stopping = False
        self._connected = threading.Event()
        self._endpoint_index = 0
        self.last_error: Exception | None = None
        self._pid = os.getpid()

    def _after_fork(self) -> None:
        """In a forked child the thread and the connection are the parent's: start over with fresh ones."""
        self._pid = os.getpid()
        self._lock = threading.Lock()
        self._thread = None
        self.conn = None
        self._connected = threading.Event()
        self._commands.clear()
        self._unconfirmed.clear()
        self._open_channels.clear()
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)

    @property
    def describe(self) -> str:
        return self.endpoints[self._endpoint_index].url

    # --- used from any thread -----------------------------------------------------------------------------

    def start(self, timeout: float) -> None:
        """Start the thread (once) and wait up to `timeout` for the first connection."""
        if self._pid != os.getpid():
            self._after_fork()
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name=f'fastq-amqp-{self.name}', daemon=True)
                self._thread.start()
        if not self._connected.wait(timeout):
            error = self.last_error or 'timed out'
            raise BrokerConnectionError(f'cannot connect to {self.describe}: {error}')

    def submit(self, fn: Callable[[_amqp.Connection], T]) -> Future[T]:
        future: Future[T] = Future()
        self._commands.append((fn, future))
        self._wake()
        return future

    def call(self, fn: Callable[[_amqp.Connection], T], timeout: float = 30.0) -> T:
        """Run `fn(connection)` in the I/O thread and return its result (or raise its exception)."""
        self.start(timeout)
        return self.submit(fn).result(timeout)

    def publish(self, messages: Sequence[tuple[str, str, bytes, dict[str, Any]]], timeout: float) -> None:
        """Publish (exchange, routing_key, body, properties) messages; with confirms, return once the broker
        has every one of them (raise if it refused one or the connection dropped first)."""
        self.start(timeout)

        def send(conn: _amqp.Connection) -> Future[None] | None:
            self._ensure_channel(conn, CH_PUBLISH)
            batch = _Batch(len(messages)) if self.confirms else None
            for exchange, routing_key, body, properties in messages:
                conn.publish(CH_PUBLISH, exchange, routing_key, body, properties, False)
                if batch is not None:
                    self._seq += 1
                    self._unconfirmed.append((self._seq, batch))
            return None if batch is None else batch.future

        confirmed = self.submit(send).result(timeout)
        if confirmed is not None:
            confirmed.result(timeout)

    def _wake(self) -> None:
        try:
            os.write(self._wake_w, b'!')
        except (BlockingIOError, OSError):
            pass

    def close(self) -> None:
        self._stopping = True
        self._wake()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(5.0)
        for fd in (self._wake_r, self._wake_w):
            try:
                os.close(fd)
            except OSError:
                pass
        self._wake_r = self._wake_w = -1

    # --- the I/O thread -----------------------------------------------------------------------------------

    def _ensure_channel(self, conn: _amqp.Connection, channel: int) -> None:
        if channel in self._open_channels:
            return
        conn.open_channel(channel)
        if channel == CH_PUBLISH and self.confirms:
            conn.confirm_select(channel)
            self._seq = 0
        self._open_channels.add(channel)

    def ensure_channel(self, conn: _amqp.Connection, channel: int) -> None:
        """Open `channel` unless open (from the I/O thread: inside a function given to `call`)."""
        self._ensure_channel(conn, channel)

    def _connect(self) -> _amqp.Connection:
        errors = []
        for offset in range(len(self.endpoints)):
            index = (self._endpoint_index + offset) % len(self.endpoints)
            ep = self.endpoints[index]
            try:
                conn = _amqp.Connection(
                    ep.host, ep.port, ep.vhost, ep.user, ep.password, ep.heartbeat, 131072,
                    ep.connect_timeout, max(ep.connect_timeout, 30.0), ep.ssl,
                )  # fmt: skip
            except BrokerConnectionError as exc:
                errors.append(f'{ep.url}: {exc}')
                continue
            self._endpoint_index = index
            return conn
        raise BrokerConnectionError('; '.join(errors))

    def _run(self) -> None:
        backoff = 0.0
        while not self._stopping:
            try:
                conn = self._connect()
                self._open_channels.clear()
                for hook in self.on_connect:
                    hook(conn)
            except Exception as exc:
                self.last_error = exc
                self._fail_commands(exc)
                backoff = min(max(backoff * 2, 0.2), MAX_BACKOFF)
                logger.error('Cannot connect to %s: %s. Trying again in %.1f s', self.describe, exc, backoff)
                self._sleep(backoff)
                continue
            if backoff:
                logger.info('Connected to %s', self.describe)
            backoff = 0.0
            self.generation += 1  # before `conn`: with a connection up, `generation` is always its own
            self.conn = conn
            self.last_error = None
            self._connected.set()
            try:
                self._serve(conn)
            except BrokerConnectionError as exc:
                if not self._stopping:
                    logger.warning('Connection to %s lost: %s; reconnecting', self.describe, exc)
                self.last_error = exc
            except Exception as exc:  # a bug must not end the thread that owns the connection: start over
                logger.exception('AMQP I/O thread for %s failed; reconnecting', self.describe)
                self.last_error = exc
            finally:
                self._connected.clear()
                self.conn = None
                conn.close()
                self._lost(BrokerConnectionError(f'connection to {self.describe} lost'))
        self._fail_commands(BrokerConnectionError(f'connection to {self.describe} closed'))

    def _sleep(self, seconds: float) -> None:
        if self._wake_r >= 0:
            select.select([self._wake_r], [], [], seconds)
            self._drain_wake()

    def _drain_wake(self) -> None:
        try:
            while os.read(self._wake_r, 4096):
                pass
        except (BlockingIOError, OSError):
            pass

    def _fail_commands(self, exc: Exception) -> None:
        while self._commands:
            _, future = self._commands.popleft()
            if not future.done():
                future.set_exception(BrokerConnectionError(f'{self.describe}: {exc}'))

    def _lost(self, exc: Exception) -> None:
        self._fail_commands(exc)
        while self._unconfirmed:
            _, batch = self._unconfirmed.popleft()
            if not batch.future.done():
                batch.future.set_exception(exc)
        for hook in self.on_lost:
            try:
                hook()
            except Exception:
                logger.exception('on_lost hook failed')

    def _serve(self, conn: _amqp.Connection) -> None:
        while not self._stopping:
            while self._commands:
                fn, future = self._commands.popleft()
                if not future.set_running_or_notify_cancel():
                    continue
                try:
                    result = fn(conn)
                except AMQPChannelError as exc:
                    # Only that channel is closed: "reopening" one still open would be a second channel.open,
                    # which the broker answers by closing the whole connection (504 CHANNEL_ERROR).
                    if exc.channel is None:
                        self._open_channels.clear()  # which one closed is unknown: reopen lazily
                    else:
                        self._open_channels.discard(exc.channel)
                    if exc.channel in (None, CH_PUBLISH):
                        self._channel_lost(exc)  # its unconfirmed publishes are lost with it
                    future.set_exception(exc)
                except BrokerConnectionError as exc:
                    future.set_exception(exc)
                    raise
                except Exception as exc:
                    future.set_exception(exc)
                else:
                    future.set_result(result)
            for event in conn.wait(0.0 if self._commands else 1.0, self._wake_r):
                self._on_event(event)
            if self.on_events_done is not None:
                self.on_events_done()
            self._drain_wake()

    def _channel_lost(self, exc: Exception) -> None:
        while self._unconfirmed:
            _, batch = self._unconfirmed.popleft()
            if not batch.future.done():
                batch.future.set_exception(exc)

    def _on_event(self, event: tuple[Any, ...]) -> None:
        kind = event[0]
        if kind == _amqp.DELIVER:
            if self.on_deliver is not None:
                try:
                    self.on_deliver(event)
                except Exception:  # unacked, it comes back when the connection is renewed
                    logger.exception('Cannot take delivery %s from %s', event[3], self.describe)
        elif kind == _amqp.CONFIRM_ACK or kind == _amqp.CONFIRM_NACK:
            self._on_confirm(event[2], event[3], kind == _amqp.CONFIRM_ACK)
        elif kind == _amqp.CHANNEL_CLOSED:
            channel, code, text = event[1], event[2], event[3]
            logger.error('RabbitMQ closed channel %d of %s: %s %s', channel, self.describe, code, text)
            self._open_channels.discard(channel)
            if channel == CH_PUBLISH:
                self._channel_lost(AMQPChannelError(code, text, channel))
            if channel == CH_CONSUME:
                # The consumer's deliveries are back in their queues; consume again on a fresh channel.
                raise BrokerConnectionError(f'consuming channel closed: {code} {text}')
        elif kind == _amqp.CANCELLED:
            raise BrokerConnectionError(f'the broker cancelled consumer {event[2]} (queue deleted?)')

    def _on_confirm(self, tag: int, multiple: bool, ok: bool) -> None:
        pending = self._unconfirmed
        if multiple:
            while pending and pending[0][0] <= tag:
                pending.popleft()[1].settle(ok)
        elif pending and pending[0][0] == tag:
            pending.popleft()[1].settle(ok)
        else:
            for i, (seq, batch) in enumerate(pending):
                if seq == tag:
                    del pending[i]
                    batch.settle(ok)
                    break

    def wait_connected(self, timeout: float) -> bool:
        return self._connected.wait(timeout)
