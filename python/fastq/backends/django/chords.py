"""Chords joined on django-celery-results' `ChordCounter` table, as its own backend joins them.

A chord sent through either client makes a row `(group_id, sub_tasks, count)`: the header's result tuples as
JSON (`json.dumps([r.as_tuple() ...])`) and the number of header parts. Each header task that ends takes one
off `count`, in a transaction that holds the row's lock; the one that takes it to zero deletes the row, reads
the header's results from the task table (waiting up to `result_chord_join_timeout` for any not stored yet)
and sends the body, or fails it with "Dependency <id> raised ..." naming the first failed part. Celery
workers (django-celery-results' `on_chord_part_return`) and fastq workers count on the same row, so any mix of
clients and workers joins any chord.

What the table cannot hold: the parts themselves, or which task returned one. So, as with
django-celery-results, a header task delivered twice and run twice counts twice (fastq's worker does not run
a redelivered task whose SUCCESS is stored, which covers the usual case); the second-last part then finds the
count at zero and the join waits for the last one's result. A late part of a chord already joined finds no
row and is only logged.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from fastq import states
from fastq.backends.chords import ChordStore, Claim, new_claim_token
from fastq.backends.django.connections import models, run

if TYPE_CHECKING:
    from fastq.backends.django.database import DjangoDatabaseBackend

__all__ = ['ChordCounterStore']

logger = logging.getLogger('fastq.backends.django')


@dataclass(slots=True)
class CounterClaim(Claim):
    """The claim of the part that took the count to zero, with the header's result tuples (JSON)."""

    sub_tasks: str = '[]'


class ChordCounterStore(ChordStore):
    def __init__(self, backend: DjangoDatabaseBackend) -> None:
        self.backend = backend

    def _counters(self) -> tuple[Any, str]:
        from django.db import router

        model = models()[2]
        return model, router.db_for_write(model)

    def create(self, group_id: str, sub_tasks: str, count: int) -> None:
        """A chord is sent: its counter (a chord re-sent with the same id starts again)."""
        model, db = self._counters()
        defaults = {'sub_tasks': sub_tasks, 'count': count}
        run(lambda: model._default_manager.using(db).update_or_create(group_id=group_id, defaults=defaults))

    def set_size(self, group_id: str, size: int) -> None:
        # fastq's sender counts the header's leaves (a chain ending in a group counts its tasks), where the
        # counter was made with the number of results: the leaves are what return parts.
        model, db = self._counters()
        run(lambda: model._default_manager.using(db).filter(group_id=group_id).exclude(count=size).update(count=size))

    def add(self, group_id: str, count: int = 1) -> None:
        from django.db.models import F

        model, db = self._counters()
        run(lambda: model._default_manager.using(db).filter(group_id=group_id).update(count=F('count') + count))

    def add_result(self, group_id: str, result: Any) -> None:
        """`add_to_chord`: one more part to wait for, and its result among the header's."""
        from django.db import transaction
        from django.db.models import F

        model, db = self._counters()

        def step() -> None:
            with transaction.atomic(using=db):
                rows = model._default_manager.using(db).filter(group_id=group_id)
                if not rows.update(count=F('count') + 1):  # (the write first: it takes the row's lock)
                    raise ValueError(f'chord {group_id} is not being joined')
                counter = rows.get()
                counter.sub_tasks = json.dumps([*json.loads(counter.sub_tasks), result])
                counter.save(update_fields=['sub_tasks'])

        run(step)

    def record(self, group_id: str, task_id: str, index: int | None, part: bytes) -> Claim | None:
        from django.db import transaction
        from django.db.models import F

        model, db = self._counters()

        def step() -> str | None:
            # The UPDATE comes first: it takes the row's lock (the one django-celery-results' SELECT FOR UPDATE
            # takes), and on SQLite the write lock, which a transaction that read first could not upgrade to.
            with transaction.atomic(using=db):
                rows = model._default_manager.using(db).filter(group_id=group_id)
                if not rows.filter(count__gt=0).update(count=F('count') - 1):
                    logger.warning("Can't find ChordCounter for Group %s", group_id)
                    return None
                count, sub_tasks = rows.values_list('count', 'sub_tasks').get()
                if count != 0:
                    return None
                rows.delete()
                return str(sub_tasks)

        sub_tasks = run(step)
        return None if sub_tasks is None else CounterClaim(new_claim_token(), None, sub_tasks)

    def parts(self, group_id: str, claim: Claim) -> list[bytes]:
        """The header's results in order, as parts; a result not stored yet is waited for."""
        from fastq.result import GroupResult, result_from_tuple

        backend = self.backend
        assert isinstance(claim, CounterClaim)
        deps = [result_from_tuple(t, backend.app) for t in json.loads(claim.sub_tasks)]
        deadline = time.monotonic() + float(backend.app.conf.result_chord_join_timeout or 3.0)
        found = backend.get_many_meta([r.id for r in deps if not isinstance(r, GroupResult)])
        parts = []
        for dep in deps:
            timeout = max(deadline - time.monotonic(), 0.0)
            value: Any
            if isinstance(dep, GroupResult):  # (a nested group: its values, or the error joining it raised)
                try:
                    value, state = dep.join(timeout=timeout, disable_sync_subtasks=False), states.SUCCESS
                except Exception as exc:
                    value, state = exc, states.FAILURE
            else:
                meta = found.get(dep.id)
                if meta is None or meta['status'] not in states.READY_STATES:
                    meta = backend.wait_for(dep.id, timeout=timeout)
                value, state = meta['result'], meta['status']
            parts.append(backend.encode([1, dep.id, state, backend.encode_result(value, state)]))
        return parts

    def release(self, group_id: str, claim: Claim) -> bool:
        return True  # (the row went with the claim)

    def forget_size(self, group_id: str) -> None:
        model, db = self._counters()
        run(lambda: model._default_manager.using(db).filter(group_id=group_id).delete())
