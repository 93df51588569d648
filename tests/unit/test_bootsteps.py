"""fastq.bootsteps and app.user_options as the Extensions and Bootsteps guide uses them, and the signals whose
senders and arguments follow Celery's (the real-worker run is tests/integration/test_bootsteps.py)."""

from __future__ import annotations

import argparse
import signal
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from fastq import Fastq, bootsteps, signals
from fastq.cli import build_parser
from fastq.cli.base import CommandError
from fastq.cli.options import add_user_options, finish_user_options
from fastq.exceptions import ImproperlyConfigured, Retry
from fastq.worker.worker import WorkController
from tests.harness import wait_until

click = pytest.importorskip('click')


@pytest.fixture
def connected() -> Iterator[Any]:
    """`connected(signal, receiver)`: connected for this test only."""
    made: list[tuple[Any, Any]] = []

    def connect(sig: Any, receiver: Any, **kwargs: Any) -> Any:
        sig.connect(receiver, weak=False, **kwargs)
        made.append((sig, receiver))
        return receiver

    yield connect
    for sig, receiver in made:
        sig.disconnect(receiver)


# --- blueprints -----------------------------------------------------------------------------------------


def _steps(calls: list[str]) -> tuple[type[bootsteps.Step], ...]:
    class A(bootsteps.StartStopStep):
        requires = ('celery.worker.components:Pool',)

        def __init__(self, parent: Any, **kwargs: Any) -> None:
            calls.append(f'init A {sorted(kwargs)}')

        def create(self, parent: Any) -> Any:
            calls.append('create A')
            return self

        def start(self, parent: Any) -> None:
            calls.append('start A')

        def stop(self, parent: Any) -> None:
            calls.append('stop A')
            raise RuntimeError('A cannot stop')  # logged; B still stops

        def terminate(self, parent: Any) -> None:
            calls.append('terminate A')

    class B(bootsteps.StartStopStep):
        requires = (A,)

        def start(self, parent: Any) -> None:
            calls.append('start B')

        def close(self, parent: Any) -> None:
            calls.append('close B')

        def stop(self, parent: Any) -> None:
            calls.append('stop B')

    class Off(bootsteps.StartStopStep):
        def include_if(self, parent: Any) -> bool:
            return False

        def create(self, parent: Any) -> None:
            calls.append('create Off')

    class Plain(bootsteps.Step):
        def create(self, parent: Any) -> None:
            calls.append('create Plain')

    return A, B, Off, Plain


def test_blueprint_orders_by_requires_and_runs_the_hooks_as_celery() -> None:
    from fastq.worker.steps import WorkerBlueprint

    calls: list[str] = []
    A, B, Off, Plain = _steps(calls)
    parent = type('Parent', (), {'steps': []})()
    blueprint = WorkerBlueprint(steps={B, Off, Plain})  # A comes in as B's requirement
    blueprint.apply(parent, answer=42)
    assert [type(s).__name__ for s in parent.steps] == ['A', 'B', 'Consumer']  # (Celery's last worker step)
    assert calls[0] == "init A ['answer']" and 'create A' in calls and 'create Plain' in calls
    assert 'create Off' not in calls
    names = [s.name for s in blueprint.order]
    assert names.index('celery.worker.components.Pool') < names.index(A.name) < names.index(B.name)
    assert names[-1] == 'celery.worker.components.Consumer'  # Celery's `last` step stays last
    assert blueprint[A.name] is parent.steps[0]
    calls.clear()
    blueprint.start(parent)
    blueprint.stop(parent)
    assert calls == ['start A', 'start B', 'close B', 'stop B', 'stop A']
    assert blueprint.human_state() == 'terminating'


def test_blueprint_terminates_on_cold_shutdown_and_stops_only_what_started() -> None:
    calls: list[str] = []
    A, B, *_ = _steps(calls)

    class Broken(bootsteps.StartStopStep):
        requires = (B,)

        def start(self, parent: Any) -> None:
            raise RuntimeError('no')

    parent = type('Parent', (), {'steps': []})()
    blueprint = bootsteps.Blueprint(steps={Broken}).apply(parent)
    with pytest.raises(RuntimeError):
        blueprint.start(parent)
    calls.clear()
    blueprint.stop(parent, terminate=True)
    # B's terminate is StartStopStep's: its `obj` (none here) terminated, as Celery's; its stop is not called.
    assert calls == ['close B', 'terminate A']


