"""Celery's admin commands as fastq runs them: `migrate`, `list bindings`, `amqp` (`logtool`: tests/unit).

Real redis-server and RabbitMQ nodes; the installed `celery` is the oracle: its clients send the messages,
its worker runs what fastq migrated, and its own commands print what fastq must print.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from tests.harness import WorkerProcess

pytestmark = pytest.mark.slow

CELERY = str(Path(sys.executable).parent / 'celery')

# Apps of both kinds, the broker from the environment; the same task names.
CELERY_APP = """
import os
from celery import Celery
from kombu import Exchange, Queue

app = Celery('capp', broker=os.environ['BROKER'], backend=os.environ.get('BACKEND'))
if os.environ.get('TOPIC_QUEUES'):
    app.conf.task_queues = [Queue('celery'), Queue('hi', Exchange('tasks', type='topic'), routing_key='hi.#')]

@app.task(name='tasks.add')
def add(x, y):
    return x + y

@app.task(name='tasks.mul')
def mul(x, y):
    return x * y
"""
FASTQ_APP = """
import os
from fastq import Fastq
from fastq.routing import Exchange, Queue

app = Fastq('fapp', broker=os.environ['BROKER'])
if os.environ.get('TOPIC_QUEUES'):
    app.conf.task_queues = [Queue('celery'), Queue('hi', Exchange('tasks', type='topic'), routing_key='hi.#')]
"""


@pytest.fixture
def apps(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    (tmp_path / 'capp.py').write_text(CELERY_APP)
    (tmp_path / 'fapp.py').write_text(FASTQ_APP)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield tmp_path
    sys.modules.pop('capp', None)


def run(cwd: Path, command: list[str], env: dict[str, str] | None = None, stdin: str | None = None) -> Any:
    # (the caller's PYTHONPATH kept after ours: it names the fastq under test when that is not the installed one)
    full_env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(cwd), os.environ.get('PYTHONPATH', '')]), **(env or {}))
    full_env.pop('PYTEST_CURRENT_TEST', None)
    return subprocess.run(
        command, cwd=cwd, env=full_env, capture_output=True, text=True, input=stdin, timeout=120, check=False
    )


def fastq(cwd: Path, *args: str, env: dict[str, str] | None = None, stdin: str | None = None) -> Any:
    return run(cwd, [sys.executable, '-m', 'fastq', *args], env, stdin)


def celery(cwd: Path, *args: str, env: dict[str, str] | None = None, stdin: str | None = None) -> Any:
    return run(cwd, [CELERY, *args], env, stdin)


def send_with_celery(url: str, calls: list[tuple[str, tuple[int, int], dict[str, Any]]]) -> list[str]:
    """Messages sent by a real Celery client (its envelopes are what a migration must carry over)."""
    from celery import Celery

    app = Celery('sender', broker=url, set_as_current=False)
    try:
        return [app.send_task(name, args, **options).id for name, args, options in calls]
    finally:
        app.close()


def envelopes(url: str, queue: str = 'celery') -> list[dict[str, Any]]:
    """The kombu envelopes waiting in `queue` (every priority list), in the order they are served."""
    client = redis.Redis.from_url(url)
    out = []
    for key in [queue.encode()] + [f'{queue}\x06\x16{step}'.encode() for step in (3, 6, 9)]:
        out += [json.loads(v) for v in reversed(client.lrange(key, 0, -1))]
    client.close()
    return out


def unacked(url: str) -> int:
    client = redis.Redis.from_url(url)
    try:
        return int(client.hlen('unacked'))
    finally:
        client.close()


def args_of(envelope: dict[str, Any]) -> str:
    return str(envelope['headers']['argsrepr'])


def same_message(before: dict[str, Any], after: dict[str, Any], routing_key: str = 'celery') -> None:
    """A migrated envelope carries the original's body, headers and properties; only the delivery tag (and
    the routing key, when renamed) are the destination's own."""
    assert after['body'] == before['body']
    assert after['headers'] == before['headers']
    assert (after['content-type'], after['content-encoding']) == (before['content-type'], before['content-encoding'])
    props_before, props_after = dict(before['properties']), dict(after['properties'])
    assert props_after.pop('delivery_tag') != props_before.pop('delivery_tag')
    assert props_after.pop('delivery_info') == {'exchange': '', 'routing_key': routing_key}
    props_before.pop('delivery_info')
    assert props_after == props_before


@pytest.fixture
def two_urls(redis_server: Any, redis_url: str) -> tuple[str, str]:
    """A source and a destination database of this test's own on the session's Redis."""
    from tests.servers import DatabasePool

    pool = redis_server._pool
    assert isinstance(pool, DatabasePool)
    return redis_url, redis_server.url(pool.take())


