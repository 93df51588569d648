"""A Redis connection for hot paths: commands packed and replies parsed by hiredis, nothing else.

redis-py spends most of a round trip in Python (command objects, retries, response callbacks): about 85 µs
of CPU for a PING on the machines fastq is benchmarked on, against 14 µs for the same round trip written
straight to the socket. The fetcher and the settler make one such call per batch, many times a second, so
they use this instead. Connecting (AUTH, SELECT, TLS, a sentinel's master lookup) is still redis-py's job: a
`Link` asks the client's connection pool for a new connection, lets it do the handshake, and then only
writes to and reads from its socket. Errors come out as redis-py's exception types, so callers' handling
(retry with backoff, logging with the masked URL) is the same for both.

A plain (not TLS) socket is written with `os.write` and read without waiting by `os.read`: redis-py gives its
sockets a timeout, and Python polls such a socket before every send and receive, a system call for nothing
when the buffer has room or the data is there (as it is when a write is small, or select() said readable).
"""

from __future__ import annotations

import os
import select
import socket
import ssl
import threading
from collections.abc import Callable, Sequence
from typing import Any, NoReturn

import hiredis
import redis
import redis.backoff
import redis.exceptions
import redis.retry

from fastq.brokers.redis.connection import pack

Command = Sequence[str | bytes | int | float]

_READ_SIZE = 65536
_NO_RETRY = redis.retry.Retry(redis.backoff.NoBackoff(), 0)

#: Forks this process is from (counted in each child): a connection made in an earlier generation is the
#: parent's. Checked on every call instead of os.getpid(), a system call (glibc does not cache it).
generation = 0


def _forked() -> None:
    global generation
    generation += 1


os.register_at_fork(after_in_child=_forked)


