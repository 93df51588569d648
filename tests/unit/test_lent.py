"""A pool child's checks on a task it took with the lent lead (`Lent._job`), and whether it still holds it.

The child runs a task only when the parent would have sent it there anyway; everything else goes back to the
parent unrun. These are the rules that keep a revoked, early, expired, refused or poison message from running
in the child.
"""

from __future__ import annotations

import datetime as dt
import json
import marshal
from types import SimpleNamespace
from typing import Any

from fastq import _core
from fastq.brokers.base import Delivery
from fastq.brokers.redis.consumer import _counts
from fastq.brokers.redis.layout import DELIVERIES_HEADER
from fastq.worker.pool.lent import RELEASED, TOOK, Lent, Took, terms
from tests.unit.test_core_task_head import envelope

JOB, JOB_SHORT = 1, 5
SPEC = {'keys': ['celery'], 'queues': ['celery'], 'timeout': 2}


def _app(**task: Any) -> Any:
    add = SimpleNamespace(**{'time_limit': None, 'soft_time_limit': None, 'acks_late': False, **task})
    return SimpleNamespace(
        tasks={'tasks.add': add},
        timezone=dt.UTC,
        read_broker=SimpleNamespace(child_lead=lambda spec: SimpleNamespace(spec=spec)),  # (where a worker consumes)
        conf=SimpleNamespace(worker_deduplicate_successful_tasks=False),
    )


def _lent(
    app: Any = None, names: Any = None, revoked: Any = (), max_redeliveries: int = 0, limits: Any = (None, None)
) -> Lent:
    names = {'tasks.add': (None, None)} if names is None else names
    payload = terms(7, SPEC, names, frozenset(), list(revoked), limits, max_redeliveries, 'w@h')
    return Lent(app or _app(), frozenset({'application/json'}), payload)


def _delivery(data: bytes, deliveries_before: int = 0) -> Delivery:
    if deliveries_before:
        doc = json.loads(data)
        doc['headers'][DELIVERIES_HEADER] = deliveries_before
        data = json.dumps(doc).encode()
    out, _ = _core.fetched_deliveries([1, b'tag-1', data], ['celery'], 1.0, Delivery, lambda *a: None, _counts)
    d: Delivery = out[0]
    return d


def _iso(seconds_from_now: float) -> str:
    return (dt.datetime.now(dt.UTC) + dt.timedelta(seconds=seconds_from_now)).isoformat()


def test_the_usual_task_runs_here_acked_early_by_the_child() -> None:
    data = envelope()
    job = _lent()._job(_delivery(data))
    assert job is not None
    kind, fields, early, name = job
    assert (kind, early, name) == (JOB_SHORT, True, 'tasks.add')
    assert fields == (data, 'celery', False, None, None, 'w@h')  # as `Job.payload` has it, not marshalled


def test_acks_late_is_left_to_the_parent() -> None:
    job = _lent(_app(acks_late=True))._job(_delivery(envelope()))
    assert job is not None and job[2] is False


def test_a_hard_time_limit_makes_it_reported_before_it_starts() -> None:
    job = _lent(names={'tasks.add': (30.0, 20.0)})._job(_delivery(envelope()))
    assert job is not None
    kind, fields, _, _ = job
    assert kind == JOB and fields[3:5] == (30.0, 20.0)  # the parent's limits (`time_limit` may change them)
    job = _lent(limits=(60.0, None))._job(_delivery(envelope()))
    assert job is not None and job[0] == JOB and job[1][3] == 60.0


def test_what_the_parent_must_decide_is_not_run_here() -> None:
    lent = _lent(revoked=['id-1'], max_redeliveries=2)
    assert lent._job(_delivery(envelope())) is None  # revoked
    assert _lent(names={})._job(_delivery(envelope())) is None  # a name not vetted (unseen, rate limited)
    assert _lent(max_redeliveries=2)._job(_delivery(envelope(), deliveries_before=2)) is None  # poison
    assert _lent(max_redeliveries=2)._job(_delivery(envelope(), deliveries_before=1)) is not None
    assert _lent()._job(_delivery(envelope(eta=_iso(60)))) is None  # its ETA is ahead
    assert _lent()._job(_delivery(envelope(expires=_iso(-60)))) is None  # expired
    refused = _lent()
    refused.accept = frozenset({'application/x-msgpack'})
    assert refused._job(_delivery(envelope())) is None  # content type not accepted


def test_a_due_eta_and_a_future_expiry_run_here() -> None:
    assert _lent()._job(_delivery(envelope(eta=_iso(-1)))) is not None
    assert _lent()._job(_delivery(envelope(expires=_iso(60)))) is not None


def test_held_while_the_shared_generation_is_the_loans() -> None:
    lent = _lent()
    assert not lent.held()  # no memory shared yet
    generation = memoryview(bytearray(8)).cast('Q')
    lent.generation = generation
    generation[0] = 7
    assert lent.held()
    generation[0] = 0  # the parent took it back
    assert not lent.held()
    generation[0] = 7
    lent.active = False  # the child gave it back itself
    assert not lent.held()


def test_terms_round_trip() -> None:
    payload = terms(3, SPEC, {'a': (1.0, None)}, frozenset({'a'}), ['x'], (None, 5.0), 4, 'w@h')
    assert marshal.loads(payload) == (3, SPEC, {'a': (1.0, None)}, ['a'], ['x'], (None, 5.0), 4, 'w@h')


class _Chan:
    def __init__(self) -> None:
        self.sent: list[tuple[int, int, bytes]] = []

    def send(self, job_id: int, kind: int, payload: bytes) -> None:
        self.sent.append((job_id, kind, payload))

    def flush_blocking(self) -> None:
        pass


def test_what_a_recalled_wait_reserved_goes_to_the_parent_unrun() -> None:
    # The frame the parent reads (`Took.loads`, lending.py) is the one the child writes on every route; the
    # give-back route once wrote one field fewer, which stopped the parent's loop.
    lent = _lent()
    raw = [1, b'tag-1', envelope()]
    lent.lead = SimpleNamespace(keys=['celery'], release=lambda: raw, ack=lambda acks: None, close=lambda: None)
    lent.acks = ['tag-0']
    chan = _Chan()
    lent.give_back(chan)  # type: ignore[arg-type]
    (job_id, kind, payload), (gen, released, acks) = chan.sent
    assert (job_id, kind) == (0, TOOK)
    assert Took.loads(payload) == Took(['celery'], raw, ran=False, held=False, acked=False, logged=False)
    assert (gen, released, marshal.loads(acks)) == (7, RELEASED, ['tag-0'])
    assert not lent.active
