"""The canvas API: building workflows (Celery's composition rules), their results, and running them through an
in-process worker on the memory, SQLite and Redis backends (and eagerly)."""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any
from unittest.mock import patch

import pytest

import fastq.canvas
from fastq import Fastq, GroupResult, chain, chord, chunks, group, signature
from fastq.canvas import Signature, maybe_signature, xmap, xstarmap
from fastq.canvas.chain import _chain
from fastq.exceptions import ChordError
from fastq.result import AsyncResult, EagerResult
from fastq.worker.worker import WorkController


def _tasks(app: Fastq) -> SimpleNamespace:
    seen: list[Any] = []

    @app.task(name='c.add')
    def add(x: int, y: int = 0) -> int:
        return x + y

    @app.task(name='c.mul')
    def mul(x: int, y: int) -> int:
        return x * y

    @app.task(name='c.xsum')
    def xsum(values: list[int]) -> int:
        return sum(values)

    @app.task(name='c.fail')
    def fail(*args: Any) -> None:
        raise ValueError(f'fail {args}')

    @app.task(name='c.collect')
    def collect(*args: Any) -> None:
        seen.append(args)

    return SimpleNamespace(add=add, mul=mul, xsum=xsum, fail=fail, collect=collect, seen=seen)


@pytest.fixture
def app() -> Iterator[Fastq]:
    app = Fastq('c', broker='memory://', backend='memory://', set_as_current=False)
    yield app
    app.close()


@pytest.fixture
def t(app: Fastq) -> SimpleNamespace:
    return _tasks(app)


# --- building -----------------------------------------------------------------------------------------------


def test_public_names() -> None:
    for name in ('chain', 'group', 'chord', 'chunks', 'signature', 'maybe_signature', 'xmap', 'xstarmap'):
        assert getattr(fastq, name) is getattr(fastq.canvas, name)
    assert fastq.GroupResult is GroupResult


def test_pipe_makes_chains_and_chords(t: Any) -> None:
    c = t.add.s(1, 1) | t.add.s(2) | t.add.s(3)
    assert isinstance(c, _chain) and [s.args for s in c.tasks] == [(1, 1), (2,), (3,)]
    assert (c | t.add.s(4)).tasks[-1].args == (4,)
    g = group(t.add.s(1), t.add.s(2))
    assert isinstance(g | t.xsum.s(), chord)
    # a group followed by a task in a chain is upgraded to a chord; a task after a chord extends its body
    steps = chain(t.add.s(1, 1), g, t.xsum.s(), t.add.s(5)).tasks
    assert [type(s).__name__ for s in steps] == ['Signature', '_chord']
    assert isinstance(steps[1].body, _chain) and [s.task for s in steps[1].body.tasks] == ['c.xsum', 'c.add']
    # a group of one task is that task; an empty group is dropped
    assert (t.add.s(1) | group(t.add.s(2))).tasks[1].task == 'c.add'
    assert len((t.add.s(1) | t.add.s(2) | group()).tasks) == 2
    assert chain(t.add.s(i) for i in range(3)).tasks[2].args == (2,)
    ch = chord([t.add.s(1, 1)], t.xsum.s()) | t.add.s(1)
    assert isinstance(ch, chord) and isinstance(ch.body, _chain)


def test_signature_options_and_freezing(t: Any, app: Fastq) -> None:
    s = t.add.s(2).set(countdown=5, queue='q')
    assert s.options == {'countdown': 5, 'queue': 'q'}
    err = t.collect.s()
    assert s.link_error(err) is err and s.on_error(t.fail.s()) is s
    assert s.options['link_error'] == [err, t.fail.s()]
    c = s.clone((1,), {'y': 3}, priority=2)
    assert c.args == (1, 2) and c.kwargs == {'y': 3} and c.options['priority'] == 2 and 'priority' not in s.options
    c.options['link_error'].append('x')
    assert len(s.options['link_error']) == 2  # clones do not share options
    result = s.freeze()
    assert isinstance(result, AsyncResult) and s.id == result.id and s.options['reply_to'] == app.thread_oid
    assert s.freeze().id == result.id  # frozen once
    # group_id never changes once set: a waiting chord would never complete
    s.set(group_id='g1')
    assert s.clone(group_id='g2').options['group_id'] == 'g1'
    assert signature(dict(s)).options == s.options and signature(s) is not s
    assert maybe_signature(None) is None and maybe_signature(dict(s), app=app).app is app


def test_flatten_links_walks_callbacks_depth_first(t: Any) -> None:
    """Celery's `Signature.flatten_links`: the signature, then each callback's own flattened links (errbacks
    left out). A callback still a dict (as it arrives in a message) is read as a signature, where Celery's
    raises AttributeError."""
    s, mul = t.add.s(1), t.mul.s(2)
    mul.link(t.xsum.s())
    s.link(mul)
    s.link_error(t.collect.s())
    s.options['link'].append(dict(t.add.s(3)))
    assert s.flatten_links() == [s, mul, t.xsum.s(), t.add.s(3)]
    assert t.add.s(1).flatten_links() == [t.add.s(1)]


