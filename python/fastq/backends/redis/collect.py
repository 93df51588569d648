"""Read-ahead for clients collecting many results: one MGET brings the next finished ones along.

A client that sends N tasks and then calls `.get()` on each result in turn (`[r.get() for r in results]`, the
way most code waits for a batch) pays one round trip per result, which is as much as sending the task cost:
collecting was half of the end-to-end time. When such a `get()` reads its own key, it reads in the same
MGET the keys of the oldest other results this thread sent and still holds (up to `width` of them); those
that are ready (SUCCESS, FAILURE, REVOKED: states a result never leaves) are kept for their own `get()`,
which then returns without a round trip. What is kept is exactly what the key held at that read, and a ready
result is final, so `get()` returns what it would have read itself.

Only results whose `AsyncResult` is still referenced are read ahead (fire-and-forget sends drop theirs), the
width adapts to how many reads ahead were ready (a worker far behind the client halves it, down to 2), and
at most `MAX_KEPT` results are kept per thread. Everything is per thread, so no lock is taken.
"""

from __future__ import annotations

import threading
import time
import weakref
from collections import OrderedDict
from typing import Any

from fastq import states

__all__ = ['ReadAhead']

#: Results sent by one thread that it may still read ahead (the oldest are forgotten beyond this).
MAX_SENT = 65_536
#: Results read ahead and kept until their own get(), per thread.
MAX_KEPT = 8192
MIN_WIDTH, START_WIDTH, MAX_WIDTH = 2, 16, 256


class _Thread:
    __slots__ = ('kept', 'sent', 'width')

    def __init__(self) -> None:
        self.sent: OrderedDict[str, tuple[weakref.ref[Any], float]] = OrderedDict()
        self.kept: dict[str, tuple[weakref.ref[Any], dict[str, Any]]] = {}
        self.width = START_WIDTH


class ReadAhead:
    """The per-thread record of results sent and results read ahead, for one backend."""

    def __init__(self, fresh: float) -> None:
        self.fresh = fresh  # results sent less than this long ago are not read ahead: they cannot be ready
        self._local = threading.local()

    def _mine(self) -> _Thread:
        mine: _Thread | None = getattr(self._local, 'state', None)
        if mine is None:
            mine = self._local.state = _Thread()
        return mine

    def sent(self, results: list[Any]) -> None:
        """Record results this thread just sent (`AsyncResult`s with their `id` and `sent_at`, held weakly),
        in order."""
        sent, ref = self._mine().sent, weakref.ref
        sent.update([(result.id, (ref(result), result.sent_at)) for result in results])
        while len(sent) > MAX_SENT:
            sent.popitem(last=False)

    def kept(self, task_id: str) -> dict[str, Any] | None:
        """The result read ahead for `task_id` (handed out once), or None."""
        mine = self._mine()
        mine.sent.pop(task_id, None)
        kept = mine.kept.pop(task_id, None)
        return None if kept is None else kept[1]

    def forget(self, task_id: str) -> None:
        mine = self._mine()
        mine.sent.pop(task_id, None)
        mine.kept.pop(task_id, None)

    def others(self, task_id: str) -> list[str]:
        """Up to `width` results to read along with `task_id`: the oldest this thread sent and still holds."""
        mine = self._mine()
        if len(mine.kept) >= MAX_KEPT:
            # results read ahead that nobody will collect (their AsyncResult is gone) make room; if the
            # rest are all still held, this thread reads one result at a time until they are collected
            for other in [other for other, (ref, _) in mine.kept.items() if ref() is None]:
                del mine.kept[other]
            if len(mine.kept) >= MAX_KEPT:
                return []
        sent = mine.sent
        sent.pop(task_id, None)
        horizon = time.monotonic() - self.fresh
        out: list[str] = []
        dead: list[str] = []
        for other, (ref, at) in sent.items():
            if at > horizon or len(out) >= mine.width:
                break
            if ref() is None:
                dead.append(other)
            else:
                out.append(other)
        for other in dead:
            del sent[other]
        return out

    def read(self, others: list[str], metas: list[dict[str, Any] | None]) -> None:
        """Keep those of `others` whose read (`metas`, None when missing) found them ready; adapt the width."""
        mine = self._mine()
        ready = 0
        for other, meta in zip(others, metas, strict=True):
            if meta is not None and meta.get('status') in states.READY_STATES:
                entry = mine.sent.pop(other, None)
                if entry is not None:
                    mine.kept[other] = (entry[0], meta)
                ready += 1
        if others:
            if ready * 2 >= len(others):
                mine.width = min(mine.width * 2, MAX_WIDTH)
            else:
                mine.width = max(mine.width // 2, MIN_WIDTH)
