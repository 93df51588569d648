"""Result backend on Redis, with Celery's key layout: Celery clients and workers read what fastq stores, and back.

URLs:
    `redis://[[user]:password@]host[:port][/db]`, `rediss://...?ssl_cert_reqs=CERT_REQUIRED` (TLS; also
    `ssl_ca_certs`, `ssl_certfile`, `ssl_keyfile`), `redis+socket:///path/to/redis.sock?virtual_host=<db>`,
    `sentinel://host:26379[/db];sentinel://host2:26379` with `master_name` in the transport options.
    Query parameters redis-py knows (`socket_timeout`, `health_check_interval`, ...) override the settings.
Settings read:
    `redis_socket_timeout`, `redis_socket_connect_timeout`, `redis_retry_on_timeout`, `redis_socket_keepalive`,
    `redis_max_connections`, `redis_backend_health_check_interval`, `redis_backend_use_ssl`, `redis_username`,
    `redis_password`, `redis_client_name`, `redis_backend_credential_provider`, `result_expires`,
    `result_failure_expires`, `result_serializer`, `result_compression`, `result_extended`,
    `result_backend_always_retry` (+ `..._max_retries`, `..._base/max_sleep_between_retries_ms`), and
    `result_backend_transport_options`: `global_keyprefix`, `retry_policy`, `master_name`,
    `min_other_sentinels`, `sentinel_kwargs`.
Layout (see `layout.py`):
    `celery-task-meta-<task_id>` = the encoded meta document, TTL `result_expires` (none when 0/None), and
    every write published on the channel of the same name, in one round trip (a Lua script, `scripts.py`);
    `celery-taskset-meta-<group_id>` = a saved GroupResult; `celery-taskset-meta-<group_id>.j/.s/.t/.d/.c` =
    a chord's join (`chords.py`).
Supports:
    a stored SUCCESS is never overwritten (checked atomically in Redis, not read-then-write as Celery does);
    `get()` waits on pub/sub, not by polling (`listener.py`); reconnects without losing a result; fork-safe
    (a child builds its own connections and listener); Celery 5.7's native chord join, with Celery workers
    joining the same chords (`result_chord_ordered` in the transport options, default True).
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import threading
import time
import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

import redis

from fastq import states
from fastq.backends.base import Backend
from fastq.backends.redis.alistener import AsyncResultListener, AsyncWaiter
from fastq.backends.redis.chords import RedisChordStore
from fastq.backends.redis.collect import ReadAhead
from fastq.backends.redis.inline import InlineWait, Unsupported
from fastq.backends.redis.layout import KeyLayout
from fastq.backends.redis.listener import ResultListener, Waiter
from fastq.backends.redis.params import connection_params, sentinel_params
from fastq.backends.redis.retry import CONNECTION_ERRORS, DEFAULT_RETRY_POLICY, full_jitter_backoff, retry_over_time
from fastq.backends.redis.scripts import MODE_CAS, MODE_FOR_SERIALIZER, MODE_OTHER, STORE_RESULT, STORE_RESULTS
from fastq.exceptions import BackendError, BackendGetMetaError, BackendStoreError, ImproperlyConfigured, TimeoutError
from fastq.utils.aioredis import AsyncRedis, params_of
from fastq.utils.loops import LoopLocal
from fastq.utils.rediswire import Link
from fastq.utils.text import mask_url

if TYPE_CHECKING:
    from fastq.app import Fastq

__all__ = ['RedisBackend', 'SentinelBackend']

logger = logging.getLogger('fastq.backends.redis')

T = TypeVar('T')

#: Redis's limit for a string value (Celery refuses larger results with the same message).
MAX_VALUE_SIZE = 512 * 1024 * 1024
#: A waiter re-reads its key at least this far apart (`interval` raises it), in case a message went missing.
MIN_RECHECK = 1.0
#: A wait for a task sent less than this long ago subscribes first: its result is unlikely to be stored yet, and
#: reading first would add a round trip to the quickest waits. Older tasks are read first: usually that is all.
FRESH = 0.005
#: Threads that wait on a connection of their own (inline.py); more wait through the shared listener.
MAX_INLINE_WAITERS = 8
#: Compare-and-set rounds before a store gives up on a key other writers keep changing.
MAX_CAS_ROUNDS = 16

_live: weakref.WeakSet[RedisBackend] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for backend in list(_live):
        backend._reset_after_fork()


os.register_at_fork(after_in_child=_after_fork_in_child)


#: Written ahead of a store script, which PUBLISHes the result. Redis writes the replies of one pass of its
#: event loop newest first: without the PING, the script's own reply, made last, would go out before the
#: message to the caller waiting on the channel, and the caller would wait for that write (and the wake-up of
#: the worker it makes) too. The PING's reply makes the storing connection's the older one.
STORE_AHEAD = (('PING',),)


class RedisBackend(Backend):
    polling = False
    supports_native_join = True

    def __init__(self, app: Fastq, url: str | None = None) -> None:
        super().__init__(app, url)
        if not url:
            raise ImproperlyConfigured('result_backend: the Redis backend needs a URL')
        conf = app.conf
        options = dict(conf.result_backend_transport_options or {})
        self.transport_options = options
        self.layout = KeyLayout(options.get('global_keyprefix'))
        self.retry_policy: dict[str, Any] = {**DEFAULT_RETRY_POLICY, **(options.get('retry_policy') or {})}
        self.always_retry: bool = bool(conf.result_backend_always_retry)
        self.max_retries: float = conf.result_backend_max_retries
        self.base_sleep_ms: float = conf.result_backend_base_sleep_between_retries_ms
        self.max_sleep_ms: float = conf.result_backend_max_sleep_between_retries_ms
        self.connparams = self._connection_params(url)
        self._store_mode = MODE_FOR_SERIALIZER.get(self.serializer, MODE_OTHER) if not self.compression else MODE_OTHER
        self._masked = mask_url(url)
        self._lock = threading.Lock()
        self._client: redis.Redis | None = None
        self._store_script: Any = None
        self._store_many_script: Any = None
        self._link: Link | None = None
        self._deferred: list[tuple[str, bytes]] | None = None  # results held by `store_success_later`
        self._reader_links = threading.local()
        self._listener: ResultListener | None = None
        self._inline_waits = threading.local()
        self._inline_all: weakref.WeakSet[InlineWait] = weakref.WeakSet()  # a dead thread's closes itself
        self._inline_supported = True
        self._read_ahead = ReadAhead(FRESH)
        self._async: LoopLocal[_AsyncState | None] = LoopLocal(self._new_async_state, _close_async_state)
        self.chord_store = RedisChordStore(self)
        _live.add(self)

    # --- connections --------------------------------------------------------------------------------------

    def _connection_params(self, url: str) -> dict[str, Any]:
        return connection_params(self.app.conf, url)

    def _create_pool(self) -> redis.ConnectionPool:
        return redis.ConnectionPool(**self.connparams)

    @property
    def client(self) -> redis.Redis:
        """The client of this process; its pool notices a fork by itself (redis-py compares pids) and reconnects."""
        client = self._client
        if client is None:
            with self._lock:
                if self._client is None:
                    client = redis.Redis(connection_pool=self._create_pool())
                    # Registered before _client is set, so they can be read without the lock.
                    self._store_script = client.register_script(STORE_RESULT)
                    self._store_many_script = client.register_script(STORE_RESULTS)
                    self._client = client
                client = self._client
        return client

    def _get_listener(self) -> ResultListener:
        listener = self._listener
        if listener is None:
            client = self.client
            with self._lock:
                if self._listener is None:
                    interval = self.connparams.get('health_check_interval')
                    self._listener = ResultListener(
                        client.connection_pool,
                        self.retry_policy,
                        self._unreachable_on_wait,
                        ping_interval=float(interval) if interval else None,
                        reply_timeout=self.connparams.get('socket_timeout'),
                    )
                listener = self._listener
        return listener

    def _inline_wait(self) -> InlineWait | None:
        """This thread's own connection for waiting (see `inline.py`): for up to MAX_INLINE_WAITERS threads,
        and only where the server speaks RESP3; None means: use the shared listener."""
        inline: InlineWait | None = getattr(self._inline_waits, 'wait', None)
        if inline is not None or not self._inline_supported:
            return inline
        client = self.client  # outside the lock: creating the client takes it
        with self._lock:
            if len(self._inline_all) >= MAX_INLINE_WAITERS:
                return None
            inline = self._inline_waits.wait = InlineWait(client)
            self._inline_all.add(inline)
        return inline

    def _drop_inline_wait(self) -> None:
        inline: InlineWait | None = getattr(self._inline_waits, 'wait', None)
        if inline is None:
            return
        self._inline_waits.wait = None
        with self._lock:
            self._inline_all.discard(inline)
        inline.close()

    def _reset_after_fork(self) -> None:
        """In a forked child: the parent's listener thread is gone and its locks may be held; start afresh."""
        self._lock = threading.Lock()
        self._link = None  # the parent's socket: never used here
        self._reader_links = threading.local()
        self._inline_waits = threading.local()  # the parent's sockets: never used here
        self._inline_all = weakref.WeakSet()
        if self._client is not None:
            # redis-py notices a fork only in get_connection(); the fast paths make connections directly
            self._client.connection_pool.reset()
        listener, self._listener = self._listener, None
        if listener is not None:
            listener.abandon_after_fork()

    def close(self) -> None:
        with self._lock:
            listener, self._listener = self._listener, None
            client, self._client = self._client, None
            link, self._link = self._link, None
            self._reader_links = threading.local()  # dropping it closes every thread's reader link
            inline_waits, self._inline_all = list(self._inline_all), weakref.WeakSet()
            self._inline_waits = threading.local()
        for inline in inline_waits:
            inline.close()
        if link is not None:
            link.close()
        if listener is not None:
            listener.stop()
        if client is not None:
            client.connection_pool.disconnect()

    # --- errors and retries -------------------------------------------------------------------------------

    def _message(self, what: str, exc: BaseException) -> str:
        return f'Cannot {what}: Redis result backend {self._masked}: {type(exc).__name__}: {exc}'

    def _unreachable_on_wait(self, exc: BaseException) -> BaseException:
        return BackendGetMetaError(self._message('wait for results', exc))

    def _run(
        self,
        fn: Callable[[], T],
        what: str,
        error: Callable[[str], BaseException],
        with_policy: bool = False,
    ) -> T:
        """`fn` with Celery's retries; Redis errors become `error(...)`, naming the URL with its password masked."""

        def attempt() -> T:
            return retry_over_time(fn, self.retry_policy, time.sleep, self._log_retry) if with_policy else fn()

        retries = 0
        while True:
            try:
                return attempt()
            except CONNECTION_ERRORS as exc:
                if self.always_retry and retries < self.max_retries:
                    retries += 1
                    logger.warning('Failed to %s. Retrying %s more times.', what, self.max_retries - retries)
                    time.sleep(full_jitter_backoff(self.base_sleep_ms, retries, self.max_sleep_ms))
                    continue
                raise error(self._message(what, exc)) from exc
            except redis.RedisError as exc:
                raise error(self._message(what, exc)) from exc

    def _log_retry(self, exc: BaseException, retries: int, delay: float) -> None:
        max_retries = self.retry_policy.get('max_retries')
        logger.error(
            'Connection to Redis lost: Retry (%s/%s) in %.1fs. (%s)', retries, max_retries or 'Inf', delay, exc
        )

    # --- storage ------------------------------------------------------------------------------------------

    def _store(self, task_id: str, payload: bytes, state: str, expires: float | None) -> None:
        def error(message: str) -> BaseException:
            return BackendStoreError(message, task_id=task_id, state=state)

        if len(payload) > MAX_VALUE_SIZE:
            raise error('value too large for Redis backend')
        key = self.layout.task_key(task_id)
        ttl_ms = math.ceil(expires * 1000) if expires else 0
        self._run(
            lambda: self._store_unless_success(key, payload, ttl_ms), f'store the result of {task_id}', error, True
        )

    def _store_unless_success(self, key: bytes, payload: bytes, ttl_ms: int) -> None:
        self.client  # noqa: B018 - registers the script
        link = self._link
        if link is None:
            link = self._link = Link(self.client)
        mode, expected = self._store_mode, b''
        for _ in range(MAX_CAS_ROUNDS):
            # Through a hiredis-only connection: a worker stores a result per task, and redis-py's own call
            # path costs several times the round trip itself.
            reply = link.evalsha(self._store_script, [key], [payload, ttl_ms, mode, expected], STORE_AHEAD)
            if isinstance(reply, int):
                return
            # Stored in a form the script cannot read: decide here, then write only if it is still that document.
            if self._is_success(reply):
                return
            mode, expected = MODE_CAS, reply
        raise redis.RedisError(f'{key!r} kept changing while storing a result')

    def defer_stores(self) -> bool:
        self._deferred = []
        return True

    def store_success_later(self, task_id: str, result: Any, request: Any = None) -> None:
        deferred = self._deferred
        if deferred is None:
            self.mark_as_done(task_id, result, request=request)
            return
        meta = self._meta(task_id, self.encode_result(result, states.SUCCESS), states.SUCCESS, None, request)
        payload = self.encode(meta)
        if len(payload) > MAX_VALUE_SIZE:  # fails now, in the task's trace, as an immediate store would
            self._store(task_id, payload, states.SUCCESS, self.expires)
            return
        deferred.append((task_id, payload))

    def flush_stores(self, between: Callable[[], None] | None = None) -> None:
        """Store held results with one round trip and one script call (STORE_RESULTS); `between` runs while
        Redis runs it (a pool child re-arms its wait in the broker there: see `Lent.rearm`)."""
        deferred = self._deferred
        if not deferred:
            if between is not None:
                between()
            return
        self._deferred = []
        ttl_ms = math.ceil(self.expires * 1000) if self.expires else 0
        self.client  # noqa: B018 - registers the scripts
        keys = [self.layout.task_key(task_id) for task_id, _ in deferred]
        args = [ttl_ms, self._store_mode, *(payload for _, payload in deferred)]
        link = self._link
        if link is None:
            link = self._link = Link(self.client)
        script = self._store_many_script

        def store() -> Any:
            nonlocal between
            if between is None:
                return link.evalsha(script, keys, args, STORE_AHEAD)
            run, between = between, None  # (once: a retry of the store does not run it again)
            return link.evalsha_around(script, keys, args, STORE_AHEAD, run)

        try:
            replies = self._run(
                store,
                f'store {len(deferred)} results',
                BackendStoreError,
                True,
            )
        except BackendStoreError as exc:
            logger.error('%s (tasks %s)', exc, ', '.join(task_id for task_id, _ in deferred))
            return
        for (task_id, payload), reply in zip(deferred, replies, strict=True):
            if isinstance(reply, int):
                continue
            try:  # stored in a form the script cannot read: decided here, one at a time
                self._store(task_id, payload, states.SUCCESS, self.expires)
            except BackendStoreError as exc:
                logger.error('%s', exc)

    def _is_success(self, payload: bytes) -> bool:
        try:
            meta = self.decode(payload)
        except Exception:  # unreadable: not a SUCCESS we could ever return, so it may be replaced
            return False
        return isinstance(meta, dict) and meta.get('status') == states.SUCCESS

    def _set(self, task_id: str, payload: bytes, state: str, expires: float | None) -> None:
        """Celery's `_set`: SETEX (or SET) and PUBLISH in one pipeline, replacing whatever is stored."""
        key = self.layout.task_key(task_id)

        def write() -> None:
            with self.client.pipeline() as pipe:
                if expires:
                    pipe.set(key, payload, px=math.ceil(expires * 1000))
                else:
                    pipe.set(key, payload)
                pipe.publish(key, payload)
                pipe.execute()

        self._run(write, f'store the result of {task_id}', BackendStoreError, True)

    def _reader_link(self) -> Link:
        """This thread's hiredis-only connection for reads: clients read results one by one, often from several
        threads, and redis-py's call path costs several times the round trip (see `fastq.utils.rediswire`)."""
        link: Link | None = getattr(self._reader_links, 'link', None)
        if link is None:
            link = self._reader_links.link = Link(self.client)
        return link

    def _get(self, task_id: str) -> bytes | None:
        key = self.layout.task_key(task_id)

        def error(message: str) -> BaseException:
            return BackendGetMetaError(message, task_id=task_id)

        value: Any = self._run(lambda: self._reader_link().call('GET', key), f'read the result of {task_id}', error)
        return value  # type: ignore[no-any-return]

    def _get_many(self, task_ids: list[str]) -> dict[str, bytes]:
        if not task_ids:
            return {}
        values = self._get_list(task_ids)
        return {task_id: value for task_id, value in zip(task_ids, values, strict=True) if value is not None}

    def _get_list(self, task_ids: list[str]) -> list[bytes | None]:
        keys = [self.layout.task_key(task_id) for task_id in task_ids]
        values: list[Any] = self._run(
            lambda: self._reader_link().call('MGET', *keys), 'read results', BackendGetMetaError
        )
        return values

    def _delete(self, task_id: str) -> None:
        key = self.layout.task_key(task_id)
        self._run(lambda: self.client.delete(key), f'forget the result of {task_id}', BackendError)

    def _set_group(self, group_id: str, payload: bytes, expires: float | None) -> None:
        """Celery's `save_group`: SET (with the result TTL) and PUBLISH, like a task's result."""
        key = self.layout.group_key(group_id)

        def write() -> None:
            with self.client.pipeline() as pipe:
                pipe.set(key, payload, px=math.ceil(expires * 1000) if expires else None)
                pipe.publish(key, payload)
                pipe.execute()

        self._run(write, f'save group {group_id}', BackendStoreError, True)

    def _get_group(self, group_id: str) -> bytes | None:
        key = self.layout.group_key(group_id)
        value: Any = self._run(lambda: self.client.get(key), f'read group {group_id}', BackendGetMetaError)
        return value  # type: ignore[no-any-return]

    def _delete_group(self, group_id: str) -> None:
        key = self.layout.group_key(group_id)
        self._run(lambda: self.client.delete(key), f'delete group {group_id}', BackendError)

    # --- waiting ------------------------------------------------------------------------------------------

    def wait_for(
        self,
        task_id: str,
        timeout: float | None = None,
        interval: float = 0.5,
        on_interval: Callable[[], Any] | None = None,
        sent_at: float | None = None,
        on_message: Callable[[dict[str, Any]], Any] | None = None,
    ) -> dict[str, Any]:
        """Subscribe to the task's channel, read its key once subscribed, then wait for a message (each one
        given to `on_message`, when there is one: the listener's path, which sees every message).

        The key is read again after a reconnect (the listener says when) and every `max(interval, 1)` seconds
        in case a message went missing; that is all `interval` does here. A task not sent just now (`sent_at`,
        `time.monotonic()` at sending, None when unknown) is read first, and a result found ends the wait
        without subscribing: collecting many finished results costs one read each.
        """
        if sent_at is None or time.monotonic() - sent_at > FRESH:
            stored = self._read_ahead.kept(task_id) or self._reread_ahead(task_id)
            if stored is not None and stored['status'] in states.READY_STATES:
                return stored
        deadline = None if timeout is None else time.monotonic() + timeout
        recheck = max(interval, MIN_RECHECK)
        inline = self._inline_wait() if on_message is None else None
        if inline is not None:
            try:
                meta = inline.wait(
                    self.layout.task_key(task_id),
                    self.meta_from_payload,
                    lambda meta: meta['status'] in states.READY_STATES,
                    deadline,
                    recheck,
                    on_interval,
                )
            except Unsupported as exc:
                logger.debug('No RESP3 on %s (%s): results are waited on through the listener', self._masked, exc)
                self._inline_supported = False
                self._drop_inline_wait()
            except (redis.exceptions.RedisError, OSError) as exc:  # the listener knows how to reconnect and report
                if isinstance(exc, CONNECTION_ERRORS):
                    logger.warning(
                        'Connection to the Redis result backend lost (%s); waiting for %s goes on', exc, task_id
                    )
                else:
                    logger.debug('Waiting for %s on its own connection failed (%s); using the listener', task_id, exc)
                self._drop_inline_wait()
            else:
                if meta is None:
                    raise TimeoutError('The operation timed out.')
                return meta
        listener = self._get_listener()
        waiter = listener.subscribe(self.layout.task_key(task_id))
        try:
            return self._wait(listener, waiter, task_id, deadline, recheck, on_interval, on_message)
        finally:
            listener.unsubscribe(waiter)

    def _wait(
        self,
        listener: ResultListener,
        waiter: Waiter,
        task_id: str,
        deadline: float | None,
        recheck: float,
        on_interval: Callable[[], Any] | None,
        on_message: Callable[[dict[str, Any]], Any] | None = None,
    ) -> dict[str, Any]:
        subscribed = False
        heard: dict[str, Any] | None = None
        while True:
            wait = recheck if subscribed else None
            if deadline is not None:
                remaining = max(0.0, deadline - time.monotonic())
                wait = remaining if wait is None else min(wait, remaining)
            payloads, reread, woken = listener.take(waiter, wait)
            for payload in payloads:  # the document itself travels in the message: no read needed
                meta = heard = self.meta_from_payload(payload)
                if on_message is not None:
                    on_message(meta)
                if meta['status'] in states.READY_STATES:
                    return meta
            subscribed = subscribed or reread
            if reread or (subscribed and not woken):  # subscribed (again), or a quiet spell: read the key
                stored = self._reread(task_id)
                ready = stored is not None and stored['status'] in states.READY_STATES
                if (
                    on_message
                    and stored
                    and stored != heard
                    and (ready or (reread and stored['status'] != states.PENDING))
                ):
                    # Celery listens from the moment it sends; we from `get()`: the progress stored before
                    # then is the first message it would have heard still current, and a result read here
                    # rather than heard is the last message it would have heard.
                    on_message(stored)
                if ready and stored is not None:
                    return stored
            if deadline is not None and time.monotonic() >= deadline:
                if not subscribed:  # e.g. timeout=0: what is stored already still counts
                    stored = self.get_task_meta(task_id)
                    if stored['status'] in states.READY_STATES:
                        return stored
                raise TimeoutError('The operation timed out.')
            if on_interval is not None:
                on_interval()

    def sent(self, result: Any) -> None:
        self._read_ahead.sent([result])

    def sent_many(self, results: list[Any]) -> None:
        self._read_ahead.sent(results)

    def forget(self, task_id: str) -> None:
        self._read_ahead.forget(task_id)
        super().forget(task_id)

    def _reread_ahead(self, task_id: str) -> dict[str, Any] | None:
        """`_reread`, with the next results this thread will likely collect read in the same MGET (collect.py)."""
        others = self._read_ahead.others(task_id)
        if not others:
            return self._reread(task_id)

        def read(task_id: str) -> dict[str, Any]:
            decode = self.meta_from_payload
            payloads = self._get_list([task_id, *others])
            self._read_ahead.read(others, [None if p is None else decode(p) for p in payloads[1:]])
            return decode(payloads[0])

        return self._reread(task_id, read)

    def _reread(self, task_id: str, read: Callable[[str], dict[str, Any]] | None = None) -> dict[str, Any] | None:
        """The task's stored meta (`read`, by default `get_task_meta`), or None when Redis cannot be reached."""
        try:
            return (read or self.get_task_meta)(task_id)
        except BackendGetMetaError as exc:
            if not isinstance(exc.__cause__, CONNECTION_ERRORS):
                raise
            # Unreachable for now (a restart?). The listener is the judge: it reconnects and says when to read
            # again, or gives up and fails this wait; one failed read must not end a wait that may still succeed.
            logger.debug('Reading %s failed while waiting: %s', task_id, exc)
            return None

    # --- the asyncio client -------------------------------------------------------------------------------

    def _new_async_state(self) -> _AsyncState | None:
        params = params_of(self.client.connection_pool)
        if params is None:
            return None  # Sentinel, or no hiredis: the executor-based default
        interval = self.connparams.get('health_check_interval')
        listener = AsyncResultListener(
            params,
            self.retry_policy,
            self._unreachable_on_wait,
            ping_interval=float(interval) if interval else None,
            reply_timeout=self.connparams.get('socket_timeout'),
        )
        return _AsyncState(AsyncRedis(params), listener)

    async def aget_task_meta(self, task_id: str) -> dict[str, Any]:
        state = await self._async.get()
        if state is None:
            return await super().aget_task_meta(task_id)
        return await self._aread(state, task_id)

    async def _aread(self, state: _AsyncState, task_id: str) -> dict[str, Any]:
        try:
            (payload,) = await state.client.execute([('GET', self.layout.task_key(task_id))])
        except (redis.RedisError, OSError) as exc:
            raise BackendGetMetaError(self._message(f'read the result of {task_id}', exc), task_id=task_id) from exc
        return self.meta_from_payload(payload)

    async def await_for(
        self, task_id: str, timeout: float | None = None, interval: float = 0.5, sent_at: float | None = None
    ) -> dict[str, Any]:
        """`wait_for` on the running loop: subscribe to the task's channel, read its key once the subscription
        is confirmed, then wait for the message (re-reading the key every `max(interval, 1)` seconds, and
        after a reconnect, in case one went missing). No thread is involved. A task not sent just now is read
        first, as in `wait_for`."""
        state = await self._async.get()
        if state is None:
            return await super().await_for(task_id, timeout, interval, sent_at)
        if sent_at is None or time.monotonic() - sent_at > FRESH:
            try:
                stored = await self._aread(state, task_id)
            except BackendGetMetaError as exc:
                if not isinstance(exc.__cause__, CONNECTION_ERRORS):
                    raise
                stored = None  # unreachable for now: the listener reconnects and the wait reads again
            if stored is not None and stored['status'] in states.READY_STATES:
                return stored
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        listener = state.listener
        waiter = listener.subscribe(self.layout.task_key(task_id))
        try:
            return await self._await(state, waiter, task_id, deadline, max(interval, MIN_RECHECK))
        finally:
            listener.unsubscribe(waiter)

    async def _await(
        self, state: _AsyncState, waiter: AsyncWaiter, task_id: str, deadline: float | None, recheck: float
    ) -> dict[str, Any]:
        loop = asyncio.get_running_loop()
        subscribed = False
        while True:
            wait = recheck if subscribed else None
            if deadline is not None:
                remaining = max(0.0, deadline - loop.time())
                wait = remaining if wait is None else min(wait, remaining)
            payloads, reread, woken = await state.listener.take(waiter, wait)
            for payload in payloads:  # the document itself travels in the message (or the listener's read)
                meta = self.meta_from_payload(payload)
                if meta['status'] in states.READY_STATES:
                    return meta
            if waiter.confirmed and not subscribed:  # subscribed, and the key read behind it (RESP3): wait
                subscribed = True
                continue
            subscribed = subscribed or reread
            if reread or (subscribed and not woken) or (deadline is not None and loop.time() >= deadline):
                try:
                    stored = await self._aread(state, task_id)
                except BackendGetMetaError as exc:
                    if not isinstance(exc.__cause__, CONNECTION_ERRORS):
                        raise
                    stored = None  # the listener reconnects and says when to read again, or fails the wait
                if stored is not None and stored['status'] in states.READY_STATES:
                    return stored
            if deadline is not None and loop.time() >= deadline:
                raise TimeoutError('The operation timed out.')

    async def aclose(self) -> None:
        await self._async.aclose()


