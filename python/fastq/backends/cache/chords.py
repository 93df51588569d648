"""Celery's native chord join on memcached, step for step, so Celery and fastq workers can return the parts of
one chord and the body is sent once.

Celery's keys: sending a chord sets the counter `chord-unlock-<group_id>` to 0 (TTL `result_chord_expires`, by
default `result_expires`) and saves the header as a group (`celery-taskset-meta-<group_id>`). Each header task,
after storing its result, reads the group (no group: the chord fails, "GroupResult ... no longer exists") and
INCRs the counter; the worker whose INCR returns the chord's size joins the header's stored results and sends
the body, then deletes the group and the counter. The size is the body's `chord_size` when it carries one, else
the number of results in the saved group. Celery workers follow exactly these steps.

fastq adds two keys Celery never reads: `chord-unlock-<group_id>.s`, the size a fastq client counted (a header
with nested groups returns more parts than the saved group has results), and one marker per part,
`chord-unlock-<group_id>.d.<task_id>:<group_index>`, written with memcached's ADD before the INCR, so a
redelivered header task counts once (and a late copy after the join does nothing). Celery workers count every
delivery, as Celery does on its own, and use the saved group's size: a fastq chord whose header has nested
groups must be joined by fastq workers only.
"""

from __future__ import annotations

import logging
import threading
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any

from fastq.backends.chords import ChordStore, Claim, chord_error, new_claim_token

if TYPE_CHECKING:
    from fastq.backends.cache import CacheBackend
    from fastq.result import GroupResult

__all__ = ['CHORD_SIZE_HINT', 'GroupGone', 'MemcachedChordStore']

logger = logging.getLogger('fastq.backends.cache')

#: The `chord_size` in the body of the part being returned (Celery's first choice for the size), if any.
CHORD_SIZE_HINT: ContextVar[int | None] = ContextVar('CHORD_SIZE_HINT', default=None)
#: fastq's keys, after the counter's name: the counted size, and the prefix of the per-part markers.
SIZE_SUFFIX = '.s'
SEEN_SUFFIX = '.d.'


class GroupGone(Exception):
    """The chord's saved group is missing (expired, or the chord was joined): Celery fails the body then."""


class MemcachedChordStore(ChordStore):
    def __init__(self, backend: CacheBackend) -> None:
        self.backend = backend
        self._lock = threading.Lock()
        self._claimed: dict[str, tuple[str, list[str]]] = {}  # group id -> (token, header task ids)

    def _counter(self, group_id: str) -> str:
        return self.backend.keys.chord(group_id)

    def prepare(self, header: GroupResult) -> None:
        """Celery's `_apply_chord_incr`: the counter at 0, then the header saved as a group."""
        backend, group_id = self.backend, header.id or ''
        backend.client.set(self._counter(group_id), b'0', backend.ttl(backend.chord_expires))
        payload = backend.encode({'result': header.as_tuple()})
        backend.client.set(backend.keys.group(group_id), payload, backend.ttl(backend.chord_result_expires))

    def set_size(self, group_id: str, size: int) -> None:
        backend = self.backend
        backend.client.set(
            self._counter(group_id) + SIZE_SUFFIX, str(size).encode(), backend.ttl(backend.chord_expires)
        )

    def add(self, group_id: str, count: int = 1) -> None:
        raise NotImplementedError('Backend does not support add_to_chord')

    def record(self, group_id: str, task_id: str, index: int | None, part: bytes) -> Claim | None:
        backend, client = self.backend, self.backend.client
        counter = self._counter(group_id)
        seen = f'{counter}{SEEN_SUFFIX}{task_id}:{"+inf" if index is None else int(index)}'
        if not client.add(seen, b'1', backend.ttl(backend.chord_expires), noreply=False):
            return None  # this part was counted already
        group_key, size_key = backend.keys.group(group_id), counter + SIZE_SUFFIX
        found = client.get_many([group_key, size_key])
        if found.get(group_key) is None:
            raise GroupGone(group_id)
        header = self._header(found[group_key])
        counted = found.get(size_key)
        size = CHORD_SIZE_HINT.get() or (int(counted) if counted is not None else len(header))
        value = client.incr(counter, 1, noreply=False)
        if value is None:
            logger.warning('Chord %r: its counter is gone (joined already, or expired)', group_id)
            return None
        value = int(value)
        if value < size:  # (Celery keeps what the last part will read for as long as the chord's keys)
            client.touch(counter, backend.ttl(backend.chord_expires), noreply=False)
            for key in (group_key, backend.keys.task(task_id)):
                client.touch(key, backend.ttl(backend.chord_result_expires), noreply=False)
            return None
        if value > size:
            logger.warning('Chord counter incremented too many times for %r', group_id)
            return None
        token = new_claim_token()
        with self._lock:
            self._claimed[group_id] = (token, [result.id for result in header.results])
        return Claim(token)

    def _header(self, payload: bytes) -> GroupResult:
        from fastq.result import GroupResult, result_from_tuple

        group = result_from_tuple(self.backend.decode(payload)['result'], self.backend.app)
        assert isinstance(group, GroupResult)
        return group

    def parts(self, group_id: str, claim: Claim) -> list[bytes]:
        # (only asked for when the saved group vanished between the count and the join)
        raise chord_error(f'GroupResult {group_id} no longer exists')

    def release(self, group_id: str, claim: Claim) -> bool:
        self._finish(group_id)
        return True

    def forget_size(self, group_id: str) -> None:
        self._finish(group_id)

    def _finish(self, group_id: str) -> None:
        """Celery's last step, joined or failed: delete the group and the counter, and give the header's results
        back their own lifetime. The markers stay until they expire: late copies of header tasks find them."""
        backend, client = self.backend, self.backend.client
        with self._lock:
            _, task_ids = self._claimed.pop(group_id, ('', []))
        counter = self._counter(group_id)
        client.delete_many([backend.keys.group(group_id), counter, counter + SIZE_SUFFIX], noreply=False)
        for task_id in task_ids:
            client.touch(backend.keys.task(task_id), backend.ttl(backend.expires), noreply=False)


def size_hint(request: Any) -> int | None:
    """The `chord_size` a body carries (Celery reads it before counting the saved group)."""
    body = getattr(request, 'chord', None)
    size = body.get('chord_size') if isinstance(body, dict) else None
    return int(size) if size is not None else None
