"""The tree of results a task's children make (`iterdeps`, `collect`, `get_leaf`, `graph`) and `then`, as
Celery's `AsyncResult` offers them; the graph's DOT compared with Celery's own `DependencyGraph`."""

from __future__ import annotations

import io
import threading
from types import SimpleNamespace
from typing import Any

import pytest

from fastq import Fastq, states
from fastq.exceptions import IncompleteStream
from fastq.result import AsyncResult, GroupResult
from fastq.utils.graph import CycleError, DependencyGraph


def done(app: Fastq, task_id: str, value: Any, children: list[Any] = ()) -> AsyncResult[Any]:  # type: ignore[assignment]
    app.backend.store_result(task_id, value, states.SUCCESS, request=SimpleNamespace(children=list(children)))
    return AsyncResult(task_id, app=app)


def tree(app: Fastq) -> AsyncResult[Any]:
    """root -> (a -> a1, group g of b and c)"""
    a1 = done(app, 'a1', 11)
    a = done(app, 'a', 1, [a1])
    b, c = done(app, 'b', 2), done(app, 'c', 3)
    group = GroupResult('g', [b, c], app=app)
    return done(app, 'root', 0, [a, group])


def test_collect_get_leaf_and_iterdeps(memory_app: Fastq) -> None:
    root = tree(memory_app)
    collected = [(str(node), value) for node, value in root.collect()]
    assert collected == [('root', 0), ('a', 1), ('g', [2, 3]), ('a1', 11), ('b', 2), ('c', 3)]
    assert root.get_leaf() == 3
    pairs = [(str(parent) if parent is not None else None, str(node)) for parent, node in root.iterdeps()]
    assert pairs[:3] == [(None, 'root'), ('root', 'a'), ('root', 'g')] and ('g', 'c') in pairs


def test_an_unfinished_node_is_an_incomplete_stream(memory_app: Fastq) -> None:
    pending = AsyncResult('pending', app=memory_app)
    root = done(memory_app, 'root2', 0, [pending])
    with pytest.raises(IncompleteStream):
        list(root.iterdeps())
    assert [str(node) for _, node in root.iterdeps(intermediate=True)] == ['root2', 'pending']


def test_graph_matches_celerys_dot(memory_app: Fastq) -> None:
    from celery.utils.graph import DependencyGraph as CeleryGraph
    from celery.utils.graph import GraphFormatter as CeleryFormatter

    root = tree(memory_app)
    graph = root.graph
    assert len(graph) == 6 and 'a1' in {str(n) for n in graph}
    assert [str(n) for n in graph['root']] == ['a', 'g']
    ours = io.StringIO()
    graph.to_dot(ours)
    theirs = CeleryGraph(formatter=CeleryFormatter(root='root', shape='oval'))
    for node, deps in graph.items():
        theirs.add_arc(str(node))
        for dep in deps:
            theirs.add_edge(str(node), str(dep))
    expected = io.StringIO()
    theirs.to_dot(expected)
    assert ours.getvalue() == expected.getvalue()
    assert graph.valency_of(root) == theirs.valency_of('root') == 5  # edges below root, as Celery counts them
    assert repr(graph) == repr(theirs)


def test_topsort_and_cycles() -> None:
    graph = DependencyGraph([('app', ['db', 'cache']), ('db', ['disk']), ('cache', []), ('disk', [])])
    order = graph.topsort()
    assert order.index('disk') < order.index('db') < order.index('app') and order.index('cache') < order.index('app')
    assert sorted(graph.edges()) == ['app', 'db']
    cyclic = DependencyGraph([('x', ['y']), ('y', ['x'])])
    with pytest.raises(CycleError):
        cyclic.topsort()


def test_then_calls_back_once_done(memory_app: Fastq) -> None:
    result = AsyncResult('later', app=memory_app)
    called = threading.Event()
    seen: list[Any] = []
    future = result.then(lambda r: seen.append(r.get()) or 'cb')
    assert not called.is_set() and not seen
    memory_app.backend.store_result('later', 42, states.SUCCESS)
    assert future.result(timeout=10) == 'cb' and seen == [42]

    errors: list[Exception] = []
    failing = done(memory_app, 'failing-cb', 1).then(lambda r: 1 / 0, on_error=errors.append)
    with pytest.raises(ZeroDivisionError):
        failing.result(timeout=10)
    assert isinstance(errors[0], ZeroDivisionError)


