"""Every inspect command, and the control commands beyond ping/revoke/shutdown, against a real worker.

One worker per test, holding work in each state at once (running, reserved behind it, an ETA task held in
memory, a revoked id), so each reply is checked against what the worker really holds.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest

from tests.harness import lines, wait_until

from .test_cli import fastq

pytestmark = pytest.mark.slow
REDIS = pytest.mark.parametrize('broker_kind', ['redis'], indirect=True)


def _hostname(w: Any, prefix: str) -> str:
    return next(word for word in w.log.split() if word.startswith(prefix))


@REDIS
def test_inspect_commands_show_what_the_worker_holds(
    tasks: Any, worker: Any, tmp_path: Path, urls: dict[str, str]
) -> None:
    w = worker('-n', 'insp@%h', '-c', '1')
    node = _hostname(w, 'insp@')
    inspect = tasks.app.control.inspect(destination=[node], timeout=3)
    out = tmp_path / 'sleep.txt'
    running = tasks.sleeper.delay(str(out), 'busy', 30)
    wait_until(lambda: any(line.startswith('start busy') for line in lines(out)), message='started')
    waiting = tasks.add.delay(1, 2)  # behind the running task on a one-child pool
    later = tasks.add.apply_async((3, 4), countdown=0.8)  # held in memory until due
    tasks.app.control.revoke('some-revoked-id', reply=True, timeout=2)

    [active] = inspect.active()[node]
    assert active['id'] == running.id and active['name'] == 'worker_tasks.sleeper'
    assert active['args'] == [str(out), 'busy', 30] and active['kwargs'] == {}
    assert active['hostname'] == node and active['acknowledged'] is True and active['worker_pid'] > 0
    assert active['time_start'] > 0 and active['delivery_info']['routing_key'] == 'celery'

    def held() -> bool:
        replies = inspect.reserved() or {}
        return waiting.id in {r['id'] for r in replies.get(node, [])}

    wait_until(held, message='reserved')
    scheduled = inspect.scheduled()[node]
    if scheduled:  # it may have come due meanwhile on a slow machine
        assert scheduled[0]['request']['id'] == later.id and scheduled[0]['eta'].startswith('20')
    query = inspect.query_task(running.id, waiting.id)[node]
    assert query[running.id][0] == 'active' and query[waiting.id][0] == 'reserved'
    assert 'some-revoked-id' in inspect.revoked()[node]
    registered = inspect.registered()[node]
    assert any(item.startswith('worker_tasks.add') for item in registered)
    assert 'worker_tasks.add [acks_late=False]' in inspect.registered('acks_late')[node]
    stats = inspect.stats()[node]
    assert stats['pid'] == w.pid and stats['pool']['max-concurrency'] == 1 and stats['prefetch_count'] >= 1
    assert stats['pool']['timeouts'] == [0, 0] and stats['pool']['max-tasks-per-child'] == 'N/A'
    writes = stats['pool']['writes']  # Celery's prefork write stats: one child, so all of them its own
    assert (
        writes
        == {
            'total': writes['total'],
            'avg': '1.00',
            'all': '1.00',
            'raw': str(writes['total']),
            'strategy': 'fair',
            'inqueues': {'total': 1, 'active': 0},
        }
        and writes['total'] >= 1
    )
    broker = stats['broker']  # kombu's Connection.info() without the password
    import kombu

    assert set(broker) == set(kombu.Connection('redis://localhost:1/0').info()) - {'password'}  # Celery's fields
    assert broker['transport'] == 'redis' and broker['port'] > 0 and 'password' not in broker
    assert stats['uptime'] >= 0 and stats['rusage']['utime'] > 0 and int(stats['clock']) > 0
    [queue] = inspect.active_queues()[node]
    assert queue['name'] == 'celery' and queue['exchange']['type'] == 'direct'
    conf = inspect.conf()[node]
    assert conf['broker_url'].startswith('redis://') and 'worker_prefetch_multiplier' not in conf  # changes only
    assert 'worker_prefetch_multiplier' in inspect.conf(with_defaults=True)[node]
    assert 'fastq' in inspect.report()[node]['ok']
    assert inspect.clock()[node]['clock'] > 0

    assert tasks.app.control.broadcast('dump_revoked', destination=[node], reply=True, timeout=3) == [
        {node: inspect.revoked()[node]}
    ]  # Celery's old aliases
    assert tasks.app.control.terminate(running.id, reply=True, timeout=3) == [
        {node: {'ok': f'terminate: {running.id}'}}
    ]
    assert waiting.get(timeout=30) == 3 and later.get(timeout=30) == 7
    stats = inspect.stats()[node]
    assert stats['total'].get('worker_tasks.add') == 2

    # the command line, in Celery's words
    proc = fastq(tmp_path, urls, '-A', 'worker_tasks', 'inspect', 'stats', '-d', node, '-t', '3')
    assert proc.stdout.startswith(f'->  {node}: OK') and '"max-concurrency": 1' in proc.stdout
    proc = fastq(tmp_path, urls, '-A', 'worker_tasks', 'inspect', 'active', '-d', node, '-t', '3', '-j')
    assert json.loads(proc.stdout) == {node: []}
    proc = fastq(tmp_path, urls, '-A', 'worker_tasks', 'inspect', 'query_task', 'nope', '-d', node, '-t', '3', '-j')
    assert json.loads(proc.stdout) == {node: {}}
    bad = fastq(tmp_path, urls, '-A', 'worker_tasks', 'inspect', 'nonsense', check=False)
    assert bad.returncode == 2 and 'Command nonsense not recognized' in bad.stderr


@REDIS
def test_time_limit_and_events_control(tasks: Any, worker: Any, tmp_path: Path, urls: dict[str, str]) -> None:
    w = worker('-n', 'ctl@%h')
    node = _hostname(w, 'ctl@')
    replies = tasks.app.control.time_limit(
        'worker_tasks.long', soft=None, hard=1, reply=True, timeout=3, destination=[node]
    )
    assert replies == [{node: {'ok': 'time limits set successfully'}}]
    # the limit as sent (Celery stores it so): 1, not 1.0
    assert (
        'worker_tasks.long [time_limit=1]'
        in tasks.app.control.inspect(timeout=3, destination=[node]).registered('time_limit')[node]
    )
    from fastq.exceptions import TimeLimitExceeded

    with pytest.raises(TimeLimitExceeded):
        tasks.long.delay(30).get(timeout=60)
    assert tasks.app.control.time_limit('no.such', hard=1, reply=True, timeout=3, destination=[node]) == [
        {node: {'error': 'unknown task'}}
    ]
    w.wait_for('Change time limit attempt for unknown task no.such\nTraceback (most recent call last):')
    w.wait_for("NotRegistered: 'no.such'")
    assert tasks.app.control.rate_limit('no.such', '1/s', reply=True, timeout=3, destination=[node]) == [
        {node: {'error': 'unknown task'}}
    ]
    proc = fastq(tmp_path, urls, '-A', 'worker_tasks', 'control', 'enable_events', '-d', node, '-t', '3')
    assert proc.stdout.splitlines()[:2] == [f'->  {node}: OK', '        task events enabled']
    proc = fastq(tmp_path, urls, '-A', 'worker_tasks', 'control', 'time_limit', 'worker_tasks.long', '5', '10')
    assert 'time limits set successfully' in proc.stdout and 'online' not in proc.stdout  # Celery: no count here
    ctl = ('-A', 'worker_tasks', 'control')
    proc = fastq(tmp_path, urls, *ctl, 'rate_limit', 'worker_tasks.add', '10/m', '-d', node, '-t', '3', '-j')
    assert json.loads(proc.stdout) == [{node: {'ok': 'new rate limit set successfully'}}]
    assert tasks.app.control.rate_limit('worker_tasks.add', None, reply=True, timeout=3, destination=[node]) == [
        {node: {'ok': 'rate limit disabled successfully'}}
    ]
    assert tasks.app.control.rate_limit('worker_tasks.add', 'abc', reply=True, timeout=3, destination=[node]) == [
        {node: {'error': 'Invalid rate limit string: ValueError("could not convert string to float: \'abc\'")'}}
    ]
    # Celery's lines for both changes
    w.wait_for('New rate limit for tasks of type worker_tasks.add: 10/m.')
    w.wait_for('Rate limits disabled for tasks of type worker_tasks.add')
    proc = fastq(tmp_path, urls, *ctl, 'autoscale', '3', '1', '-d', node, '-t', '3')
    assert proc.stdout.splitlines() == [f'->  {node}: ERROR', "        ValueError('Autoscale not enabled')"]
    proc = fastq(tmp_path, urls, *ctl, 'terminate', 'KILL', 'not-running', '-d', node, '-t', '3')
    assert proc.stdout.splitlines() == [f'->  {node}: OK', '        terminate: tasks unknown']
    listing = fastq(tmp_path, urls, *ctl, '--list').stdout
    assert listing.startswith('Control Commands:') and 'terminate <signal> [id1 [id2 [... [idN]]]]' in listing
    bad = fastq(tmp_path, urls, *ctl, 'pool_grow', '1', '2', check=False)
    assert bad.returncode == 2 and "Command 'pool_grow' takes arguments: [N=1]" in bad.stderr
    report = fastq(tmp_path, urls, '-A', 'worker_tasks', 'report')
    assert report.stdout.startswith('software -> fastq:')


def _processes(inspect: Any, node: str) -> int:
    return len(inspect.stats()[node]['pool']['processes'])


@REDIS
@pytest.mark.parametrize('pool', ['solo', 'threads'])
def test_stats_describe_the_pool_as_celerys(tasks: Any, worker: Any, pool: str) -> None:
    # Celery's pools' _get_info: the class as module:Class; solo runs one task at a time in the worker's own
    # process whatever -c says, and says so; threads count their threads
    w = worker('-n', f'{pool}@%h', '-P', pool, '-c', '2')
    node = _hostname(w, f'{pool}@')
    info = tasks.app.control.inspect(destination=[node], timeout=3).stats()[node]['pool']
    if pool == 'solo':
        assert info == {'implementation': 'fastq.worker.pool.solo:SoloPool', 'max-concurrency': 1,
                        'processes': [w.pid], 'max-tasks-per-child': None, 'put-guarded-by-semaphore': True,
                        'timeouts': []}  # fmt: skip
    else:
        assert info == {'implementation': 'fastq.worker.pool.threads:ThreadPool', 'max-concurrency': 2, 'threads': 2}


@REDIS
def test_pool_grow_shrink_restart(tasks: Any, worker: Any) -> None:
    w = worker('-n', 'pool@%h', '-c', '1', extra_env={'FASTQ_WORKER_POOL_RESTARTS': 'true'})
    node = _hostname(w, 'pool@')
    control, inspect = tasks.app.control, tasks.app.control.inspect(destination=[node], timeout=3)
    assert control.broadcast('pool_grow', arguments={'n': 2}, destination=[node], reply=True, timeout=3) == [
        {node: {'ok': 'pool will grow'}}
    ]
    wait_until(lambda: _processes(inspect, node) == 3, message='3 children')
    assert inspect.stats()[node]['pool']['max-concurrency'] == 3
    assert sorted(tasks.pid.delay().get(timeout=30) for _ in range(3))  # the new children run tasks
    before = set(inspect.stats()[node]['pool']['processes'])
    assert control.broadcast('pool_restart', destination=[node], reply=True, timeout=3) == [
        {node: {'ok': 'reload started'}}
    ]
    wait_until(lambda: len(set(inspect.stats()[node]['pool']['processes']) - before) == 3, message='3 new children')
    control.broadcast('pool_shrink', arguments={'n': 2}, destination=[node], reply=True, timeout=3)
    wait_until(lambda: _processes(inspect, node) == 1, message='back to 1 child')
    assert tasks.add.delay(1, 1).get(timeout=30) == 2
    [reply] = control.broadcast('autoscale', arguments={'max': 4, 'min': 1}, destination=[node], reply=True, timeout=3)
    assert 'Autoscale not enabled' in reply[node]['error']


@REDIS
def test_the_guides_prefetch_count_commands(tasks: Any, worker: Any, tmp_path: Path) -> None:
    """The Workers guide's own examples (increase_prefetch_count / current_prefetch_count) use the consumer's
    kombu QoS: the raised count is the worker's real window, and stays raised when the pool grows."""
    w = worker('-n', 'qos@%h', '-c', '1')
    node = _hostname(w, 'qos@')
    control, inspect = tasks.app.control, tasks.app.control.inspect(destination=[node], timeout=3)
    assert inspect._request('current_prefetch_count') == {node: {'prefetch_count': 4}}
    assert control.broadcast(
        'increase_prefetch_count', arguments={'n': 3}, destination=[node], reply=True, timeout=3
    ) == [{node: {'ok': 'prefetch count incremented'}}]
    assert inspect._request('current_prefetch_count') == {node: {'prefetch_count': 7}}
    assert inspect.stats()[node]['prefetch_count'] == 7
    out = tmp_path / 'sleep.txt'
    running = tasks.sleeper.delay(str(out), 'busy', 60)
    wait_until(lambda: any(line.startswith('start busy') for line in lines(out)), message='started')
    waiting = [tasks.add.delay(i, i) for i in range(10)]
    wait_until(lambda: len((inspect.reserved() or {}).get(node, [])) == 7, message='7 reserved (the running one acked)')
    control.broadcast('pool_grow', arguments={'n': 1}, destination=[node], reply=True, timeout=3)
    assert [r.get(timeout=30) for r in waiting] == [i + i for i in range(10)]
    assert inspect._request('current_prefetch_count') == {node: {'prefetch_count': 11}}
    control.revoke(running.id, terminate=True, reply=True, timeout=3)


