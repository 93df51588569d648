"""Details of Celery's task and result API that code written for Celery relies on."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest

from fastq import Fastq, group
from fastq._state import get_current_worker_task
from fastq.exceptions import Ignore
from fastq.result import AsyncResult, GroupResult, allow_join_result, assert_will_not_block, result_from_tuple


def test_after_return_only_once_a_task_has_returned_for_good() -> None:
    # Celery skips it for RETRY, IGNORED and REJECTED: the task will run again, or was dropped on purpose
    app = Fastq('after_return', broker='memory://', backend='memory://')
    app.conf.task_always_eager = True
    seen: list[str] = []

    class Base(app.Task):  # type: ignore[name-defined,misc]
        def after_return(self, status: str, *args: Any) -> None:
            seen.append(status)

    @app.task(base=Base, bind=True, max_retries=1, default_retry_delay=0)
    def flaky(self: Any) -> str:
        if self.request.retries == 0:
            raise self.retry()
        return 'ok'

    @app.task(base=Base)
    def ignored() -> None:
        raise Ignore()

    @app.task(base=Base)
    def fails() -> None:
        raise ValueError('x')

    assert flaky.delay().get() == 'ok'
    ignored.delay()
    fails.apply()
    assert seen == ['SUCCESS', 'FAILURE']


def test_allow_join_result_lets_a_task_wait(monkeypatch: pytest.MonkeyPatch) -> None:
    app = Fastq('join', broker='memory://')

    @app.task
    def t() -> None: ...

    monkeypatch.setattr('fastq.result._state.get_current_worker_task', lambda: t)
    with pytest.raises(RuntimeError, match='Never call result.get'):
        assert_will_not_block()
    with allow_join_result():
        assert_will_not_block()
    with pytest.raises(RuntimeError):
        assert_will_not_block()
    assert get_current_worker_task() is None


def test_children_are_results(monkeypatch: pytest.MonkeyPatch) -> None:
    app = Fastq('children', broker='memory://', backend='memory://')
    stored = [[['child-1', None], None], [['group-1', None], [[['m1', None], None], [['m2', None], None]]]]
    monkeypatch.setattr(AsyncResult, '_get_task_meta', lambda self: {'children': stored})
    first, second = AsyncResult('parent', app=app).children or []
    assert isinstance(first, AsyncResult) and first.id == 'child-1'
    assert isinstance(second, GroupResult) and [r.id for r in second.results] == ['m1', 'm2']
    assert result_from_tuple(first.as_tuple(), app) == first


def test_group_result_revoke_without_a_timeout() -> None:
    app = Fastq('group_revoke', broker='memory://', backend='memory://')

    @app.task
    def add(x: int, y: int) -> int:
        return x + y

    result = group(add.s(1, 1), add.s(2, 2)).apply_async()
    result.revoke()  # Celery's signature passes timeout=None on to the broadcast
    result.revoke(terminate=True, wait=True)
    app.close()


def test_result_revoke_by_stamped_headers_waits_for_replies_with_wait(monkeypatch: pytest.MonkeyPatch) -> None:
    app = Fastq('stamped_revoke', broker='memory://', backend='memory://')
    sent: list[dict[str, Any]] = []
    broadcast = app.control.broadcast

    def recording(command: str, **kwargs: Any) -> Any:
        sent.append({'command': command, **kwargs})
        return broadcast(command, **kwargs)

    monkeypatch.setattr(app.control, 'broadcast', recording)
    result = AsyncResult('t1', app=app)
    result.revoke_by_stamped_headers({'batch': 'b-1'}, terminate=True, wait=True, timeout=0.2)
    result.revoke_by_stamped_headers({'batch': 'b-2'})
    assert [(s['command'], s['arguments']['headers'], s['reply'], s['timeout']) for s in sent] == [
        ('revoke_by_stamped_headers', {'batch': 'b-1'}, True, 0.2),
        ('revoke_by_stamped_headers', {'batch': 'b-2'}, False, None),
    ]
    assert sent[0]['arguments']['terminate'] is True
    app.close()


def test_replace_eagerly() -> None:
    app = Fastq('replace', broker='memory://', backend='memory://')
    app.conf.task_always_eager = True

    @app.task
    def add(x: int, y: int) -> int:
        return x + y

    @app.task(bind=True)
    def replaced(self: Any, x: int) -> Any:
        return self.replace(add.s(x, 1))  # (eagerly, replace runs it and returns its result)

    @app.task(bind=True)
    def by_group(self: Any, n: int) -> Any:
        return self.replace(group(add.s(i, i) for i in range(n)))

    assert replaced.delay(1).get() == 2
    assert by_group.delay(3).get() == [0, 2, 4]


def test_map_starmap_and_chunks_eagerly_in_a_client_app() -> None:
    # the built-in tasks they send exist in an app that never started a worker, as in Celery
    app = Fastq('eager_map', broker='memory://', backend='memory://')
    app.conf.task_always_eager = True

    @app.task
    def tsum(values: list[int]) -> int:
        return sum(values)

    @app.task
    def add(x: int, y: int) -> int:
        return x + y

    assert tsum.map([[1], [2, 3]]).delay().get(timeout=5) == [1, 5]
    assert add.starmap([(1, 2)]).delay().get(timeout=5) == [3]
    assert add.chunks([(1, 2), (3, 4), (5, 6)], 2).delay().get(timeout=5) == [[3, 7], [11]]
    assert 'celery.map' in app.tasks and 'celery.map' in app.tasks.regular()  # (Celery's: not periodic)


def test_app_worker_takes_celerys_keywords() -> None:
    # celery.apps.worker.Worker's: pool_cls, send_events, without_* ... (loglevel/logfile set up logging)
    app = Fastq('worker_kwargs', broker='memory://', backend='memory://')
    worker = app.Worker(
        concurrency=1,
        pool_cls='solo',
        send_events=True,
        without_mingle=True,
        without_gossip=True,
        without_heartbeat=True,
        optimization='fair',
    )
    assert (worker.pool_name, worker.concurrency, worker.heartbeat) == ('solo', 1, False)
    assert app.conf.worker_send_task_events is True


def test_app_group_result_is_a_class_with_restore() -> None:
    app = Fastq('group_restore', broker='memory://', backend='memory://')
    saved = app.GroupResult('gid', [app.AsyncResult('a'), app.AsyncResult('b')])
    saved.save()
    restored = app.GroupResult.restore('gid')
    assert isinstance(saved, app.GroupResult) and isinstance(saved, GroupResult)
    assert restored is not None and [r.id for r in restored.results] == ['a', 'b']


def test_request_stack_is_celerys_local_stack() -> None:
    """`task.request_stack` (push/pop/top/len) as Celery's `_LocalStack`: empty while the task is not running,
    even after `task.request` was read (the called-directly request is kept off the stack)."""
    app = Fastq('stack', broker='memory://', backend='memory://', set_as_current=False)
    seen: list[Any] = []

    @app.task(bind=True)
    def where(self: Any) -> None:
        seen.append((len(self.request_stack), self.request_stack.top.id, self.request_stack.top is self.request))

    assert where.request.called_directly and where.request_stack.top is None and len(where.request_stack) == 0
    where.apply(task_id='t1')
    assert seen == [(1, 't1', True)]
    assert where.request_stack.top is None and where.request_stack.stack == []
    from fastq.task import Context

    pushed = Context(id='manual')
    where.request_stack.push(pushed)
    assert where.request.id == 'manual' and len(where.request_stack) == 1
    assert where.request_stack.pop() is pushed and where.request_stack.pop() is None
    assert where.request.called_directly


def test_wrapped_is_the_function_as_in_celery() -> None:
    # `task.__wrapped__` is what the decorator wrapped, callable as it was (Celery's `'__wrapped__': run`): a
    # plain task's is the function itself, a bound task's is bound to the task. It read as a method bound to
    # the task for every task, so `add.__wrapped__(1, 2)` failed, and Sphinx documented `add(y)`.
    app = Fastq('wrapped', broker='memory://', backend='memory://')

    def add(x: int, y: int) -> int:
        return x + y

    def who(self: Any) -> str:
        return self.name

    plain = app.task(add)
    bound = app.task(bind=True, name='who')(who)
    assert plain.__wrapped__ is add and plain.__wrapped__(1, 2) == 3
    assert bound.__wrapped__() == 'who' and bound.__wrapped__.__func__ is who
    assert app.task(add) is plain  # the same function decorated again: the same task


def test_a_task_pickles_as_a_reference_to_the_current_apps_task(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As Celery's tasks: pickled as name and module, unpickled (its module imported first) as the current
    app's task of that name, so tasks go through multiprocessing, caches and copy.deepcopy; fastq's pickled
    the class, which pickle could not find under the module name the task took."""
    import copy
    import pickle

    from fastq import _state

    monkeypatch.setattr(_state, '_current_app', _state._current_app)  # (the module's apps become current)
    (tmp_path / 'pickled_tasks.py').write_text(
        "from fastq import Fastq\n\napp = Fastq('pickled', broker='memory://')\n\n"
        '@app.task(shared=False)\ndef add(x, y):\n    return x + y\n'
    )  # (not shared: the module imported again below makes a second app, which would take the first `add` too)
    monkeypatch.syspath_prepend(str(tmp_path))
    import pickled_tasks

    try:
        data = pickle.dumps(pickled_tasks.add)
        assert b'pickled_tasks.add' in data and b'_unpickle_task' in data
        assert pickle.loads(data) is pickled_tasks.add and copy.deepcopy(pickled_tasks.add) is pickled_tasks.add
        monkeypatch.delitem(sys.modules, 'pickled_tasks')  # (a process that never imported it: unpickling does)
        again = pickle.loads(data)
        assert again.name == 'pickled_tasks.add' and again(2, 2) == 4
    finally:
        pickled_tasks.app.close()
        sys.modules['pickled_tasks'].app.close()


