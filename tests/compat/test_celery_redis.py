"""fastq and the real `celery` package on one redis-server, both ways: clients, workers, results, pidbox.

Celery client -> fastq worker and fastq client -> Celery worker, for plain calls, failures with tracebacks,
countdowns, priorities, msgpack and compressed messages; each side reads the other's results. A Celery worker
and a fastq worker share a queue, and when one is SIGKILLed the other runs its unacknowledged tasks.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from tests.harness import lines, wait_until

pytestmark = pytest.mark.slow

FORMATS = [
    pytest.param({}, id='json'),
    pytest.param({'serializer': 'msgpack'}, id='msgpack'),
    pytest.param({'compression': 'zlib'}, id='zlib'),
    pytest.param({'serializer': 'msgpack', 'compression': 'bzip2'}, id='msgpack+bzip2'),
]


@pytest.mark.parametrize('options', FORMATS)
def test_celery_client_fastq_worker(celery_client: Any, workers: Any, options: dict[str, Any]) -> None:
    w = workers('fastq')
    result = celery_client.send_task('worker_tasks.add', (20, 22), **options)
    assert result.get(timeout=30) == 42
    assert f'Task worker_tasks.add[{result.id}] received' in w.log


@pytest.mark.parametrize('options', FORMATS)
def test_fastq_client_celery_worker(fastq_client: Any, workers: Any, options: dict[str, Any]) -> None:
    w = workers('celery')
    result = fastq_client.add.apply_async((20, 22), **options)
    assert result.get(timeout=30) == 42
    w.wait_for(f'Task worker_tasks.add[{result.id}] succeeded')


def test_failures_cross_with_type_and_traceback(celery_client: Any, fastq_client: Any, workers: Any) -> None:
    workers('fastq')
    from_celery = celery_client.send_task('worker_tasks.fail', ('from celery',))
    with pytest.raises(ValueError, match='from celery'):
        from_celery.get(timeout=30)
    assert 'ValueError: from celery' in from_celery.traceback
    # And a Celery worker's failure, read by fastq.
    workers('celery', '-Q', 'celery_only')
    from_fastq = fastq_client.fail.apply_async(('from fastq',), queue='celery_only')
    with pytest.raises(ValueError, match='from fastq'):
        from_fastq.get(timeout=30)
    assert 'ValueError: from fastq' in (from_fastq.traceback or '')


@pytest.mark.parametrize('direction', ['celery->fastq', 'fastq->celery'])
def test_countdown_both_ways(celery_client: Any, fastq_client: Any, workers: Any, direction: str) -> None:
    workers('fastq' if direction == 'celery->fastq' else 'celery')
    sent = time.time()
    if direction == 'celery->fastq':
        result = celery_client.send_task('worker_tasks.when_run', countdown=1.5)
    else:
        result = fastq_client.when_run.apply_async(countdown=1.5)
    assert result.get(timeout=30) >= sent + 1.5


@pytest.mark.parametrize('direction', ['celery->fastq', 'fastq->celery'])
def test_priority_steps_both_ways(
    celery_client: Any, fastq_client: Any, workers: Any, tmp_path: Path, direction: str
) -> None:
    """On Redis, kombu serves the lowest priority step first; both sides lay messages out the same way."""
    out = tmp_path / 'order.txt'
    send = (
        (lambda key, p: celery_client.send_task('worker_tasks.record', (str(out), key), priority=p))
        if direction == 'celery->fastq'
        else (lambda key, p: fastq_client.record.apply_async((str(out), key), priority=p))
    )
    results = [send('p9', 9), send('p5', 5), send('p0', 0)]
    workers('fastq' if direction == 'celery->fastq' else 'celery', '-c', '1')
    for r in results:
        r.get(timeout=30)
    assert [line.split()[1] for line in lines(out)] == ['p0', 'p5', 'p9']


def test_mixed_fleet_shares_the_queue(celery_client: Any, workers: Any, tmp_path: Path) -> None:
    out = tmp_path / 'ran.txt'
    workers('fastq', '-n', 'fastq1@%h')
    workers('celery', '-n', 'celery1@%h')
    results = [celery_client.send_task('worker_tasks.record', (str(out), str(i))) for i in range(200)]
    assert sorted(int(r.get(timeout=120)) for r in results) == list(range(200))
    ran = lines(out)
    assert sorted(int(line.split()[1]) for line in ran) == list(range(200))  # each once
    by_celery = [line for line in ran if line.split()[2] == 'celery']
    assert by_celery and len(by_celery) < 200  # both sides did work


@pytest.mark.parametrize('victim', ['celery', 'fastq'])
def test_survivor_runs_the_dead_workers_unacked_tasks(
    celery_client: Any, workers: Any, tmp_path: Path, victim: str
) -> None:
    out = tmp_path / 'slow.txt'
    short = {'VISIBILITY_TIMEOUT': '3', 'FASTQ_BROKER_TRANSPORT_OPTIONS': '{"visibility_timeout": 3}'}
    doomed = workers(victim, '-c', '1', '-n', 'doomed@%h', '--prefetch-multiplier', '1', extra_env=short)
    result = celery_client.send_task('worker_tasks.slow_record', (str(out), 'k', 3))
    wait_until(lambda: any(line.startswith('start k') for line in lines(out)), message='started on the victim')
    os.killpg(doomed.pid, signal.SIGKILL)
    doomed.proc.wait(10)
    survivor = 'fastq' if victim == 'celery' else 'celery'
    workers(survivor, '-n', 'survivor@%h', extra_env=short)
    assert result.get(timeout=180) == 'k'
    assert any(line.startswith('done k') for line in lines(out))


def test_celery_inspect_ping_reaches_fastq_and_back(celery_client: Any, fastq_client: Any, workers: Any) -> None:
    f = workers('fastq', '-n', 'fq@%h')
    c = workers('celery', '-n', 'cy@%h')
    fq = [word for word in f.log.split() if word.startswith('fq@')][0]
    cy = [word for word in c.log.split() if word.startswith('cy@')][0]
    assert celery_client.control.inspect(destination=[fq], timeout=3).ping() == {fq: {'ok': 'pong'}}
    assert fastq_client.app.control.inspect(destination=[cy], timeout=3).ping() == {cy: {'ok': 'pong'}}
    everyone = fastq_client.app.control.ping(timeout=3)
    assert {fq, cy} <= {node for reply in everyone for node in reply}
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).parent), CELERY_BROKER_URL=f.env['FASTQ_BROKER_URL'])
    cli = subprocess.run(
        [sys.executable, '-m', 'celery', '-A', 'celery_side', 'inspect', 'ping', '-d', fq, '-t', '3'],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert cli.returncode == 0 and f'{fq}: OK' in cli.stdout and 'pong' in cli.stdout


def test_control_exchange_keeps_apps_apart(celery_client: Any, fastq_client: Any, workers: Any, url: str) -> None:
    control_exchange_keeps_apps_apart(celery_client, fastq_client, workers, url)


def control_exchange_keeps_apps_apart(celery_client: Any, fastq_client: Any, workers: Any, url: str) -> None:
    """`control_exchange` is the pidbox's namespace (`<name>.pidbox`, replies on `reply.<name>.pidbox`): Celery
    and fastq apps that set it alike reach each other's workers, and apps left on `celery` reach neither."""
    f = workers('fastq', '-n', 'fops@%h', extra_env={'FASTQ_CONTROL_EXCHANGE': 'ops'})
    c = workers('celery', '-n', 'cops@%h', extra_env={'CELERY_CONTROL_EXCHANGE': 'ops'})
    fq = [word for word in f.log.split() if word.startswith('fops@')][0]
    cy = [word for word in c.log.split() if word.startswith('cops@')][0]
    assert fastq_client.app.control.ping(timeout=1) == []
    assert celery_client.control.ping(timeout=1) == []
    from celery import Celery

    celery_ops = Celery('ops', broker=url, set_as_current=False)  # (Celery reads it once, for app.control)
    celery_ops.conf.control_exchange = 'ops'
    fastq_client.app.conf.control_exchange = 'ops'
    try:
        assert celery_ops.control.inspect(destination=[fq], timeout=3).ping() == {fq: {'ok': 'pong'}}
        assert fastq_client.app.control.inspect(destination=[cy], timeout=3).ping() == {cy: {'ok': 'pong'}}
        assert {fq, cy} <= {node for reply in fastq_client.app.control.ping(timeout=2) for node in reply}
    finally:
        fastq_client.app.conf.control_exchange = 'celery'
        celery_ops.close()