# --- migrate ------------------------------------------------------------------------------------------------


def test_migrate_with_ack_moves_every_message(apps: Path, two_urls: tuple[str, str]) -> None:
    source, dest = two_urls
    send_with_celery(
        source,
        [('tasks.add', (i, i), {}) for i in range(3)] + [('tasks.mul', (2, 3), {'priority': 6, 'expires': 600})],
    )
    before = envelopes(source)
    proc = fastq(apps, 'migrate', '-a', source, dest)
    assert proc.returncode == 0, proc.stderr
    embed = "{'callbacks': None, 'errbacks': None, 'chain': None, 'chord': None}"
    assert proc.stdout.splitlines() == [  # Celery's line: the count, the total waiting, the decoded body
        f'Migrating task 1/4: [[0, 0], {{}}, {embed}]',
        f'Migrating task 2/4: [[1, 1], {{}}, {embed}]',
        f'Migrating task 3/4: [[2, 2], {{}}, {embed}]',
        f'Migrating task 4/4: [[2, 3], {{}}, {embed}]',
    ]
    assert envelopes(source) == [] and unacked(source) == 0
    after = envelopes(dest)
    assert [args_of(e) for e in after] == ['(0, 0)', '(1, 1)', '(2, 2)', '(2, 3)']  # in order, priority kept
    assert redis.Redis.from_url(dest).llen('celery\x06\x166') == 1
    for old, new in zip(before, after, strict=True):
        same_message(old, new)


def test_migrate_without_ack_copies_and_keeps_the_source_in_order(apps: Path, two_urls: tuple[str, str]) -> None:
    source, dest = two_urls
    send_with_celery(source, [('tasks.add', (i, i), {}) for i in range(5)])
    proc = fastq(apps, 'migrate', source, dest)
    assert proc.returncode == 0, proc.stderr
    assert len(proc.stdout.splitlines()) == 5
    assert [args_of(e) for e in envelopes(source)] == [f'({i}, {i})' for i in range(5)]
    assert unacked(source) == 0
    assert [args_of(e) for e in envelopes(dest)] == [f'({i}, {i})' for i in range(5)]


def test_migrate_filters_by_task_limits_and_renames(apps: Path, two_urls: tuple[str, str]) -> None:
    source, dest = two_urls
    send_with_celery(source, [('tasks.add', (1, 1), {}), ('tasks.mul', (2, 2), {}), ('tasks.add', (3, 3), {})])
    send_with_celery(source, [('tasks.add', (4, 4), {'queue': 'other'})])
    before = envelopes(source)

    proc = fastq(apps, 'migrate', '-a', '-T', 'tasks.mul', source, dest)  # -T: by the protocol 2 task header
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith('Migrating task 1/3: [[2, 2], {}') and len(proc.stdout.splitlines()) == 1
    assert [args_of(e) for e in envelopes(source)] == ['(1, 1)', '(3, 3)']  # the others stay, in order

    proc = fastq(apps, 'migrate', '--ack-messages', '--limit', '1', '-Q', 'celery:renamed', source, dest)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == [
        "Migrating task 1/2: [[1, 1], {}, {'callbacks': None, 'errbacks': None, 'chain': None, 'chord': None}]"
    ]
    assert [args_of(e) for e in envelopes(source)] == ['(3, 3)']  # -n 1: one moved (and acked: not in both)
    same_message(before[0], envelopes(dest, 'renamed')[0], routing_key='renamed')
    assert [args_of(e) for e in envelopes(dest)] == ['(2, 2)']

    proc = fastq(apps, 'migrate', '-a', '-Q', 'other', '-t', '0.5', source, dest)  # only the queues named
    assert proc.returncode == 0, proc.stderr
    assert [args_of(e) for e in envelopes(dest, 'other')] == ['(4, 4)']
    assert [args_of(e) for e in envelopes(source)] == ['(3, 3)'] and envelopes(source, 'other') == []