@REDIS
def test_autoscale_grows_under_load_and_shrinks_when_idle(tasks: Any, worker: Any, tmp_path: Path) -> None:
    w = worker('-n', 'auto@%h', '--autoscale', '3,1', extra_env={'FASTQ_AUTOSCALE_KEEPALIVE': '1'})
    node = _hostname(w, 'auto@')
    inspect = tasks.app.control.inspect(destination=[node], timeout=3)
    assert _processes(inspect, node) == 1
    # Celery's stats: the autoscaler's own entry; the window is for the largest pool (3 x 4)
    stats = inspect.stats()[node]
    assert stats['autoscaler'] == {'max': 3, 'min': 1, 'current': 1, 'qty': 0} and stats['prefetch_count'] == 12
    out = tmp_path / 'sleep.txt'
    results = [tasks.sleeper.delay(str(out), str(i), 3) for i in range(3)]
    wait_until(lambda: _processes(inspect, node) == 3, message='grown to 3')
    assert sorted(r.get(timeout=60) for r in results) == ['0', '1', '2']
    wait_until(lambda: _processes(inspect, node) == 1, timeout=30, message='shrunk to 1')
    [reply] = tasks.app.control.broadcast(
        'autoscale', arguments={'max': 2, 'min': 2}, destination=[node], reply=True, timeout=3
    )
    assert reply == {node: {'ok': 'autoscale now max=2 min=2'}}
    wait_until(lambda: _processes(inspect, node) == 2, message='min raised to 2')
    stats = inspect.stats()[node]  # the window follows the new maximum, as Celery's (2 x 4)
    assert stats['autoscaler'] == {'max': 2, 'min': 2, 'current': 2, 'qty': 0} and stats['prefetch_count'] == 8
    for name in ('pool_grow', 'pool_shrink'):  # Celery: the autoscaler owns the size
        [reply] = tasks.app.control.broadcast(name, destination=[node], reply=True, timeout=3)
        assert reply == {node: {'error': f'{name} is not supported with autoscale. Adjust autoscale range instead.'}}