def test_workflows_rebuild_from_json(t: Any) -> None:
    """What travels in messages comes back as the same workflow class (Celery's subtask_type)."""
    canvas = chain(t.add.s(1, 1), group(t.add.s(1), t.mul.s(2)), t.xsum.s(), t.add.si(1, 2))
    wire = json.loads(json.dumps(canvas))
    back = Signature.from_dict(wire)
    assert isinstance(back, _chain) and isinstance(back.tasks[1], chord)
    assert isinstance(back.tasks[1].tasks[0], Signature) and back.tasks[1].body.tasks[1].immutable
    assert json.loads(json.dumps(back)) == wire
    assert isinstance(maybe_signature(json.loads(json.dumps(group(t.add.s(1))))), group)


def test_map_starmap_chunks_signatures(t: Any) -> None:
    assert isinstance(t.add.map([1, 2]), xmap) and t.add.map([1, 2]).task == 'celery.map'
    assert isinstance(t.add.starmap([(1, 2)]), xstarmap)
    c = t.add.chunks(((i, i) for i in range(5)), 2)
    assert isinstance(c, chunks) and [len(s.kwargs['it']) for s in c.group().tasks] == [2, 2, 1]


def test_builtins_registered_at_finalize_and_hidden(app: Fastq) -> None:
    app.finalize()
    names = {
        'celery.chord_unlock',
        'celery.chain',
        'celery.group',
        'celery.chord',
        'celery.map',
        'celery.starmap',
        'celery.chunks',
        'celery.accumulate',
        'celery.backend_cleanup',
    }
    assert names <= set(app.tasks) and names <= set(app.tasks.regular())  # (Celery's: no periodic type)
    assert app.tasks['celery.accumulate'](1, 2, index=1) == 2


def test_chords_need_a_result_backend() -> None:
    app = Fastq('c', broker='memory://', set_as_current=False)
    t = _tasks(app)
    with pytest.raises(NotImplementedError, match='Starting chords requires a result backend'):
        chord([t.add.s(1, 1)], t.xsum.s()).apply_async()
    with pytest.raises(TypeError, match='use a chord'):
        group(t.add.s(1, 1)).apply_async(link=t.xsum.s())


# --- eager --------------------------------------------------------------------------------------------------


def test_eager_workflows(app: Fastq, t: Any) -> None:
    app.conf.task_always_eager = True
    r = (t.add.s(1, 1) | t.mul.s(10) | t.add.s(1)).apply_async()
    assert isinstance(r, EagerResult) and r.get() == 21 and r.parent.get() == 20 and r.parent.parent.get() == 2
    assert group(t.add.s(i, i) for i in range(3)).apply_async().get() == [0, 2, 4]
    assert chord([t.add.s(1, 1), t.add.s(2, 2)], t.xsum.s()).apply_async().get() == 6
    assert chord([t.add.s(1, 1)])(t.xsum.s()).get() == 2


def test_eager_group_joins_one_by_one() -> None:
    """EagerResults have no native join, even on a backend that has one (Celery's), so an eager group's
    `get(callback=...)` is `join`'s: an empty list, not `join_native`'s None. (The Redis backend is never
    contacted: eager results are not stored.)"""
    app = Fastq('c', broker='memory://', backend='redis://127.0.0.1:1/0', set_as_current=False)
    try:
        app.conf.task_always_eager = True
        t = _tasks(app)
        assert app.backend.supports_native_join
        g = group(t.add.s(1, 1), t.add.s(2, 2)).apply_async()
        seen: list[Any] = []
        assert g.supports_native_join is False
        assert g.get(callback=lambda task_id, value: seen.append(value)) == [] and seen == [2, 4]
    finally:
        app.close()


def test_eager_result_revoke_marks_it_revoked(app: Fastq, t: Any) -> None:
    """Celery 5.7's `EagerResult.revoke`: REVOKED, its value replaced by TaskRevokedError('revoked') (which
    `get` raises), traceback cleared, and nothing sent (fastq's asked the workers to revoke it, and kept the
    value)."""
    from celery.result import EagerResult as CeleryEagerResult

    from fastq.exceptions import TaskRevokedError

    theirs = CeleryEagerResult('x', 4, 'SUCCESS')
    theirs.revoke()
    r = chain(t.add.s(1, 1), t.fail.s()).apply()
    parent = r.parent
    assert parent is not None
    with patch.object(app.control, 'revoke', side_effect=AssertionError('sent a revoke')):
        parent.revoke()
        r.revoke(terminate=True)
    for ours in (parent, r):
        assert ours.state == ours.status == theirs.state == 'REVOKED' and ours.ready() and not ours.successful()
        assert repr(ours.result) == repr(theirs.result) == "TaskRevokedError('revoked')"
        assert ours.traceback is theirs.traceback is None
        with pytest.raises(TaskRevokedError, match='revoked'):
            ours.get()
        with pytest.raises(TaskRevokedError):
            ours.maybe_throw()
        assert isinstance(ours.get(propagate=False), TaskRevokedError)


