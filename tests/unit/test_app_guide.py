"""Celery's Application and Tasks guides, the parts that depend on when things are bound: a custom
`Task.__call__` in the worker, settings configured after `@app.task`, annotations in their three forms,
`config_from_object` with a dotted module path, `current_app`/`current_task` as live proxies, `throws`."""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any

import pytest

from fastq import Fastq, Task, signals
from fastq.worker.worker import WorkController


def test_a_custom_call_runs_in_the_worker_with_the_request(memory_app: Fastq) -> None:
    seen: list[Any] = []

    class DebugTask(Task):  # the Application guide's abstract task
        def __call__(self, *args: Any, **kwargs: Any) -> Any:
            seen.append(('call', self.request.id))
            return super().__call__(*args, **kwargs)

    @memory_app.task(base=DebugTask, bind=True)
    def add(self: Any, x: int, y: int) -> int:
        seen.append(('run', self.request.id, self.request.called_directly))
        return x + y

    assert add.apply((1, 2), task_id='eager-id').get() == 3
    assert seen == [('call', 'eager-id'), ('run', 'eager-id', False)]
    seen.clear()
    worker = WorkController(memory_app, pool='threads', concurrency=1, quiet=True)
    import threading

    thread = threading.Thread(target=worker.start, daemon=True)
    thread.start()
    try:
        result = add.delay(2, 3)
        assert result.get(timeout=30) == 5
    finally:
        worker.stop()
        thread.join(30)
    assert seen == [('call', result.id), ('run', result.id, False)]
    seen.clear()
    assert add(1, 1) == 2 and seen == [('call', None), ('run', None, True)]  # called directly


def test_settings_configured_after_the_decorator_apply(tmp_path: Path) -> None:
    app = Fastq('late', broker='memory://', backend='memory://', set_as_current=False)

    @app.task
    def first() -> None:
        pass

    @app.task(acks_late=False)
    def explicit() -> None:
        pass

    app.conf.update(
        task_acks_late=True,
        task_serializer='pickle',
        accept_content=['json', 'pickle'],
        task_time_limit=30,
        task_track_started=True,
        task_annotations={'*': {'rate_limit': '10/s'}},
    )
    first.delay()  # a send plans with the settings of now
    assert first.serializer == 'pickle'
    app.finalize()
    assert (first.acks_late, first.time_limit, first.track_started, first.rate_limit) == (True, 30, True, '10/s')
    assert explicit.acks_late is False  # set explicitly: not the setting's
    first.time_limit = 5  # as `control time_limit` sets it
    app.conf.task_time_limit = 60
    first.sync_config()
    assert first.time_limit == 5
    app.close()


def test_annotations_in_celerys_three_forms(memory_app: Fastq) -> None:
    failures: list[Any] = []

    def my_on_failure(self: Any, exc: BaseException, task_id: str, args: Any, kwargs: Any, einfo: Any) -> None:
        failures.append((self.name, repr(exc)))

    class MyAnnotate:
        def annotate(self, task: Any) -> dict[str, Any] | None:
            if task.name.endswith('.limited'):
                return {'rate_limit': '10/s'}
            return None

    def around(method: Any) -> Any:
        def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
            failures.append('around')
            return method(self, *args, **kwargs)

        return wrapper

    memory_app.conf.task_annotations = [MyAnnotate(), {'*': {'on_failure': my_on_failure, '@on_retry': around}}]

    @memory_app.task
    def limited() -> None:
        raise KeyError('boom')

    assert limited.rate_limit == '10/s'
    assert limited.apply().state == 'FAILURE'
    assert failures == [(limited.name, "KeyError('boom')")]
    limited.on_retry(None, 'x', (), {}, None)
    assert failures[-1] == 'around'


class AnnotateByPath:
    """An annotation class named by its dotted path in `task_annotations` (Celery instantiates it)."""

    def annotate(self, task: Any) -> dict[str, Any] | None:
        return {'max_retries': 7} if task.name.endswith('.first') else None

    def annotate_any(self) -> dict[str, Any]:
        return {'default_retry_delay': 5}