def test_blueprint_refuses_what_is_not_a_step_and_cycles() -> None:
    with pytest.raises(TypeError, match='not a bootstep'):
        bootsteps.Blueprint(steps={object}).apply(type('P', (), {'steps': []})())

    class X(bootsteps.Step):
        requires = ('tests.unit.test_bootsteps:_Y',)

    global _Y

    class _Y(bootsteps.Step):
        requires = (X,)

    with pytest.raises(ValueError, match='circular'):
        bootsteps.Blueprint(steps={X}).apply(type('P', (), {'steps': []})())


# --- on an in-process worker ----------------------------------------------------------------------------


class InProcess:
    def __init__(self, app: Fastq, **kwargs: Any) -> None:
        self.controller = WorkController(app, pool='threads', concurrency=1, quiet=True, **kwargs)
        self.code: int | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        self.code = self.controller.start()

    def __enter__(self) -> WorkController:
        self.thread.start()
        return self.controller

    def __exit__(self, *exc: object) -> None:
        self.controller.stop()
        self.thread.join(30)
        assert not self.thread.is_alive()


def test_worker_and_consumer_steps_on_a_worker(memory_app: Fastq, connected: Any) -> None:
    calls: list[str] = []
    ticked = threading.Event()

    class WorkerStep(bootsteps.StartStopStep):
        requires = {'celery.worker.components:Timer'}

        def __init__(self, worker: Any, enable_my_option: bool = False, **options: Any) -> None:
            super().__init__(worker, **options)
            calls.append(f'init {worker.hostname} {enable_my_option} {options.get("concurrency")}')

        def start(self, worker: Any) -> None:
            calls.append(f'start pool={worker.pool is not None} hub={worker.hub}')
            self.tref = worker.timer.call_repeatedly(0.01, ticked.set)

        def stop(self, worker: Any) -> None:
            worker.timer.cancel(self.tref)
            calls.append('stop')

    class ConsumerStep(bootsteps.StartStopStep):
        requires = {'celery.worker.consumer.tasks:Tasks'}

        def __init__(self, c: Any, enable_my_option: bool = False, **options: Any) -> None:
            calls.append(f'consumer init {enable_my_option}')

        def start(self, c: Any) -> None:
            calls.append(f'consumer start {c.hostname == c.controller.hostname} {c.app is memory_app}')

        def stop(self, c: Any) -> None:
            calls.append('consumer stop')

        def shutdown(self, c: Any) -> None:
            calls.append('consumer shutdown')

    memory_app.steps['worker'].add(WorkerStep)
    memory_app.steps['consumer'].add(ConsumerStep)
    connected(signals.worker_ready, lambda sender, **kw: calls.append('worker_ready'))
    connected(signals.worker_shutdown, lambda sender, **kw: calls.append('worker_shutdown'))
    w = InProcess(memory_app, hostname='steps@example.com', enable_my_option=True)
    assert calls == []  # (steps are built when the worker starts, after logging is set up, as Celery's)
    with w as controller:
        assert ticked.wait(30)
        assert controller.blueprint is not None and controller.steps and isinstance(controller.steps[0], WorkerStep)
    assert w.code == 0
    assert calls == [
        'init steps@example.com True 1',
        'consumer init True',
        'start pool=True hub=None',
        'consumer start True True',
        'worker_ready',
        'consumer stop',
        'stop',
        'consumer shutdown',
        'worker_shutdown',
    ]


def _guide_info_step(said: list[str]) -> type[bootsteps.StartStopStep]:
    """The guide's InfoStep (a StartStopStep: a plain Step is never started, in Celery either), saying its
    parent at each hook."""

    class InfoStep(bootsteps.StartStopStep):
        def __init__(self, parent: Any, **kwargs: Any) -> None:
            said.append(f'{parent!r} is in init')

        def start(self, parent: Any) -> None:
            said.append(f'{parent!r} is starting')

        def close(self, parent: Any) -> None:
            said.append(f'{parent!r} is closing')

        def stop(self, parent: Any) -> None:
            said.append(f'{parent!r} is stopping')

        def shutdown(self, parent: Any) -> None:
            said.append(f'{parent!r} is shutting down')

    return InfoStep