def test_a_group_result_pickles(memory_app: Fastq) -> None:
    import pickle

    group = memory_app.GroupResult('gid', [AsyncResult('a', app=memory_app), AsyncResult('b', app=memory_app)])
    back = pickle.loads(pickle.dumps(group))
    assert isinstance(back, GroupResult) and back.id == 'gid' and [r.id for r in back.results] == ['a', 'b']


def test_result_set_then_iter_native_and_on_message(memory_app: Fastq) -> None:
    from fastq.result import ResultSet

    a, b = done(memory_app, 'rs-a', 1), done(memory_app, 'rs-b', 2)
    results = ResultSet([a, b], app=memory_app)
    assert [(task_id, meta['result']) for task_id, meta in results.iter_native(timeout=5)] == [('rs-a', 1), ('rs-b', 2)]
    assert results.then(lambda rs: rs.join()).result(timeout=10) == [1, 2]
    heard: list[Any] = []
    pending = AsyncResult('rs-later', app=memory_app)
    later = ResultSet([pending], app=memory_app)
    threading.Timer(0.2, lambda: memory_app.backend.store_result('rs-later', 3, states.SUCCESS)).start()
    assert later.get(timeout=10, on_message=heard.append) == [3]


def test_result_api_names_of_celery(memory_app: Fastq) -> None:
    """Celery 5.7's `AsyncResult.exists()` (a result stored, or none: both read PENDING), `as_list()`,
    `TimeoutError` and `maybe_throw()` returning the value; `ResultSet.revoke(connection, ...)` and
    `maybe_throw(callback, propagate)` in Celery's order. (fastq's had none of the first three, and a
    ResultSet's `revoke(connection=...)` raised TypeError.)"""
    from fastq.exceptions import TimeoutError

    @memory_app.task(shared=False)
    def add(x: int, y: int) -> int:
        return x + y

    done = add.apply_async((1, 1), task_id='stored')
    memory_app.backend.store_result('stored', 2, 'SUCCESS')
    assert memory_app.AsyncResult('stored').exists() and not memory_app.AsyncResult('never-sent').exists()
    assert done.TimeoutError is TimeoutError and memory_app.AsyncResult('stored').maybe_throw() == 2
    child = memory_app.AsyncResult('child', parent=memory_app.AsyncResult('stored'))
    assert child.as_list() == ['child', 'stored']
    results = memory_app.ResultSet([memory_app.AsyncResult('stored')])
    seen: list[Any] = []
    results.maybe_throw(lambda task_id, value: seen.append((task_id, value)), True)
    assert seen == [('stored', 2)]
    revoked: list[Any] = []
    memory_app.control.revoke = lambda ids, **kw: revoked.append(ids)  # type: ignore[method-assign]
    results.revoke(None, terminate=False)
    assert revoked == [['stored']]


def test_native_iteration_is_in_the_order_tasks_finish_as_celerys(memory_app: Fastq) -> None:
    """Celery's `iter_native` yields each task as it finishes, and `join_native(callback=...)` calls back in
    that order (a progress callback hears a quick task before a slow one listed first); fastq's went in the
    set's order, waiting for the first task before reporting any other. Without a callback the values are in
    the set's order, as ever."""
    from fastq.result import ResultSet

    slow, quick = AsyncResult('rs-slow', app=memory_app), done(memory_app, 'rs-quick', 2)
    results = ResultSet([slow, quick], app=memory_app)
    iterator = results.iter_native(timeout=30, interval=0.05)
    assert next(iterator) == ('rs-quick', memory_app.backend.get_task_meta('rs-quick'))
    memory_app.backend.store_result('rs-slow', 1, states.SUCCESS)
    assert next(iterator)[0] == 'rs-slow' and list(iterator) == []
    heard: list[str] = []
    memory_app.backend.forget('rs-slow')
    slow = AsyncResult('rs-slow', app=memory_app)
    results = ResultSet([slow, quick], app=memory_app)
    threading.Timer(0.2, lambda: memory_app.backend.store_result('rs-slow', 1, states.SUCCESS)).start()
    assert results.join_native(timeout=30, interval=0.05, callback=lambda task_id, value: heard.append(task_id)) is None
    assert heard == ['rs-quick', 'rs-slow'] and results.join_native(timeout=30) == [1, 2]
    memory_app.backend.store_result('rs-bad', ValueError('bad'), states.FAILURE)
    failed = ResultSet([AsyncResult('rs-never', app=memory_app), AsyncResult('rs-bad', app=memory_app)])
    with pytest.raises(ValueError, match='bad'):
        failed.join_native(timeout=30, interval=0.05, callback=lambda task_id, value: None)
