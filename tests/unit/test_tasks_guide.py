"""Celery's Tasks guide, the parts a client or an eager call shows, with the real celery package as the
oracle: each test builds the same task with Celery and with fastq (in this process, no broker needed) and
expects the same of both. What only a worker shows is in tests/compat/test_celery_tasks_guide.py.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from typing import Any

import pytest

from fastq import Fastq
from fastq import Task as FastqTask
from fastq.exceptions import DuplicateTaskNameWarning as FastqWarningType
from fastq.exceptions import NotRegistered as FastqNotRegistered

celery = pytest.importorskip('celery')
pydantic = pytest.importorskip('pydantic')  # (a test dependency: see pyproject's test extra)


class ArgModel(pydantic.BaseModel):  # (at module level: the annotations below are strings to resolve)
    value: int


class ReturnModel(pydantic.BaseModel):
    value: str


KINDS = ['celery', 'fastq']


@pytest.fixture(params=KINDS)
def make_app(request: pytest.FixtureRequest) -> Iterator[Any]:
    """`make_app(**options)`: a Celery or a fastq app on its in-memory broker and backend."""
    made: list[Any] = []

    def make(**options: Any) -> Any:
        if request.param == 'celery':
            app = celery.Celery('guide', broker='memory://', backend='cache+memory://', set_as_current=False, **options)
        else:
            app = Fastq('guide', broker='memory://', backend='memory://', set_as_current=False, **options)
        made.append(app)
        return app

    yield make
    for app in made:
        app.close()


def test_argument_errors_read_as_a_call_of_the_function(make_app: Any) -> None:
    """`typing`: a call that does not fit raises TypeError in the caller, named after the function (not
    the task), and a bound task's `self` counts among the positional arguments, as Python counts it."""
    app = make_app()

    @app.task(name='guide.add', shared=False)
    def add(x: int, y: int) -> int:
        return x + y

    @app.task(name='guide.bound', bind=True, shared=False)
    def bound(self: Any, x: int) -> int:
        return x

    with pytest.raises(TypeError) as missing:
        add.delay(1)
    assert str(missing.value) == "add() missing 1 required positional argument: 'y'"
    with pytest.raises(TypeError) as extra:
        bound.apply_async((1, 2))
    assert str(extra.value) == 'bound() takes 2 positional arguments but 3 were given'
    with pytest.raises(TypeError) as unexpected:
        add.apply_async((1, 2), {'z': 3})
    assert str(unexpected.value) == "add() got an unexpected keyword argument 'z'"


def test_strict_typing_false_turns_the_checks_off(make_app: Any) -> None:
    app = make_app(strict_typing=False)

    @app.task(name='guide.one', shared=False)
    def one(x: int) -> int:
        return x

    @app.task(name='guide.checked', typing=True, shared=False)
    def checked(x: int) -> int:
        return x

    assert app.tasks['guide.one'].typing is False
    assert one.apply_async((1, 2, 3)).id  # sent as it is
    with pytest.raises(TypeError):
        checked.apply_async((1, 2, 3))  # a task's own `typing` wins


@pytest.mark.parametrize(
    ('backoff', 'maximum', 'countdowns'),
    [(0.5, 600, [1, 2, 4, 8]), (2.5, 7.9, [2, 4, 7, 7])],
    ids=['under-one', 'fractions'],
)
def test_retry_backoff_counts_whole_seconds(
    make_app: Any, backoff: float, maximum: float, countdowns: list[int]
) -> None:
    """`retry_backoff` as a number is a factor of whole seconds, at least 1 (`int(max(1.0, factor))`), and
    `retry_backoff_max` caps it in whole seconds too."""
    app = make_app()

    @app.task(
        name='guide.flaky',
        autoretry_for=(KeyError,),
        retry_backoff=backoff,
        retry_backoff_max=maximum,
        retry_jitter=False,
        max_retries=3,
        shared=False,
    )
    def flaky() -> None:
        raise KeyError('again')

    task = app.tasks['guide.flaky']
    asked: list[Any] = []
    retry = task.retry

    def spy(*args: Any, **options: Any) -> Any:
        asked.append(options.get('countdown'))
        return retry(*args, **options)

    task.retry = spy
    result = task.apply()
    assert result.state == 'FAILURE' and isinstance(result.result, KeyError)
    assert asked == countdowns  # (the last one finds max_retries exceeded: KeyError raised)


def test_store_eager_result_is_a_task_option(make_app: Any) -> None:
    app = make_app()

    @app.task(name='guide.kept', store_eager_result=True, shared=False)
    def kept() -> int:
        return 1

    @app.task(name='guide.dropped', shared=False)
    def dropped() -> int:
        return 2

    assert app.tasks['guide.kept'].store_eager_result is True
    assert app.tasks['guide.dropped'].store_eager_result is False
    assert app.backend.get_task_meta(kept.apply().id)['status'] == 'SUCCESS'
    assert app.backend.get_task_meta(dropped.apply().id)['status'] == 'PENDING'