def test_the_guides_info_step_prints_celerys_worker_and_consumer(memory_app: Fastq) -> None:
    """The guide's "Installing Bootsteps" log: the parents print as Celery's `<Worker: w@example.com (state)>`
    and `<Consumer: ...>` with their blueprint's state (fastq printed `<fastq.worker.worker.WorkController
    object at 0x...>`)."""
    said: list[str] = []
    InfoStep = _guide_info_step(said)
    memory_app.steps['worker'].add(InfoStep)
    memory_app.steps['consumer'].add(InfoStep)
    w = InProcess(memory_app, hostname='w@example.com')
    assert repr(w.controller) == '<Worker: w@example.com (INIT)>'
    with w:
        wait_until(lambda: any('Consumer' in line and 'starting' in line for line in said), 60, 'consumer step started')
    assert [line for line in said if not line.endswith('is closing')] == [
        '<Worker: w@example.com (initializing)> is in init',
        '<Consumer: w@example.com (initializing)> is in init',
        '<Worker: w@example.com (running)> is starting',
        '<Consumer: w@example.com (running)> is starting',
        '<Consumer: w@example.com (closing)> is stopping',
        '<Worker: w@example.com (closing)> is stopping',
        '<Consumer: w@example.com (terminating)> is shutting down',
    ]


def test_shutdown_closes_every_worker_step_before_the_consumer_steps_stop(memory_app: Fastq) -> None:
    """Celery's order at shutdown: the worker blueprint closes all its steps, then stops its last (Consumer),
    which closes and stops the consumer steps, then the other worker steps stop (fastq closed a worker step
    only after the consumer steps had stopped)."""
    said: list[str] = []
    InfoStep = _guide_info_step(said)
    memory_app.steps['worker'].add(InfoStep)
    memory_app.steps['consumer'].add(InfoStep)
    w = InProcess(memory_app, hostname='w@example.com')
    with w:
        wait_until(lambda: any('Consumer' in line and 'starting' in line for line in said), 60, 'consumer step started')
        del said[:]
    assert [line.rpartition('> ')[0].split()[0] + ' ' + line.rpartition('> ')[2] for line in said] == [
        '<Worker: is closing',
        '<Consumer: is closing',
        '<Consumer: is stopping',
        '<Worker: is stopping',
        '<Consumer: is shutting down',
    ]


def test_debug_log_of_the_boot_as_celerys(caplog: pytest.LogCaptureFixture) -> None:
    """`-l debug` says what Celery's says while it builds and starts the blueprints: 'Preparing bootsteps.',
    'Building graph...', the boot order with Celery's labels (Autoscaler, event loop) and '^-- substep ok'."""
    from fastq.worker.steps import ConsumerBlueprint, WorkerBlueprint

    said: list[str] = []
    InfoStep = _guide_info_step(said)
    caplog.set_level('DEBUG', logger='celery.bootsteps')
    parent = type('Parent', (), {'steps': []})()
    blueprint = WorkerBlueprint(steps={InfoStep})
    blueprint.apply(parent)
    blueprint.start(parent)
    ConsumerBlueprint(steps={InfoStep}).apply(type('Parent', (), {'steps': []})())
    assert [r.getMessage() for r in caplog.records if r.name == 'celery.bootsteps'] == [
        '| Worker: Preparing bootsteps.',
        '| Worker: Building graph...',
        '| Worker: New boot order: {Hub, Pool, Beat, Timer, StateDB, Autoscaler, InfoStep, Consumer}',
        '| Worker: Starting InfoStep',
        '^-- substep ok',
        '| Worker: Starting Consumer',
        '^-- substep ok',
        '| Consumer: Preparing bootsteps.',
        '| Consumer: Building graph...',
        '| Consumer: New boot order: {Connection, Mingle, Events, Gossip, Heart, Control, Tasks, DelayedDelivery, '
        'Agent, InfoStep, event loop}',
    ]


