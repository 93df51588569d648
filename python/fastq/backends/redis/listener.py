"""One pub/sub connection per backend, read by one thread that wakes the `get()` calls a result is for.

Celery's ResultConsumer idea, with one difference: the thread that reads the socket is always the listener,
never a waiting caller, so any number of threads can wait on different tasks without handing the socket around.

The ordering that makes it lossless: a waiter is told to read the result key only once the server has
confirmed the subscription to its channel (a `subscribe` reply on this connection), so a result written
before that is in the key and one written after is published to us. After a lost connection the listener
reconnects (per `retry_policy`), subscribes again, and each confirmation tells the waiters to read again: a
result published while the connection was down is in its key. If reconnecting fails for good, waiters get
the error instead of waiting forever.

Only the listener thread touches the pub/sub connection; waiters register under a lock and wake the thread
through a pipe it selects on, together with the socket.
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import threading
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import redis

from fastq.backends.redis.retry import CONNECTION_ERRORS, gave_up, policy_deadline, policy_intervals

__all__ = ['ResultListener', 'Waiter']

logger = logging.getLogger('fastq.backends.redis')

#: Seconds without traffic after which the listener PINGs the server (unless health_check_interval is set).
PING_INTERVAL = 30.0


class _Stopped(Exception):
    pass


class Waiter:
    """One `get()` waiting on one channel. Fields are written by the listener under its lock."""

    __slots__ = ('channel', 'error', 'event', 'payloads', 'reread')

    def __init__(self, channel: bytes) -> None:
        self.channel = channel
        self.event = threading.Event()
        self.payloads: list[bytes] = []
        self.reread = False
        self.error: BaseException | None = None


class ResultListener:
    """Subscribes to the channels of waiting tasks and hands each message to the waiters of its channel."""

    def __init__(
        self,
        pool: redis.ConnectionPool,
        retry_policy: dict[str, Any],
        make_error: Callable[[BaseException], BaseException],
        ping_interval: float | None = None,
        reply_timeout: float | None = None,
    ) -> None:
        self.pool = pool
        self.retry_policy = retry_policy
        self.make_error = make_error
        self.ping_interval = ping_interval or PING_INTERVAL
        # How long a PING may go unanswered before the connection counts as dead.
        self.reply_timeout = reply_timeout or max(self.ping_interval, 10.0)
        self._lock = threading.Lock()
        self._waiters: dict[bytes, set[Waiter]] = {}
        self._sent: set[bytes] = set()  # channels subscribed on this connection (SUBSCRIBE sent, no UNSUBSCRIBE)
        self._confirmed: set[bytes] = set()  # ... whose subscription the server has confirmed
        self._inflight: Counter[bytes] = Counter()  # SUBSCRIBE/UNSUBSCRIBE replies still to come, per channel
        self._dirty = True  # the waited-on channels changed since the last _sync
        self.connected = False
        self._stopping = False
        self._stop_event = threading.Event()
        self._thread: threading.Thread | None = None
        self._conn: Any = None  # the pub/sub connection, while there is one
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self._pipe_closed = False

    # --- called by waiting threads ------------------------------------------------------------------------

    def subscribe(self, channel: bytes) -> Waiter:
        waiter = Waiter(channel)
        with self._lock:
            if self._stopping:
                raise self.make_error(RuntimeError('the backend was closed'))
            self._waiters.setdefault(channel, set()).add(waiter)
            self._dirty = True
            if channel in self._confirmed:
                waiter.reread = True  # already subscribed: the key can be read now
                waiter.event.set()
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name='fastq-redis-results', daemon=True)
                self._thread.start()
        self._wake()
        return waiter

    def unsubscribe(self, waiter: Waiter) -> None:
        with self._lock:
            waiters = self._waiters.get(waiter.channel)
            if waiters is not None:
                waiters.discard(waiter)
                if not waiters:
                    del self._waiters[waiter.channel]
                    self._dirty = True
        self._wake()

    def take(self, waiter: Waiter, timeout: float | None) -> tuple[list[bytes], bool, bool]:
        """Wait up to `timeout` for news: the payloads published since, whether to read the key (again), and
        whether anything happened at all (False: the wait timed out)."""
        woken = waiter.event.wait(timeout)
        with self._lock:
            if waiter.error is not None:
                raise waiter.error
            payloads, reread = waiter.payloads, waiter.reread
            waiter.payloads, waiter.reread = [], False
            waiter.event.clear()
        return payloads, reread, woken

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the thread and close the connection; anyone still waiting gets an error, not a hang."""
        with self._lock:
            self._stopping = True
            thread = self._thread
        self._stop_event.set()
        self._wake()
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)
        if thread is None:
            self._close_pipe()
        self._fail_waiters(RuntimeError('the backend was closed'))

    def abandon_after_fork(self) -> None:
        """In a forked child: the thread did not survive the fork; close our copies of its descriptors.

        Closing (never shutting down) the inherited socket leaves the parent's subscription alone, and keeps
        the server from holding a connection open for a child that will never read it.
        """
        self._lock = threading.Lock()  # may have been held by a parent thread at the fork
        self._stopping = True
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(Exception):
                conn.disconnect()  # redis-py skips shutdown() in a process other than the one that connected
        self._close_pipe()

    # --- the listener thread ------------------------------------------------------------------------------

    def _wake(self) -> None:
        # Under the lock, so a descriptor number closed (and maybe reused) meanwhile is never written to.
        with self._lock:
            if not self._pipe_closed:
                with contextlib.suppress(BlockingIOError):  # a full pipe wakes it already
                    os.write(self._wake_w, b'x')

    def _drain_wake_pipe(self) -> None:
        with contextlib.suppress(OSError):
            while os.read(self._wake_r, 512):
                pass

    def _close_pipe(self) -> None:
        with self._lock:
            if self._pipe_closed:
                return
            self._pipe_closed = True
            for fd in (self._wake_r, self._wake_w):
                with contextlib.suppress(OSError):
                    os.close(fd)

    def _active(self) -> bool:
        """Whether anyone still waits (waiters already failed don't count)."""
        with self._lock:
            return any(w.error is None for ws in self._waiters.values() for w in ws)

    def _run(self) -> None:
        conn: Any = None
        try:
            while not self._stopping:
                if conn is None:
                    if not self._active():
                        self._idle()
                        continue
                    conn = self._connect()
                    if conn is None:
                        continue
                    self._conn = conn
                try:
                    self._serve(conn)
                except CONNECTION_ERRORS as exc:
                    if not self._stopping:
                        logger.warning('Connection to the Redis result backend lost (%s); reconnecting', exc)
                except Exception as exc:  # a bug must not leave waiters hanging
                    logger.exception('Redis result listener failed; reconnecting')
                    self._fail_waiters(exc)
                    self._stop_event.wait(1.0)
                self._drop(conn)
                conn = self._conn = None
        finally:
            if conn is not None:
                self._drop(conn)
            self._conn = None
            self._close_pipe()

    def _idle(self) -> None:
        with contextlib.suppress(OSError, ValueError):
            select.select([self._wake_r], [], [], None)
        self._drain_wake_pipe()

    def _connect(self) -> Any:
        """A dedicated connection from the pool, retried per `retry_policy`; None when it gave up or no one waits."""
        max_retries = self.retry_policy.get('max_retries', 20)
        intervals = policy_intervals(self.retry_policy)
        deadline = policy_deadline(self.retry_policy)
        retries = 0
        while not self._stopping:
            try:
                try:
                    conn = self.pool.get_connection()
                except TypeError:  # redis-py < 5.3 wants a command name
                    conn = self.pool.get_connection('SUBSCRIBE')
                return conn
            except CONNECTION_ERRORS as exc:
                if gave_up(self.retry_policy, retries, deadline) or not self._active():
                    self._fail_waiters(exc)
                    return None
                delay = next(intervals)
                logger.error('Cannot reach the Redis result backend (%s): retry %s/%s in %.1fs', exc, retries + 1,
                             max_retries or 'Inf', delay)  # fmt: skip
                retries += 1
                self._stop_event.wait(delay)
            except Exception as exc:  # e.g. no such database: retrying will not help
                self._fail_waiters(exc)
                return None
        return None

    def _drop(self, conn: Any) -> None:
        with self._lock:
            self.connected = False
            self._sent.clear()
            self._confirmed.clear()
            self._inflight.clear()
            self._dirty = True
        with contextlib.suppress(Exception):
            conn.disconnect()
        with contextlib.suppress(Exception):
            self.pool.release(conn)

    def _fail_waiters(self, exc: BaseException) -> None:
        with self._lock:
            for waiters in self._waiters.values():
                for waiter in waiters:
                    if waiter.error is None:
                        waiter.error = self.make_error(exc)  # one each: they are raised in different threads
                        waiter.event.set()

    def _serve(self, conn: Any) -> None:
        with self._lock:
            self.connected = True
        last_reply = time.monotonic()
        ping_sent: float | None = None
        while not self._stopping:
            self._sync(conn)
            # _sock is redis-py's; None means disconnected (and can_read() would quietly reconnect, unsubscribed).
            sock = getattr(conn, '_sock', None)
            if sock is None:
                raise redis.ConnectionError('pub/sub connection closed')
            if not conn.can_read(timeout=0):  # first: the parser may hold data select() cannot see
                now = time.monotonic()
                if ping_sent is None:
                    wait = max(0.0, self.ping_interval - (now - last_reply))
                else:
                    wait = max(0.0, self.reply_timeout - (now - ping_sent))
                readable, _, _ = select.select([sock, self._wake_r], [], [], wait)
                if self._wake_r in readable:
                    self._drain_wake_pipe()
                if sock not in readable:
                    now = time.monotonic()
                    if ping_sent is not None and now - ping_sent >= self.reply_timeout:
                        raise redis.TimeoutError(f'no reply to PING in {self.reply_timeout:.0f}s')
                    if ping_sent is None and now - last_reply >= self.ping_interval:
                        conn.send_command('PING', check_health=False)
                        ping_sent = now
                    continue
            reply = conn.read_response()
            last_reply = time.monotonic()
            ping_sent = None
            self._dispatch(reply)

    def _sync(self, conn: Any) -> None:
        """Bring the connection's subscriptions in line with the channels someone waits on."""
        with self._lock:
            if not self._dirty:
                return
            self._dirty = False
            wanted = self._waiters.keys()
            subscribe = [channel for channel in wanted if channel not in self._sent]
            unsubscribe = [channel for channel in self._sent if channel not in wanted]
            self._sent.update(subscribe)
            self._sent.difference_update(unsubscribe)
            self._confirmed.difference_update(unsubscribe)
            self._inflight.update(subscribe)
            self._inflight.update(unsubscribe)
        if subscribe:
            conn.send_command('SUBSCRIBE', *subscribe, check_health=False)
        if unsubscribe:
            conn.send_command('UNSUBSCRIBE', *unsubscribe, check_health=False)

    def _dispatch(self, reply: Any) -> None:
        if not isinstance(reply, list) or len(reply) < 2:
            return
        kind, channel = reply[0], reply[1]
        with self._lock:
            if kind == b'message':
                for waiter in self._waiters.get(channel, ()):
                    waiter.payloads.append(reply[2])
                    waiter.event.set()
            elif kind in (b'subscribe', b'unsubscribe'):
                self._inflight[channel] -= 1
                if self._inflight[channel] <= 0:
                    del self._inflight[channel]
                    # Only the last reply counts: an earlier `subscribe` may predate an UNSUBSCRIBE sent since.
                    if kind == b'subscribe' and channel in self._sent:
                        self._confirmed.add(channel)
                        for waiter in self._waiters.get(channel, ()):
                            waiter.reread = True
                            waiter.event.set()
