"""The asyncio twin of `listener.py`: one pub/sub connection per event loop, read by one task of that loop.

Any number of `aget()` calls of the loop wait on it. The ordering that makes it lossless is the sync
listener's: a waiter reads the result key only once the server has confirmed the subscription to its
channel, so a result stored before is in the key and one stored after is published to us; after a
reconnect every channel is subscribed again and each confirmation tells its waiters to read again.

Subscriptions asked for while the loop runs other code are sent together, in one SUBSCRIBE, when the loop
next gets to it (200 concurrent `aget()` calls cost one command, not 200). The connection is a plain
asyncio stream read through hiredis: only this listener writes to it and only its task reads it, so
subscribing never waits for, or races with, the reader.

Where the server speaks RESP3 (Redis 6+), the connection does so, and each SUBSCRIBE is followed in the same
write by a GET of each new channel's key (the channel is the key's name): Redis runs them in that order, so
the GET's reply is the read a confirmed subscription calls for, without the waiter's own round trip after
the confirmation (as `inline.py` does for a waiting thread). Replies are told apart by shape: pushes are
lists, a GET's (or a PING's) reply is not, and those come in the order the commands were written.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import Counter, deque
from collections.abc import Callable
from typing import Any

from fastq.backends.redis.listener import PING_INTERVAL
from fastq.backends.redis.retry import CONNECTION_ERRORS, gave_up, policy_deadline, policy_intervals
from fastq.brokers.redis.connection import pack
from fastq.utils.aioredis import ConnectionParams, open_redis

__all__ = ['AsyncResultListener', 'AsyncWaiter']

logger = logging.getLogger('fastq.backends.redis')


#: Channels no one waits on any more that may stay subscribed until the next subscription's write.
LEAVE_AFTER = 256


class AsyncWaiter:
    """One `aget()` waiting on one channel."""

    __slots__ = ('channel', 'confirmed', 'error', 'event', 'payloads', 'reread')

    def __init__(self, channel: bytes) -> None:
        self.channel = channel
        self.event = asyncio.Event()
        self.payloads: list[bytes] = []
        self.reread = False  # read the key now (the subscription is confirmed, and nothing read it for us)
        self.confirmed = False  # subscribed, and the key was read after: what it held is in `payloads`
        self.error: BaseException | None = None


class AsyncResultListener:
    """Subscribes to the channels of waiting tasks and hands each message to the waiters of its channel."""

    def __init__(
        self,
        params: ConnectionParams,
        retry_policy: dict[str, Any],
        make_error: Callable[[BaseException], BaseException],
        ping_interval: float | None = None,
        reply_timeout: float | None = None,
    ) -> None:
        self.params = params
        self.retry_policy = retry_policy
        self.make_error = make_error
        self.ping_interval = ping_interval or PING_INTERVAL
        self.reply_timeout = reply_timeout or max(self.ping_interval, 10.0)
        self._waiters: dict[bytes, set[AsyncWaiter]] = {}
        self._sent: set[bytes] = set()
        self._confirmed: set[bytes] = set()
        self._inflight: Counter[bytes] = Counter()
        self._writer: asyncio.StreamWriter | None = None
        self._task: asyncio.Task[None] | None = None
        self._flush_scheduled = False
        self._closed = False
        self._resp3 = True  # until the server refuses HELLO 3
        self._replies: deque[bytes | None] = deque()  # per GET (its key) or PING (None) written, in order

    # --- called by waiting coroutines ---------------------------------------------------------------------

    def subscribe(self, channel: bytes) -> AsyncWaiter:
        if self._closed:
            raise self.make_error(RuntimeError('the backend was closed'))
        waiter = AsyncWaiter(channel)
        self._waiters.setdefault(channel, set()).add(waiter)
        if channel in self._confirmed:
            waiter.reread = True  # already subscribed: the key can be read now
            waiter.event.set()
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._run(), name='fastq-redis-results')
        self._schedule_flush()
        return waiter

    def unsubscribe(self, waiter: AsyncWaiter) -> None:
        """A wait ended. Its channel is left with the next subscription's write (a write less per `aget()`,
        on the way to the caller's next call), or once LEAVE_AFTER channels wait to be left; a message that
        comes on it meanwhile has no waiter and is dropped."""
        waiters = self._waiters.get(waiter.channel)
        if waiters is not None:
            waiters.discard(waiter)
            if not waiters:
                del self._waiters[waiter.channel]
                if len(self._sent) - len(self._waiters) >= LEAVE_AFTER:
                    self._schedule_flush()

    async def take(self, waiter: AsyncWaiter, timeout: float | None) -> tuple[list[bytes], bool, bool]:
        """Wait up to `timeout` for news: the payloads published since, whether to read the key (again), and
        whether anything happened at all (False: the wait timed out)."""
        woken = True
        if not waiter.event.is_set():
            try:
                async with asyncio.timeout(timeout):
                    await waiter.event.wait()
            except TimeoutError:
                woken = False
        if waiter.error is not None:
            raise waiter.error
        payloads, reread = waiter.payloads, waiter.reread
        waiter.payloads, waiter.reread = [], False
        waiter.event.clear()
        return payloads, reread, woken

    async def close(self) -> None:
        """Stop reading and close the connection; anyone still waiting gets an error, not a hang."""
        self._closed = True
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._fail_waiters(RuntimeError('the backend was closed'))

    # --- the reader task ----------------------------------------------------------------------------------

    def _schedule_flush(self) -> None:
        if not self._flush_scheduled and self._writer is not None:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        """Bring the connection's subscriptions in line with the channels someone waits on (one write)."""
        self._flush_scheduled = False
        writer = self._writer
        if writer is None:
            return
        wanted = self._waiters.keys()
        subscribe = [channel for channel in wanted if channel not in self._sent]
        unsubscribe = [channel for channel in self._sent if channel not in wanted]
        commands: list[tuple[Any, ...]] = []
        if subscribe:
            commands.append(('SUBSCRIBE', *subscribe))
            if self._resp3:
                commands.extend(('GET', channel) for channel in subscribe)
                self._replies.extend(subscribe)
        if unsubscribe:
            commands.append(('UNSUBSCRIBE', *unsubscribe))
        if not commands:
            return
        self._sent.update(subscribe)
        self._sent.difference_update(unsubscribe)
        self._confirmed.difference_update(unsubscribe)
        self._inflight.update(subscribe)
        self._inflight.update(unsubscribe)
        writer.writelines(pack(commands))

    async def _run(self) -> None:
        intervals = policy_intervals(self.retry_policy)
        deadline = policy_deadline(self.retry_policy)
        max_retries = self.retry_policy.get('max_retries', 20)
        retries = 0
        while not self._closed:
            try:
                reader, writer = await open_redis(self.params, select_db=self._resp3)  # GETs need the database
                if self._resp3:
                    await self._hello(reader, writer)
            except CONNECTION_ERRORS as exc:
                if gave_up(self.retry_policy, retries, deadline):
                    self._fail_waiters(exc)
                    return
                retries += 1
                delay = next(intervals)
                logger.error('Cannot reach the Redis result backend (%s): retry %s/%s in %.1fs', exc, retries,
                             max_retries or 'Inf', delay)  # fmt: skip
                await asyncio.sleep(delay)
                continue
            except Exception as exc:  # e.g. refused credentials: retrying will not help
                self._fail_waiters(exc)
                return
            retries, intervals, deadline = 0, policy_intervals(self.retry_policy), policy_deadline(self.retry_policy)
            self._writer = writer
            try:
                self._flush()
                await self._serve(reader, writer)
            except CONNECTION_ERRORS as exc:
                if not self._closed:
                    logger.warning('Connection to the Redis result backend lost (%s); reconnecting', exc)
            except Exception as exc:  # a bug must not leave waiters hanging
                logger.exception('Redis result listener failed; reconnecting')
                self._fail_waiters(exc)
                await asyncio.sleep(1.0)
            finally:
                self._writer = None
                self._sent.clear()
                self._confirmed.clear()
                self._inflight.clear()
                self._replies.clear()
                writer.close()

    async def _hello(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Switch the connection to RESP3; where the server cannot, stay on RESP2 for good (`_resp3`)."""
        import hiredis

        writer.writelines(pack([('HELLO', '3')]))
        parser = hiredis.Reader()
        async with asyncio.timeout(self.reply_timeout):
            while (reply := parser.gets()) is False:
                data = await reader.read(65536)
                if not data:
                    raise ConnectionError('the server closed the connection')
                parser.feed(data)
        if isinstance(reply, hiredis.ReplyError):
            logger.debug('No RESP3 on the result backend (%s): a waiter reads its key once subscribed', reply)
            self._resp3 = False

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        import hiredis

        parser = hiredis.Reader()
        ping_sent = False
        while True:
            try:
                async with asyncio.timeout(self.reply_timeout if ping_sent else self.ping_interval):
                    data = await reader.read(65536)
            except TimeoutError:
                if ping_sent:
                    raise ConnectionError(f'no reply to PING in {self.reply_timeout:.0f}s') from None
                writer.writelines(pack([('PING',)]))
                if self._resp3:
                    self._replies.append(None)
                ping_sent = True
                continue
            if not data:
                raise ConnectionError('the server closed the pub/sub connection')
            ping_sent = False
            parser.feed(data)
            while (reply := parser.gets()) is not False:
                self._dispatch(reply)

    def _dispatch(self, reply: Any) -> None:
        if not isinstance(reply, list):
            if self._resp3 and self._replies:
                self._read_reply(self._replies.popleft(), reply)
            return
        if len(reply) < 2:
            return
        kind, channel = reply[0], reply[1]
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
                    if not self._resp3:  # (on RESP3 the GET written behind the SUBSCRIBE is this read)
                        for waiter in self._waiters.get(channel, ()):
                            waiter.reread = True
                            waiter.event.set()

    def _read_reply(self, key: bytes | None, reply: Any) -> None:
        """The reply to a GET of `key` written behind its SUBSCRIBE (None: a PING's)."""
        if key is None:
            return
        import hiredis

        for waiter in self._waiters.get(key, ()):
            if isinstance(reply, hiredis.ReplyError):
                waiter.reread = True  # read it the usual way, which reports the error
            else:
                waiter.confirmed = True
                if reply is not None:
                    waiter.payloads.append(reply)
            waiter.event.set()

    def _fail_waiters(self, exc: BaseException) -> None:
        for waiters in self._waiters.values():
            for waiter in waiters:
                if waiter.error is None:
                    waiter.error = self.make_error(exc)
                    waiter.event.set()