def test_celery_inspects_a_fastq_worker(celery_client: Any, workers: Any, tmp_path: Path) -> None:
    """Celery's own Inspect and CLI read fastq's replies: the shapes Flower and `celery inspect` rely on."""
    f = workers('fastq', '-n', 'fqi@%h')
    fq = [word for word in f.log.split() if word.startswith('fqi@')][0]
    out = tmp_path / 'sleep.txt'
    running = celery_client.send_task('worker_tasks.sleeper', (str(out), 'k', 30))
    wait_until(lambda: out.exists() and 'start k' in out.read_text(), message='started')
    inspect = celery_client.control.inspect(destination=[fq], timeout=3)
    [active] = inspect.active()[fq]
    assert active['id'] == running.id and active['args'] == [str(out), 'k', 30]
    stats = inspect.stats()[fq]
    assert stats['pool']['max-concurrency'] >= 1 and stats['pid'] > 0
    assert any(name.startswith('worker_tasks.add') for name in inspect.registered()[fq])
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).parent), CELERY_BROKER_URL=f.env['FASTQ_BROKER_URL'])
    for command in ('active', 'stats', 'registered', 'active_queues', 'revoked', 'scheduled', 'reserved'):
        cli = subprocess.run(
            [sys.executable, '-m', 'celery', '-A', 'celery_side', 'inspect', command, '-d', fq, '-t', '3'],
            capture_output=True, text=True, env=env, timeout=60,
        )  # fmt: skip
        assert cli.returncode == 0 and f'{fq}: OK' in cli.stdout, (command, cli.stdout, cli.stderr)
    for command in (['inspect', 'ping'], ['inspect', 'clock'], ['status'], ['control', 'rate_limit', 'nope', '1/s']):
        both = [
            subprocess.run(
                [sys.executable, '-m', program, '-A', module, *command, '-d', fq, '-t', '3'],
                capture_output=True,
                text=True,
                env=environ,
                timeout=60,
            )  # fmt: skip
            for program, module, environ in (('celery', 'celery_side', env), ('fastq', 'worker_tasks', f.env))
        ]
        # the same words line for line; the clock moves between the calls, and Celery's JSON highlighter
        # leaves an indented empty line after a dict
        texts = [re.sub(r'\d+', 'N', re.sub(r'\n +\n', '\n', p.stdout)) for p in both]
        assert texts[0] == texts[1], (command, both[0].stdout, both[1].stdout)
    cli = subprocess.run(  # Celery's own terminate command (signal first) reaches the fastq worker
        [sys.executable, '-m', 'celery', '-A', 'celery_side', 'control', 'terminate', 'SIGTERM', running.id,
         '-d', fq, '-t', '3'],
        capture_output=True, text=True, env=env, timeout=60,
    )  # fmt: skip
    assert f'terminate: {running.id}' in cli.stdout, (cli.stdout, cli.stderr)
    wait_until(lambda: running.state == 'REVOKED', timeout=30, message='REVOKED')


