"""Celery's cache result backend on memcached, with Celery's keys and values, so Celery and fastq read each
other's results and join each other's chords.

URLs: `cache+memcached://127.0.0.1:11211/`, several servers separated by `;`
(`cache+memcached://10.0.0.1:11211;10.0.0.2:11211/`, spread over them by pymemcache's HashClient as Celery
does); `cache+memcache://`, `cache+pymemcache://` and `cache+pylibmc://` are the same. `result_backend = 'cache'`
takes the servers from `cache_backend` (`memcached://...`), as in Celery. (`cache+memory://` is fastq's
in-process backend, `memory.py`.) Needs pymemcache, the client Celery 5.7 uses (`pip install "fastq[memcache]"`).

Settings: `cache_backend_options` (pymemcache's client arguments over Celery's defaults: replies awaited, 5 s
timeouts; `retry_attempts`, `retry_delay`, `retry_for`, `do_not_retry_for` wrap the client in pymemcache's
RetryingClient, as in Celery), `result_expires` (each key's memcached expiry; 0 or None: none),
`result_chord_expires`, `result_serializer`, `result_compression`, `result_extended`, and
`result_backend_transport_options['global_keyprefix']`.

Layout: `celery-task-meta-<task_id>` = the encoded meta document, exactly the bytes Celery stores;
`celery-taskset-meta-<group_id>` = a saved GroupResult; `chord-unlock-<group_id>` = a chord's counter
(`chords.py`). Values are stored with memcached flags 0, as Celery's pymemcache client stores them.

Supports: keys expire by themselves (no `celery.backend_cleanup` needed); a stored SUCCESS is never overwritten,
checked with memcached's CAS rather than by reading first as Celery does; chords join natively with Celery's
INCR counter, Celery and fastq workers counting together (`chords.py`; no `add_to_chord`, as in Celery);
`get()` polls (`keyvalue.py`). An expiry over 30 days is sent as an absolute time, which is how memcached reads
such a number (Celery sends it as it is, and memcached then takes it for a date in 1970).
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any

from fastq import states
from fastq.backends.cache.chords import CHORD_SIZE_HINT, GroupGone, MemcachedChordStore, size_hint
from fastq.backends.cache.client import ClientPerThread, parse_servers
from fastq.backends.keyvalue import KeyNames, PollingBackend
from fastq.exceptions import ChordError, ImproperlyConfigured
from fastq.utils.time import seconds

if TYPE_CHECKING:
    from fastq.app import Fastq

__all__ = ['CacheBackend']

logger = logging.getLogger('fastq.backends.cache')

#: The longest expiry memcached takes as relative: longer ones are Unix times.
MAX_RELATIVE_EXPIRES = 30 * 24 * 60 * 60
#: What Celery's cache backend accepts before `://` (all of them pymemcache now).
MEMCACHED_KINDS = ('memcache', 'memcached', 'pylibmc', 'pymemcache')
#: Compare-and-set rounds before a store gives up on a key other writers keep changing (then it overwrites).
MAX_CAS_ROUNDS = 16


class CacheBackend(PollingBackend):
    supports_autoexpire = True
    supports_native_join = True

    def __init__(self, app: Fastq, url: str | None = None) -> None:
        super().__init__(app, url)
        conf = app.conf
        self.kind, self.servers = parse_servers(self._spec(url, conf.cache_backend))
        if self.kind not in MEMCACHED_KINDS:
            raise ImproperlyConfigured(
                f'result_backend: the cache backend {self.kind!r} is unknown; use one of '
                f'{", ".join(MEMCACHED_KINDS)} (memcached), or cache+memory:// for the in-process cache'
            )
        self.options: dict[str, Any] = dict(conf.cache_backend_options or {})
        self.expires = int(self.expires or 0)
        chord_expires = conf.result_chord_expires
        self.chord_expires = int(seconds(chord_expires) or 0) if chord_expires is not None else self.expires
        # The header's results and saved group are read by users too: never kept shorter than result_expires.
        both = self.chord_expires and self.expires
        self.chord_result_expires = max(self.chord_expires, self.expires) if both else 0
        options = conf.result_backend_transport_options or {}
        self.keys = KeyNames(options.get('global_keyprefix'))
        self._clients = ClientPerThread(self.servers, self.options)
        self.chords = MemcachedChordStore(self)
        self.chord_store = self.chords

    @staticmethod
    def _spec(url: str | None, cache_backend: str | None) -> str:
        """`memcached://servers/` from `cache+memcached://servers/`, or from `cache_backend` for a bare `cache`."""
        scheme, sep, rest = (url or '').partition('://')
        if sep and scheme.lower().startswith('cache+'):
            return f'{scheme[len("cache+") :].lower()}://{rest}'
        if not cache_backend:
            raise ImproperlyConfigured('result_backend: "cache" needs the cache_backend setting (memcached://...)')
        return cache_backend

    @property
    def client(self) -> Any:
        """This thread's pymemcache client."""
        return self._clients.get()

    def ttl(self, expires: float | None) -> int:
        """A memcached expiry for `expires` seconds from now (0: none)."""
        if not expires:
            return 0
        if expires > MAX_RELATIVE_EXPIRES:
            return int(time.time() + expires)
        return int(expires)

    def describe(self) -> str:
        return f'cache+{self.kind}://{";".join(self.servers)}/'

    def close(self) -> None:
        self._clients.close()

    # --- the Backend SPI -----------------------------------------------------------------------------------

    def _set(self, task_id: str, payload: bytes, state: str, expires: float | None) -> None:
        self.client.set(self.keys.task(task_id), payload, self.ttl(expires))

    def _store(self, task_id: str, payload: bytes, state: str, expires: float | None) -> None:
        """Write unless a SUCCESS is stored: the check and the write are one CAS, so a SUCCESS stored meanwhile
        by another worker is never replaced."""
        key, client, ttl = self.keys.task(task_id), self.client, self.ttl(expires)
        for _ in range(MAX_CAS_ROUNDS):
            current, token = client.gets(key)
            if current is None:
                if client.add(key, payload, ttl, noreply=False):
                    return
                continue  # written meanwhile: look at it
            if self._is_success(current):
                return
            if client.cas(key, payload, token, ttl, noreply=False):
                return
        client.set(key, payload, ttl)

    def _is_success(self, payload: bytes) -> bool:
        try:
            meta = self.decode(payload)
        except Exception:  # unreadable: not a SUCCESS we must keep
            return False
        return isinstance(meta, dict) and meta.get('status') == states.SUCCESS

    def _get(self, task_id: str) -> bytes | None:
        payload: bytes | None = self.client.get(self.keys.task(task_id))
        return payload

    def _get_many(self, task_ids: list[str]) -> dict[str, bytes]:
        keys = {self.keys.task(task_id): task_id for task_id in task_ids}
        found = self.client.get_many(list(keys))
        return {keys[key]: payload for key, payload in found.items() if payload is not None}

    def _delete(self, task_id: str) -> None:
        self.client.delete(self.keys.task(task_id), noreply=False)

    def _set_group(self, group_id: str, payload: bytes, expires: float | None) -> None:
        self.client.set(self.keys.group(group_id), payload, self.ttl(expires))

    def _get_group(self, group_id: str) -> bytes | None:
        payload: bytes | None = self.client.get(self.keys.group(group_id))
        return payload

    def _delete_group(self, group_id: str) -> None:
        self.client.delete(self.keys.group(group_id), noreply=False)

    # --- chords (Celery's counter: chords.py) -----------------------------------------------------------------

    def apply_chord(self, header_result_args: tuple[str, list[Any]], body: Any, **kwargs: Any) -> None:
        self.ensure_chords_allowed()
        self.chords.prepare(self.app.GroupResult(*header_result_args))

    def on_chord_part_return(self, request: Any, state: str, result: Any, **kwargs: Any) -> None:
        from fastq.backends import chords
        from fastq.canvas import maybe_signature

        group_id = getattr(request, 'group', None)
        hint = CHORD_SIZE_HINT.set(size_hint(request))
        try:
            try:
                chords.on_chord_part_return(self, request, state, result)
            except GroupGone:  # as Celery: the body fails (and its errbacks run) instead of waiting forever
                logger.error('Chord callback %r raised: GroupResult no longer exists', group_id)
                error = ChordError(f'GroupResult {group_id} no longer exists')
                chords.chord_error_from_stack(self, maybe_signature(request.chord, app=self.app), error)
        except Exception:  # the task's own outcome stands; the chord's problem is logged, not turned into it
            logger.exception('Chord %r: returning the part of %s failed', group_id, request.id)
        finally:
            CHORD_SIZE_HINT.reset(hint)