def test_a_consumer_step_sends_events_through_the_workers_dispatcher(memory_app: Fastq) -> None:
    """The guide's `c.event_dispatcher` (require 'celery.worker.consumer:Events'): the worker's dispatcher,
    sending only the 'worker' group without -E, as Celery's (fastq's was None: AttributeError on send)."""
    seen: list[Any] = []
    published: list[str] = []

    class Custom(bootsteps.StartStopStep):
        requires = ('celery.worker.consumer:Events',)

        def start(self, c: Any) -> None:
            d = c.event_dispatcher
            d.publish = lambda event, routing_key: published.append(event['type'])
            seen.append((type(d).__name__, d.enabled, sorted(d.groups), d.hostname))
            for kind in ('worker-custom', 'task-custom', 'custom-thing'):
                d.send(kind, answer=42)

    memory_app.steps['consumer'].add(Custom)
    with InProcess(memory_app, hostname='ev@example.com'):
        wait_until(lambda: bool(seen), 60, 'consumer step started')
    assert seen == [('EventDispatcher', True, ['worker'], 'ev@example.com')]
    assert [kind for kind in published if kind.endswith(('custom', 'thing'))] == ['worker-custom']


def test_a_consumer_step_changes_the_prefetch_count_through_qos(
    memory_app: Fastq, caplog: pytest.LogCaptureFixture
) -> None:
    """The guide's `c.qos` (kombu's QoS): `value` is the worker's prefetch count, `set(n)` and the eventual
    changes reach the worker's window (what `inspect stats` says as prefetch_count); fastq's consumer had no
    `qos` (AttributeError)."""
    said: list[Any] = []

    class Prefetch(bootsteps.StartStopStep):
        requires = ('celery.worker.consumer:Tasks',)

        def start(self, c: Any) -> None:
            said.append(c.qos.value)
            c.qos.set(10)
            said.append(c.qos.value)
            said.append(c.qos.increment_eventually(2))
            said.append(c.qos.decrement_eventually(20))  # never below 1

    memory_app.steps['consumer'].add(Prefetch)
    caplog.set_level('DEBUG', logger='kombu.common')
    with InProcess(memory_app) as controller:  # (1 thread x prefetch multiplier 4)
        wait_until(lambda: len(said) == 4 and controller.window == 1, 60, 'the prefetch count applied')
    assert said == [4, 10, 12, 1]  # (the worker's one QoS: a set() lasts; see fastq.worker.qos)
    assert [r.getMessage() for r in caplog.records if 'basic.qos' in r.getMessage()] == [
        'basic.qos: prefetch_count->10',
        'basic.qos: prefetch_count->12',
        'basic.qos: prefetch_count->1',
    ]


def test_a_consumer_step_resets_the_rate_limits(memory_app: Fastq) -> None:
    """The guide's `c.reset_rate_limits()`, after `task.rate_limit` changed on a running worker: the new limit
    applies to the task from then on (fastq's consumer had no such method: AttributeError)."""
    ran: list[int] = []

    @memory_app.task
    def tick(n: int) -> int:
        ran.append(n)
        return n

    with InProcess(memory_app) as controller:
        assert tick.delay(1).get(timeout=60) == 1  # (unlimited: known as such by the worker)
        tick.rate_limit = '1/h'
        assert controller.step_consumer is not None
        controller.step_consumer.reset_rate_limits()
        assert tick.delay(2).get(timeout=60) == 2  # the bucket's one token
        tick.delay(3)
        dispatcher = controller.dispatcher
        assert dispatcher is not None
        wait_until(lambda: len(dispatcher.limiter.held()) == 1, 60, 'the third held by the new limit')
    assert ran == [1, 2]


def test_worker_attributes_the_guide_lists(memory_app: Fastq) -> None:
    """The guide's WorkController attributes a worker step may read: `statedb` (None: no --statedb) and
    `use_eventloop` (False: no `hub`) are there, as on Celery's worker without them (fastq's had neither:
    AttributeError)."""
    seen: list[Any] = []

    class Attributes(bootsteps.StartStopStep):
        requires = ('celery.worker.components:Pool',)

        def start(self, w: Any) -> None:
            seen.append((w.statedb, w.use_eventloop, w.hub, w.autoscaler))

    memory_app.steps['worker'].add(Attributes)
    with InProcess(memory_app):
        wait_until(lambda: bool(seen), 60, 'the worker step started')
    assert seen == [(None, False, None, None)]


