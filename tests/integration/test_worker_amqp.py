"""End to end on RabbitMQ: real `fastq worker` processes consuming through rabbitmq-c (one node per session)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from fastq import states
from fastq.brokers.amqp.topology import delayed_level
from tests.harness import wait_until

from .test_cli import fastq

pytestmark = pytest.mark.slow


@pytest.fixture
def urls(request: pytest.FixtureRequest, amqp_url: str) -> dict[str, str]:
    """Results in Redis, or through rpc:// when a test is parametrized with 'rpc'."""
    kind = getattr(request, 'param', 'redis')
    backend = request.getfixturevalue('redis_url') if kind == 'redis' else 'rpc://'
    return {'FASTQ_BROKER_URL': amqp_url, 'FASTQ_RESULT_BACKEND': backend}


@pytest.mark.parametrize('urls', ['redis', 'rpc'], indirect=True)
def test_results(tasks: Any, worker: Any, urls: dict[str, str]) -> None:
    worker()
    results = [tasks.add.delay(i, i) for i in range(50)]
    assert [r.get(timeout=30) for r in results] == [i + i for i in range(50)]
    assert results[0].state == states.SUCCESS
    failed = tasks.fail_custom.delay('boom')
    with pytest.raises(tasks.CustomError, match='boom'):
        failed.get(timeout=30)


@pytest.mark.parametrize('urls', ['rpc'], indirect=True)
def test_asyncio_client_with_rpc(tasks: Any, worker: Any) -> None:
    """adelay/aget: the reply queue is the loop thread's oid, though declared and read from executor threads."""
    import asyncio

    worker()

    async def main() -> None:
        results = [await tasks.add.adelay(i, 1) for i in range(5)]
        assert [await r.aget(timeout=30) for r in results] == [1, 2, 3, 4, 5]

    asyncio.run(main())


def test_eta_waits_in_the_delayed_chain_not_in_the_worker(tasks: Any, worker: Any, urls: dict[str, str]) -> None:
    worker()
    sent = time.time()
    result = tasks.add.apply_async((2, 3), countdown=3)
    broker = tasks.app.broker

    def parked() -> bool:
        return any(broker.qsize(delayed_level(level)) for level in range(3))

    wait_until(parked, timeout=10, message='the task waiting in celery_delayed_*')
    assert result.get(timeout=30) == 5
    assert result.date_done is not None and result.date_done.timestamp() >= sent + 2.5


def test_inspect_ping(tasks: Any, worker: Any, tmp_path: Path, urls: dict[str, str]) -> None:
    w = worker('-n', 'w1@%h')
    hostname = [word for word in w.log.split() if word.startswith('w1@')][0]
    assert tasks.app.control.inspect(destination=[hostname], timeout=3).ping() == {hostname: {'ok': 'pong'}}
    proc = fastq(tmp_path, urls, '-A', 'worker_tasks', 'inspect', 'ping', '-d', hostname, '-t', '3')
    assert proc.stdout.splitlines()[:2] == [f'->  {hostname}: OK', '        pong']


def test_inspect_and_add_consumer(tasks: Any, worker: Any) -> None:
    w = worker('-n', 'w2@%h')
    node = [word for word in w.log.split() if word.startswith('w2@')][0]
    inspect = tasks.app.control.inspect(destination=[node], timeout=3)
    assert inspect.stats()[node]['prefetch_count'] > 0
    assert any(name.startswith('worker_tasks.add') for name in inspect.registered()[node])
    assert inspect.active()[node] == [] and inspect.reserved()[node] == []
    tasks.app.control.revoke('an-id', reply=True, timeout=3, destination=[node])
    assert 'an-id' in inspect.revoked()[node]
    assert inspect.conf()[node]['broker_url'].startswith('amqp://')
    assert inspect.clock()[node]['clock'] > 0 and 'fastq' in inspect.report()[node]['ok']
    extra = tasks.add.apply_async((2, 2), queue='amqp-extra')
    assert tasks.app.control.add_consumer('amqp-extra', destination=[node], reply=True, timeout=3) == [
        {node: {'ok': 'add consumer amqp-extra'}}
    ]
    assert extra.get(timeout=30) == 4
    assert {q['name'] for q in inspect.active_queues()[node]} == {'celery', 'amqp-extra'}
    tasks.app.control.cancel_consumer('amqp-extra', destination=[node], reply=True, timeout=3)
    left = tasks.add.apply_async((3, 3), queue='amqp-extra')
    assert tasks.add.delay(1, 1).get(timeout=30) == 2
    assert left.state == 'PENDING' and tasks.app.broker.qsize('amqp-extra') == 1
    # with an exchange (the Workers guide's form): the queue is bound to it, a topic one here
    assert tasks.app.control.add_consumer(
        'amqp-feeds', exchange='feed_ex', exchange_type='topic', routing_key='feed.#',
        destination=[node], reply=True, timeout=3,
    ) == [{node: {'ok': 'add consumer amqp-feeds'}}]  # fmt: skip
    assert tasks.add.apply_async((5, 5), exchange='feed_ex', routing_key='feed.news.today').get(timeout=30) == 10