@pytest.mark.parametrize('kind', KINDS)
def test_the_request_splits_timelimit_into_time_limit_and_soft_time_limit(kind: str) -> None:
    if kind == 'celery':
        from celery.app.task import Context
    else:
        from fastq.task import Context  # type: ignore[assignment]
    request = Context({'timelimit': [30, 20]})
    assert (request.time_limit, request.soft_time_limit) == (30, 20)
    assert (Context().time_limit, Context().soft_time_limit) == (None, None)
    # Given or set on their own they are kept (fastq's read them from `timelimit` only, and refused a set) ...
    request = Context(time_limit=5)
    request.soft_time_limit = 3
    assert (request.time_limit, request.soft_time_limit, request.timelimit) == (5, 3, None)
    # ... until `timelimit` changes: then they are its halves again.
    request.update(timelimit=[10, 8])
    assert (request.time_limit, request.soft_time_limit) == (10, 8)
    request.update({'timelimit': None})
    assert (request.time_limit, request.soft_time_limit) == (None, None)


def test_a_class_based_task_may_have_its_own_init(make_app: Any) -> None:
    """The guide's NaiveAuthenticateServer: an `__init__` that does not call the Task's, registered once per
    process as an instance; it keeps its state between calls."""
    app = make_app()
    base = celery.Task if isinstance(app, celery.Celery) else FastqTask

    class NaiveAuthenticateServer(base):  # type: ignore[misc,valid-type]
        def __init__(self) -> None:
            self.users = {'george': 'password'}

        def run(self, username: str, password: str) -> bool:
            try:
                return bool(self.users[username] == password)
            except KeyError:
                return False

    task = app.register_task(NaiveAuthenticateServer())
    assert task.name == 'guide.NaiveAuthenticateServer' or task.name.endswith('.NaiveAuthenticateServer')
    assert app.tasks[task.name] is task
    assert task.apply(('george', 'password')).get() is True
    assert task.apply(('bob', 'password')).get() is False
    assert task('george', 'password') is True
    assert task.request.called_directly


def test_a_decorator_under_the_task_decorator_is_what_typing_checks(make_app: Any) -> None:
    """Multiple decorators: `@app.task` over a `functools.wraps` decorator checks a call against the wrapper
    it calls, not the function the wrapper wraps (here the wrapper supplies the first argument itself)."""
    app = make_app()

    def supply_first(fun: Any) -> Any:
        @functools.wraps(fun)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            return fun(1, *args, **kwargs)

        return wrapper

    @app.task(name='guide.wrapped', shared=False)
    @supply_first
    def add(x: int, y: int) -> int:
        return x + y

    assert add.name == 'guide.wrapped'
    assert add.delay(5).id  # one argument: the wrapper supplies x
    assert add.apply((5,)).get() == 6
    assert add(5) == 6


def test_a_second_callable_under_a_taken_name_is_warned_about_and_not_registered(make_app: Any) -> None:
    """Names: every task must have a unique name. Celery 5.7 warns (DuplicateTaskNameWarning, once per name)
    and keeps the callable registered first; registering the same function again is quiet."""
    app = make_app()
    app.finalize()  # (Celery's decorator is lazy until then; which callable comes first is then its order)
    warning = celery.exceptions.DuplicateTaskNameWarning if isinstance(app, celery.Celery) else FastqWarningType

    def first() -> int:
        return 1

    def second() -> int:
        return 2

    task = app.task(name='guide.dup', shared=False)(first)
    with pytest.warns(warning) as caught:
        again = app.task(name='guide.dup', shared=False)(second)
        app.task(name='guide.dup', shared=False)(second)  # (one warning per name)
    assert len(caught) == 1
    assert str(caught[0].message) == (
        "Task name 'guide.dup' is already registered to a different callable.\n\n"
        f'Existing: {first.__qualname__}\nNew:      {second.__qualname__}\n\n'
        'The new callable was not registered; calls under this name reach the callable registered first.\n\n'
        'Every task must have a unique name. Pass an explicit name= to the task decorator, or rename one of the '
        'callables.'
    )
    assert caught[0].filename == __file__
    assert again.apply().get() == 1 and app.tasks['guide.dup'].apply().get() == 1
    assert app.task(name='guide.dup', shared=False)(first).name == task.name  # the same function: no warning


def test_an_eager_calls_ignore_result_wins_over_the_tasks(make_app: Any) -> None:
    app = make_app()

    @app.task(name='guide.ignored', ignore_result=True, store_eager_result=True, shared=False)
    def ignored() -> int:
        return 1

    assert app.backend.get_task_meta(ignored.apply(ignore_result=False).id)['status'] == 'SUCCESS'
    assert app.backend.get_task_meta(ignored.apply().id)['status'] == 'PENDING'