def test_timer_call_at_reads_eta_as_kombus_timer(monkeypatch: pytest.MonkeyPatch) -> None:
    """`worker.timer.call_at(eta, ...)` as kombu's timer (Celery's worker.timer) reads `eta`: a number is on
    the monotonic clock, a naive datetime is UTC. fastq read a number as a wall-clock time (so
    `time.monotonic() + 60` fired at once) and a naive datetime as local time."""
    import time
    from datetime import datetime, timedelta

    from fastq.worker.steps import StepTimer

    monkeypatch.setenv('TZ', 'America/New_York')
    time.tzset()
    armed: list[float] = []

    class Loop:
        def call_soon_threadsafe(self, fn: Any) -> None:
            fn()

        def call_later(self, when: float, entry: Any) -> None:
            armed.append(when)

    try:
        timer = StepTimer(Loop())  # type: ignore[arg-type]
        timer.call_at(time.monotonic() + 60, print)
        timer.call_at(datetime.utcnow() + timedelta(seconds=60), print)
    finally:
        monkeypatch.undo()
        time.tzset()
    assert [round(when / 10) for when in armed] == [6, 6]


def test_timer_entries_say_whether_they_were_cancelled_in_both_spellings() -> None:
    """kombu's timer entries have `cancelled` and `canceled`; fastq's had only `cancelled` (AttributeError)."""
    from fastq.worker.steps import TimerEntry

    entry = TimerEntry(print, (), {})
    assert (entry.canceled, entry.cancelled) == (False, False)
    entry.cancel()
    assert (entry.canceled, entry.cancelled) == (True, True)


def test_inspect_stats_shows_what_the_steps_info_says(memory_app: Fastq) -> None:
    """Celery's `inspect stats` merges each worker and consumer step's `info(parent)` into its reply (a plain
    `Step` is not among the parent's steps: its info is not asked for, in Celery either); fastq's left it out."""
    from fastq.worker.control import COMMANDS

    class W(bootsteps.StartStopStep):
        def info(self, w: Any) -> dict[str, Any]:
            return {'my_worker_step': {'host': w.hostname}}

    class C(bootsteps.StartStopStep):
        def info(self, c: Any) -> dict[str, Any]:
            return {'my_consumer_step': [1, 2]}

    class Plain(bootsteps.Step):
        def info(self, w: Any) -> dict[str, Any]:
            return {'plain': True}

    memory_app.steps['worker'].update([W, Plain])
    memory_app.steps['consumer'].add(C)
    with InProcess(memory_app, hostname='stats@example.com') as controller:
        consumer = controller.step_consumer
        wait_until(lambda: consumer is not None and consumer.blueprint.state == bootsteps.RUN, 60, 'consuming')
        stats = COMMANDS['stats'](controller)
    assert stats['my_worker_step'] == {'host': 'stats@example.com'}
    assert stats['my_consumer_step'] == [1, 2]
    assert 'plain' not in stats and stats['pid'] and stats['rusage']


@pytest.mark.parametrize('blueprint', ['worker', 'consumer'])
def test_a_step_that_fails_to_start_stops_the_worker(
    memory_app: Fastq, connected: Any, caplog: pytest.LogCaptureFixture, blueprint: str
) -> None:
    """Celery's words ('Unrecoverable error: RuntimeError(...)', CRITICAL) and exit code 1, without a
    "worker: Warm shutdown" nor worker_shutting_down, which Celery's worker sends for signals only (fastq
    said 'Unrecoverable error starting a bootstep: ...' and announced a warm shutdown)."""
    shutting_down: list[Any] = []

    class Broken(bootsteps.StartStopStep):
        def start(self, worker: Any) -> None:
            raise RuntimeError('cannot start')

    memory_app.steps[blueprint].add(Broken)
    connected(signals.worker_shutting_down, lambda sender, **kw: shutting_down.append(kw))
    w = InProcess(memory_app)
    with w:
        w.thread.join(30)
    assert w.code == 1
    said = [(r.levelname, r.getMessage()) for r in caplog.records if r.name == 'celery.worker']
    assert ('CRITICAL', "Unrecoverable error: RuntimeError('cannot start')") in said
    assert not [message for _, message in said if 'shutdown' in message] and shutting_down == []


def test_a_consumer_step_needs_a_broker_kombu_can_reach(memory_app: Fastq) -> None:
    class MyConsumerStep(bootsteps.ConsumerStep):
        def get_consumers(self, channel: Any) -> list[Any]:
            return []

    memory_app.steps['consumer'].add(MyConsumerStep)
    controller = WorkController(memory_app, pool='solo', quiet=True)
    with pytest.raises(ImproperlyConfigured, match=r'bootstep .*MyConsumerStep: .*memory://'):
        controller.start()