def test_malformed_messages_are_dead_lettered_and_the_worker_goes_on(
    tasks: Any, worker: Any, urls: dict[str, str]
) -> None:
    from fastq import _core
    from fastq.brokers.base import Outgoing

    broker = tasks.app.broker
    headers = {'id': 'bad-type', 'task': 'worker_tasks.add', 'lang': 'py', 'argsrepr': '', 'kwargsrepr': ''}
    unknown = _core.Message(b'<x/>', 'application/x-unknown', 'utf-8', headers, {})
    broken = _core.Message(b'[[1, 2], {', 'application/json', 'utf-8', {**headers, 'id': 'bad-body'}, {})
    broker.publish([Outgoing(unknown, 'celery'), Outgoing(broken, 'celery')])
    w = worker()
    assert tasks.add.delay(1, 2).get(timeout=30) == 3  # and it goes on
    wait_until(lambda: broker.dead_letters.count() == 2, timeout=30, message='two dead letters')
    assert {letter.task_id for letter in broker.dead_letters.list()} == {'bad-type', 'bad-body'}
    w.wait_for('bad-type')
    w.wait_for('bad-body')


def test_warns_when_a_time_limit_exceeds_consumer_timeout(tasks: Any, worker: Any, urls: dict[str, str]) -> None:
    w = worker(extra_env={'FASTQ_TASK_TIME_LIMIT': '7200'})
    assert 'task_time_limit (7200' in w.log and 'consumer_timeout' in w.log


def test_heartbeats_answered_while_the_worker_is_busy(tasks: Any, worker: Any, tmp_path: Path) -> None:
    """A 2 s heartbeat and a task running 7 s in the worker's own process: the connections' I/O threads
    answer the node, so nothing is cut off and the next task is consumed on the same connection."""
    w = worker('-P', 'solo', extra_env={'FASTQ_BROKER_HEARTBEAT': '2'})
    assert tasks.sleeper.delay(str(tmp_path / 'sleep.txt'), 'k', 7).get(timeout=30) == 'k'
    assert tasks.add.delay(1, 2).get(timeout=30) == 3
    assert 'lost' not in w.log and 'reconnecting' not in w.log


def test_two_beats_one_sends_and_the_other_takes_over(amqp_url: str, redis_url: str, tmp_path: Path) -> None:
    """Beat's leader lease on RabbitMQ is an exclusive queue: the standby takes over once the leader dies."""
    import os
    import sys

    from tests.harness import READY_TIMEOUT, WorkerProcess, lines

    here = Path(__file__).resolve().parent
    env = dict(
        os.environ,
        PYTHONPATH=os.pathsep.join([str(here), os.environ.get('PYTHONPATH', '')]),
        BEAT_RECORD=str(tmp_path / 'runs.txt'),
        FASTQ_BEAT_LOCK_TIMEOUT='3',
        FASTQ_BROKER_URL=amqp_url,
        FASTQ_RESULT_BACKEND=redis_url,
    )
    env.pop('PYTEST_CURRENT_TEST', None)
    started: list[WorkerProcess] = []

    def run(kind: str, *args: str) -> WorkerProcess:
        command = [sys.executable, '-m', 'fastq', '-A', 'beat_tasks', kind]
        base = ['-l', 'info'] + (['-c', '1'] if kind == 'worker' else [])
        proc = WorkerProcess(tmp_path, env, [*base, *args], f'{kind}{len(started)}', command=command)
        started.append(proc)
        proc.start(wait=False)
        proc.wait_for('ready.' if kind == 'worker' else 'beat: Starting...', READY_TIMEOUT)
        return proc

    def runs() -> list[str]:
        return [line.split()[0] for line in lines(tmp_path / 'runs.txt')]

    try:
        run('worker')
        leader = run('beat', '-s', str(tmp_path / 'schedule-a'))
        leader.wait_for('beat: Acquired the leader lock')
        standby = run('beat', '-s', str(tmp_path / 'schedule-b'))
        standby.wait_for('beat: Standing by: another beat')
        wait_until(lambda: len(runs()) >= 2, 30, 'two runs')
        leader.kill()
        standby.wait_for('beat: Acquired the leader lock', 30)
        before = len(runs())
        wait_until(lambda: len(runs()) >= before + 2, 30, 'runs sent by the new leader')
        done = runs()
        assert len(done) == len(set(done)), f'a run was sent twice: {done}'
    finally:
        for proc in started:
            if proc.proc is not None and proc.proc.poll() is None:
                proc.kill()