def test_the_request_has_celerys_loglevel_logfile_and_taskset(make_app: Any) -> None:
    """Code written for Celery reads these request attributes without a default (None unless given)."""
    app = make_app()

    @app.task(name='guide.levels', bind=True, shared=False)
    def levels(self: Any) -> list[Any]:
        return [self.request.loglevel, self.request.logfile, self.request.taskset]

    assert levels.apply().get() == [0, None, None]
    assert levels.apply(loglevel=10, logfile='x.log').get() == [10, 'x.log', None]
    assert levels() == [None, None, None]
    assert levels.request.loglevel is None  # (outside any call)


def test_the_registry_registers_and_unregisters_task_classes(make_app: Any) -> None:
    """How it works: the registry (app.tasks) as Celery's TaskRegistry: register a named class (or an
    instance), unregister by name, every task 'regular' (built-ins too), none periodic."""
    app = make_app()
    base = celery.Task if isinstance(app, celery.Celery) else FastqTask
    not_registered = celery.exceptions.NotRegistered if isinstance(app, celery.Celery) else FastqNotRegistered

    class Named(base):  # type: ignore[misc,valid-type]
        name = 'guide.named'

        def run(self) -> str:
            return 'ran'

    class Unnamed(base):  # type: ignore[misc,valid-type]
        def run(self) -> None:
            pass

    app.tasks.register(Named)
    assert type(app.tasks['guide.named']) is Named
    assert 'guide.named' in app.tasks.regular() and 'celery.chord' in app.tasks.regular()
    assert app.tasks.periodic() == {}
    with pytest.raises(Exception, match='must specify .name attribute'):
        app.tasks.register(Unnamed())
    app.tasks.unregister('guide.named')
    assert 'guide.named' not in app.tasks
    with pytest.raises(not_registered) as missing:
        app.tasks.unregister('guide.named')
    assert repr(missing.value) == "Task of kind 'guide.named' never registered, please make sure it's imported."


def test_pydantic_validates_arguments_and_dumps_results(make_app: Any) -> None:
    """Argument validation with Pydantic (pydantic=True): the eager side, and what a caller's models are
    sent as (their dumps)."""
    app = make_app()

    def x(arg: ArgModel) -> ReturnModel:
        assert isinstance(arg, ArgModel)
        return ReturnModel(value=f'example: {arg.value}')

    task = app.task(pydantic=True, name='guide.pydantic', shared=False)(x)
    assert task.apply(({'value': 1},)).get() == {'value': 'example: 1'}
    assert task.apply((ArgModel(value=2),)).get() == {'value': 'example: 2'}
    assert task.apply(({'value': '3'},)).get() == {'value': 'example: 3'}  # (not strict by default)
    with pytest.raises(pydantic.ValidationError):
        task.apply(({'value': 'nope'},)).get()
    strict = app.task(pydantic=True, pydantic_strict=True, name='guide.strict', shared=False)(x)
    with pytest.raises(pydantic.ValidationError):
        strict.apply(({'value': '3'},)).get()
    assert task._dump_pydantic_arguments((ArgModel(value=4),), {}) == (({'value': 4},), {})
    assert app.task(pydantic=True, name='guide.pydantic', shared=False)(x).name == task.name  # (no warning)


@pytest.mark.parametrize('kind', KINDS)
def test_a_groups_model_arguments_are_sent_as_their_dumps(kind: str, redis_url: str) -> None:
    """pydantic=True: a group sends each member's models as its apply_async would (dumped)."""
    import base64
    import json

    import redis

    if kind == 'celery':
        app: Any = celery.Celery('guide', broker=redis_url, backend=redis_url, set_as_current=False)
        group = celery.group
    else:
        from fastq import group  # type: ignore[assignment]

        app = Fastq('guide', broker=redis_url, backend=redis_url, set_as_current=False)

    def x(arg: ArgModel) -> int:
        return arg.value

    task = app.task(pydantic=True, name='guide.model', shared=False)(x)
    group(task.s(ArgModel(value=1)), task.s(arg=ArgModel(value=2))).delay()
    client = redis.Redis.from_url(redis_url)
    bodies = [json.loads(base64.b64decode(json.loads(raw)['body'])) for raw in client.lrange('celery', 0, -1)]
    assert sorted(json.dumps(body[:2]) for body in bodies) == [
        '[[], {"arg": {"value": 2}}]',
        '[[{"value": 1}], {}]',
    ]
    client.close()
    app.close()


def test_the_request_utc_is_none_as_in_celery(make_app: Any) -> None:
    """The guide lists request.utc; Celery's protocol 2 carries none, so it reads None in every request."""
    app = make_app()

    @app.task(name='guide.utc', bind=True, shared=False)
    def utc(self: Any) -> Any:
        return self.request.utc

    assert utc.apply().get() is None
    assert utc() is None