# --- custom command-line options ------------------------------------------------------------------------


def _app_with_options() -> Fastq:
    app = Fastq('opts', broker='memory://', set_as_current=False)
    app.user_options['worker'].add(click.Option(('--enable-my-option',), is_flag=True, help='Enable custom option.'))
    app.user_options['worker'].add(click.Option(('--level',), type=click.IntRange(0, 5), default=1))
    app.user_options['worker'].add(click.Option(('--tag',), multiple=True))
    app.user_options['worker'].add(click.Option(('--shout/--no-shout',), default=True))
    app.user_options['worker'].add(click.Option(('-V', '--verbose'), count=True))
    app.user_options['worker'].add(click.Option(('--kind',), type=click.Choice(['a', 'b'])))
    app.user_options['beat'].add(click.Option(('--beat-thing',)))
    app.user_options['preload'].add(click.Option(('-Z', '--template'), default='default'))
    return app


def _parse(app: Fastq, argv: list[str]) -> dict[str, Any]:
    parser = build_parser()
    add_user_options(parser, app)
    args = parser.parse_args(argv)
    return finish_user_options(parser, args)


def test_click_options_become_argparse_options() -> None:
    app = _app_with_options()
    assert _parse(app, ['worker']) == {
        'enable_my_option': False,
        'kind': None,
        'level': 1,
        'shout': True,
        'tag': (),
        'template': 'default',
        'verbose': 0,
    }
    argv = ['worker', '--enable-my-option', '--level', '3', '--tag', 'x', '--tag', 'y', '--no-shout', '-VV']
    assert _parse(app, [*argv, '--kind', 'b', '-Z', 'tmpl']) == {
        'enable_my_option': True,
        'kind': 'b',
        'level': 3,
        'shout': False,
        'tag': ('x', 'y'),
        'template': 'tmpl',
        'verbose': 2,
    }
    assert _parse(app, ['beat', '--beat-thing', 'q', '-Z', 't']) == {'beat_thing': 'q', 'template': 't'}
    assert _parse(app, ['purge', '-Z', 't']) == {'template': 't'}  # preload options: every command


def test_click_types_check_the_values(capsys: pytest.CaptureFixture[str]) -> None:
    app = _app_with_options()
    with pytest.raises(SystemExit):
        _parse(app, ['worker', '--level', '9'])
    assert '--level' in capsys.readouterr().err
    with pytest.raises(SystemExit):
        _parse(app, ['worker', '--kind', 'c'])


def test_an_option_that_clashes_is_named() -> None:
    app = Fastq('clash', broker='memory://', set_as_current=False)
    app.user_options['worker'].add(click.Option(('-c', '--my-concurrency')))
    with pytest.raises(CommandError, match='-c/--my-concurrency'):
        _parse(app, ['worker'])


def test_main_sends_preload_options_and_passes_worker_options(monkeypatch: pytest.MonkeyPatch, connected: Any) -> None:
    import fastq.cli
    import fastq.cli.worker

    app = _app_with_options()
    seen: dict[str, Any] = {}
    connected(signals.user_preload_options, lambda sender, app, options, **kw: seen.update(preload=(app, options)))

    def run(app: Fastq, args: argparse.Namespace) -> int:
        seen['user_options'] = args.user_options
        return 0

    monkeypatch.setattr(fastq.cli.worker, 'run', run)
    with pytest.raises(SystemExit) as exit_:
        fastq.cli.main(['worker', '--enable-my-option', '-Z', 'tmpl'], app=app)
    assert exit_.value.code == 0
    assert seen['preload'] == (app, {'template': 'tmpl'})
    assert seen['user_options']['enable_my_option'] is True and seen['user_options']['template'] == 'tmpl'


# --- signals with Celery's arguments --------------------------------------------------------------------


def test_worker_shutting_down_names_the_signal(memory_app: Fastq, connected: Any) -> None:
    seen: list[dict[str, Any]] = []
    connected(signals.worker_shutting_down, lambda **kw: seen.append(kw))
    controller = WorkController(memory_app, hostname='w@h', pool='solo', quiet=True)
    controller.request_shutdown('warm', signal.SIGTERM)
    controller.request_shutdown('cold', signal.SIGQUIT)
    assert [(s['sender'], s['sig'], s['how'], s['exitcode']) for s in seen] == [
        ('w@h', 'SIGTERM', 'Warm', 0),
        ('w@h', 'SIGQUIT', 'Cold', 1),
    ]
    controller.loop.close()