@pytest.mark.parametrize('ack', [True, False], ids=['moving', 'copying'])
def test_migrate_forever_until_interrupted(apps: Path, two_urls: tuple[str, str], ack: bool) -> None:
    """-F keeps migrating what arrives; Ctrl-C ends it with nothing lost (copies go back to the source)."""
    import signal
    import time

    from tests.harness import wait_until

    source, dest = two_urls
    send_with_celery(source, [('tasks.add', (0, 0), {})])
    env = dict(os.environ, PYTHONPATH=str(apps), PYTHONUNBUFFERED='1')
    env.pop('PYTEST_CURRENT_TEST', None)
    command = [sys.executable, '-m', 'fastq', 'migrate', '-F', *(['-a'] if ack else []), source, dest]
    out = apps / 'migrate.out'
    with out.open('w') as sink:
        proc = subprocess.Popen(command, cwd=apps, env=env, stdout=sink, stderr=subprocess.PIPE, text=True)
    try:
        wait_until(lambda: len(envelopes(dest)) == 1, message='the first task migrated')
        time.sleep(1.5)  # (longer than the default timeout: -F waits on)
        send_with_celery(source, [('tasks.add', (i, i), {}) for i in (1, 2)])
        # (its line is printed once the task is moved: read the line, not the destination, before Ctrl-C)
        wait_until(lambda: 'Migrating task 3/' in out.read_text(), message='the later tasks migrated')
    finally:
        proc.send_signal(signal.SIGINT)
        _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr
    assert len(envelopes(dest)) == 3
    assert out.read_text().splitlines()[-1].startswith('Migrating task 3/1: [[2, 2], {}')
    assert [args_of(e) for e in envelopes(source)] == ([] if ack else ['(0, 0)', '(1, 1)', '(2, 2)'])
    assert unacked(source) == 0


def test_a_celery_worker_runs_what_fastq_migrated(apps: Path, two_urls: tuple[str, str]) -> None:
    source, dest = two_urls
    ids = send_with_celery(source, [('tasks.add', (i, 10), {}) for i in range(3)])
    assert fastq(apps, 'migrate', '-a', source, dest).returncode == 0
    env = dict(os.environ, PYTHONPATH=str(apps), BROKER=dest, BACKEND=dest)
    env.pop('PYTEST_CURRENT_TEST', None)
    worker = WorkerProcess(
        apps, env, ['-P', 'solo', '-l', 'info', '--without-mingle', '--without-gossip'], 'celery-worker',
        command=[CELERY, '-A', 'capp', 'worker'],
    )  # fmt: skip
    worker.start()
    try:
        from celery import Celery

        client = Celery('client', broker=dest, backend=dest, set_as_current=False)
        try:
            assert [client.AsyncResult(i).get(timeout=60) for i in ids] == [10, 11, 12]
        finally:
            client.close()
    finally:
        worker.stop(30)


def test_migrate_to_rabbitmq_and_back(apps: Path, two_urls: tuple[str, str], amqp_url: str) -> None:
    redis_url, back = two_urls
    send_with_celery(redis_url, [('tasks.add', (1, 2), {'priority': 3}), ('tasks.mul', (3, 4), {})])
    before = envelopes(redis_url)
    there = fastq(apps, 'migrate', '-a', redis_url, amqp_url)
    assert there.returncode == 0, there.stderr
    assert envelopes(redis_url) == []
    home = fastq(apps, 'migrate', '-a', amqp_url, back)
    assert home.returncode == 0, home.stderr
    assert home.stdout.splitlines()[0].startswith('Migrating task 1/2: [[3, 4], {}')  # (Redis: 0 before 3)
    after = {e['headers']['id']: e for e in envelopes(back)}
    for old in before:  # through RabbitMQ and back, still the same message
        same_message(old, after[old['headers']['id']])
    declared = fastq(apps, '-b', amqp_url, 'amqp', 'queue.declare', 'celery', 'yes')
    assert 'queue:celery messages:0 consumers:0' in declared.stdout


def test_migrate_from_an_unreachable_broker(apps: Path, redis_url: str) -> None:
    proc = fastq(apps, 'migrate', 'redis://127.0.0.1:1/0', redis_url)
    assert proc.returncode == 69
    assert proc.stderr.startswith('Error: Could not connect to the message broker.')


# --- list bindings --------------------------------------------------------------------------------------------


@pytest.mark.parametrize('topic', [False, True], ids=['default-queue', 'task-queues'])
def test_list_bindings_prints_celerys_table(apps: Path, redis_url: str, topic: bool) -> None:
    env = {'BROKER': redis_url, **({'TOPIC_QUEUES': '1'} if topic else {})}
    ours = fastq(apps, '-A', 'fapp', 'list', 'bindings', env=env)
    theirs = celery(apps, '-A', 'capp', 'list', 'bindings', env=env)
    assert ours.returncode == theirs.returncode == 0, ours.stderr + theirs.stderr
    head = [f'{"Queue":<28} {"Exchange":<28} Routing Key', f'{"-" * 16:<28} {"-" * 16:<28} {"-" * 16}']
    assert ours.stdout.splitlines()[:2] == head
    assert sorted(ours.stdout.splitlines()) == sorted(theirs.stdout.splitlines())  # (Celery's rows: set order)
    assert len(ours.stdout.splitlines()) == (4 if topic else 3)