def test_annotations_resolve_as_celerys_first_by_name_then_for_any_task() -> None:
    """Celery takes the first annotation that answers for the task by name and the first that answers for any
    task ('*'), from anywhere in the list, and applies the latter last: '*' adds to a task's own and wins
    where both set an attribute, and a later annotation by name does not add to an earlier one."""
    app = Fastq('annotated', broker='memory://', set_as_current=False)
    app.conf.task_annotations = [
        {'annotated.first': {'rate_limit': '10/s', 'acks_late': True}, '*': {'rate_limit': '1/s'}},
        {'annotated.first': {'track_started': True}, '*': {'ignore_result': True}},
        f'{__name__}.AnnotateByPath',
    ]

    @app.task(name='annotated.first')
    def first() -> None:
        pass

    @app.task(name='annotated.second')
    def second() -> None:
        pass

    assert (first.rate_limit, first.acks_late, first.track_started, first.ignore_result) == ('1/s', True, False, False)
    assert (second.rate_limit, second.acks_late, second.max_retries) == ('1/s', False, 3)
    app.conf.task_annotations = f'{__name__}.AnnotateByPath'
    app.finalize()
    assert (second.max_retries, second.default_retry_delay, app.tasks['annotated.first'].max_retries) == (3, 5, 7)


def test_config_from_object_with_a_dotted_module_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    package = tmp_path / 'cfgpkg_guide'
    package.mkdir()
    (package / '__init__.py').write_text('')
    (package / 'celeryconfig.py').write_text("task_default_queue = 'from-module'\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    app = Fastq('cfg', broker='memory://', set_as_current=False)
    app.config_from_object('cfgpkg_guide.celeryconfig')
    assert app.conf.task_default_queue == 'from-module'
    quiet = Fastq('cfg2', broker='memory://', set_as_current=False)
    quiet.config_from_object('cfgpkg_guide.missing', silent=True)
    assert quiet.conf.task_default_queue == 'celery'
    broken = Fastq('cfg3', broker='memory://', set_as_current=False)
    (package / 'broken.py').write_text('import no_such_module_anywhere\n')
    broken.config_from_object('cfgpkg_guide.broken')
    with pytest.raises(ModuleNotFoundError, match='no_such_module_anywhere'):
        _ = broken.conf.task_default_queue
    sys.modules.pop('cfgpkg_guide.celeryconfig', None)


def test_current_app_and_current_task_are_live_proxies() -> None:
    from fastq import current_app, current_task  # imported before the app exists, as at a module's top

    app = Fastq('proxied', broker='memory://', backend='memory://')  # becomes current
    try:
        assert current_app.main == 'proxied' and isinstance(current_app, Fastq)
        assert not current_task

        @app.task
        def who() -> list[Any]:
            return [current_task.name, current_task.request.id]

        assert who.apply(task_id='tid').get() == [who.name, 'tid']
    finally:
        app.close()


def test_proxy_takes_celerys_arguments_and_operators() -> None:
    """`fastq.local.Proxy` as Celery's `celery.local.Proxy`: `Proxy(local, args=None, kwargs=None, name=None,
    __doc__=None)`, and the proxied object's operators (comparisons, arithmetic, int(), del p[k]); the app's
    docstring through `current_app.__doc__`."""
    from fastq import current_app
    from fastq.local import Proxy

    assert Proxy(lambda x, y: x + y, args=(1, 2))._get_current_object() == 3
    assert Proxy(lambda x: x, kwargs={'x': 3}) == 3
    number = Proxy(lambda: 41, name='answer', __doc__='what it is')
    assert number.__name__ == 'answer' and number.__doc__ == 'what it is' and Proxy.__doc__.startswith('An object')
    assert number + 1 == 42 and number * 2 == 82 and number - 1 == 40 and number / 41 == 1 and number // 2 == 20
    assert number % 2 == 1 and divmod(number, 2) == (20, 1) and number**1 == 41 and -number == -41
    assert +number == 41 and abs(number) == 41 and ~number == -42 and number << 1 == 82 and number >> 1 == 20
    assert number & 1 == 1 and number | 2 == 43 and number ^ 1 == 40 and int(number) == 41
    assert float(number) == 41.0 and complex(number) == 41 and [0, 1][number // 41] == 1
    assert number < 42 and number <= 41 and number > 40 and number >= 41 and sorted([number, 0]) == [0, 41]
    mapping = {'k': 1}
    proxied = Proxy(lambda: mapping)
    del proxied['k']
    assert mapping == {}
    app = Fastq('documented', broker='memory://')
    try:
        assert current_app.__doc__ == Fastq.__doc__
    finally:
        app.close()


def test_throws_are_expected_errors(memory_app: Fastq, caplog: pytest.LogCaptureFixture) -> None:
    @memory_app.task(throws=(KeyError,))
    def picky(key: str) -> None:
        raise KeyError(key) if key == 'k' else ValueError(key)

    with caplog.at_level(logging.INFO, logger='celery.app.trace'):
        assert picky.apply(('k',)).state == 'FAILURE'
        assert picky.apply(('v',)).state == 'FAILURE'
    expected = [r for r in caplog.records if 'raised expected' in r.getMessage()]
    unexpected = [r for r in caplog.records if 'raised unexpected' in r.getMessage()]
    assert len(expected) == 1 and expected[0].levelno == logging.INFO and expected[0].exc_info is None
    assert len(unexpected) == 1 and unexpected[0].levelno == logging.ERROR and unexpected[0].exc_info


def test_task_attributes_from_the_tasks_guide(memory_app: Fastq) -> None:
    from fastq.exceptions import Ignore, MaxRetriesExceededError, Reject

    @memory_app.task(bind=True)
    def ignored(self: Any) -> None:
        assert self.MaxRetriesExceededError is MaxRetriesExceededError
        raise Ignore()

    @memory_app.task
    def rejected() -> None:
        raise Reject('no', requeue=False)

    assert ignored.backend is memory_app.backend
    result = ignored.apply()
    assert result.state == 'IGNORED' and isinstance(result.result, Ignore)  # Celery's eager result
    assert isinstance(rejected.apply().result, Reject)
    with pytest.raises(ValueError, match='task_id must not be empty'):
        ignored.update_state(state='PROGRESS', meta={'done': 1})  # outside a task, no id


def test_a_logger_under_celery_task_formats_as_a_task_logger() -> None:
    from fastq.utils.log import _WorkerFormatter, task_context

    formatter = _WorkerFormatter('%(name)s %(message)s', '%(task_name)s[%(task_id)s]: %(message)s', None, False)
    task_context('tid-1', 'proj.add')
    try:
        for name, expected in (
            ('celery.task.custom', 'proj.add[tid-1]: hello'),
            ('celery.task', 'proj.add[tid-1]: hello'),
            ('celery.taskother', 'celery.taskother hello'),
            ('myapp', 'myapp hello'),
        ):
            record = logging.LogRecord(name, logging.INFO, __file__, 1, 'hello', None, None)
            assert formatter.format(record) == expected
    finally:
        task_context(None, None)


def test_retry_backoff_ignores_a_countdown_in_retry_kwargs(memory_app: Fastq) -> None:
    from fastq.worker.trace import _autoretry

    @memory_app.task(autoretry_for=(KeyError,), retry_backoff=2, retry_jitter=False, retry_kwargs={'countdown': 99})
    def flaky() -> None:
        pass

    asked: list[dict[str, Any]] = []
    flaky.retry = lambda **options: asked.append(options)  # type: ignore[method-assign]
    _autoretry(flaky, KeyError('x'))
    assert asked[0]['countdown'] == 2  # the backoff's (2 * 2 ** retries), not retry_kwargs'


def test_on_init_is_called() -> None:
    class MyApp(Fastq):
        def on_init(self) -> None:
            self.inited = True

    app = MyApp('hooked', broker='memory://', set_as_current=False)
    assert app.inited
    app.close()


def test_app_connection_names_the_broker_and_fails_clearly() -> None:
    from fastq.exceptions import OperationalError

    app = Fastq('conn', broker='redis://user:secret@127.0.0.1:1/3', set_as_current=False)
    with app.connection() as conn:
        assert conn.as_uri() == 'redis://user:**@127.0.0.1:1/3' and 'secret' in conn.as_uri(include_password=True)
        assert (conn.hostname, conn.port, conn.userid, conn.transport_cls) == ('127.0.0.1', 1, 'user', 'redis')
        waits: list[float] = []
        with pytest.raises(OperationalError, match='127.0.0.1:1'):
            conn.ensure_connection(errback=lambda exc, interval: waits.append(interval), max_retries=2,
                                   interval_start=0, interval_step=0.01)  # fmt: skip
        assert waits == [0.0, 0.01]
    assert app.connection('redis://other:6379/0').hostname == 'other'
    app.close()


def test_remote_tracebacks(memory_app: Fastq) -> None:
    # task_remote_tracebacks (with tblib, as celery[tblib]): get() raises with the worker's frames
    import traceback

    memory_app.conf.task_remote_tracebacks = True

    @memory_app.task
    def deep_failure() -> None:
        raise KeyError('deep')

    worker = WorkController(memory_app, pool='threads', concurrency=1, quiet=True)
    import threading

    thread = threading.Thread(target=worker.start, daemon=True)
    thread.start()
    try:
        result = deep_failure.delay()
        with pytest.raises(KeyError) as info:
            result.get(timeout=30)
    finally:
        worker.stop()
        thread.join(30)
    frames = [frame.name for frame in traceback.extract_tb(info.value.__traceback__)]
    assert 'deep_failure' in frames  # the task's own frame, from the worker's traceback


def test_shadow_name_on_bound_loader_and_amqp() -> None:
    import json

    bound: list[str] = []

    class Named(Task):
        @classmethod
        def on_bound(cls, app: Fastq) -> None:
            bound.append(app.main or '')

        def shadow_name(self, args: Any, kwargs: Any, options: Any) -> str:
            return f'named-{args[0]}'

    app = Fastq('hooks', broker='memory://', set_as_current=False)

    @app.task(base=Named)
    def f(x: int) -> int:
        return x

    f.delay(5)
    message = next(iter(app.broker._state.messages.values()))  # type: ignore[attr-defined]
    assert json.loads(message.payload)['headers']['shadow'] == 'named-5' and bound == ['hooks']
    assert list(app.amqp.queues) == ['celery'] and app.amqp.default_queue.name == 'celery'
    assert app.loader.import_task_module('json') is json and app.loader.import_default_modules() == []
    app.close()


def test_reading_app_tasks_finalizes_the_app(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Application guide: finalization happens "implicitly by accessing the app.tasks attribute"
    (tmp_path / 'guide_included.py').write_text(
        'from fastq import shared_task\n\n@shared_task(name="guide.included")\ndef included():\n    return 1\n'
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    app = Fastq('fin', broker='memory://', include=['guide_included'], set_as_current=False)
    assert not app.finalized
    # As Celery's: finalizing does not import `include` (a client never does); a worker, beat or the shell
    # does, through the loader
    seen: list[Any] = []

    def receiver(sender: Any = None, **kwargs: Any) -> None:
        seen.append(sender)

    signals.import_modules.connect(receiver)
    try:
        assert 'celery.chord_unlock' in app.tasks and app.finalized and 'guide.included' not in app.tasks
        assert seen == []
        app.loader.init_worker()
        app.loader.init_worker()  # (once)
    finally:
        signals.import_modules.disconnect(receiver)
    assert 'guide.included' in app.tasks and seen == [app]
    one = Fastq('one', broker='memory://', include='guide_included', set_as_current=False)  # a name, not a list
    assert one.conf.include == ['guide_included'] and [m.__name__ for m in one.loader.import_default_modules()] == [
        'guide_included'
    ]
    lazy = Fastq('lazy', broker='memory://', autofinalize=False, set_as_current=False)
    with pytest.raises(RuntimeError, match='Contract breach: app not finalized'):
        _ = lazy.tasks
    lazy.finalize()
    assert 'celery.chord_unlock' in lazy.tasks
    app.close()
    lazy.close()


def test_acks_on_failure_and_timeout_fall_back_as_celerys() -> None:
    from types import SimpleNamespace

    from fastq.worker.dispatcher import _acks_on

    def task(**attrs: Any) -> Any:
        return SimpleNamespace(**{'acks_on_failure': None, 'acks_on_timeout': None,
                                  'acks_on_failure_or_timeout': None, **attrs})  # fmt: skip

    assert _acks_on(task(), 'failure') and _acks_on(task(), 'timeout')  # (default: acked)
    assert not _acks_on(task(acks_on_failure_or_timeout=False), 'timeout')
    assert _acks_on(task(acks_on_failure_or_timeout=False, acks_on_timeout=True), 'timeout')
    assert not _acks_on(task(acks_on_failure=False), 'failure') and _acks_on(task(acks_on_failure=False), 'timeout')
    assert _acks_on(None, 'failure')


def test_app_log_sets_logging_up_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """`app.log.setup(...)` (Celery's `app.log`): the worker's formats on the root logger, stdout redirected
    when asked, and nothing done again once logging was set up in the process."""
    import fastq.utils.log as log

    root = logging.getLogger()
    monkeypatch.setattr(root, 'handlers', [])
    monkeypatch.setattr(root, 'level', root.level)
    monkeypatch.setattr(sys, 'stdout', sys.stdout)
    monkeypatch.setattr(sys, 'stderr', sys.stderr)
    monkeypatch.setattr(log, '_CONFIGURED', False)
    app = Fastq('logs', broker='memory://', set_as_current=False)
    assert not app.log.already_setup
    assert app.log.setup(loglevel='INFO', redirect_stdouts=True, redirect_level='ERROR') is False
    assert app.log.already_setup and root.level == logging.INFO and len(root.handlers) == 1
    assert isinstance(sys.stdout, log.LoggingProxy) and sys.stdout.level == logging.ERROR
    assert app.log.setup(loglevel='DEBUG') is False and root.level == logging.INFO  # (once per process)
    assert app.log.get_default_logger().name == 'celery'
    assert app.log.setup_task_loggers(loglevel='DEBUG').name == 'celery.task'
    logging.getLogger('celery.task').setLevel(logging.NOTSET)
    assert not app.log.supports_color(logfile='x.log')
    logging.captureWarnings(False)


def test_configured_and_bugreport() -> None:
    """Celery's `app.configured` (False until the settings are first needed) and `app.bugreport()`."""
    a = Fastq('br', broker='redis://u:pw@127.0.0.1:1/0', set_as_current=False)
    a.conf.update(my_api_token='t')
    assert a.configured is False
    a.config_from_object({'worker_concurrency': 2})
    assert a.configured is False
    a.finalize()
    assert a.configured is True
    report = a.bugreport()
    assert report.startswith('software -> fastq:') and "broker_url: 'redis://u:********@127.0.0.1:1/0'" in report
    assert "my_api_token: '********'" in report and 'worker_concurrency: 2' in report and 'pw' not in report


def test_celery_trace_app_shows_where_the_app_chain_breaks(tmp_path: Path) -> None:
    """The guide's "Breaking the chain": with `CELERY_TRACE_APP=1`, code that was given no app and falls back
    to the current one prints '-- RETURNING TO CURRENT APP --' and where it did, and a fallback to the default
    app (none was made current) raises Exception('DEFAULT APP') in the main process, as Celery's does."""
    import os
    import subprocess

    script = tmp_path / 'chain.py'
    script.write_text(
        'from fastq import Fastq\n'
        'from fastq.result import AsyncResult\n'
        'try:\n'
        "    AsyncResult('t1')\n"
        'except Exception as exc:\n'
        "    print('raised', repr(exc))\n"
        "app = Fastq('proj', broker='memory://')\n"
        "print('bound', AsyncResult('t2').app is app, AsyncResult('t3', app=app).app is app)\n"
    )
    env = {**os.environ, 'PYTHONPATH': os.pathsep.join(sys.path), 'CELERY_TRACE_APP': '1'}
    out = subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == [
        "raised Exception('DEFAULT APP')",
        '-- RETURNING TO CURRENT APP --',
        'bound True True',
    ]
    assert f'File "{script}", line 8, in <module>' in out.stderr  # (one stack: the call that was given no app)
    assert out.stderr.count('-- ') == 0 and out.stderr.count(f'File "{script}"') == 1
    env.pop('CELERY_TRACE_APP')
    out = subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=60)
    assert out.stdout.splitlines() == ['bound True True'] and not out.stderr


def test_a_task_of_an_app_not_finalized_yet_refuses_use(memory_app: Fastq) -> None:
    """`autofinalize=False`: as Celery's lazy tasks, a task used before `app.finalize()` (its name, calling,
    sending, a signature, `repr`) raises RuntimeError('Contract breach: app not finalized'); afterwards it is
    the task the registry holds."""
    app = Fastq('early', broker='memory://', autofinalize=False, set_as_current=False)

    @app.task
    def add(x: int, y: int) -> int:
        return x + y

    for use in (lambda: add.name, lambda: add(1, 2), lambda: add.delay(1, 2), lambda: add.s(1), lambda: repr(add)):
        with pytest.raises(RuntimeError, match='Contract breach: app not finalized'):
            use()
    with pytest.raises(RuntimeError, match='Contract breach: app not finalized'):
        app.finalize(auto=True)  # (finalizing on use: refused, as Celery's)
    app.finalize()
    assert add.name.endswith('test_app_guide.add') and add(1, 2) == 3 and add.apply((2, 2)).get() == 4
    assert isinstance(add, Task) and app.tasks[add.name] == add and repr(add.s(1)) == f'{add.name}(1)'

    @memory_app.task  # (an app that finalizes itself: the task as ever)
    def sub(x: int, y: int) -> int:
        return x - y

    assert type(sub).__name__ == 'sub' and sub(3, 1) == 2
    app.close()


def test_the_guides_laziness_names_as_celerys() -> None:
    """The Application guide's Laziness section: before finalize Celery's `@app.task` gives a
    `celery.local.PromiseProxy` (`add.__evaluated__()` False, then True once used); fastq's, on an app with
    `autofinalize=False`, is one too, and a task made at once answers True. A task has its function's
    `__qualname__`, as Celery's (fastq's raised AttributeError); `fastq.local` has Celery's names."""
    from fastq.local import PromiseProxy, maybe_evaluate, try_import

    app = Fastq('lazy', broker='memory://', autofinalize=False, set_as_current=False)

    @app.task
    def add(x: int, y: int) -> int:
        """Add two."""
        return x + y

    assert type(add) is PromiseProxy and add.__evaluated__() is False and add.__doc__ == 'Add two.'
    assert add.__name__ == 'add' and add.__module__ == 'fastq.utils.local'  # (nothing to ask yet: no error)
    app.finalize()
    assert maybe_evaluate(add) is app.tasks[f'{__name__}.add'] and add.__evaluated__() is True
    assert add.__module__ == __name__
    assert add.__qualname__ == f'{test_the_guides_laziness_names_as_celerys.__name__}.<locals>.add'
    assert app.tasks[f'{__name__}.add'].__evaluated__() is True and maybe_evaluate(3) == 3
    assert try_import('no_such_module_here') is None and try_import('json') is sys.modules['json']
    seen: list[int] = []
    promise = PromiseProxy(lambda: [1])
    promise.__then__(seen.append, 1)
    assert seen == [] and promise == [1] and seen == [1]
    app.close()


def test_app_task_is_celerys_subclass_with_self() -> None:
    """`app.Task`, as Celery's `subclass_with_self`: a class named Task in the module of the class it extends
    (`<class 'fastq.task.Task'>`, `task_cls`'s module for a custom one), with its docstring, whose `app` is
    the app already (fastq's was in `fastq.app` and had no `app` until a task was bound)."""
    from fastq.task import Task as BaseTask

    app = Fastq('sub', broker='memory://', set_as_current=False)
    assert repr(app.Task) == "<class 'fastq.task.Task'>" and app.Task.app is app and app.task_cls == 'fastq.task:Task'
    assert app.Task.__doc__ == BaseTask.__doc__ and app.Task.__mro__[1] is BaseTask
    custom = Fastq('sub2', broker='memory://', set_as_current=False, task_cls='fastq.contrib.abortable:AbortableTask')
    assert repr(custom.Task) == "<class 'fastq.contrib.abortable.Task'>" and custom.Task.app is custom

    class Own(app.Task):  # type: ignore[name-defined,misc]
        name = 'own.task'

        def run(self) -> int:
            return 1

    assert Own.app is app and app.register_task(Own()).app is app
    app.close()
    custom.close()


def test_reading_a_setting_configures_the_app_as_celerys() -> None:
    """As Celery's: the first setting read (`app.conf.x`, `conf[x]`, `conf.get`) configures the app, sending
    `on_configure` and `on_after_configure`, so periodic tasks added by an `on_after_configure` receiver are in
    `app.conf.beat_schedule` when it is read (fastq's read gave [] and `configured` stayed False). Setting a
    value, `in`, and binding tasks at decoration do not configure it."""
    app = Fastq('conf-read', broker='memory://', set_as_current=False)
    events: list[str] = []

    @app.task(shared=False)
    def add(x: int, y: int) -> int:
        return x + y

    @app.on_configure.connect
    def configuring(sender: Fastq, **kwargs: Any) -> None:
        events.append('on_configure')

    @app.on_after_configure.connect
    def setup_periodic_tasks(sender: Fastq, **kwargs: Any) -> None:
        events.append('on_after_configure')
        sender.add_periodic_task(10.0, add.s(2, 2), name='add every 10')

    app.conf.task_default_queue = 'set'
    assert 'task_default_queue' in app.conf and not app.configured and events == []
    assert list(app.conf.beat_schedule) == ['add every 10'] and app.configured
    assert events == ['on_configure', 'on_after_configure']
    assert app.conf.task_default_queue == 'set' and events == ['on_configure', 'on_after_configure']
    app.close()
