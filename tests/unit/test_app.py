"""The public API on the in-memory broker, with an in-process worker: tasks, results, eager mode, typing."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import UTC
from typing import Any

import pytest

from fastq import Fastq, shared_task, signals, states
from fastq.exceptions import NotRegistered, TimeoutError
from fastq.result import AsyncResult, EagerResult
from fastq.worker.worker import WorkController


@pytest.fixture
def app(any_app: Fastq) -> Fastq:
    return any_app


class InProcessWorker:
    def __init__(self, app: Fastq, pool: str = 'threads') -> None:
        self.controller = WorkController(app, pool=pool, concurrency=2, quiet=True)
        self.thread = threading.Thread(target=self.controller.start, daemon=True)

    def __enter__(self) -> WorkController:
        self.thread.start()
        return self.controller

    def __exit__(self, *exc: object) -> None:
        self.controller.stop()
        self.thread.join(30)
        assert not self.thread.is_alive()


@pytest.fixture
def run_worker(app: Fastq) -> Iterator[Any]:
    yield lambda pool='threads': InProcessWorker(app, pool)


def test_task_naming_and_registry(app: Fastq) -> None:
    @app.task
    def add(x: int, y: int) -> int:
        return x + y

    @app.task(name='custom.name')
    def other() -> None:
        return None

    assert add.name == f'{__name__}.add'
    assert app.tasks[add.name] is add and app.tasks['custom.name'] is other
    assert add(2, 3) == 5  # called directly, in this process
    with pytest.raises(NotRegistered):
        _ = app.tasks['nope']


def test_delay_checks_arguments(app: Fastq) -> None:
    @app.task
    def add(x: int, y: int) -> int:
        return x + y

    with pytest.raises(TypeError, match='missing 1 required positional argument'):
        add.delay(1)  # type: ignore[call-arg]


def test_delay_get_with_worker(app: Fastq, run_worker: Any) -> None:
    @app.task
    def add(x: int, y: int) -> int:
        return x + y

    @app.task
    def boom() -> None:
        raise KeyError('nope')

    with run_worker('threads'):
        r = add.delay(1, 2)
        assert isinstance(r, AsyncResult)
        assert r.get(timeout=30) == 3
        with pytest.raises(KeyError):
            boom.delay().get(timeout=30)
        assert app.send_task(add.name, (5, 5)).get(timeout=30) == 10


def test_solo_pool(app: Fastq, run_worker: Any) -> None:
    @app.task
    def mul(x: int, y: int) -> int:
        return x * y

    with run_worker('solo'):
        assert [mul.delay(i, 2).get(timeout=30) for i in range(3)] == [0, 2, 4]


def test_control_purges_the_apps_queues(app: Fastq) -> None:
    @app.task
    def noop() -> None:
        return None

    assert 'celery' in app.control.known_queues()  # the router's default queue, before the broker has seen it
    noop.apply_async(queue='one')
    noop.delay()
    known = app.control.known_queues()
    assert {'celery', 'one'} <= set(known) and known == sorted(known)
    # purge erases the app's own queues (task_queues, else the default one), as Celery's: not every queue
    # the broker knows, which may be another app's
    assert app.control.purge() == 1
    assert app.broker.qsize('celery') == 0 and app.broker.qsize('one') == 1


def test_get_timeout_raises_fastq_timeout(app: Fastq) -> None:
    @app.task
    def never() -> None:
        return None

    r = never.delay()
    assert r.state == states.PENDING and not r.ready()
    with pytest.raises(TimeoutError):
        r.get(timeout=0.2)


def test_forget(app: Fastq) -> None:
    app.backend.store_result('x', 42, states.SUCCESS)
    r = app.AsyncResult('x')
    assert r.get(timeout=1) == 42
    r.forget()
    assert app.AsyncResult('x').state == states.PENDING


def test_success_is_never_overwritten(app: Fastq) -> None:
    app.backend.store_result('x', 1, states.SUCCESS)
    app.backend.store_result('x', ValueError('late duplicate'), states.FAILURE)
    assert app.AsyncResult('x').get(timeout=1) == 1


def test_apply_and_always_eager(app: Fastq) -> None:
    @app.task(bind=True)
    def who(self: Any, x: int) -> tuple[bool, int]:
        return self.request.is_eager, x

    r = who.apply((3,))
    assert isinstance(r, EagerResult) and r.get() == (True, 3) and r.successful()
    app.conf.task_always_eager = True
    assert who.delay(4).get() == (True, 4)


def test_apply_keeps_the_arguments_as_given(app: Fastq) -> None:
    """Celery's `apply` runs the task with the args it was given (a tuple stays a tuple, none is `()`): its
    task_prerun/postrun/failure receivers and `self.request.args` see them so; `delay` in eager mode sends
    them through the serializer, a list."""
    seen: list[tuple[str, Any, Any]] = []

    def prerun(task: Any, args: Any, **kwargs: Any) -> None:
        seen.append(('prerun', args, task.request.args))

    def failure(args: Any, **kwargs: Any) -> None:
        seen.append(('failure', args, None))

    @app.task
    def echo(x: int = 0) -> int:
        if x < 0:
            raise ValueError(x)
        return x

    signals.task_prerun.connect(prerun)
    signals.task_failure.connect(failure)
    try:
        echo.apply((1,))
        echo.apply()
        echo.apply([2])
        echo.apply((-1,))
        echo.s(3).apply()
        app.conf.task_always_eager = True
        echo.delay(4)
    finally:
        signals.task_prerun.disconnect(prerun)
        signals.task_failure.disconnect(failure)
    assert seen == [
        ('prerun', (1,), (1,)),
        ('prerun', (), ()),
        ('prerun', [2], [2]),
        ('prerun', (-1,), (-1,)),
        ('failure', (-1,), None),
        ('prerun', (3,), (3,)),
        ('prerun', [4], [4]),
    ]


def test_eager_round_trips_arguments_through_the_serializer(app: Fastq) -> None:
    from fastq.exceptions import EncodeError

    @app.task
    def echo(x: Any) -> Any:
        return x

    app.conf.task_always_eager = True
    assert echo.delay((1, 2)).get() == [1, 2]  # a tuple arrives as a list, as on a real worker
    with pytest.raises(EncodeError):
        echo.delay(object())


def test_eager_failure_propagation(app: Fastq) -> None:
    @app.task
    def boom() -> None:
        raise ValueError('x')

    r = boom.apply()
    assert r.state == states.FAILURE and isinstance(r.result, ValueError)
    with pytest.raises(ValueError):
        r.get()
    app.conf.task_eager_propagates = True
    with pytest.raises(ValueError):
        boom.apply()


def test_signatures(app: Fastq) -> None:
    @app.task
    def add(x: int, y: int) -> int:
        return x + y

    s = add.s(2)
    assert s.task == add.name and s.args == (2,) and not s.immutable
    assert s.clone((1,)).args == (1, 2)
    assert add.si(1, 1).clone((5,)).args == (1, 1)
    assert s(3) == 5
    assert dict(add.s(1, y=2)) == {
        'task': add.name,
        'args': (1,),
        'kwargs': {'y': 2},
        'options': {},
        'subtask_type': None,
        'immutable': False,
    }


def test_link_callback_runs_with_parent_result(app: Fastq, run_worker: Any) -> None:
    calls: list[Any] = []
    seen = threading.Event()

    @app.task
    def add(x: int, y: int) -> int:
        return x + y

    @app.task
    def collect(*values: Any) -> None:
        calls.append(values)
        seen.set()

    with run_worker():
        assert add.apply_async((1, 1), link=collect.s('tag')).get(timeout=30) == 2
        assert seen.wait(30)
    assert calls == [(2, 'tag')]


def test_signals_fire_around_a_task(app: Fastq, run_worker: Any) -> None:
    events: list[str] = []

    @app.task
    def add(x: int, y: int) -> int:
        return x + y

    def prerun(sender: Any, task_id: str, **kw: Any) -> None:
        events.append('prerun')

    def postrun(sender: Any, state: str, **kw: Any) -> None:
        events.append(f'postrun:{state}')

    def published(sender: Any, headers: dict[str, Any], **kw: Any) -> None:
        headers['x-custom'] = 'yes'
        events.append(f'publish:{sender}')

    signals.task_prerun.connect(prerun)
    signals.task_postrun.connect(postrun)
    signals.before_task_publish.connect(published)
    try:
        with run_worker():
            add.delay(1, 1).get(timeout=30)
    finally:
        signals.task_prerun.disconnect(prerun)
        signals.task_postrun.disconnect(postrun)
        signals.before_task_publish.disconnect(published)
    assert events == [f'publish:{add.name}', 'prerun', 'postrun:SUCCESS']


def test_shared_task_binds_to_the_current_app() -> None:
    @shared_task
    def triple(x: int) -> int:
        return 3 * x

    first = Fastq('a', broker='memory://', backend='memory://')
    assert triple(2) == 6
    assert triple.name.endswith('triple') and triple.app is first
    second = Fastq('b', broker='memory://', backend='memory://')
    assert triple.app is second
    second.finalize()
    assert triple.name in second.tasks


def test_a_shared_task_looks_like_its_task_as_celerys_proxy() -> None:
    """Celery's `shared_task` gives a `celery.local.Proxy`: `isinstance(t, Task)`, `t.__class__`, `dir(t)`,
    `t.__module__` and pickling answer for the task (fastq's proxy answered for itself, and did not pickle)."""
    import pickle

    from fastq import Task

    @shared_task
    def quadruple(x: int) -> int:
        """Four times."""
        return 4 * x

    app = Fastq('proxied', broker='memory://', backend='memory://')
    task = app.tasks[quadruple.name]
    assert isinstance(quadruple, Task) and quadruple.__class__ is type(task) and 'delay' in dir(quadruple)
    assert quadruple.__module__ == __name__ and quadruple.__doc__ == 'Four times.' and quadruple.__name__ == 'quadruple'
    assert pickle.loads(pickle.dumps(quadruple)) is task and quadruple == task and quadruple(2) == 8
    app.close()


def test_app_task_is_shared_with_apps_finalized_later_as_celerys() -> None:
    """`@app.task` is `shared=True` by default in Celery: an app of the process finalized after the decorator
    ran registers a task of its own for the function (bound to it, named by its main for `__main__`); an app
    finalized before does not, nor does any app for `shared=False`. `filter=` is applied to what is returned."""
    early = Fastq('early', broker='memory://', set_as_current=False)
    early.finalize()
    app1 = Fastq('a1', broker='memory://', set_as_current=False)

    @app1.task
    def mul(x: int, y: int) -> int:
        return x * y

    @app1.task(shared=False)
    def private() -> None:
        pass

    @app1.task(filter=lambda task: ('filtered', task.name))
    def filtered() -> None:
        pass

    app2 = Fastq('a2', broker='memory://', set_as_current=False)
    theirs = app2.tasks[mul.name]
    assert theirs is not mul and theirs.app is app2 and theirs.run(2, 3) == 6
    assert private.name not in app2.tasks and mul.name not in early.tasks
    assert filtered == ('filtered', f'{__name__}.filtered') and filtered[1] in app2.tasks

    @app1.task
    def later() -> None:
        pass

    assert later.name not in app2.tasks  # (app2 was finalized before the decorator ran)
    assert later.name in Fastq('a3', broker='memory://', set_as_current=False).tasks


def test_patching_a_shared_tasks_retry_patches_the_task() -> None:
    """The Testing guide's unit test mocks `retry` on a task through its module (`patch('proj.tasks.send_order
    .retry')`); for a shared task that sets the attribute on the proxy, which must reach the task, as Celery's
    Proxy does, or the real retry runs."""
    from unittest.mock import patch

    from fastq.exceptions import Retry

    @shared_task(bind=True)
    def send_order(self: Any, quantity: int) -> None:
        try:
            raise OSError('database down')
        except OSError as exc:
            raise self.retry(exc=exc) from None

    app = Fastq('guide', broker='memory://', backend='memory://')
    assert send_order._resolve() is send_order._resolve()  # (one task per app, not one per use)
    with patch.object(send_order, 'retry') as send_order_retry:
        send_order_retry.side_effect = Retry()
        with pytest.raises(Retry):
            send_order(3)
        assert send_order_retry.call_count == 1
    assert 'retry' not in vars(app.tasks[send_order.name])  # (the patch is undone on the task itself)


def test_worker_main_builds_argv(app: Fastq, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[list[str]] = []
    import fastq.cli

    monkeypatch.setattr(fastq.cli, 'main', lambda argv, app=None: seen.append(list(argv)))
    app.worker_main(['-l', 'info'])
    assert seen == [['worker', '-l', 'info']]
    # Without argv, the script's own arguments (the Application guide's `app.worker_main()` under
    # `if __name__ == '__main__'`), as Celery's reads sys.argv; none: a worker with the defaults
    for args, expected in (
        (['-l', 'INFO', '-c', '2'], ['worker', '-l', 'INFO', '-c', '2']),
        (['worker', '-l', 'INFO'], ['worker', '-l', 'INFO']),
        ([], ['worker']),
    ):
        monkeypatch.setattr('sys.argv', ['tasks.py', *args])
        seen.clear()
        app.worker_main()
        assert seen == [expected]


def test_eta_and_expires_are_aware_and_naive_ones_are_utc() -> None:
    """A countdown is measured in the app's zone, but a naive `eta`/`expires` is UTC whatever the zone: Celery
    sends it as it is and its worker reads it as UTC (`maybe_make_aware(naive_as_utc=True)`), so reading it in
    the app's zone ran a task two hours early here."""
    from datetime import datetime
    from zoneinfo import ZoneInfo

    from fastq.brokers.memory import MemoryBroker

    app = Fastq('tz', broker='memory://', backend='memory://', set_as_current=False)
    app.conf.timezone = 'Europe/Paris'

    @app.task
    def noop() -> None:
        return None

    noop.apply_async(countdown=60)
    noop.apply_async(eta=datetime(2030, 7, 1, 12, 0), expires=datetime(2030, 7, 1, 13, 0))
    noop.apply_async(eta=datetime(2030, 7, 1, 12, 0, tzinfo=ZoneInfo('Europe/Paris')), expires=30)
    broker = app.broker
    assert isinstance(broker, MemoryBroker)
    import json

    stored = sorted(broker._state.messages.values(), key=lambda m: m.not_before)
    countdown, aware, naive = (json.loads(m.payload)['headers'] for m in stored)
    eta = datetime.fromisoformat(countdown['eta'])
    assert eta.utcoffset() == datetime.now(ZoneInfo('Europe/Paris')).utcoffset()
    assert naive['eta'] == '2030-07-01T12:00:00+00:00'
    assert naive['expires'] == '2030-07-01T13:00:00+00:00'
    assert aware['eta'] == '2030-07-01T12:00:00+02:00'
    assert datetime.fromisoformat(aware['expires']).utcoffset() is not None
    assert stored[-1].not_before == datetime(2030, 7, 1, 12, 0, tzinfo=UTC).timestamp()
    app.close()


def test_expires_is_seconds_or_a_datetime() -> None:
    """Celery takes `expires` as seconds, a datetime or an ISO string, and a timedelta raises TypeError in the
    caller (not an AttributeError from deep inside)."""
    from datetime import timedelta

    app = Fastq('tz', broker='memory://', backend='memory://', set_as_current=False)

    @app.task
    def noop() -> None:
        return None

    with pytest.raises(TypeError, match='expires'):
        noop.apply_async(expires=timedelta(minutes=5))
    app.close()


class _PickledConfig:
    task_default_queue = 'from-class'
    worker_prefetch_multiplier = 2


def test_an_app_pickles_as_celerys() -> None:
    """Celery's `app.__reduce__`: an app pickles (fastq's raised, on its locks) and unpickles to a new app,
    not current, with the same main name, settings set in code, config source, task class and namespace;
    not its tasks nor `add_defaults`."""
    import pickle

    app = Fastq('proj', broker='memory://', include=['proj.tasks'], set_as_current=False)
    app.config_from_object(_PickledConfig, silent=True)
    app.conf.task_default_rate_limit = '10/s'
    app.add_defaults(lambda: {'worker_concurrency': 7})

    @app.task(shared=False)
    def add(x: int, y: int) -> int:
        return x + y

    keys = app.__reduce_keys__()
    assert keys['main'] == 'proj' and keys['config_source'] is _PickledConfig and keys['namespace'] is None
    again = pickle.loads(pickle.dumps(app))
    assert type(again) is Fastq and again is not app and again.main == 'proj' and repr(again).startswith('<Fastq proj')
    assert again.conf.broker_url == 'memory://' and again.conf.include == ['proj.tasks']
    assert again.conf.task_default_rate_limit == '10/s' and again.conf.task_default_queue == 'from-class'
    assert again.conf.worker_concurrency is None
    assert add.name not in again.tasks
    from fastq import _state

    assert _state.get_current_app() is not again
    custom = Fastq('c', task_cls='fastq.contrib.abortable:AbortableTask', namespace='CELERY', set_as_current=False)
    copied = pickle.loads(pickle.dumps(custom))
    assert copied.Task.__mro__[1].__name__ == 'AbortableTask' and copied.namespace == 'CELERY'
    for one in (app, again, custom, copied):
        one.close()


def test_result_classes_are_bound_to_the_app_as_celerys() -> None:
    """`app.AsyncResult`, `app.ResultSet`, `app.GroupResult` are classes, as Celery's `subclass_with_self`:
    `isinstance(add.delay(), app.AsyncResult)` holds (fastq's `app.AsyncResult` was a method, so isinstance
    raised TypeError, and `app.ResultSet` did not exist), a restored group is an `app.GroupResult`, and each
    pickles as the module's class."""
    import pickle

    from fastq import group
    from fastq.result import AsyncResult, GroupResult, ResultSet

    app = Fastq('bound', broker='memory://', backend='memory://', set_as_current=False)

    @app.task(shared=False)
    def add(x: int, y: int) -> int:
        return x + y

    for name, base in (('AsyncResult', AsyncResult), ('ResultSet', ResultSet), ('GroupResult', GroupResult)):
        cls = getattr(app, name)
        assert isinstance(cls, type) and issubclass(cls, base) and cls is getattr(app, name)
        assert cls.__name__ == name and cls.__module__ == 'fastq.result'
    sent = add.delay(1, 2)
    assert isinstance(sent, app.AsyncResult) and isinstance(app.send_task('other'), app.AsyncResult)
    assert isinstance(add.AsyncResult('x'), app.AsyncResult) and app.AsyncResult('x').app is app
    results = app.ResultSet([app.AsyncResult('a'), sent])
    assert results.app is app and repr(results) == f'<ResultSet: [a, {sent.id}]>' and len(results) == 2
    results.discard('a')
    results.update([sent, app.AsyncResult('b')])
    with pytest.raises(KeyError):
        results.remove('zz')
    assert [r.id for r in results] == [sent.id, 'b'] and results == app.ResultSet([sent, app.AsyncResult('b')])
    saved = group(add.s(1, 1), add.s(2, 2)).apply_async()
    assert isinstance(saved, app.GroupResult) and isinstance(saved.results[0], app.AsyncResult)
    saved.save()
    restored = app.GroupResult.restore(saved.id)
    assert isinstance(restored, app.GroupResult) and restored == saved
    for one in (sent, results, saved):
        again = pickle.loads(pickle.dumps(one))
        assert type(again) in (AsyncResult, ResultSet, GroupResult) and again == one
    app.close()


def test_task_decorator_arguments_as_celerys() -> None:
    """`app.task(fun, name=...)` and `shared_task(fun, name=...)` make the task at once, as Celery's (fastq's
    raised TypeError, and gave a decorator); Celery's TypeErrors for other arguments, and for `@shared_task`
    applied twice."""
    app = Fastq('deco', broker='memory://', set_as_current=False)

    def deco_add(x: int, y: int) -> int:
        return x + y

    assert app.task(deco_add, name='deco.named', shared=False).name == 'deco.named'
    assert shared_task(deco_add, name='deco.shared').name == 'deco.shared'
    with pytest.raises(TypeError, match=r'^argument 1 to @task\(\) must be a callable$'):
        app.task(1)  # type: ignore[call-overload]
    with pytest.raises(TypeError, match=r'^@task\(\) takes exactly 1 argument \(3 given\)$'):
        app.task(deco_add, deco_add, name='x')  # type: ignore[call-overload]
    with pytest.raises(TypeError, match='@shared_task was applied more than once to the same function'):
        shared_task(shared_task(deco_add))
    app.close()


def test_an_app_dropped_is_not_kept_alive_by_the_process() -> None:
    """Celery holds the apps of the process weakly (`_state._apps`, for `shared_task`): an app no longer used
    (a test's) is collected, and not given the shared tasks of modules imported later. fastq kept every app."""
    import gc
    import weakref

    from fastq import _state

    app = Fastq('dropped', broker='memory://', set_as_current=False)
    app.finalize()
    ref = weakref.ref(app)
    assert app in _state.all_apps()
    del app
    gc.collect()
    assert ref() is None
