"""fastq.signals.Signal as Celery's `celery.utils.dispatch.Signal` behaves for the code that uses it."""

from __future__ import annotations

import warnings
from typing import Any

import pytest

from fastq import signals
from fastq.exceptions import CDeprecationWarning
from fastq.signals import Signal


def test_made_as_celerys_signals_are() -> None:
    assert repr(Signal()) == '<Signal: None providing_args=set()>'
    made = Signal(providing_args=['a'], name='x')
    assert (made.name, made.providing_args) == ('x', {'a'})
    assert Signal(['a']).providing_args == {'a'}  # (Celery's first positional argument)
    assert signals.task_prerun.providing_args == {'task_id', 'task', 'args', 'kwargs'}


def test_a_receiver_without_kwargs_is_refused_when_connected() -> None:
    sig = Signal(name='s')

    def no_kwargs(sender: Any) -> None: ...

    with pytest.raises(ValueError, match='Signal receiver must accept keyword arguments.'):
        sig.connect(no_kwargs)
    assert not sig.receivers


def test_a_bound_method_is_disconnected_by_another_copy_of_it() -> None:
    heard = []

    class Handler:
        def on(self, **kwargs: Any) -> None:
            heard.append(kwargs['sender'])

    handler = Handler()
    sig = Signal(name='s')
    sig.connect(handler.on)
    sig.connect(handler.on)  # (once: the same receiver)
    sig.send(sender='a')
    assert sig.disconnect(handler.on) is True
    sig.send(sender='b')
    assert heard == ['a']


def test_one_dispatch_uid_connects_once_per_sender() -> None:
    heard = []

    def receiver(sender: Any = None, **kwargs: Any) -> None:
        heard.append(sender)

    sig = Signal(name='s')
    sig.connect(receiver, sender='proj.tasks.add', dispatch_uid='uid')
    sig.connect(receiver, sender='proj.tasks.mul', dispatch_uid='uid')
    sig.connect(receiver, sender='proj.tasks.mul', dispatch_uid='uid')
    for sender in ('proj.tasks.add', 'proj.tasks.mul', 'other'):
        sig.send(sender=sender)
    assert heard == ['proj.tasks.add', 'proj.tasks.mul']
    assert sig.disconnect(sender=''.join(['proj.tasks.', 'add']), dispatch_uid='uid') is True  # (a copy)
    sig.send(sender='proj.tasks.add')
    assert heard == ['proj.tasks.add', 'proj.tasks.mul']


def test_has_listeners() -> None:
    sig = Signal(name='s')
    assert sig.has_listeners() is False

    def receiver(**kwargs: Any) -> None: ...

    sig.connect(receiver, sender='a')
    assert (sig.has_listeners(), sig.has_listeners('a'), sig.has_listeners('b')) == (True, True, False)


def test_disconnect_with_weak_warns_as_celery() -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter('always')
        assert Signal(name='s').disconnect(lambda **kw: None, weak=True) is False
    assert [(w.category, str(w.message)) for w in caught] == [
        (CDeprecationWarning, 'Passing `weak` to disconnect has no effect.')
    ]


def test_retry_calls_the_receiver_until_it_succeeds(monkeypatch: pytest.MonkeyPatch, caplog: Any) -> None:
    waits: list[float] = []
    monkeypatch.setattr(signals.time, 'sleep', waits.append)
    attempts = []

    def flaky(**kwargs: Any) -> str:
        attempts.append(kwargs['sender'])
        if len(attempts) < 3:
            raise ConnectionError('not yet')
        return 'done'

    sig = Signal(name='s')
    connected = sig.connect(flaky, retry=True)
    del flaky  # (kept by a strong reference)
    assert sig.send(sender='x') == [(connected, 'done')]
    assert (attempts, waits) == (['x', 'x', 'x'], [2.0, 4.0])
    assert 'Could not process signal receiver <function ' in caplog.text
    assert 'Retrying in 2.00 seconds...' in caplog.text
    assert sig.disconnect(connected) is True  # (found by the function it wraps)