def test_worker_and_task_events(tasks: Any, worker: Any) -> None:
    """Celery's event stream over RabbitMQ (the durable `celeryev` topic exchange): what Flower consumes."""
    from .test_events import collect, of

    receiver = tasks.app.events.Receiver()
    receiver.consume()
    try:
        worker('-E', '-n', 'ev@%h', '--heartbeat-interval', '0.5')
        ok = tasks.add.delay(2, 3)
        assert ok.get(timeout=30) == 5
        events = collect(
            receiver,
            lambda evs: 'task-succeeded' in of(evs, ok.id) and any(e['type'] == 'worker-heartbeat' for e in evs),
        )
    finally:
        receiver.close()
    assert list(of(events, ok.id)) == ['task-received', 'task-started', 'task-succeeded']
    assert of(events, ok.id)['task-succeeded']['result'] == '5'


def test_prefetched_tasks_run_once_when_the_connection_drops(
    tasks: Any, worker: Any, rabbit_server: Any, urls: dict[str, str], tmp_path: Path
) -> None:
    """Tasks prefetched but not started when the worker's connection drops go back to the queue (RabbitMQ
    requeues a closed connection's unacked deliveries) and come again on the new one: the worker must run the
    new deliveries only, not also the copies it still had (Celery drops those too), or each runs twice."""
    from urllib.parse import unquote

    from tests.harness import lines

    vhost = unquote(urls['FASTQ_BROKER_URL'].rsplit('/', 1)[1])
    out = tmp_path / 'ran.txt'
    w = worker('-c', '1', '-P', 'prefork', extra_env={'FASTQ_WORKER_PREFETCH_MULTIPLIER': '4'})
    busy = tasks.sleeper.delay(str(out), 'busy', 8)
    waiting = [tasks.record.delay(str(out), f'r{i}') for i in range(3)]
    wait_until(lambda: 'start busy' in out.read_text() if out.exists() else False, 30, 'the busy task started')
    for r in waiting:
        w.wait_for(f'Task worker_tasks.record[{r.id}] received')
    assert [line.split()[0] for line in lines(out)] == ['start']  # the three wait behind the busy one
    rabbit_server.ctl('close_all_connections', '--vhost', vhost, 'test: connection lost')
    w.wait_for('reconnecting')
    assert busy.get(timeout=60) == 'busy'
    assert sorted(r.get(timeout=60) for r in waiting) == ['r0', 'r1', 'r2']
    assert tasks.record.delay(str(out), 'last').get(timeout=60) == 'last'  # after everything queued before it
    ran = [line.split()[1] for line in lines(out) if line.startswith('ran ')]
    assert sorted(ran) == ['last', 'r0', 'r1', 'r2'], f'ran twice: {ran}'


def test_connection_loss_cancels_running_late_acked_tasks(
    tasks: Any, worker: Any, rabbit_server: Any, urls: dict[str, str], tmp_path: Path
) -> None:
    """`worker_cancel_long_running_tasks_on_connection_loss` (Celery's): RabbitMQ requeues what a dropped
    connection held, so a running acks_late task would run twice; the worker terminates the run instead,
    stores RETRY ('cancelled by Celery'), and the redelivered message runs once more, to the end."""
    from urllib.parse import unquote

    from tests.harness import lines

    vhost = unquote(urls['FASTQ_BROKER_URL'].rsplit('/', 1)[1])
    out = tmp_path / 'ran.txt'
    w = worker(
        '-c', '1', '-P', 'prefork', extra_env={'FASTQ_WORKER_CANCEL_LONG_RUNNING_TASKS_ON_CONNECTION_LOSS': 'true'}
    )
    result = tasks.long_first_time.delay(str(out), 'long')
    wait_until(lambda: out.exists() and 'start long False' in out.read_text(), 30, 'the long task started')
    rabbit_server.ctl('close_all_connections', '--vhost', vhost, 'test: connection lost')
    w.wait_for(f'Task {result.id} cannot be acknowledged after a connection loss')
    assert result.get(timeout=60) == 'long'
    assert lines(out) == ['start long False', 'start long True']
    assert 'Terminating it instead' in w.log
