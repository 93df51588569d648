"""`rpc://`: results sent back as messages to the caller's reply queue, as Celery's rpc backend does.

Wire format (celery/backends/rpc.py, protocol.md D.4): every client thread has a reply queue named by its oid
(the `reply_to` property of each task it sends), declared durable, auto-deleted, with `x-expires` =
`result_expires`, and reached through the default exchange. A worker publishes the meta document (status,
result, traceback, children, date_done, task_id) there with `correlation_id` = the task id (or the request's
correlation id), serialized with `result_serializer`, transient unless `result_persistent`. So Celery workers
answer fastq clients and the reverse.

Results are one-shot messages: only the process that sent a task can read its result, and not after it
restarts; there is nothing to look up by id from elsewhere, and chords are not supported (as in Celery).
On RabbitMQ the queue is declared before each send (`on_task_call`), so a fast worker's reply never reaches
the default exchange before its queue exists. On Redis, as with kombu's Redis transport (where Celery's rpc
backend works too), a reply queue is the list named by the oid: the worker LPUSHes the reply's kombu
envelope there without declaring anything, and a thread of the caller's BRPOPs every reply queue the process
sent tasks from. On the in-process `memory://` broker (the test
app's) the worker and the caller share this backend object, so a reply is handed over in the process (encoded
and decoded as on the wire): Celery's rpc backend works on kombu's memory transport, and its Testing guide
sets `@pytest.mark.celery(result_backend='rpc')` on the default test app.
"""

from __future__ import annotations

import logging
import threading
from typing import TYPE_CHECKING, Any

from fastq import _amqp, states
from fastq.backends.base import InProcessBackend
from fastq.brokers.amqp.link import CH_ADMIN, CH_CONSUME, Link
from fastq.exceptions import ImproperlyConfigured
from fastq.serialization import dumps, loads

if TYPE_CHECKING:
    from fastq.app import Fastq
    from fastq.brokers.amqp import AMQPBroker
    from fastq.brokers.redis import RedisBroker

logger = logging.getLogger('fastq.backends.rpc')

E_NO_CHORDS = (
    'The "rpc" result backend does not support chords!\n\nNote that a group chained with a task is also upgraded '
    'to be a chord,\nas this pattern requires synchronization.\n\nResult backends that supports chords: Redis, '
    'Database, Memcached, and more.'
)


def _field(request: Any, name: str) -> Any:
    if isinstance(request, dict):
        return request.get(name)
    return getattr(request, name, None)