def test_eventlet_signals_import() -> None:
    from fastq.signals import eventlet_pool_postshutdown, eventlet_pool_preshutdown, eventlet_pool_started

    assert [s.name for s in (eventlet_pool_started, eventlet_pool_preshutdown, eventlet_pool_postshutdown)] == [
        'eventlet_pool_started',
        'eventlet_pool_preshutdown',
        'eventlet_pool_postshutdown',
    ]


def test_a_shared_task_as_sender_is_heard_from_the_task_it_stands_for() -> None:
    """`@task_success.connect(sender=a_shared_task)` hears that task run (Celery resolves its Proxy); fastq's
    shared-task proxy is not the task object a worker sends as the sender."""
    from fastq import Fastq, shared_task

    heard = []

    @shared_task(name='test_signals.shared_echo')
    def shared_echo(x: int) -> int:
        return x

    def on_success(sender: Any = None, **kwargs: Any) -> None:
        heard.append(sender.name)

    app = Fastq('signals-shared', broker='memory://', set_as_current=True)
    try:
        signals.task_success.connect(on_success, sender=shared_echo)
        app.tasks['test_signals.shared_echo'].apply((1,))
        assert heard == ['test_signals.shared_echo']
        assert signals.task_success.has_listeners(shared_echo)
        assert signals.task_success.disconnect(on_success, sender=shared_echo) is True
    finally:
        signals.task_success.disconnect(on_success, sender=shared_echo)
        app.close()


def test_the_signal_class_imports_from_celerys_paths() -> None:
    from fastq.utils.dispatch import Signal as FromPackage
    from fastq.utils.dispatch.signal import Signal as FromModule

    assert FromPackage is FromModule is Signal


def test_an_error_in_a_setup_logging_or_import_modules_receiver_is_raised(monkeypatch: pytest.MonkeyPatch) -> None:
    """Celery re-raises these two (sent before logging is set up): a broken logging config or import hook
    stops the worker (exit 1, its traceback) instead of leaving it running unconfigured."""
    from fastq import Fastq
    from fastq.utils import log

    def broken(**kwargs: Any) -> None:
        raise ValueError("Unable to configure handler 'h'")

    monkeypatch.setattr(log, '_CONFIGURED', False)
    signals.setup_logging.connect(broken)
    try:
        with pytest.raises(ValueError, match="Unable to configure handler 'h'"):
            log.setup_logging('INFO')
    finally:
        signals.setup_logging.disconnect(broken)
    assert log._CONFIGURED is False

    app = Fastq('signals-imports', broker='memory://', set_as_current=False)
    signals.import_modules.connect(broken, sender=app)
    try:
        with pytest.raises(ValueError, match="Unable to configure handler 'h'"):
            app.loader.import_default_modules()
    finally:
        signals.import_modules.disconnect(broken, sender=app)
        app.close()


def test_connect_forms() -> None:
    """Celery's forms (`connect(fn)`, `@connect`, `@connect(sender=...)`, positional options) and fastq's
    `connect(receiver=fn)`; an app signal's decorator with options (`@app.on_after_configure.connect(sender=app)`)."""
    from fastq import Fastq

    heard: list[str] = []

    def positional(**kwargs: Any) -> None:
        heard.append('positional')

    def keyword(**kwargs: Any) -> None:
        heard.append('keyword')

    sig = Signal(name='s')
    sig.connect(positional, 'a', False)  # (sender, weak)
    sig.connect(receiver=keyword, sender='a')

    @sig.connect(sender='a', dispatch_uid='decorated')
    def decorated(**kwargs: Any) -> None:
        heard.append('decorated')

    sig.send(sender='a')
    sig.send(sender='b')
    assert heard == ['positional', 'keyword', 'decorated']

    app = Fastq('signals-forms', broker='memory://', set_as_current=False)
    try:

        @app.on_after_configure.connect(sender=app)
        def configured(sender: Any, **kwargs: Any) -> None:
            heard.append('configured')

        app.finalize()  # (the settings are read: configured)
    finally:
        app.close()
    assert heard[-1] == 'configured'