# --- through a worker ---------------------------------------------------------------------------------------


class InProcessWorker:
    def __init__(self, app: Fastq) -> None:
        self.controller = WorkController(app, pool='threads', concurrency=2, quiet=True)
        self.thread = threading.Thread(target=self.controller.start, daemon=True)

    def __enter__(self) -> WorkController:
        self.thread.start()
        return self.controller

    def __exit__(self, *exc: object) -> None:
        self.controller.stop()
        self.thread.join(30)


@pytest.fixture
def live(any_app: Fastq) -> Iterator[SimpleNamespace]:
    """Tasks of an app on memory, SQLite or Redis, with a worker running them."""
    t = _tasks(any_app)
    with InProcessWorker(any_app):
        yield t


def test_workflows_run(live: Any) -> None:
    t = live
    r = (t.add.s(1, 1) | t.mul.s(10) | t.add.s(1)).apply_async()
    assert r.get(timeout=30) == 21
    assert [r.parent.get(timeout=5), r.parent.parent.get(timeout=5)] == [20, 2] and r.parent.parent.parent is None
    g = group(t.mul.s(i, i) for i in range(6)).apply_async()
    assert g.get(timeout=30) == [0, 1, 4, 9, 16, 25]
    assert g.completed_count() == 6 and g.ready() and g.successful() and not g.failed() and not g.waiting()
    assert [res.id for res in g] == [res.id for res in g.results] and len(g) == 6
    assert chord([t.add.s(i, i) for i in range(5)], t.xsum.s()).apply_async().get(timeout=30) == 20
    # nested: a chord in a chain (group | task), with a chain as its body, then a group of chains
    r = (t.add.s(1, 1) | group(t.add.s(1), t.mul.s(2)) | t.xsum.s() | t.add.s(100)).apply_async()
    assert r.get(timeout=30) == 107
    assert group(t.add.s(1, 1) | t.mul.s(3), t.add.s(2, 2) | t.mul.s(3)).apply_async().get(timeout=30) == [6, 12]
    assert chord([t.add.s(1, 1), t.add.s(2, 2)], t.xsum.s() | t.mul.s(2)).apply_async().get(timeout=30) == 12
    assert chord([])(t.xsum.s()).get(timeout=30) == 0
    assert t.add.chunks([(i, i) for i in range(5)], 2).apply_async().get(timeout=30) == [[0, 2], [4, 6], [8]]
    assert t.add.map([1, 2]).apply_async().get(timeout=30) == [1, 2]
    assert t.add.starmap([(1, 2), (3, 4)]).delay().get(timeout=30) == [3, 7]


def test_builtins_sent_by_name(live: Any, any_app: Fastq) -> None:
    """What a Celery client may send: the old `celery.chord` task, `celery.chunks`, `celery.map`."""
    body = live.xsum.s().set(task_id=str(uuid.uuid4()))
    any_app.send_task('celery.chord', kwargs={'header': [live.add.s(1, 1), live.add.s(2, 2)], 'body': body})
    assert any_app.AsyncResult(body.id).get(timeout=30) == 6
    r = any_app.send_task('celery.chunks', kwargs={'task': live.add.s(), 'it': [(1, 1), (2, 2), (3, 3)], 'n': 2})
    (group_id, _), parts = r.get(timeout=30)  # the GroupResult it sent, as a tuple
    assert GroupResult(group_id, [AsyncResult(p[0][0], app=any_app) for p in parts]).get(timeout=30) == [[2, 4], [6]]
    assert any_app.send_task('celery.map', kwargs={'task': live.xsum.s(), 'it': [[1, 2], [3]]}).get(timeout=30) == [
        3,
        3,
    ]


def test_group_result_save_restore(live: Any, any_app: Fastq) -> None:
    g = group(live.add.s(1, 1), live.add.s(2, 2)).apply_async()
    g.save()
    back = GroupResult.restore(g.id, app=any_app)
    assert back is not None and back == g and back.get(timeout=30) == [2, 4]
    assert any_app.GroupResult(g.id, g.results).as_tuple() == back.as_tuple()
    back.delete()
    assert GroupResult.restore(g.id, app=any_app) is None
    back.forget()
    assert back.results[0].state == 'PENDING'


