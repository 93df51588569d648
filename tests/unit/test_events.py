"""Events without a worker: the format, the dispatcher's buffering and batches, the receiver, `State`."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest

from fastq import Fastq, _core
from fastq.events import Event, EventDispatcher, State, group_from
from fastq.events.event import decode_events, encode_events, routing_key_of
from fastq.exceptions import ImproperlyConfigured
from fastq.worker.trace import Outcome


def ev(kind: str, **fields: Any) -> dict[str, Any]:
    return {'type': kind, 'hostname': 'w1@host', 'timestamp': time.time(), 'clock': 1, 'pid': 42, 'utcoffset': 0,
            **fields}  # fmt: skip


def test_format_helpers() -> None:
    assert group_from('task-sent') == 'task' and group_from('worker-heartbeat') == 'worker'
    assert routing_key_of('task-succeeded') == 'task.succeeded'
    event = Event('task-sent', uuid='x')
    assert event['type'] == 'task-sent' and isinstance(event['timestamp'], float)
    assert Event('x-y', timestamp=1.5)['timestamp'] == 1.5
    raw = encode_events([ev('task-started', uuid='a'), ev('task-succeeded', uuid='a')], 'w1@host', 'task.multi')
    assert [e['type'] for e in decode_events(raw)] == ['task-started', 'task-succeeded']
    assert decode_events(b'not an envelope') == []


def test_dispatcher_publishes_at_once_and_buffers_groups(memory_app: Fastq) -> None:
    receiver = memory_app.events.Receiver(routing_key='#')
    receiver.consume()
    dispatcher = memory_app.events.Dispatcher(hostname='n1@h', buffer_group=['task'], buffer_limit=3)
    dispatcher.send('worker-online', freq=2.0)
    dispatcher.send('task-received', uuid='a')
    dispatcher.send('task-started', uuid='a')
    got = list(receiver.itercapture(timeout=0.2))
    assert [e['type'] for e in got] == ['worker-online']  # task events wait in the buffer
    assert got[0]['hostname'] == 'n1@h' and got[0]['freq'] == 2.0 and {'pid', 'clock', 'utcoffset'} <= set(got[0])
    dispatcher.send('task-succeeded', uuid='a', result='1', runtime=0.1)  # the third: the buffer is flushed
    got = list(receiver.itercapture(timeout=0.2))
    assert [e['type'] for e in got] == ['task-received', 'task-started', 'task-succeeded']
    assert got[0]['clock'] < got[1]['clock'] < got[2]['clock']
    dispatcher.close()
    receiver.close()


def test_groups_disabled_and_sender_thread(memory_app: Fastq) -> None:
    seen: list[dict[str, Any]] = []
    receiver = memory_app.events.Receiver(handlers={'task-failed': seen.append})
    receiver.consume()
    dispatcher = EventDispatcher(memory_app, hostname='n1@h', groups=['worker'], buffer_group=['task'])
    dispatcher.send('task-failed', uuid='a')  # not in the groups sent
    dispatcher.groups = None
    dispatcher.enabled = False
    dispatcher.send('task-failed', uuid='b')
    dispatcher.enabled = True
    dispatcher.flush_interval = 0.01
    dispatcher.start()
    dispatcher.send('task-failed', uuid='c', exception='E()', traceback='tb')
    dispatcher.send('task-retried', uuid='c')  # no handler for it, and no '*'
    receiver.capture(limit=2, timeout=2)
    assert [e['uuid'] for e in seen] == ['c']
    dispatcher.close()
    receiver.close()


def test_receiver_routing_key(memory_app: Fastq) -> None:
    receiver = memory_app.events.Receiver(routing_key='worker.#')
    receiver.consume()
    dispatcher = memory_app.events.Dispatcher(hostname='n1@h')
    dispatcher.send('task-sent', uuid='a')
    dispatcher.send('worker-heartbeat', freq=2.0)
    assert [e['type'] for e in receiver.itercapture(timeout=0.2)] == ['worker-heartbeat']
    receiver.close()


def test_offline_events_are_kept_and_sent_later(memory_app: Fastq) -> None:
    broker = memory_app.broker
    real = broker.fanout_publish
    calls: list[str] = []

    def down(exchange: str, payload: bytes, routing_key: str = '') -> None:
        calls.append(routing_key)
        raise ConnectionError('down')

    broker.fanout_publish = down  # type: ignore[method-assign]
    dispatcher = memory_app.events.Dispatcher(hostname='n1@h')
    dispatcher.send('worker-heartbeat', freq=2.0)
    dispatcher.send('worker-offline', freq=2.0)
    assert calls == ['worker.heartbeat', 'worker.offline']
    receiver = memory_app.events.Receiver()
    receiver.consume()
    broker.fanout_publish = real  # type: ignore[method-assign]
    dispatcher.flush()
    assert [e['type'] for e in receiver.itercapture(timeout=0.2)] == ['worker-heartbeat', 'worker-offline']
    receiver.close()


def test_state_folds_like_celery() -> None:
    state = State()
    now = time.time()
    state.event(ev('worker-online', freq=2.0, timestamp=now))
    state.event(ev('task-received', uuid='a', name='proj.add', args='(1, 2)', kwargs='{}', timestamp=now))
    state.event(ev('task-succeeded', uuid='a', result='3', runtime=0.01, timestamp=now + 0.2))
    state.event(ev('task-started', uuid='a', timestamp=now + 0.1))  # late: merged, state kept
    task = state.tasks['a']
    assert task.state == 'SUCCESS' and task.result == '3' and task.started == now + 0.1 and task.name == 'proj.add'
    assert task.worker is state.workers['w1@host'] and task.ready
    state.event(ev('task-received', uuid='b', name='proj.flaky', timestamp=now))
    state.event(ev('task-retried', uuid='b', exception='E()', traceback='tb', timestamp=now + 0.1))
    state.event(ev('task-received', uuid='b', retries=1, timestamp=now + 1))  # after a retry: received again
    assert state.tasks['b'].state == 'RECEIVED' and state.tasks['b'].retries == 1
    assert [w.hostname for w in state.alive_workers()] == ['w1@host']
    assert [uuid for uuid, _ in state.tasks_by_time()] == ['b', 'a']
    assert state.task_types() == ['proj.add', 'proj.flaky']
    state.event(ev('worker-offline', timestamp=now + 2))
    assert state.alive_workers() == [] and state.workers['w1@host'].status_string == 'OFFLINE'
    stale = State()
    stale.event(ev('worker-heartbeat', freq=0.01, timestamp=now - 1))
    assert not stale.workers['w1@host'].alive  # two missed heartbeats: offline
    small = State(max_tasks_in_memory=2)
    for uuid in 'xyz':
        small.event(ev('task-received', uuid=uuid))
    assert list(small.tasks) == ['y', 'z'] and small.task_count == 3


def test_outcome_wire_carries_the_traceback() -> None:
    outcome = Outcome('FAILURE', 0.5, exc_repr="ValueError('x')", traceback='Traceback ...')
    again = Outcome.from_wire(outcome.to_wire())
    assert (again.state, again.exc_repr, again.traceback, again.retval) == ('FAILURE', "ValueError('x')",
                                                                          'Traceback ...', None)  # fmt: skip


def test_task_sent_events(memory_app: Fastq) -> None:
    @memory_app.task(name='proj.add')
    def add(x: int, y: int) -> int:
        return x + y

    memory_app.conf.task_send_sent_event = True
    with memory_app.events.Receiver(routing_key='task.sent') as receiver:
        result = add.delay(1, 2)
        (sent,) = list(receiver.itercapture(timeout=0.3))
    assert sent['type'] == 'task-sent' and sent['uuid'] == result.id and sent['name'] == 'proj.add'
    assert sent['args'] == '(1, 2)' and sent['queue'] == 'celery' and sent['root_id'] == result.id


def test_receiver_wakes_the_workers_and_stamps_what_it_receives(memory_app: Fastq) -> None:
    # Celery's EventReceiver: capture() first broadcasts `heartbeat` (so a monitor lists the workers at once),
    # and each event gets `local_received` and a timestamp moved into this host's zone
    from fastq.control import decode_envelope
    from fastq.events.event import utcoffset

    pidbox = memory_app.broker.subscribe('celery.pidbox')
    dispatcher = memory_app.events.Dispatcher(hostname='n1@h')
    with memory_app.events.Receiver() as receiver:
        dispatcher.send('worker-heartbeat', freq=2.0)
        dispatcher.publish(ev('worker-heartbeat', utcoffset=utcoffset() + 1, timestamp=1000.0), 'worker.heartbeat')
        before = time.time()
        first, east = list(receiver.itercapture(timeout=0.3))
        list(receiver.itercapture(timeout=0.1, wakeup=False))
    commands = [decode_envelope(raw)[1]['method'] for _, raw in pidbox.get(0.3)]
    assert commands == ['heartbeat']  # the second capture asked for none
    assert isinstance(first['local_received'], float) and first['local_received'] >= before
    assert east['timestamp'] == 1000.0 - 3600  # sent from an hour further west: its clock reads an hour behind
    pidbox.close()
    dispatcher.close()


def test_state_folds_as_celerys_state() -> None:
    # Celery's State as the oracle, fed the same events (each with the receiver's local_received)
    from celery.events.state import State as CeleryState

    now = time.time()
    stream = [
        ev('worker-online', freq=2.0, timestamp=now - 10),
        ev('task-sent', uuid='a', name='t.a', hostname='client@h', timestamp=now - 1.5),
        ev('task-received', uuid='a', name='t.a', timestamp=now - 1.4),
        ev('task-started', uuid='a', timestamp=now - 1.3),
        ev('task-started', uuid='b', timestamp=now - 1.2),  # never seen received
        ev('task-succeeded', uuid='a', result='1', runtime=0.1, timestamp=now - 1.1),
        ev('worker-offline', hostname='gone@h', timestamp=now - 1),  # never seen online
    ]
    left: dict[str, list[str]] = {'celery': [], 'fastq': []}
    theirs = CeleryState(on_node_leave=lambda w: left['celery'].append(w.hostname))
    ours = State(on_node_leave=lambda w: left['fastq'].append(w.hostname))
    for received, event in enumerate(stream):  # (local_received far in the past: task events go by their time)
        (their_obj, their_new), their_kind = theirs.event(dict(event, local_received=now - 100 + received))
        (our_obj, our_new), our_kind = ours.event(dict(event, local_received=now - 100 + received))
        assert (type(our_obj).__name__, our_new, our_kind) == (type(their_obj).__name__, their_new, their_kind)
    assert ours.task_count == theirs.task_count == 1  # task-received events, not tasks
    assert ours.tasks['a'].client == theirs.tasks['a'].client == 'client@h'
    assert ours.tasks['a'].worker.hostname == theirs.tasks['a'].worker.hostname == 'w1@host'
    # by type and by worker: called, (uuid, task) newest first, limited after filtering; indexed, a set
    assert [u for u, _ in ours.tasks_by_type('t.a')] == [u for u, _ in theirs.tasks_by_type('t.a')] == ['a']
    assert [u for u, _ in ours.tasks_by_worker('w1@host', limit=1)] == ['a']  # (the newest; b's last was older)
    assert [u for u, _ in theirs.tasks_by_worker('w1@host', limit=1)] == ['a']
    assert {t.uuid for t in ours.tasks_by_type['t.a']} == {t.uuid for t in theirs.tasks_by_type['t.a']} == {'a'}
    assert {t.uuid for t in ours.tasks_by_worker['w1@host']} == {'a', 'b'}  # (Celery's files 'a' under its client)
    assert len(ours.tasks_by_type['nothing']) == len(theirs.tasks_by_type['nothing']) == 0
    assert sorted(ours.workers) == sorted(theirs.workers) == ['w1@host']  # the offline stranger not kept
    assert left['fastq'] == left['celery'] == ['gone@h']
    assert [w.hostname for w in ours.alive_workers()] == [w.hostname for w in theirs.alive_workers()] == ['w1@host']
    # the worker's own events go by when they were received; its tasks' events keep it alive
    assert ours.workers['w1@host'].heartbeats == theirs.workers['w1@host'].heartbeats
    assert ours.workers['w1@host'].heartbeats == [now - 1.4, now - 1.3, now - 1.2, now - 1.1]  # (the last 4)
    assert ours.workers['w1@host'].id == theirs.workers['w1@host'].id == 'w1@host.42'
    ours.event(ev('worker-offline', local_received=now))
    theirs.event(ev('worker-offline', local_received=now))
    assert ours.workers == {} and len(theirs.workers) == 0  # forgotten once on_node_leave was told
    assert ours.event({'type': 'other-thing'}) == (None, 'thing')


def test_state_clear_keeps_running_tasks_and_freeze_while_clears_after() -> None:
    state = State()
    state.event(ev('task-received', uuid='done', name='t.a'))
    state.event(ev('task-succeeded', uuid='done', result='1'))
    state.event(ev('task-started', uuid='running', name='t.b'))
    assert state.freeze_while(lambda: sorted(state.tasks)) == ['done', 'running']  # no clear without clear_after
    assert state.event_count == 3
    assert state.freeze_while(lambda: state.task_count, clear_after=True) == 1  # (task-received events)
    assert list(state.tasks) == ['running'] and state.event_count == 0 and not state.workers
    state.clear(ready=False)
    assert not state.tasks


class _ManualTimer:
    """A timer that fires only when told (the Polaroid's timer may be any object with call_repeatedly)."""

    def __init__(self) -> None:
        self.entries: list[Any] = []

    def call_repeatedly(self, secs: float, fun: Any) -> Any:
        timer = self

        class Entry:
            cancelled = False

            def __call__(self) -> Any:
                return fun()

            def cancel(self) -> None:
                self.cancelled = True
                timer.entries.remove(self)

        entry = Entry()
        self.entries.append(entry)
        return entry


def test_polaroid_shots_maxrate_signal_and_the_last_shot(memory_app: Fastq) -> None:
    from fastq.events.snapshot import Polaroid

    seen: list[tuple[int, list[str]]] = []
    signalled: list[Any] = []

    class Cam(Polaroid):
        clear_after = True

        def on_shutter(self, state: State) -> None:
            seen.append((state.event_count, sorted(state.tasks)))

    def heard(sender: Any, **kwargs: Any) -> None:
        signalled.append(sender)

    Polaroid.shutter_signal.connect(heard, weak=False)
    try:
        state, timer = State(), _ManualTimer()
        with Cam(state, freq=0.5, timer=timer, app=memory_app) as cam:
            assert len(timer.entries) == 2  # the shutter and the cleanup
            state.event(ev('task-succeeded', uuid='a'))
            timer.entries[0]()
            timer.entries[0]()  # nothing new: the camera sees an empty state
            state.event(ev('task-started', uuid='b'))
        assert not timer.entries  # cancelled, after one last shot
        assert seen == [(1, ['a']), (0, []), (1, ['b'])]
        assert signalled == [state] * 3 and cam.app is memory_app

        limited, shots = State(), []
        slow = Polaroid(limited, maxrate='1/h', timer=_ManualTimer(), app=memory_app)
        slow.on_shutter = lambda s: shots.append(s)  # type: ignore[method-assign]
        for _ in range(3):
            slow.capture()
        assert len(shots) == 1  # the rest are over the rate
    finally:
        Polaroid.shutter_signal.disconnect(heard)


def test_polaroid_default_timer_repeats() -> None:
    from fastq.events.snapshot import Polaroid

    shots: list[int] = []
    state = State()
    cam = Polaroid(state, freq=0.01)
    cam.on_shutter = lambda s: shots.append(1)  # type: ignore[method-assign]
    cam.install()
    deadline = time.monotonic() + 10
    while len(shots) < 3 and time.monotonic() < deadline:
        time.sleep(0.01)
    cam.cancel()
    assert len(shots) >= 3


@pytest.mark.parametrize(
    ('kind', 'message'), [('control', 'control_queue_durable and control_queue_exclusive'), ('event', 'exclusive and')]
)
def test_durable_and_exclusive_queues_are_refused(kind: str, message: str) -> None:
    """As Celery's Control and EventReceiver: exclusive queues vanish with their connection, so one that is also
    durable is a contradiction, refused when the control or receiver is made, naming the settings."""
    app = Fastq('t', broker='memory://', set_as_current=False)
    app.conf.update({f'{kind}_queue_durable': True, f'{kind}_queue_exclusive': True})
    with pytest.raises(ImproperlyConfigured, match=message):
        app.control if kind == 'control' else app.events.Receiver(app)
    app.conf.update({f'{kind}_queue_exclusive': False})
    app.control if kind == 'control' else app.events.Receiver(app)
    app.close()


@pytest.mark.parametrize('zone', ['UTC', 'Asia/Kolkata', 'America/St_Johns', 'Europe/Paris'])
def test_utcoffset_is_celerys(monkeypatch: pytest.MonkeyPatch, zone: str) -> None:
    """Hours west of UTC as a float, as Celery 5.7 sends it: -5.5 in a half-hour zone, which an int rounded to
    -6, and Celery's receivers then moved fastq's timestamps by half an hour."""
    from celery.utils.time import utcoffset as celerys

    from fastq.events.event import utcoffset

    monkeypatch.setenv('TZ', zone)
    time.tzset()
    try:
        assert utcoffset() == celerys() and isinstance(utcoffset(), float)
        buffer = _core.EventBuffer('w1@host', utcoffset(), 1, None)
        buffer.push(buffer.define('worker-heartbeat', ()), 1, '')
        assert json.loads(buffer.take(1) or b'')[0]['utcoffset'] == celerys()
    finally:
        monkeypatch.delenv('TZ')
        time.tzset()