class Link:
    """One connection, used by one thread at a time (a lock makes misuse safe, not fast)."""

    def __init__(self, client: redis.Redis) -> None:
        self._pool = client.connection_pool
        self._conn: Any = None
        self._sock: Any = None
        self._reader: hiredis.Reader | None = None
        self._lock = threading.Lock()
        self._generation = generation
        self._fd = -1  # the socket's descriptor when it is plain (os.write/os.read), else -1 (TLS)
        self._timeout = True  # whether the socket has a timeout (then Python keeps its descriptor non-blocking)

    def _connect(self) -> None:
        # Made as the pool makes its own (so Sentinel's find the master), but not counted in its
        # max_connections: the pool neither hands this connection out nor takes it back.
        pool = self._pool
        # One attempt: redis-py's own retries (10, with backoff, by default in redis-py 6+) would hold a publish
        # for seconds before fastq's retry policy (`retry`, `retry_policy`, the fetcher's backoff) even starts.
        conn: Any = pool.connection_class(**{**pool.connection_kwargs, 'retry': _NO_RETRY})
        conn.connect()
        sock = getattr(conn, '_sock', None)
        if sock is None:
            conn.disconnect()
            raise redis.exceptions.ConnectionError('could not open a connection for the fast path')
        self._conn, self._sock = conn, sock
        self._reader = hiredis.Reader()
        self._generation = generation
        self._fd = -1 if isinstance(sock, ssl.SSLSocket) else sock.fileno()
        self._timeout = sock.gettimeout() is not None

    def close(self) -> None:
        with self._lock:
            self._drop()

    def __del__(self) -> None:
        # An owner that was never closed (a client dropped without close()): close quietly, not with a
        # ResourceWarning, and never a socket inherited from the parent of a fork.
        if self._sock is not None and self._generation == generation:
            try:
                self._sock.close()
            except Exception:  # interpreter shutdown: nothing left to do
                pass

    def _drop(self) -> None:
        conn, self._conn, self._sock, self._reader, self._fd = self._conn, None, None, None, -1
        if conn is not None:
            try:
                conn.disconnect()
            except Exception:  # closing a broken connection: nothing left to do
                pass

    def _after_fork(self) -> None:
        """In a forked child the socket is the parent's: leave it alone, connect anew when used."""
        if self._generation != generation:
            self._lock = threading.Lock()
            self._conn = self._sock = self._reader = None
            self._fd = -1
            self._generation = generation

    def execute(self, commands: Sequence[Command]) -> list[Any]:
        """Send `commands` in one write and return their replies in order.

        Error replies are returned as `redis.exceptions.ResponseError` instances (a pipeline keeps going past
        one); connection failures raise `redis.exceptions.ConnectionError` after dropping the connection,
        so the next call reconnects.
        """
        return self.execute_packed(pack(commands), len(commands))

    def execute_packed(self, buffers: list[bytes], count: int) -> list[Any]:
        """`execute` for commands already in RESP (`pack`): `count` of them, in `buffers`."""
        return self._exchange(buffers, count)

    def send_packed(self, buffers: list[bytes]) -> None:
        """Write commands already in RESP without reading their replies (`receive` them later)."""
        self._exchange(buffers, 0)

    def _exchange(self, buffers: list[bytes], count: int) -> list[Any]:
        """Write `buffers`, then read `count` replies, holding the connection throughout."""
        self._after_fork()
        with self._lock:
            try:
                if self._sock is None:
                    self._connect()
                self._write(buffers)
                return self._receive(count) if count else []
            except BaseException as exc:
                self._fail(exc)

    def receive(self, count: int) -> list[Any]:
        """Wait for the next `count` replies (as `execute` returns them)."""
        with self._lock:
            if self._sock is None:
                raise redis.exceptions.ConnectionError('not connected')
            try:
                return self._receive(count)
            except BaseException as exc:
                self._fail(exc)

    def _receive(self, count: int) -> list[Any]:
        sock, reader = self._sock, self._reader
        assert reader is not None
        replies: list[Any] = []
        while len(replies) < count:
            reply = reader.gets()
            if reply is False:
                data = sock.recv(_READ_SIZE)
                if not data:
                    raise ConnectionError('connection closed by the server')
                reader.feed(data)
                continue
            if isinstance(reply, hiredis.ReplyError):
                reply = _response_error(str(reply))
            replies.append(reply)
        return replies

    def _fail(self, exc: BaseException) -> NoReturn:
        """Drop the connection (after an error, or an interruption mid-reply, the stream position is unknown)
        and raise: I/O and protocol errors as redis-py's ConnectionError, anything else as it is."""
        self._drop()
        if isinstance(exc, OSError | hiredis.ProtocolError):
            raise redis.exceptions.ConnectionError(f'Error while talking to Redis: {exc}') from exc
        raise exc

    # --- split send and receive: for commands that block in Redis (BLMOVE), waited on with select() ----------

    def send(self, command: Command) -> None:
        """Write one command without reading its reply (collect it with `replies` once `fileno` is readable)."""
        self.send_all([command])

    def send_all(self, commands: Sequence[Command]) -> None:
        """Write `commands` in one write without reading their replies (see `send`)."""
        self.send_packed(pack(commands))

    def _write(self, buffers: list[bytes]) -> None:
        """Write all of `buffers` (under the lock, connected)."""
        sock, fd = self._sock, self._fd
        for data in buffers:
            sent = 0
            if fd >= 0:
                try:
                    sent = os.write(fd, data)
                except BlockingIOError:  # the socket's buffer is full: sendall waits for room
                    pass
            if sent < len(data):
                sock.sendall(memoryview(data)[sent:])

    def fileno(self) -> int:
        """The socket's descriptor (-1 when not connected)."""
        sock = self._sock
        return -1 if sock is None else int(sock.fileno())

    def replies(self) -> list[Any]:
        """The replies that have arrived, without blocking (error replies as exception instances)."""
        with self._lock:
            sock, reader = self._sock, self._reader
            if sock is None or reader is None:
                return []
            out: list[Any] = []
            try:
                while (data := self._read_ready()) is not None:
                    if not data:
                        raise ConnectionError('connection closed by the server')
                    reader.feed(data)
                    if len(data) < _READ_SIZE:
                        break
                while (reply := reader.gets()) is not False:
                    out.append(_response_error(str(reply)) if isinstance(reply, hiredis.ReplyError) else reply)
            except (OSError, hiredis.ProtocolError) as exc:
                self._fail(exc)
            return out

    def _read_ready(self) -> bytes | None:
        """What has arrived, without waiting (b'' when the server closed); None when nothing has.

        A socket with a timeout waits inside `recv` whatever the flags (Python polls first), but its descriptor
        is non-blocking: read it directly. One without is blocking: `MSG_DONTWAIT`. TLS takes no flags and
        may hold decrypted bytes select() cannot see."""
        sock, fd = self._sock, self._fd
        try:
            if fd >= 0:
                return os.read(fd, _READ_SIZE) if self._timeout else sock.recv(_READ_SIZE, socket.MSG_DONTWAIT)
        except BlockingIOError:
            return None
        return sock.recv(_READ_SIZE) if _readable(sock) else None

    def call(self, *command: str | bytes | int | float) -> Any:
        """One command; an error reply is raised."""
        reply = self.execute([command])[0]
        if isinstance(reply, redis.exceptions.ResponseError):
            raise reply
        return reply

    def evalsha(self, script: Any, keys: Sequence[Any], args: Sequence[Any], ahead: Sequence[Command] = ()) -> Any:
        """Run a redis-py `Script` by its SHA, loading it when the server does not know it (yet); `ahead`: commands
        written before it, in the same write, whose replies are not looked at. An error reply is raised."""
        reply = self.evalsha_after(ahead, script, keys, args)[1]
        if isinstance(reply, redis.exceptions.ResponseError):
            raise reply
        return reply

    def evalsha_around(
        self,
        script: Any,
        keys: Sequence[Any],
        args: Sequence[Any],
        ahead: Sequence[Command],
        between: Callable[[], None],
    ) -> Any:
        """`evalsha`, with `between` run once the script is written and before its reply is read: work of
        the caller's that overlaps the server's run of the script (it must not raise, nor use this link)."""
        command = ('EVALSHA', script.sha, len(keys), *keys, *args)
        self.send_packed(pack([*ahead, command]))
        between()
        reply = self.receive(len(ahead) + 1)[-1]
        if isinstance(reply, redis.exceptions.NoScriptError):
            return self.evalsha(script, keys, args)
        if isinstance(reply, redis.exceptions.ResponseError):
            raise reply
        return reply

    def evalsha_after(
        self, ahead: Sequence[Command], script: Any, keys: Sequence[Any], args: Sequence[Any]
    ) -> tuple[list[Any], Any]:
        """`ahead`, then the script as `evalsha` runs it, in one write: the replies of `ahead` and the script's
        (error replies as exception instances, the script's too)."""
        command = ('EVALSHA', script.sha, len(keys), *keys, *args)
        replies = self.execute([*ahead, command])
        reply = replies.pop()
        if isinstance(reply, redis.exceptions.NoScriptError):
            self.call('SCRIPT', 'LOAD', script.script)
            reply = self.execute([command])[0]
        return replies, reply


def _readable(sock: Any) -> bool:
    if isinstance(sock, ssl.SSLSocket) and sock.pending():
        return True  # decrypted bytes already buffered: select() cannot see them
    return bool(select.select([sock], [], [], 0)[0])


def _response_error(message: str) -> redis.exceptions.ResponseError:
    if message.startswith('NOSCRIPT'):
        return redis.exceptions.NoScriptError(message)
    return redis.exceptions.ResponseError(message)