@REDIS
def test_a_custom_autoscaler_from_worker_autoscaler(tasks: Any, worker: Any) -> None:
    """The guide: 'You can specify a custom autoscaler with the worker_autoscaler setting' (a subclass
    overriding _maybe_scale); fastq ignored the setting. A class that is not fastq's Autoscaler is refused."""
    w = worker('-n', 'own@%h', '--autoscale', '3,1', extra_env={'FASTQ_WORKER_AUTOSCALER': 'worker_tasks:AlwaysMax'})
    node = _hostname(w, 'own@')
    inspect = tasks.app.control.inspect(destination=[node], timeout=3)
    wait_until(lambda: _processes(inspect, node) == 3, message='grown to its maximum with nothing to do')
    from fastq.exceptions import ImproperlyConfigured
    from fastq.worker.autoscale import Autoscaler, autoscaler_class

    assert autoscaler_class('celery.worker.autoscale:Autoscaler') is Autoscaler  # (Celery's default: fastq's)
    with pytest.raises(ImproperlyConfigured, match='not a subclass of fastq.worker.autoscale.Autoscaler'):
        autoscaler_class('collections:OrderedDict')


@pytest.mark.parametrize('broker_kind', ['sqlite', 'redis'], indirect=True)
def test_add_and_cancel_consumer(tasks: Any, worker: Any, tmp_path: Path, urls: dict[str, str]) -> None:
    w = worker('-n', 'cons@%h')
    node = _hostname(w, 'cons@')
    inspect = tasks.app.control.inspect(destination=[node], timeout=3)
    extra = tasks.add.apply_async((2, 2), queue='extra')
    replies = tasks.app.control.add_consumer('extra', destination=[node], reply=True, timeout=3)
    assert replies == [{node: {'ok': 'add consumer extra'}}]
    assert extra.get(timeout=30) == 4  # sent before: waiting in its queue until someone consumed it
    again = tasks.app.control.add_consumer('extra', destination=[node], reply=True, timeout=3)
    assert again == [{node: {'ok': 'add consumer extra'}}]  # (consumed already: Celery's words all the same)
    assert {q['name'] for q in inspect.active_queues()[node]} == {'celery', 'extra'}
    proc = fastq(tmp_path, urls, '-A', 'worker_tasks', 'control', 'cancel_consumer', 'extra', '-d', node, '-t', '3')
    assert proc.stdout.splitlines()[:2] == [f'->  {node}: OK', '        no longer consuming from extra']
    assert [q['name'] for q in inspect.active_queues()[node]] == ['celery']
    left = tasks.add.apply_async((3, 3), queue='extra')
    assert tasks.add.delay(1, 1).get(timeout=30) == 2
    assert left.state == 'PENDING' and tasks.app.broker.qsize('extra') == 1
    # Celery's consumer's lines: once when it starts consuming, and for every cancel
    assert w.log.count('Started consuming from extra') == 1 and 'Canceling queue extra' in w.log
    # its last queue too, as Celery's worker allows: it consumes nothing until add_consumer gives it one
    control = tasks.app.control
    assert control.cancel_consumer('celery', destination=[node], reply=True, timeout=3) == [
        {node: {'ok': 'no longer consuming from celery'}}
    ]
    assert inspect.active_queues()[node] == []
    paused = tasks.add.delay(4, 4)
    time.sleep(0.5)  # (a worker still consuming would have taken it by now; it stays in its queue)
    assert paused.state == 'PENDING' and tasks.app.broker.qsize('celery') == 1
    assert control.add_consumer('celery', destination=[node], reply=True, timeout=3) == [
        {node: {'ok': 'add consumer celery'}}
    ]
    assert paused.get(timeout=30) == 8