class _AsyncState:
    """A loop's connections: a command client (reads) and the pub/sub listener."""

    __slots__ = ('client', 'listener')

    def __init__(self, client: AsyncRedis, listener: AsyncResultListener) -> None:
        self.client = client
        self.listener = listener


async def _close_async_state(state: _AsyncState | None) -> None:
    if state is not None:
        await state.listener.close()
        await state.client.aclose()


class SentinelBackend(RedisBackend):
    """The same backend, finding the master through Redis Sentinel (`sentinel://` URLs)."""

    def _connection_params(self, url: str) -> dict[str, Any]:
        self.sentinels, params = sentinel_params(self.app.conf, url)
        if not self.transport_options.get('master_name'):
            raise ImproperlyConfigured(
                "result_backend: sentinel:// needs result_backend_transport_options={'master_name': ...}"
            )
        return params

    def _create_pool(self) -> redis.ConnectionPool:
        from redis import sentinel as redis_sentinel

        sentinels: Any = redis_sentinel  # untyped module
        options = self.transport_options
        params = dict(self.connparams)
        credentials = {key: params[key] for key in ('username', 'password') if key in params}
        sentinel = sentinels.Sentinel(
            self.sentinels,
            min_other_sentinels=options.get('min_other_sentinels', 0),
            sentinel_kwargs=options.get('sentinel_kwargs') or None,
            **params,
        )
        master = sentinel.master_for(options['master_name'], redis_class=redis.Redis, **credentials)
        pool: redis.ConnectionPool = master.connection_pool
        return pool