def test_a_decorated_task_is_checked_against_the_decorators_parameters(memory_app: Fastq) -> None:
    """The FAQ's "Can I use decorators with tasks?": as Celery (getfullargspec), a call is checked against the
    function the task decorator was given, not what a functools.wraps decorator wrapped: a keyword the
    decorator takes is accepted, and a `*args, **kwargs` wrapper takes anything (bound tasks too)."""
    import functools

    def with_tenant(fun: Any) -> Any:
        @functools.wraps(fun)
        def wrapper(*args: Any, tenant: Any = None, **kwargs: Any) -> Any:
            return fun(*args, **kwargs)

        return wrapper

    @memory_app.task
    @with_tenant
    def add(x: int, y: int) -> int:
        return x + y

    @memory_app.task(bind=True)
    @with_tenant
    def whoami(self: Any, x: int) -> Any:
        return [self.name, x]

    @memory_app.task
    def plain(x: int, y: int) -> int:
        return x + y

    assert add.name.endswith('.add') and add(1, 2, tenant='t') == 3
    assert add.delay(1, 2, tenant='t').id and whoami.delay(1, tenant='t').id and whoami.delay().id
    assert whoami.apply((5,), {'tenant': 't'}).get() == [whoami.name, 5]
    with pytest.raises(TypeError, match="plain\\(\\) got an unexpected keyword argument 'tenant'"):
        plain.delay(1, 2, tenant='t')  # (an undecorated function: checked as ever)
