"""In-process result backend for tests and eager use (`memory://`, also Celery's `cache+memory://`).

Per app instance; `get()` waits on a condition variable, so it wakes the moment a result is stored. Chords
join under a lock (`MemoryChordStore`): the whole of a part's return is one critical section.
"""

from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from fastq.backends.base import InProcessBackend
from fastq.backends.chords import ChordStore, Claim, new_claim_token

if TYPE_CHECKING:
    from fastq.app import Fastq


class MemoryBackend(InProcessBackend):
    persistent = False

    def __init__(self, app: Fastq, url: str | None = None) -> None:
        super().__init__(app, url)
        self._data: dict[str, tuple[bytes, float | None]] = {}
        self._groups: dict[str, tuple[bytes, float | None]] = {}
        self.chord_store = MemoryChordStore()

    def _set(self, task_id: str, payload: bytes, state: str, expires: float | None) -> None:
        with self._cond:
            self._data[task_id] = (payload, time.time() + expires if expires else None)
            self._changed()

    def _get(self, task_id: str) -> bytes | None:
        entry = self._data.get(task_id)
        if entry is None:
            return None
        payload, until = entry
        if until is not None and until < time.time():
            self._data.pop(task_id, None)
            return None
        return payload

    def _delete(self, task_id: str) -> None:
        with self._cond:
            self._data.pop(task_id, None)

    def _set_group(self, group_id: str, payload: bytes, expires: float | None) -> None:
        self._groups[group_id] = (payload, time.time() + expires if expires else None)

    def _get_group(self, group_id: str) -> bytes | None:
        payload, until = self._groups.get(group_id, (None, None))
        return payload if until is None or until >= time.time() else None

    def _delete_group(self, group_id: str) -> None:
        self._groups.pop(group_id, None)

    def cleanup(self) -> None:
        now = time.time()
        with self._cond:
            for task_id in [k for k, (_, until) in self._data.items() if until is not None and until < now]:
                del self._data[task_id]


#: Seconds a joined chord is remembered, so a late duplicate of a header task cannot start it again.
DONE_FOR = 300.0


@dataclass
class _Chord:
    size: int | None = None
    diff: int = 0
    parts: dict[str, tuple[float, bytes]] = field(default_factory=dict)  # 'task_id:index' -> (index, part)
    claim: str | None = None
    done_until: float | None = None


class MemoryChordStore(ChordStore):
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._chords: dict[str, _Chord] = {}

    def _chord(self, group_id: str) -> _Chord:
        chord = self._chords.get(group_id)
        if chord is None or (chord.done_until is not None and chord.done_until < time.time()):
            chord = self._chords[group_id] = _Chord()
        return chord

    def set_size(self, group_id: str, size: int) -> None:
        with self._lock:
            chord = self._chord(group_id)
            chord.size, chord.claim, chord.done_until = size, None, None

    def add(self, group_id: str, count: int = 1) -> None:
        with self._lock:
            self._chord(group_id).diff += count

    def record(self, group_id: str, task_id: str, index: int | None, part: bytes) -> Claim | None:
        score = math.inf if index is None else float(index)
        with self._lock:
            chord = self._chord(group_id)
            if chord.done_until is not None:
                return None
            chord.parts.setdefault(f'{task_id}:{index if index is not None else "+inf"}', (score, part))
            if chord.size is None or len(chord.parts) != chord.size + chord.diff or chord.claim is not None:
                return None
            chord.claim = new_claim_token()
            return Claim(chord.claim, [p for _, p in sorted(chord.parts.values(), key=lambda item: item[0])])

    def release(self, group_id: str, claim: Claim) -> bool:
        with self._lock:
            chord = self._chords.get(group_id)
            if chord is None or chord.claim != claim.token:
                return False
            self._chords[group_id] = _Chord(done_until=time.time() + DONE_FOR)
            for gone in [g for g, c in self._chords.items() if c.done_until is not None and c.done_until < time.time()]:
                del self._chords[gone]
            return True

    def forget_size(self, group_id: str) -> None:
        with self._lock:
            self._chord(group_id).size = None