def _signalled(
    app: Fastq, connected: Any, tmp_path: Any, monkeypatch: pytest.MonkeyPatch, *signums: int, env: str | None = None
) -> tuple[WorkController, str, list[tuple[str, str, int]]]:
    """A worker's shutdown signals handled in turn (`_signalled`, as its loop runs them), with Celery's lines
    read from the real stdout and the `worker_shutting_down` calls; the cold ones come once the running tasks
    are cancelled (`_announce_cold`, which its shutdown calls)."""
    import sys

    seen: list[tuple[str, str, int]] = []
    connected(signals.worker_shutting_down, lambda sig, how, exitcode, **kw: seen.append((sig, how, exitcode)))
    if env is None:
        monkeypatch.delenv('REMAP_SIGTERM', raising=False)
    else:
        monkeypatch.setenv('REMAP_SIGTERM', env)
    controller = WorkController(app, hostname='w@h', pool='solo', quiet=True)
    monkeypatch.setattr(signal, 'signal', lambda *a: None)  # (pytest's own handlers are left alone)
    monkeypatch.setattr('fastq.worker.worker.install_rdb_handler', lambda: None)
    controller._install_signal_handlers()
    with open(tmp_path / 'stdout', 'w+') as out:
        with monkeypatch.context() as m:
            m.setattr(sys, '__stdout__', out)
            for signum in signums:
                controller._signalled(signum)
            controller._announce_cold()
        controller.loop.close()
        out.seek(0)
        return controller, out.read(), seen


HITTING_COLD = '\nworker: Hitting Ctrl+C again will terminate all running tasks!\n'
COLD = '\nworker: Cold shutdown (MainProcess)\n'
WARM = '\nworker: Warm shutdown (MainProcess)\n'


