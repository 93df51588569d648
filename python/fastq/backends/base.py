"""The result backend SPI and everything backends share: Celery's meta document and exception encoding.

A result is Celery's meta document (`status`, `result`, `traceback`, `children`, `date_done`, `task_id`, plus
`group_id`/`parent_id`, and the request fields with `result_extended`), serialized with `result_serializer`,
so a Celery client can read what a fastq worker stored and the reverse. Subclasses provide storage only:
`_set`, `_get`, `_delete`, `_cleanup` and, to wake waiting `get()` calls promptly, `_wait_for_change`.
"""

from __future__ import annotations

import abc
import asyncio
import logging
import sys
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from fastq import _core, states
from fastq.exceptions import ImproperlyConfigured, SecurityError, TimeoutError
from fastq.result import ResultBase
from fastq.serialization import accept_set, compress, decompress, dumps, loads, serializer_by_name
from fastq.utils.time import seconds

if TYPE_CHECKING:
    from fastq.app import Fastq
    from fastq.backends.chords import ChordStore
    from fastq.result import GroupResult

__all__ = ['Backend', 'DisabledBackend', 'InProcessBackend', 'create_exception_cls']

E_CHORD_NO_BACKEND = """
Starting chords requires a result backend to be configured.

Note that a group chained with a task is also upgraded to be a chord,
as this pattern requires synchronization.

Result backends that supports chords: Redis, Database, Memcached, and more.
"""

#: Longest single wait the default `await_for` hands to an executor thread.
EXECUTOR_WAIT_STEP = 1.0

#: Celery's marker for a compressed result: a JSON or msgpack document never starts with a NUL byte.
COMPRESSED_PAYLOAD_MAGIC = b'\x00celery-compressed\x00'

logger = logging.getLogger('fastq.backends')

_synthetic: dict[tuple[str, str], type[Exception]] = {}


def create_exception_cls(name: str, module: str) -> type[Exception]:
    """A stand-in class for an exception type this process cannot import (same name and module)."""
    key = (module, name)
    cls = _synthetic.get(key)
    if cls is None:
        cls = type(name.rsplit('.', 1)[-1], (Exception,), {'__module__': module, '__qualname__': name})
        _synthetic[key] = cls
    return cls


def _as_tuple(child: Any) -> Any:
    return child.as_tuple() if hasattr(child, 'as_tuple') else child


def _ensure_serializable(items: tuple[Any, ...], encode: Callable[[Any], Any]) -> list[Any]:
    out = []
    for item in items:
        try:
            encode(item)
        except Exception:
            item = repr(item)
        out.append(item)
    return out


#: The module each of fastq's exceptions that Celery also has lives in on Celery's side. A result stores
#: that module (Celery's `exc_module`), so a Celery client reading what a fastq worker stored rebuilds its own
#: class (`except celery.exceptions.TimeLimitExceeded` catches it), and a fastq client reading either rebuilds
#: fastq's; storing 'fastq.exceptions' made Celery fall back to a look-alike class that no `except` catches.
CELERY_HOMES: dict[str, str] = {
    **dict.fromkeys(
        (
            'Retry', 'Ignore', 'Reject', 'TaskPredicate', 'ImproperlyConfigured', 'SecurityError', 'TaskError',
            'QueueNotFound', 'IncompleteStream', 'NotRegistered', 'AlreadyRegistered', 'TimeoutError',
            'MaxRetriesExceededError', 'TaskRevokedError', 'InvalidTaskError', 'ChordError', 'WorkerTerminate',
            'WorkerShutdown', 'BackendError', 'BackendGetMetaError', 'BackendStoreError',
        ),
        'celery.exceptions',
    ),
    **dict.fromkeys(('TimeLimitExceeded', 'SoftTimeLimitExceeded', 'WorkerLostError', 'Terminated'), 'billiard.exceptions'),
    **dict.fromkeys(
        (
            'KombuError', 'OperationalError', 'SerializationError', 'EncodeError', 'DecodeError', 'ContentDisallowed',
            'SerializerNotInstalled',
        ),
        'kombu.exceptions',
    ),
}  # fmt: skip