def test_celery_revoke_is_honoured_by_fastq(celery_client: Any, workers: Any, tmp_path: Path) -> None:
    workers('fastq')
    out = tmp_path / 'ran.txt'
    result = celery_client.send_task('worker_tasks.record', (str(out), 'x'), countdown=2)
    celery_client.control.revoke(result.id)
    wait_until(lambda: result.state == 'REVOKED', timeout=30, message='REVOKED')
    time.sleep(2.5)
    assert not out.exists()


@pytest.mark.parametrize('direction', ['celery->fastq', 'fastq->celery'])
def test_retries_both_ways(celery_client: Any, fastq_client: Any, workers: Any, tmp_path: Path, direction: str) -> None:
    """Same id, retries header +1, RETRY in between: a retry sent by one side runs on the other's terms."""
    out = tmp_path / 'tries.txt'
    if direction == 'celery->fastq':
        workers('fastq')
        result = celery_client.send_task('worker_tasks.flaky', (str(out),))
    else:
        workers('celery')
        result = fastq_client.flaky.delay(str(out))
    assert result.get(timeout=60) == 2
    assert [line.split()[:2] for line in lines(out)] == [['try', '0'], ['try', '1'], ['try', '2']]


def test_celery_worker_learns_fastq_revocations_through_mingle(
    celery_client: Any, fastq_client: Any, workers: Any, tmp_path: Path
) -> None:
    """A Celery worker that starts after a revoke asks its peers at startup (mingle's hello); fastq answers."""
    workers('fastq', '-n', 'fq@%h')
    out = tmp_path / 'ran.txt'
    result = fastq_client.record.apply_async((str(out), 'x'), queue='celery_only', countdown=1)
    result.revoke()
    c = workers('celery', '-n', 'late@%h', '-Q', 'celery_only', mingle=True)
    c.wait_for(f'Discarding revoked task: worker_tasks.record[{result.id}]', timeout=60)
    assert not out.exists()


def test_fastq_worker_learns_celery_revocations_through_mingle(
    celery_client: Any, workers: Any, tmp_path: Path
) -> None:
    """A fastq worker that starts after a revoke only a Celery worker heard (Celery's client broadcasts it,
    nothing is kept in the broker) asks its peers at startup, as Celery's mingle does, and discards the task."""
    c = workers('celery', '-n', 'early@%h', '-Q', 'celery_only')
    out = tmp_path / 'ran.txt'
    result = celery_client.send_task('worker_tasks.record', (str(out), 'x'), queue='fastq_only', countdown=6)
    celery_client.control.revoke(result.id)
    c.wait_for(f'Tasks flagged as revoked: {result.id}', timeout=30)
    f = workers('fastq', '-n', 'late@%h', '-Q', 'fastq_only')
    f.wait_for('mingle: sync with 1 nodes', timeout=30)
    f.wait_for('mingle: sync complete', timeout=30)
    c.wait_for('sync with late@', timeout=30)
    f.wait_for(f'Discarding revoked task: worker_tasks.record[{result.id}]', timeout=60)
    assert not out.exists()