@pytest.mark.parametrize('broker_kind', ['redis'], indirect=True)
def test_add_consumer_binds_the_queue_to_its_exchange(tasks: Any, worker: Any) -> None:
    # The Workers guide's `add_consumer(queue, exchange, exchange_type, routing_key)`: what is sent to that
    # exchange with a matching key then reaches the queue (kombu's binding, as Celery's consumer declares it)
    w = worker('-n', 'bound@%h')
    node = _hostname(w, 'bound@')
    replies = tasks.app.control.add_consumer(
        'feeds',
        exchange='feed_ex',
        exchange_type='topic',
        routing_key='feed.#',
        destination=[node],
        reply=True,
        timeout=3,
    )
    assert replies == [{node: {'ok': 'add consumer feeds'}}]
    sent = tasks.add.apply_async((5, 5), exchange='feed_ex', routing_key='feed.news.today')
    assert sent.get(timeout=30) == 10
    # and active_queues says so, as Celery's (the exchange and key it was declared with, not its own name)
    [feeds] = [q for q in tasks.app.control.inspect(timeout=3).active_queues()[node] if q['name'] == 'feeds']
    assert (feeds['exchange']['name'], feeds['exchange']['type'], feeds['routing_key']) == (
        'feed_ex',
        'topic',
        'feed.#',
    )


def test_memsample_and_memdump(tasks: Any, worker: Any) -> None:
    # Celery's memory-leak helpers: samples of the workers' resident memory, then the dump of them
    import re

    worker('-n', 'mem@%h')
    inspect = tasks.app.control.inspect(timeout=2)
    first = inspect.memsample()
    assert first and all(re.fullmatch(r'[\d.]+(GB|MB|KB|b)', value) for value in first.values())
    inspect.memsample()
    dump = next(iter(inspect.memdump().values()))
    assert dump.startswith('- rss (sample):') and dump.count('-    > ') == 2 and '- rss (end): ' in dump
    try:
        import objgraph  # type: ignore[import-untyped,import-not-found,unused-ignore]  # noqa: F401
    except ImportError:  # Celery's reply: the command's error as kombu's pidbox answers any (its repr)
        graph = inspect.objgraph()
        assert graph and list(graph.values()) == [{'error': "ImportError('Requires the objgraph library')"}]