class Backend(abc.ABC):
    """Stores and reads task states and results."""

    #: Whether `get()` must poll this backend (False when `_wait_for_change` is a real notification).
    polling = True
    persistent = True
    supports_native_join = False
    #: Whether results expire by themselves (`result_expires`); else beat schedules `celery.backend_cleanup`.
    supports_autoexpire = True
    #: How this backend joins chords (see `backends/chords.py`); None: Celery's `celery.chord_unlock` polling.
    chord_store: ChordStore | None = None

    def __init__(self, app: Fastq, url: str | None = None) -> None:
        self.app = app
        self.url = url
        conf = app.conf
        self.serializer: str = conf.result_serializer
        accept = conf.result_accept_content or conf.accept_content
        self.accept = accept_set(accept)
        self.compression: str | None = conf.result_compression
        self.expires: float | None = seconds(conf.result_expires)

    # --- storage, per backend -----------------------------------------------------------------------------

    @abc.abstractmethod
    def _set(self, task_id: str, payload: bytes, state: str, expires: float | None) -> None:
        """Store the encoded meta of a task (replacing any), expiring after `expires` seconds (None: never)."""

    @abc.abstractmethod
    def _get(self, task_id: str) -> bytes | None: ...

    @abc.abstractmethod
    def _delete(self, task_id: str) -> None: ...

    def _get_many(self, task_ids: list[str]) -> dict[str, bytes]:
        out = {}
        for task_id in task_ids:
            payload = self._get(task_id)
            if payload is not None:
                out[task_id] = payload
        return out

    def _wait_for_change(self, timeout: float) -> None:
        """Block until a result may have been written, or `timeout`; the default polls."""
        time.sleep(timeout)

    def _change_marker(self) -> int:
        """A token taken before reading, so a write between the read and the wait is not missed."""
        return 0

    def _wait_for_change_since(self, marker: int, timeout: float) -> None:
        self._wait_for_change(timeout)

    def on_task_call(self, oid: str | None = None) -> None:
        """Called before tasks are published from this thread, or for its `oid` (the tasks' reply_to) from an
        executor thread: rpc:// declares the reply queue here."""
        return None

    def cleanup(self) -> None:
        """Delete expired results (backends without native expiry call this periodically)."""
        return None

    def close(self) -> None:
        return None

    def maintenance(self) -> None:
        """Periodic housekeeping a worker runs in the background (about once a second)."""
        return None

    def describe(self) -> str:
        from fastq.utils.text import mask_url

        return mask_url(self.url) if self.url else 'disabled://'

    # --- encoding ----------------------------------------------------------------------------------------

    def encode(self, data: Any) -> bytes:
        payload, _, _ = dumps(data, self.serializer)
        if self.compression:
            body, mime = compress(payload, self.compression)
            payload = b''.join([COMPRESSED_PAYLOAD_MAGIC, mime.encode(), b'\0', body])
        return payload

    def decode(self, payload: bytes) -> Any:
        # Driven by the payload, not the setting, so results stay readable when compression is switched.
        if payload.startswith(COMPRESSED_PAYLOAD_MAGIC):
            mime, _, body = payload[len(COMPRESSED_PAYLOAD_MAGIC) :].partition(b'\0')
            payload = decompress(body, mime.decode())
        content_type = serializer_by_name(self.serializer).content_type
        return loads(payload, content_type, self.accept)

    def prepare_exception(self, exc: BaseException) -> dict[str, Any]:
        cls = type(exc)
        name = getattr(cls, '__qualname__', cls.__name__)
        module = cls.__module__
        if module == 'fastq.exceptions':  # stored under its Celery namesake's module (see CELERY_HOMES)
            module = CELERY_HOMES.get(name, module)
        return {
            'exc_type': name,
            'exc_message': _ensure_serializable(exc.args, lambda v: dumps(v, self.serializer)),
            'exc_module': module,
        }

    def exception_to_python(self, exc: Any) -> BaseException | None:
        """Rebuild a stored exception, as its own class when already imported in this process.

        Only modules already in `sys.modules` are looked at (importing a module named by stored data would
        run its code), and the class must be an exception class: anything else is a SecurityError.
        """
        if not exc:
            return None
        if isinstance(exc, BaseException):
            return exc
        if not isinstance(exc, dict):
            raise TypeError(f'stored exception must be a dict, got {exc!r}')
        exc_module = exc.get('exc_module')
        exc_type = exc.get('exc_type')
        if not exc_type:
            raise ValueError('Exception information must include the exception type')
        cls: Any
        if exc_module is None:
            cls = create_exception_cls(exc_type, __name__)
        elif CELERY_HOMES.get(exc_type) == exc_module:  # Celery's, or fastq's stored as Celery's: fastq's class
            from fastq import exceptions

            cls = getattr(exceptions, exc_type)
        else:
            try:
                cls = sys.modules[exc_module]
                for name in exc_type.split('.'):
                    cls = getattr(cls, name)
            except (KeyError, AttributeError):
                cls = create_exception_cls(exc_type, exc_module)
        message = exc.get('exc_message', '')
        if not isinstance(cls, type) or not issubclass(cls, BaseException):
            raise SecurityError(f'Expected an exception class, got {exc_module}.{exc_type} with payload {message}')
        try:
            return cls(*message) if isinstance(message, list | tuple) else cls(message)
        except Exception:
            return Exception(f'{cls}({message})')

    def encode_result(self, result: Any, state: str) -> Any:
        if state in states.EXCEPTION_STATES and isinstance(result, BaseException):
            return self.prepare_exception(result)
        if isinstance(result, ResultBase):  # a task returning a result handle (a group's): its tuple, as Celery
            return result.as_tuple()
        return result

    # --- the meta document --------------------------------------------------------------------------------

    def _meta(self, task_id: str, result: Any, state: str, traceback: str | None, request: Any) -> dict[str, Any]:
        date_done = _core.utc_isoformat(None) if state in states.READY_STATES else None  # datetime.now(UTC)
        meta: dict[str, Any] = {
            'status': state,
            'result': result,
            'traceback': traceback,
            'children': [_as_tuple(child) for child in getattr(request, 'children', None) or ()],
            'date_done': date_done,
        }
        if request is not None:
            group = getattr(request, 'group', None)
            if group:
                meta['group_id'] = group
            parent_id = getattr(request, 'parent_id', None)
            if parent_id:
                meta['parent_id'] = parent_id
            if self.app.conf.result_extended:
                delivery_info = getattr(request, 'delivery_info', None) or {}
                meta.update(
                    name=getattr(request, 'task', None),
                    args=getattr(request, 'args', None),
                    kwargs=getattr(request, 'kwargs', None),
                    worker=getattr(request, 'hostname', None),
                    retries=getattr(request, 'retries', None),
                    queue=delivery_info.get('routing_key'),
                )
                stamps = getattr(request, 'stamps', None)
                if stamps:  # (Celery's: the stamps named in stamped_headers, each a key of its own)
                    names = getattr(request, 'stamped_headers', None) or ()
                    meta['stamped_headers'] = names
                    meta.update({k: v for k, v in stamps.items() if k in names})
        meta['task_id'] = task_id
        return meta

    def store_result(
        self, task_id: str, result: Any, state: str, traceback: str | None = None, request: Any = None
    ) -> Any:
        """Store a state; a stored SUCCESS is never overwritten (a duplicate delivery cannot undo it)."""
        encoded = self.encode_result(result, state)
        meta = self._meta(task_id, encoded, state, traceback, request)
        expires = self.expires
        if state == states.FAILURE and self.app.conf.result_failure_expires is not None:
            expires = seconds(self.app.conf.result_failure_expires)
        self._store(task_id, self.encode(meta), state, expires)
        return result

    def _store(self, task_id: str, payload: bytes, state: str, expires: float | None) -> None:
        """Write unless a SUCCESS is stored; backends that can do it atomically override this."""
        current = self._get(task_id)
        if current is not None and self.decode(current).get('status') == states.SUCCESS:
            return
        self._set(task_id, payload, state, expires)

    def mark_as_started(self, task_id: str, **meta: Any) -> Any:
        return self.store_result(task_id, meta, states.STARTED)

    def mark_as_done(self, task_id: str, result: Any, request: Any = None, store_result: bool = True) -> Any:
        if store_result:
            self.store_result(task_id, result, states.SUCCESS, request=request)
        return result

    # --- batched stores (a prefork child writes the results of short tasks together) ---------------------

    def defer_stores(self) -> bool:
        """Let `store_success_later` hold results until `flush_stores`; False when this backend cannot.

        Only a prefork child turns this on: it flushes before it tells the parent a task finished (the parent
        may ack it then), so a stored result is never behind the ack. A child that dies in between loses the
        results held (at most 2 ms of short tasks); the parent then reports those tasks lost, as it would
        have without batching.
        """
        return False

    def store_success_later(self, task_id: str, result: Any, request: Any = None) -> None:
        """`mark_as_done`, possibly written with others at the next `flush_stores`."""
        self.mark_as_done(task_id, result, request=request)

    def flush_stores(self, between: Callable[[], None] | None = None) -> None:
        """Write what `store_success_later` held (a no-op unless `defer_stores` returned True); `between` runs
        once, after the write and before its reply is read (at once when nothing is written)."""
        if between is not None:
            between()

    def mark_as_failure(
        self, task_id: str, exc: BaseException, traceback: str | None = None, request: Any = None
    ) -> Any:
        return self.store_result(task_id, exc, states.FAILURE, traceback=traceback, request=request)

    def mark_as_retry(
        self, task_id: str, exc: BaseException | None, traceback: str | None = None, request: Any = None
    ) -> Any:
        return self.store_result(task_id, exc, states.RETRY, traceback=traceback, request=request)

    def mark_as_revoked(self, task_id: str, reason: str = '', request: Any = None) -> Any:
        from fastq.exceptions import TaskRevokedError

        return self.store_result(task_id, TaskRevokedError(reason), states.REVOKED, request=request)

    # --- reading ------------------------------------------------------------------------------------------

    def meta_from_payload(self, payload: bytes | None) -> dict[str, Any]:
        if payload is None:
            return {'status': states.PENDING, 'result': None}
        meta: dict[str, Any] = self.decode(payload)
        if meta.get('status') in states.EXCEPTION_STATES:
            meta['result'] = self.exception_to_python(meta.get('result'))
        return meta

    def get_task_meta(self, task_id: str, cache: bool = True) -> dict[str, Any]:
        return self.meta_from_payload(self._get(task_id))

    def task_result_exists(self, task_id: str) -> bool:
        """Whether a result is stored for the task, whatever its state (Celery 5.7's, for `AsyncResult.exists`)."""
        return self._get(task_id) is not None

    def get_state(self, task_id: str) -> str:
        return str(self.get_task_meta(task_id)['status'])

    def get_result(self, task_id: str) -> Any:
        return self.get_task_meta(task_id).get('result')

    def forget(self, task_id: str) -> None:
        self._delete(task_id)

    def sent(self, result: Any) -> None:
        """This process just sent the task of `result` (an `AsyncResult` still waiting): a hint for backends
        that read results ahead (Redis); others ignore it."""
        return None

    def sent_many(self, results: list[Any]) -> None:
        """`sent` for each of `results` (a batch just sent)."""
        if type(self).sent is not Backend.sent:
            for result in results:
                self.sent(result)

    def wait_for(
        self,
        task_id: str,
        timeout: float | None = None,
        interval: float = 0.5,
        on_interval: Callable[[], Any] | None = None,
        sent_at: float | None = None,
        on_message: Callable[[dict[str, Any]], Any] | None = None,
    ) -> dict[str, Any]:
        """Block until the task is in a ready state; raise `TimeoutError` after `timeout` seconds.

        Backends with notifications wake on the write; `interval` only bounds how long a missed notification
        could delay us (and is how often polling backends look). `sent_at` (`time.monotonic()` when this
        process sent the task, None when unknown) lets a backend guess whether the result is likely stored.
        `on_message` is called with each state update a backend with notifications hears (Celery's
        `get(on_message=...)`: progress from `update_state`); polling backends ignore it, as Celery's do.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            marker = self._change_marker()
            meta = self.get_task_meta(task_id)
            if meta['status'] in states.READY_STATES:
                return meta
            if on_interval is not None:
                on_interval()
            wait = interval if self.polling else max(interval, 1.0)
            if deadline is not None:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError('The operation timed out.')
                wait = min(wait, remaining)
            self._wait_for_change_since(marker, wait)

    async def await_for(
        self, task_id: str, timeout: float | None = None, interval: float = 0.5, sent_at: float | None = None
    ) -> dict[str, Any]:
        """`wait_for` for the asyncio client: same result, same TimeoutError, without blocking the loop.

        This default runs `wait_for` in the loop's default executor, in steps of at most
        `EXECUTOR_WAIT_STEP` seconds, so a cancelled wait leaves a thread busy for no longer than that. It
        suits the embedded backends (SQLite, memory), whose reads are local; Redis overrides it with pub/sub
        on the loop itself.
        """
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        while True:
            step = EXECUTOR_WAIT_STEP if deadline is None else min(EXECUTOR_WAIT_STEP, max(deadline - loop.time(), 0))
            try:
                return await loop.run_in_executor(None, self.wait_for, task_id, step, interval)
            except TimeoutError:
                if deadline is not None and loop.time() >= deadline:
                    raise

    async def aget_task_meta(self, task_id: str) -> dict[str, Any]:
        """`get_task_meta` for the asyncio client (this default: in the loop's default executor)."""
        return await asyncio.get_running_loop().run_in_executor(None, self.get_task_meta, task_id)

    async def aclose(self) -> None:
        """Close what the asyncio client opened in the running event loop (nothing, unless overridden)."""
        return None

    # --- groups (Celery's `celery-taskset-meta-<group_id>` document: `{"result": GroupResult.as_tuple()}`) ----

    def _set_group(self, group_id: str, payload: bytes, expires: float | None) -> None:
        raise NotImplementedError(f'{type(self).__name__} cannot store group results')

    def _get_group(self, group_id: str) -> bytes | None:
        raise NotImplementedError(f'{type(self).__name__} cannot store group results')

    def _delete_group(self, group_id: str) -> None:
        raise NotImplementedError(f'{type(self).__name__} cannot store group results')

    def save_group(self, group_id: str, result: GroupResult) -> GroupResult:
        self._set_group(group_id, self.encode({'result': result.as_tuple()}), self.expires)
        return result

    def restore_group(self, group_id: str, cache: bool = True) -> GroupResult | None:
        from fastq.result import result_from_tuple

        payload = self._get_group(group_id)
        if payload is None:
            return None
        group: GroupResult = result_from_tuple(self.decode(payload)['result'], self.app)
        return group

    def delete_group(self, group_id: str) -> None:
        self._delete_group(group_id)

    # --- chords and chains (the logic is in backends/chords.py; a backend provides a `chord_store`) ------

    def ensure_chords_allowed(self) -> None:
        return None

    def apply_chord(self, header_result_args: tuple[str, list[Any]], body: Any, **kwargs: Any) -> None:
        from fastq.backends import chords

        chords.apply_chord(self, header_result_args, body, **kwargs)

    def set_chord_size(self, group_id: str, chord_size: int) -> None:
        if self.chord_store is not None:
            self.chord_store.set_size(group_id, chord_size)

    def add_to_chord(self, group_id: str, result: Any) -> None:
        if self.chord_store is None:
            raise NotImplementedError('Backend does not support add_to_chord')
        self.chord_store.add(group_id, 1)

    def on_chord_part_return(self, request: Any, state: str, result: Any, **kwargs: Any) -> None:
        """A chord header task reached its final state (the worker calls this after storing it)."""
        from fastq.backends import chords

        try:
            chords.on_chord_part_return(self, request, state, result)
        except Exception:  # the task's own outcome stands; the chord's problem is logged, not turned into it
            logger.exception('Chord %r: returning the part of %s failed', getattr(request, 'group', None), request.id)

    def chord_error_from_stack(self, callback: Any, exc: BaseException) -> None:
        from fastq.backends import chords

        chords.chord_error_from_stack(self, callback, exc)

    def fail_chain(self, chain: Any, exc: BaseException, traceback: str | None = None) -> None:
        """A task failed: the chain steps it carried never run; their results fail too (Celery's `_fail_chain`)."""
        from fastq.backends import chords

        if not chain:
            return
        try:
            chords.fail_chain(self, chain, exc, traceback)
        except Exception:  # as for chord parts: logged, the failed task's own outcome stands
            logger.exception('Could not mark the rest of a chain as failed after %r', exc)


class InProcessBackend(Backend):
    """A backend whose results land in this process (memory://, rpc:// replies): a write wakes `get()` at once.

    Subclasses guard their data with `_cond` and call `_changed()` under it after each write; `wait_for`
    takes `_change_marker()` before it reads, so a write between its read and its wait is not missed.
    """

    polling = False

    def __init__(self, app: Fastq, url: str | None = None) -> None:
        super().__init__(app, url)
        self._cond = threading.Condition()
        self._generation = 0

    def _changed(self) -> None:
        """Wake every waiting `get()`; call with `_cond` held."""
        self._generation += 1
        self._cond.notify_all()

    def _change_marker(self) -> int:
        return self._generation

    def _wait_for_change_since(self, marker: int, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._generation == marker:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return
                self._cond.wait(remaining)


class DisabledBackend(Backend):
    """What `AsyncResult` talks to when no `result_backend` is configured (Celery's behaviour)."""

    persistent = False

    def __init__(self, app: Fastq, url: str | None = None) -> None:
        self.app = app
        self.url = None

    def _fail(self, *args: Any, **kwargs: Any) -> Any:
        raise NotImplementedError(
            'No result backend is configured.\nPlease see the documentation for more information.'
        )

    _get = _set = _delete = _fail
    get_task_meta = wait_for = _fail

    def store_result(self, *args: Any, **kwargs: Any) -> Any:
        return None

    def ensure_chords_allowed(self) -> None:
        raise NotImplementedError(E_CHORD_NO_BACKEND.strip())


def check_url_scheme(url: str, expected: tuple[str, ...]) -> None:
    scheme = url.partition('://')[0].lower()
    if scheme not in expected:
        raise ImproperlyConfigured(f'result_backend: expected one of {expected}, got {url!r}')