class RPCBackend(InProcessBackend):
    persistent = False
    supports_native_join = True

    def __init__(self, app: Fastq, url: str | None = None) -> None:
        super().__init__(app, url)
        self._declared: set[str] = set()
        self._consumed: set[str] = set()
        self._metas: dict[str, dict[str, Any]] = {}
        self._link: Link | None = None
        self._popper: _ReplyPopper | None = None
        self._lock = threading.Lock()

    @property
    def broker(self) -> AMQPBroker:
        from fastq.brokers.amqp import AMQPBroker

        broker = self.app.broker
        if not isinstance(broker, AMQPBroker):  # (the in-process broker never gets here: _in_process)
            raise ImproperlyConfigured(
                'result_backend: rpc:// needs an AMQP or Redis broker_url (amqp://, pyamqp://, redis://, ...)'
            )
        return broker

    @property
    def _redis(self) -> RedisBroker | None:
        from fastq.brokers.redis import RedisBroker

        broker = self.app.broker
        return broker if isinstance(broker, RedisBroker) else None

    def describe(self) -> str:
        return 'rpc://'

    @property
    def _in_process(self) -> bool:
        from fastq.brokers.memory import MemoryBroker

        return isinstance(self.app.broker, MemoryBroker)

    def _queue_arguments(self) -> dict[str, Any]:
        return {} if not self.expires else {'x-expires': int(self.expires) * 1000}

    # --- the caller ---------------------------------------------------------------------------------------

    def on_task_call(self, oid: str | None = None) -> None:
        """Declare the reply queue of this thread (or `oid`) before its first task goes out (once per queue)."""
        oid = oid or self.app.thread_oid
        if oid in self._declared or self._in_process:
            return
        if self._redis is not None:  # (a list needs no declaring: it is there once a reply is pushed)
            self._declared.add(oid)
            return
        broker = self.broker
        arguments = self._queue_arguments()

        def declare(conn: _amqp.Connection) -> None:
            broker.link.ensure_channel(conn, CH_ADMIN)
            conn.queue_declare(CH_ADMIN, oid, False, True, False, True, arguments)

        broker.link.call(declare)
        self._declared.add(oid)

    def _listen(self) -> None:
        """Consume every reply queue this process declared (no ack, as Celery's ResultConsumer), on a connection
        of our own: a result is read by whichever thread waits, even when another thread sent the task (the
        asyncio client waits in executor threads)."""
        if self._in_process:
            return
        self.on_task_call()
        new = self._declared - self._consumed
        if not new:
            return
        with self._lock:
            new = self._declared - self._consumed
            self._consumed |= new
            redis_broker = self._redis
            if redis_broker is not None:
                if self._popper is None:
                    self._popper = _ReplyPopper(self, redis_broker)
                self._popper.watch(new)
                return
            if self._link is None:
                link = Link(self.broker.endpoints, 'results', confirms=False)
                link.on_connect.append(self._on_connect)
                link.on_deliver = self._on_deliver
                self._link = link
                link.start(30.0)  # consumes everything in _consumed once connected
                return
            link = self._link

        def consume(conn: _amqp.Connection) -> None:
            for oid in sorted(new):
                self._consume(conn, oid)

        link.call(consume)

    def _on_connect(self, conn: _amqp.Connection) -> None:
        assert self._link is not None
        self._link.ensure_channel(conn, CH_ADMIN)
        for oid in sorted(self._consumed):
            self._consume(conn, oid)

    def _consume(self, conn: _amqp.Connection, oid: str) -> None:
        assert self._link is not None
        self._link.ensure_channel(conn, CH_CONSUME)
        conn.queue_declare(CH_ADMIN, oid, False, True, False, True, self._queue_arguments())
        conn.consume(CH_CONSUME, oid, oid, True, {})

    def _on_deliver(self, event: tuple[Any, ...]) -> None:
        props, body = event[7], event[8]
        try:
            meta = loads(body, props.get('content_type') or 'application/json', self.accept)
        except Exception as exc:
            logger.warning('rpc: ignoring a reply that cannot be decoded: %r', exc)
            return
        self._receive(meta, props.get('correlation_id'))

    def _receive(self, meta: Any, correlation_id: str | None) -> None:
        if not isinstance(meta, dict):
            return
        task_id = correlation_id or meta.get('task_id')
        if not task_id:
            return
        with self._cond:
            current = self._metas.get(task_id)
            if current is None or current.get('status') not in states.READY_STATES:
                self._metas[task_id] = meta
            self._changed()

    def get_task_meta(self, task_id: str, cache: bool = True) -> dict[str, Any]:
        self._listen()
        with self._cond:
            meta = self._metas.get(task_id)
        if meta is None:
            return {'status': states.PENDING, 'result': None}
        out = dict(meta)
        if out.get('status') in states.EXCEPTION_STATES:
            out['result'] = self.exception_to_python(out.get('result'))
        return out

    def forget(self, task_id: str) -> None:
        with self._cond:
            self._metas.pop(task_id, None)

    # --- the worker ---------------------------------------------------------------------------------------

    def store_result(
        self, task_id: str, result: Any, state: str, traceback: str | None = None, request: Any = None
    ) -> Any:
        """Publish the state to the caller's reply queue (nothing when the task was sent without one)."""
        reply_to = _field(request, 'reply_to')
        if not reply_to:
            return result
        from fastq import _core
        from fastq.brokers.base import Outgoing

        meta = self._meta(task_id, self.encode_result(result, state), state, traceback, request)
        body, content_type, encoding = dumps(meta, self.serializer)
        correlation_id = _field(request, 'correlation_id') or task_id
        if self._in_process:
            self._receive(loads(body, content_type, self.accept), correlation_id)
            return result
        message = _core.Message(body, content_type, encoding, {}, {'correlation_id': correlation_id})
        mode = 2 if self.app.conf.result_persistent else 1
        broker: Any = self._redis or self.broker
        broker.publish_unrouted([Outgoing(message, reply_to, '', reply_to, 0, mode)])
        return result

    # --- not available on rpc:// (as in Celery) -----------------------------------------------------------

    def _set(self, task_id: str, payload: bytes, state: str, expires: float | None) -> None:
        raise NotImplementedError('rpc:// stores results as messages (store_result)')

    def _get(self, task_id: str) -> bytes | None:
        return None

    def task_result_exists(self, task_id: str) -> bool:
        """Whether the task's state is known here (no result is stored: Celery's base answer)."""
        return bool(self.get_task_meta(task_id)['status'] != states.PENDING)

    def _delete(self, task_id: str) -> None:
        self.forget(task_id)

    def ensure_chords_allowed(self) -> None:
        raise NotImplementedError(E_NO_CHORDS)

    def close(self) -> None:
        link, self._link = self._link, None
        if link is not None:
            link.close()
        popper, self._popper = self._popper, None
        if popper is not None:
            popper.close()
        with self._lock:
            self._consumed.clear()