def test_group_result_callback_gets_the_values(live: Any, any_app: Fastq) -> None:
    """With a callback, the values go to it: `join` returns an empty list, `join_native` None, and `get`
    is `join_native` on a backend with native join (Redis), else `join`: as Celery's ResultSet."""
    g = group(live.add.s(1, 1), live.add.s(2, 2)).apply_async()
    seen: list[Any] = []
    assert g.join(timeout=30, callback=lambda task_id, value: seen.append((task_id, value))) == []
    assert g.join_native(timeout=30, callback=lambda task_id, value: seen.append((task_id, value))) is None
    native = any_app.backend.supports_native_join
    assert g.get(timeout=30, callback=lambda task_id, value: seen.append((task_id, value))) == (None if native else [])
    assert seen == [(r.id, v) for r, v in zip(g.results, [2, 4], strict=True)] * 3
    assert g.get(timeout=30) == g.join_native(timeout=30) == [2, 4]


def test_chain_failure_fails_the_rest(live: Any) -> None:
    r = (live.add.s(1, 1) | live.fail.s() | live.add.s(3) | live.add.s(4)).apply_async()
    with pytest.raises(ValueError, match='fail'):
        r.get(timeout=30)
    # the steps after the failed one are stored as failed, so nothing waits on them forever
    with pytest.raises(ValueError, match='fail'):
        r.parent.get(timeout=30, follow_parents=False)


def test_chord_header_failure_is_a_chord_error(live: Any) -> None:
    """The first failed part *in header order* names the chord's error, whichever failed first."""
    errback = live.collect.s()
    header = [live.add.s(1, 1), live.fail.s('second'), live.fail.s('third'), live.add.s(1, 1)]
    r = chord(header, live.xsum.s().on_error(errback)).apply_async()
    with pytest.raises(ChordError) as info:
        r.get(timeout=30, follow_parents=False)
    assert f'Dependency {r.parent.results[1].id} raised ValueError' in str(info.value)
    # the body's traceback, as Celery stores it: the header's error, then where the join raised the ChordError
    assert r.traceback.startswith("ValueError: fail ('second',)\n\nThe above exception was the direct cause")
    assert r.traceback.endswith(f'fastq.exceptions.ChordError: {info.value}\n')
    with pytest.raises(ValueError, match='second'):  # follow_parents: the header's own error
        AsyncResult(r.id, app=r.app, parent=r.parent).get(timeout=30)
    # the body's errback ran, with the body's request (`collect(*args)` takes more than one positional
    # argument: Celery calls it in place with the request, the exception and the traceback)
    _wait(lambda: any(args and getattr(args[0], 'id', None) == r.id for args in live.seen))


def test_chord_link_error_on_header(any_app: Fastq, live: Any) -> None:
    any_app.conf.task_allow_error_cb_on_chord_header = True
    c = chord([live.fail.s('x'), live.add.s(1, 1)], live.xsum.s())
    c.link_error(live.collect.si('header errback'))
    c.apply_async()
    _wait(lambda: live.seen.count(('header errback',)) == 2)  # once from the failed header task, once the body


def _wait(predicate: Any, timeout: float = 30.0) -> None:
    from tests.harness import wait_until

    wait_until(predicate, timeout)


def test_chord_unlock_fallback() -> None:
    """A backend that cannot count parts: `celery.chord_unlock` polls until the header is ready."""
    from fastq.backends.memory import MemoryBackend

    app = Fastq('c', broker='memory://', set_as_current=False, result_chord_retry_interval=0.05)
    backend = app._backend = MemoryBackend(app, 'memory://')
    backend.chord_store = None
    t = _tasks(app)
    try:
        with InProcessWorker(app):
            r = chord([t.add.s(i, i) for i in range(4)], t.xsum.s()).apply_async()
            assert r.get(timeout=30) == 12
            r = chord([t.add.s(1, 1), t.fail.s('unlock')], t.xsum.s()).apply_async()
            with pytest.raises(ChordError, match=r'Dependency .* raised ValueError'):
                r.get(timeout=30, follow_parents=False)
    finally:
        app.close()


def test_group_skew_spreads_countdowns_as_celerys(memory_app: Any) -> None:
    import itertools

    from kombu.utils.functional import fxrange

    @memory_app.task
    def add(x: int, y: int) -> int:
        return x + y

    for start, stop, step in ((1.0, None, 1.0), (1, 3, 0.5), (0.5, 2, 1.0)):
        pairs = [(i, i) for i in range(8)]
        skewed = add.chunks(pairs, 1).group().skew(start=start, stop=stop, step=step)
        expected = list(itertools.islice(fxrange(start, stop, step, repeatlast=True), 8))
        assert [task.options['countdown'] for task in skewed.tasks] == expected