def test_list_bindings_on_a_transport_without_them(apps: Path, tmp_path: Path) -> None:
    proc = fastq(apps, '-b', f'sqlite:///{tmp_path}/b.sqlite3', 'list', 'bindings')
    assert proc.returncode == 2 and proc.stderr.strip() == 'Error: Your transport cannot list bindings.'


# --- amqp -----------------------------------------------------------------------------------------------------

AMQP_SCRIPT = [
    ['queue.declare', 'q1'],
    ['exchange.declare', 'x1', 'direct'],
    ['queue.bind', 'q1', 'x1', 'k1'],
    ['basic.publish', 'hello world', 'x1', 'k1'],
    ['queue.declare', 'q1', 'yes'],
    ['basic.get', 'q1'],
    ['basic.get', 'q1'],
    ['queue.purge', 'q1'],
    ['queue.declare', 'missing', 'true'],
    ['basic.publish', 'again', '', 'q1'],
    ['basic.get', 'q1', '1'],
    ['basic.publish', 'kept', '', 'q1'],
    ['queue.delete', 'q1', 'no', 'yes'],
    ['queue.delete', 'q1'],
    ['exchange.delete', 'x1', 'yes'],
    ['exchange.declare', 'x1', 'direct', 'yes'],
]


def test_amqp_commands_print_what_celerys_print(apps: Path, rabbit_server: Any) -> None:
    ours_url, theirs_url = rabbit_server.url(rabbit_server.vhost()), rabbit_server.url(rabbit_server.vhost())
    for words in AMQP_SCRIPT:
        ours = fastq(apps, '-b', ours_url, 'amqp', *words)
        theirs = celery(apps, '-b', theirs_url, 'amqp', *words)
        assert ours.stdout.replace(ours_url.rpartition('/')[2], 'VHOST') == theirs.stdout.replace(
            theirs_url.rpartition('/')[2], 'VHOST'
        ), words
        assert ours.stderr.replace(ours_url.rpartition('/')[2], 'VHOST') == theirs.stderr.replace(
            theirs_url.rpartition('/')[2], 'VHOST'
        ), words
        # (406: q1 is not empty; 404: x1 was deleted, as the passive declare after it says on both sides)
        failed = words[1] == 'missing' or words[1:] in (['q1', 'no', 'yes'], ['x1', 'direct', 'yes'])
        assert ours.returncode == (1 if failed else 0)  # (Celery exits 0 even then)


def test_amqp_shell_reads_commands(apps: Path, amqp_url: str) -> None:
    script = 'queue.declare q2\nbasic.publish "a b" "" q2\nnot.a.command\nqueue.declare q2 maybe\nbasic.get q2 yes\n'
    proc = fastq(apps, '-b', amqp_url, 'amqp', stdin=script)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count('OK') == 3 and "'body': 'a b'" in proc.stdout
    assert "Error: No such command 'not.a.command'." in proc.stderr
    assert "Error: Invalid value for '[PASSIVE]': 'maybe' is not a valid boolean." in proc.stderr


def test_amqp_wants_an_amqp_broker(apps: Path, redis_url: str) -> None:
    proc = fastq(apps, '-b', redis_url, 'amqp', 'queue.declare', 'foo')
    assert proc.returncode == 2 and 'fastq amqp needs an AMQP broker' in proc.stderr
    proc = fastq(apps, '-b', 'amqp://guest:guest@127.0.0.1:1//', 'amqp', 'queue.declare', 'foo')
    assert proc.returncode == 69 and proc.stderr.startswith('Error: Could not connect to the message broker.')


# --- logtool on a real worker's log ---------------------------------------------------------------------------


@pytest.mark.parametrize('broker_kind', ['sqlite'])
def test_logtool_reads_a_fastq_worker_log(tmp_path: Path, tasks: Any, worker: Any, broker_kind: str) -> None:
    w = worker()
    assert tasks.add.delay(1, 2).get(timeout=30) == 3
    failed = tasks.fail.delay('broken')
    with pytest.raises(ValueError):
        failed.get(timeout=30)
    w.wait_for('raised unexpected')
    report = fastq(tmp_path, 'logtool', 'stats', str(w.logfile)).stdout
    for line in ('Task total: 2', 'Task errors: 1', 'Task success: 1', 'Task completed: 2', 'worker_tasks.add: 1'):
        assert f'\n{line}\n' in report, w.log
    errors = fastq(tmp_path, 'logtool', 'errors', str(w.logfile)).stdout
    assert f'Task worker_tasks.fail[{failed.id}] raised unexpected' in errors
    assert fastq(tmp_path, 'logtool', 'incomplete', str(w.logfile)).stdout == ''
