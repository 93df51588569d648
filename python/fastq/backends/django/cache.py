"""Celery's cache backend over Django's cache framework (`result_backend = 'django-cache'`), as
django-celery-results provides it.

Needs Django set up; django-celery-results itself is not needed. Settings: `cache_backend` (the Django cache
alias, as in `CACHES`; unset: 'default'), `result_expires` (the entries' timeout; unset or 0: they never
expire), `result_extended`.

Layout: Celery's key-value documents, under Celery's keys: `celery-task-meta-<task id>` holds the meta
document (`status, result, traceback, children, date_done, task_id`, and `group_id`, `parent_id`, the
`result_extended` fields) as a Python dict, and `celery-taskset-meta-<group id>` holds
`{'result': GroupResult.as_tuple()}`. Django's cache pickles them itself (its `KEY_PREFIX` and `VERSION`
apply, the same for every process sharing the settings). A failure's result is the exception instance, as
Celery's pickle-serialized results hold it, unless it cannot be pickled or is one of fastq's own (a Celery
process could not import its class): then Celery's exception document, which Celery reads too.

Chords are joined by `celery.chord_unlock` (Django's cache has no atomic counter that every cache backend
provides), as django-celery-results' backend joins them; fastq and Celery workers both run it.
"""

from __future__ import annotations

import pickle
from typing import TYPE_CHECKING, Any

from fastq import states
from fastq.backends.django.connections import current_request, run
from fastq.backends.polling import PollingBackend
from fastq.exceptions import ImproperlyConfigured

try:
    import django  # noqa: F401
except ImportError as exc:  # pragma: no cover - the message is the point
    raise ImproperlyConfigured(
        'The django-cache result backend requires Django: pip install django-celery-results (which brings it)'
    ) from exc

if TYPE_CHECKING:
    from fastq.app import Fastq
    from fastq.result import GroupResult

__all__ = ['DjangoCacheBackend']

#: Celery's key prefixes (celery.backends.base.KeyValueStoreBackend).
TASK_KEY_PREFIX = 'celery-task-meta-'
GROUP_KEY_PREFIX = 'celery-taskset-meta-'


class DjangoCacheBackend(PollingBackend):
    def __init__(self, app: Fastq, url: str | None = None) -> None:
        super().__init__(app, url)
        self.cache_name: str | None = app.conf.cache_backend
        self.compression = None
        self.timeout = int(self.expires) if self.expires else None

    @property
    def cache(self) -> Any:
        """This thread's client of the configured Django cache (Django keeps one per thread)."""
        from django.core.cache import caches

        return caches[self.cache_name or 'default']

    # --- values, as Celery's pickle-serialized backends hold them --------------------------------------------

    def encode_result(self, result: Any, state: str) -> Any:
        if state in states.EXCEPTION_STATES and isinstance(result, BaseException):
            return result if _portable(result) else self.prepare_exception(result)
        return super().encode_result(result, state)

    def exception_to_python(self, exc: Any) -> BaseException | None:
        restore = getattr(exc, 'restore', None)  # (Celery's wrapper for an exception it could not pickle)
        if type(exc).__name__ == 'UnpickleableExceptionWrapper' and callable(restore):
            exc = restore()
        return super().exception_to_python(exc)

    # --- storage -------------------------------------------------------------------------------------------

    def store_result(
        self, task_id: str, result: Any, state: str, traceback: str | None = None, request: Any = None
    ) -> Any:
        """Store a state; a stored SUCCESS is never overwritten (as Celery's key-value backends do)."""
        if request is None:
            request = current_request(task_id)
        meta = self._meta(task_id, self.encode_result(result, state), state, traceback, request)
        timeout = self.timeout
        if state == states.FAILURE and self.app.conf.result_failure_expires is not None:
            timeout = int(self.app.conf.result_failure_expires) or None
        run(lambda: self._put(TASK_KEY_PREFIX + task_id, meta, timeout, keep_success=True))
        return result

    def _put(self, key: str, value: Any, timeout: int | None, keep_success: bool = False) -> None:
        cache = self.cache
        if keep_success:
            current = cache.get(key)
            if isinstance(current, dict) and current.get('status') == states.SUCCESS:
                return
        cache.set(key, value, timeout)

    def _set(self, task_id: str, payload: bytes, state: str, expires: float | None) -> None:
        run(lambda: self._put(TASK_KEY_PREFIX + task_id, self.decode(payload), self.timeout))

    def _get(self, task_id: str) -> bytes | None:
        meta = run(lambda: self.cache.get(TASK_KEY_PREFIX + task_id))
        return None if not meta else self.encode(meta)

    def _delete(self, task_id: str) -> None:
        run(lambda: self.cache.delete(TASK_KEY_PREFIX + task_id))

    def get_task_meta(self, task_id: str, cache: bool = True) -> dict[str, Any]:
        stored = run(lambda: self.cache.get(TASK_KEY_PREFIX + task_id))
        if not stored:
            return {'status': states.PENDING, 'result': None}
        meta = dict(stored)
        if meta.get('status') in states.EXCEPTION_STATES:
            meta['result'] = self.exception_to_python(meta.get('result'))
        return meta

    # --- groups --------------------------------------------------------------------------------------------

    def save_group(self, group_id: str, result: GroupResult) -> GroupResult:
        run(lambda: self._put(GROUP_KEY_PREFIX + group_id, {'result': result.as_tuple()}, self.timeout))
        return result

    def restore_group(self, group_id: str, cache: bool = True) -> GroupResult | None:
        from fastq.result import GroupResult, result_from_tuple

        meta = run(lambda: self.cache.get(GROUP_KEY_PREFIX + group_id))
        if not meta:
            return None
        group = result_from_tuple(meta['result'], self.app)
        return group if isinstance(group, GroupResult) else None

    def delete_group(self, group_id: str) -> None:
        run(lambda: self.cache.delete(GROUP_KEY_PREFIX + group_id))


def _portable(exc: BaseException) -> bool:
    """Whether a Celery process could unpickle `exc`: it pickles, and its class is not fastq's."""
    if type(exc).__module__.split('.')[0] == 'fastq':
        return False
    try:
        pickle.loads(pickle.dumps(exc))
    except Exception:
        return False
    return True