def test_shutdown_signals_say_what_celerys_say_on_stdout(
    memory_app: Fastq, connected: Any, tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # SIGTERM: warm, every time (a second one is not cold); SIGQUIT then: cold, announced once tasks are cancelled
    w, said, seen = _signalled(
        memory_app, connected, tmp_path, monkeypatch, signal.SIGTERM, signal.SIGTERM, signal.SIGQUIT
    )
    assert said == WARM + WARM + HITTING_COLD + COLD
    assert seen == [('SIGTERM', 'Warm', 0), ('SIGTERM', 'Warm', 0), ('SIGQUIT', 'Cold', 1)]
    assert w._shutdown == 'cold' and w.exitcode == 0


def test_sigint_twice_is_warm_with_exit_code_1_then_quietly_cold(
    memory_app: Fastq, connected: Any, tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    w, said, seen = _signalled(memory_app, connected, tmp_path, monkeypatch, signal.SIGINT, signal.SIGINT)
    assert said == (
        '\nworker: Hitting Ctrl+C again will initiate cold shutdown, terminating all running tasks!\n'
        + WARM
        + HITTING_COLD
    )
    assert seen == [('SIGINT', 'Warm', 1), ('SIGINT', 'Cold', 1)]
    assert w._shutdown == 'cold' and w.exitcode == 1


def test_sigquit_during_the_soft_shutdown_then_a_hard_one(
    memory_app: Fastq, connected: Any, tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    w, said, seen = _signalled(memory_app, connected, tmp_path, monkeypatch, signal.SIGQUIT, signal.SIGQUIT)
    assert said == HITTING_COLD + '\nWaiting gracefully for cold shutdown to complete...\n' + COLD + COLD
    assert seen == [('SIGQUIT', 'Cold', 1)] * 2
    w, said, seen = _signalled(memory_app, connected, tmp_path, monkeypatch, *[signal.SIGQUIT] * 3)
    assert said == HITTING_COLD + '\nWaiting gracefully for cold shutdown to complete...\n' + COLD  # (the 1st: none)
    assert seen == [('SIGQUIT', 'Cold', 1)] and w._hard


def test_remap_sigterm_makes_sigterm_cold(
    memory_app: Fastq, connected: Any, tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    w, said, seen = _signalled(memory_app, connected, tmp_path, monkeypatch, signal.SIGTERM, env='SIGQUIT')
    assert said == HITTING_COLD + COLD and seen == [('SIGTERM', 'Cold', 1)] and w._shutdown == 'cold'


def test_celeryd_init_by_node_name_and_worker_init_at_construction(memory_app: Fastq, connected: Any) -> None:
    seen: list[str] = []
    connected(signals.celeryd_init, lambda sender, conf, options, **kw: seen.append(f'init {sender}'), sender='w12@h')
    connected(signals.celeryd_init, lambda sender, **kw: seen.append('other'), sender='other@h')
    connected(signals.worker_init, lambda sender, **kw: seen.append(f'worker_init {sender.hostname}'))
    controller = WorkController(memory_app, hostname='w12@h', pool='solo', quiet=True)
    assert seen == ['init w12@h', 'worker_init w12@h']
    controller.loop.close()


def test_publish_signals_carry_celerys_body_and_task_sent(memory_app: Fastq, connected: Any) -> None:
    from tests.unit.test_client import _memory_payloads

    @memory_app.task
    def add(x: int, y: int) -> int:
        return x + y

    seen: dict[str, Any] = {}

    def before(sender: str, body: Any, headers: dict[str, Any], properties: dict[str, Any], **kw: Any) -> None:
        seen['before'] = (sender, body, sorted(kw))
        headers['x-added'] = 'yes'

    connected(signals.before_task_publish, before)
    connected(signals.task_sent, lambda **kw: seen.update(sent=kw))
    result = add.apply_async((1, 2), countdown=60)
    sender, body, keywords = seen['before']
    assert sender == add.name and body[:2] == ((1, 2), {})  # (the args as given: Celery's too)
    assert body[2] == {'callbacks': None, 'errbacks': None, 'chain': None, 'chord': None}
    assert keywords == ['declare', 'exchange', 'retry_policy', 'routing_key', 'signal']
    assert _memory_payloads(memory_app)[-1]['headers']['x-added'] == 'yes'  # the change is in the message
    sent = seen['sent']
    assert (sent['sender'], sent['task_id'], sent['task'], sent['args'], sent['kwargs']) == (
        add.name, result.id, add.name, (1, 2), {}
    )  # fmt: skip
    assert sent['eta'] is not None and sent['taskset'] is None


def test_task_retry_reason_is_the_retry(memory_app: Fastq, connected: Any) -> None:
    @memory_app.task(bind=True, max_retries=1)
    def flaky(self: Any) -> None:
        raise self.retry(exc=KeyError('k'), countdown=60)

    seen: list[Any] = []
    connected(signals.task_retry, lambda sender, request, reason, einfo, **kw: seen.append((reason, einfo)))
    from fastq.worker.trace import execute

    execute(flaky, [], {}, {'id': 'r1', 'task': flaky.name, 'retries': 0})
    ((reason, einfo),) = seen
    assert isinstance(reason, Retry) and 'KeyError' in str(reason)
    assert einfo.exception is reason and einfo.exc_info[1] is reason


def test_task_internal_error_has_celerys_arguments(memory_app: Fastq, connected: Any) -> None:
    from fastq.worker.job import _internal_error

    @memory_app.task
    def add(x: int, y: int) -> int:
        return x + y

    seen: list[dict[str, Any]] = []
    connected(signals.task_internal_error, lambda **kw: seen.append(kw))
    try:
        raise OSError('backend down')
    except OSError as exc:
        _internal_error(memory_app, add, {'id': 'i1'}, exc, [1, 2], {})
    (kw,) = seen
    assert (kw['sender'], kw['task_id'], kw['args'], kw['kwargs'], kw['request']) == (
        add,
        'i1',
        [1, 2],
        {},
        {'id': 'i1'},
    )
    assert kw['traceback'] is not None and kw['einfo'].internal and 'backend down' in kw['einfo'].traceback


def test_select_add_from_celeryd_after_setup(memory_app: Fastq, connected: Any) -> None:
    def setup_direct_queue(sender: str, instance: Any, **kwargs: Any) -> None:
        instance.app.amqp.queues.select_add(f'{sender}.dq')

    connected(signals.celeryd_after_setup, setup_direct_queue)
    w = InProcess(memory_app, hostname='dq@h')
    with w as controller:
        pass
    assert 'dq@h.dq' in controller.queues
    with pytest.raises(ValueError, match='celeryd_after_setup'):
        memory_app.amqp.queues.select_add('late')