class _ReplyPopper:
    """The caller's reply queues on a Redis broker: one thread BRPOPs them all (on a connection of its own)
    and hands each reply to the backend, so any thread's `get()` sees it. A lost connection is retried every
    second, logged once; replies pushed meanwhile wait in their lists."""

    def __init__(self, backend: RPCBackend, broker: RedisBroker) -> None:
        self.backend = backend
        self.broker = broker
        self.keys: list[str] = []
        self._client_id: int | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name='fastq-rpc-replies', daemon=True)
        self._thread.start()

    def watch(self, oids: set[str]) -> None:
        """Add reply queues, and wake the thread's BRPOP (CLIENT UNBLOCK) to wait on them too. A reply pushed
        before then waits in its list: nothing is missed."""
        self.keys = sorted({*self.keys, *oids})
        self._wake()

    def _wake(self) -> None:
        """End the thread's BRPOP now (CLIENT UNBLOCK) so it looks at its keys and its stop flag again."""
        client_id = self._client_id
        if client_id is not None:
            try:
                self.broker.client.client_unblock(client_id)
            except Exception:  # (its BRPOP ends within a second anyway)
                pass

    def _run(self) -> None:
        from fastq.brokers.redis.connection import CONNECTION_ERRORS

        client = self.broker.new_client(single_connection=True)
        failing = False
        try:
            while not self._stop.is_set():
                keys = self.keys
                if not keys:
                    self._stop.wait(0.05)
                    continue
                try:
                    if self._client_id is None:
                        self._client_id = int(client.client_id())
                    popped = client.brpop(keys, timeout=1)
                except CONNECTION_ERRORS as exc:
                    self._client_id = None  # (a new connection has a new id)
                    if not failing:
                        logger.warning('rpc: cannot read replies from %s: %s (retrying)', self.broker.describe(), exc)
                    failing = True
                    self._stop.wait(1.0)
                    continue
                failing = False
                if popped:
                    self._deliver(popped[1] if isinstance(popped[1], bytes) else popped[1].encode())
        except Exception as exc:
            logger.exception('rpc: the reply reader stopped: %r', exc)
        finally:
            client.close()

    def _deliver(self, raw: bytes) -> None:
        from fastq import _core

        try:
            message = _core.Message.from_envelope(raw, None)
            meta = loads(message.body, message.content_type or 'application/json', self.backend.accept)
        except Exception as exc:
            logger.warning('rpc: ignoring a reply that cannot be decoded: %r', exc)
            return
        self.backend._receive(meta, message.properties.get('correlation_id'))

    def close(self) -> None:
        """Stop the thread and close its connection before returning (a socket left to the garbage collector
        is a ResourceWarning wherever it is collected)."""
        self._stop.set()
        self._wake()
        if self._thread is not threading.current_thread():
            self._thread.join(2.0)
