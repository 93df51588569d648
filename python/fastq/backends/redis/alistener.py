"""The asyncio twin of `listener.py`: one pub/sub connection per event loop, read by one task of that loop.

Any number of `aget()` calls of the loop wait on it. The ordering that makes it lossless is the sync
listener's: a waiter reads the result key only once the server has confirmed the subscription to its
channel, so a result stored before is in the key and one stored after is published to us; after a
reconnect every channel is subscribed again and each confirmation tells its waiters to read again.

Subscriptions asked for while the loop runs other code are sent together, in one SUBSCRIBE, when the loop
next gets to it (200 concurrent `aget()` calls cost one command, not 200). The connection is a plain
asyncio stream read through hiredis: only this listener writes to it and only its task reads it, so
subscribing never waits for, or races with, the reader.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import Counter
from collections.abc import Callable
from typing import Any

from fastq.backends.redis.listener import PING_INTERVAL
from fastq.backends.redis.retry import CONNECTION_ERRORS, policy_intervals
from fastq.brokers.redis.connection import pack
from fastq.utils.aioredis import ConnectionParams, open_redis

__all__ = ['AsyncResultListener', 'AsyncWaiter']

logger = logging.getLogger('fastq.backends.redis')


class AsyncWaiter:
    """One `aget()` waiting on one channel."""

    __slots__ = ('channel', 'error', 'event', 'payloads', 'reread')

    def __init__(self, channel: bytes) -> None:
        self.channel = channel
        self.event = asyncio.Event()
        self.payloads: list[bytes] = []
        self.reread = False
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
        waiters = self._waiters.get(waiter.channel)
        if waiters is not None:
            waiters.discard(waiter)
            if not waiters:
                del self._waiters[waiter.channel]
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
        max_retries = self.retry_policy.get('max_retries', 20)
        retries = 0
        while not self._closed:
            try:
                reader, writer = await open_redis(self.params, select_db=False)
            except CONNECTION_ERRORS as exc:
                if max_retries is not None and retries >= max_retries:
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
            retries, intervals = 0, policy_intervals(self.retry_policy)
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
                writer.close()

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
                ping_sent = True
                continue
            if not data:
                raise ConnectionError('the server closed the pub/sub connection')
            ping_sent = False
            parser.feed(data)
            while (reply := parser.gets()) is not False:
                self._dispatch(reply)

    def _dispatch(self, reply: Any) -> None:
        if not isinstance(reply, list) or len(reply) < 2:
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
                    for waiter in self._waiters.get(channel, ()):
                        waiter.reread = True
                        waiter.event.set()

    def _fail_waiters(self, exc: BaseException) -> None:
        for waiters in self._waiters.values():
            for waiter in waiters:
                if waiter.error is None:
                    waiter.error = self.make_error(exc)
                    waiter.event.set()
