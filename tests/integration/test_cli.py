"""The `fastq` command as users type it: call, result, purge, deadletter, --version, --help, bad input."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from fastq import __version__
from tests.harness import wait_until

from .conftest import HERE

pytestmark = pytest.mark.slow


def fastq(cwd: Path, urls: dict[str, str], *args: str, stdin: str | None = None, check: bool = True) -> Any:
    # (the caller's PYTHONPATH kept after ours: it names the fastq under test when that is not the installed one)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(HERE), os.environ.get('PYTHONPATH', '')]), **urls)
    proc = subprocess.run(
        [sys.executable, '-m', 'fastq', *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        input=stdin,
        timeout=120,
    )
    if check and proc.returncode != 0:
        raise AssertionError(f'fastq {" ".join(args)} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}')
    return proc


def test_version_and_help(tmp_path: Path, urls: dict[str, str]) -> None:
    assert fastq(tmp_path, urls, '--version').stdout.strip() == f'{__version__} (fastq)'
    out = fastq(tmp_path, urls, '--help').stdout
    for command in ('worker', 'call', 'result', 'purge', 'deadletter'):
        assert command in out
        assert 'usage: fastq' in fastq(tmp_path, urls, command, '--help').stdout
    for action in ('list', 'show', 'requeue', 'purge'):
        assert 'usage:' in fastq(tmp_path, urls, 'deadletter', action, '--help').stdout


def test_call_then_result(tmp_path: Path, urls: dict[str, str], worker: Any) -> None:
    worker()
    task_id = fastq(
        tmp_path, urls, '-A', 'worker_tasks', 'call', 'worker_tasks.add', '--args', '[20, 22]'
    ).stdout.strip()
    assert len(task_id) == 36
    wait_until(
        lambda: fastq(tmp_path, urls, '-A', 'worker_tasks', 'result', task_id).stdout.strip() == '42',
        message='result 42',
    )


def test_result_of_a_failed_task_fails(tmp_path: Path, urls: dict[str, str], tasks: Any, worker: Any) -> None:
    worker()
    result = tasks.fail.delay('broken')
    with pytest.raises(ValueError):
        result.get(timeout=30)
    proc = fastq(tmp_path, urls, '-A', 'worker_tasks', 'result', result.id, check=False)
    assert proc.returncode == 1 and 'ValueError' in proc.stderr and not proc.stdout


def test_call_rejects_bad_json(tmp_path: Path, urls: dict[str, str]) -> None:
    proc = fastq(tmp_path, urls, '-A', 'worker_tasks', 'call', 'worker_tasks.add', '--args', '{1', check=False)
    assert proc.returncode == 2 and '--args: not valid JSON' in proc.stderr


def test_purge(tmp_path: Path, urls: dict[str, str], tasks: Any) -> None:
    for i in range(3):
        tasks.add.delay(i, i)
    tasks.add.apply_async((1, 1), queue='another_apps')  # not this app's queue: left alone, as by Celery
    proc = fastq(tmp_path, urls, '-A', 'worker_tasks', 'purge', stdin='no\n', check=False)
    assert proc.stdout == (  # Celery's prompt (click.confirm), so scripts answering it work unchanged
        'WARNING:This will remove all tasks from queue: celery.\n'
        '         There is no undo for this operation!\n\n'
        '(to skip this prompt use the -f option)\n'
        'Are you sure you want to delete all tasks? [y/N]: '
    )
    assert proc.returncode == 1 and proc.stderr.strip() == 'Aborted!'
    assert tasks.app.broker.qsize('celery') == 3
    proc = fastq(tmp_path, urls, '-A', 'worker_tasks', 'purge', stdin='maybe\ny\n')
    assert 'Error: invalid input' in proc.stderr
    assert proc.stdout.strip().endswith('Purged 3 messages from 1 known task queue.')
    for i in range(3):
        tasks.add.delay(i, i)
    proc = fastq(tmp_path, urls, '-A', 'worker_tasks', 'purge', '-f')
    assert proc.stdout.strip() == 'Purged 3 messages from 1 known task queue.'
    assert tasks.app.broker.qsize('celery') == 0
    assert tasks.app.broker.qsize('another_apps') == 1
    proc = fastq(tmp_path, urls, '-A', 'worker_tasks', 'purge', '-f')
    assert proc.stdout.strip() == 'No messages purged from 1 queue.'
    # -X takes away from -Q (or the app's queues); nothing left: Celery's purge prints nothing, prompts nothing
    proc = fastq(tmp_path, urls, '-A', 'worker_tasks', 'purge', '-Q', 'another_apps', '-X', 'another_apps')
    assert (proc.returncode, proc.stdout, proc.stderr) == (0, '', '')
    assert tasks.app.broker.qsize('another_apps') == 1
    proc = fastq(tmp_path, urls, '-A', 'worker_tasks', 'purge', '-f', '-Q', 'another_apps,celery', '-X', 'celery')
    assert proc.stdout.strip() == 'Purged 1 message from 1 known task queue.'


def test_deadletter_commands(tmp_path: Path, urls: dict[str, str], tasks: Any, worker: Any) -> None:
    w = worker()
    result = tasks.app.send_task('worker_tasks.missing', (1,))
    wait_until(lambda: tasks.app.broker.dead_letters.count() == 1, message='dead letter')
    listing = fastq(tmp_path, urls, '-A', 'worker_tasks', 'deadletter', 'list').stdout
    assert result.id in listing and 'worker_tasks.missing' in listing and 'unregistered task' in listing
    shown = fastq(tmp_path, urls, '-A', 'worker_tasks', 'deadletter', 'show', result.id).stdout
    assert f'task_id: {result.id}' in shown and '"task": "worker_tasks.missing"' in shown
    assert fastq(tmp_path, urls, '-A', 'worker_tasks', 'deadletter', 'show', 'nope', check=False).returncode == 2
    # Requeued, it comes back to a worker, which dead-letters it again (nobody registered the task).
    out = fastq(tmp_path, urls, '-A', 'worker_tasks', 'deadletter', 'requeue', result.id).stdout
    assert f'Requeued worker_tasks.missing[{result.id}] to celery.' in out
    w.wait_for("Received unregistered task of type 'worker_tasks.missing'", count=2)
    wait_until(lambda: tasks.app.broker.dead_letters.count() == 1, message='dead-lettered again')
    assert fastq(tmp_path, urls, '-A', 'worker_tasks', 'deadletter', 'purge', '-f').stdout.strip() == (
        'Purged 1 dead letter(s).'
    )
    assert 'No dead letters.' in fastq(tmp_path, urls, '-A', 'worker_tasks', 'deadletter', 'list').stdout


def test_unknown_app_module(tmp_path: Path, urls: dict[str, str]) -> None:
    proc = fastq(tmp_path, urls, '-A', 'no_such_module', 'purge', '-f', check=False)
    assert proc.returncode == 2 and 'The module no_such_module was not found' in proc.stderr


def test_eventlet_pool_names_the_alternative(tmp_path: Path, urls: dict[str, str]) -> None:
    proc = fastq(tmp_path, urls, '-A', 'worker_tasks', 'worker', '-P', 'eventlet', check=False)
    assert proc.returncode == 2 and 'async def' in proc.stderr


def test_no_op_flags_are_accepted_with_a_warning(tmp_path: Path, worker: Any) -> None:
    w = worker('--without-gossip', '--without-mingle', '--without-heartbeat', '-O', 'fair', '--events')
    assert '--without-gossip: fastq workers do not gossip; ignored' in w.log
    assert 'task events: ON' in w.log and 'heartbeat' not in w.log  # --events and --without-heartbeat do work
    # the rest of `celery worker --help`: -P processes (prefork), --disable-prefetch, --pool-start-method
    w = worker('-P', 'processes', '-c', '1', '--disable-prefetch', '--pool-start-method', 'spawn')
    assert 'concurrency: 1 (prefork)' in w.log and '--pool-start-method: fastq forks' in w.log


def test_bad_setting_fails_at_startup_naming_it(tmp_path: Path, worker: Any) -> None:
    w = worker(wait=False, extra_env={'FASTQ_TASK_SERIALIZER': 'jsonn'})
    assert w.proc is not None and w.proc.wait(60) == 1
    assert "task_serializer: No encoder installed for 'jsonn'" in w.log


def test_unreachable_broker_is_named_masked_and_retried(tmp_path: Path, worker: Any) -> None:
    blocker = tmp_path / 'not-a-directory'
    blocker.write_text('')
    url = f'sqlite:///{blocker}/sub/broker.sqlite3'
    w = worker(
        wait=False,
        extra_env={'FASTQ_BROKER_URL': url, 'FASTQ_BROKER_CONNECTION_MAX_RETRIES': '2'},
    )
    assert w.proc is not None and w.proc.wait(60) == 1
    log = w.log
    assert f'consumer: Cannot connect to {url}' in log
    assert 'Trying again in 1.00 seconds... (1/2)' in log and 'Trying again in 2.00 seconds... (2/2)' in log


def test_pidfile(tmp_path: Path, worker: Any, urls: dict[str, str]) -> None:
    pidfile = tmp_path / 'w.pid'
    w = worker('--pidfile', str(pidfile))
    assert int(pidfile.read_text()) == w.pid
    second = worker('--pidfile', str(pidfile), wait=False)
    assert second.proc is not None and second.proc.wait(60) == 73  # Celery's exit status (EX_CANTCREAT)
    assert "already exists.\nSeems we're already running?" in second.log
    assert w.stop() == 0
    assert not pidfile.exists()
    # one it cannot create: said on the terminal before detaching (Celery's `detached` tries it first too),
    # not left for a detached worker to fail on with no one to hear
    missing = tmp_path / 'no' / 'w.pid'
    detached = fastq(tmp_path, urls, '-A', 'worker_tasks', 'worker', '--detach', '--pidfile', str(missing),
                     '--logfile', str(tmp_path / 'd.log'), check=False)  # fmt: skip
    assert detached.returncode == 73 and f'Cannot create the pidfile {missing}: No such file' in detached.stderr


def test_python_dash_m_is_the_command(tmp_path: Path, urls: dict[str, str]) -> None:
    script = Path(sys.executable).parent / 'fastq'
    entry = subprocess.run([str(script), '--version'], capture_output=True, text=True, env={**os.environ, **urls})
    module = fastq(tmp_path, urls, '--version')
    assert entry.stdout == module.stdout


@pytest.mark.parametrize('broker_kind', ['redis'])
def test_the_apps_own_remote_control_commands(tmp_path: Path, worker: Any, urls: dict[str, str]) -> None:
    # Workers guide, "Writing your own remote control commands": control_command / inspect_command
    worker('-n', 'own@%h')
    bumped = fastq(tmp_path, urls, '-A', 'worker_tasks', 'control', 'bump', '3')
    assert '->  own@' in bumped.stdout and 'OK' in bumped.stdout and 'bumped by 3 on own@' in bumped.stdout
    fastq(tmp_path, urls, '-A', 'worker_tasks', 'control', 'bump', '2')
    seen = fastq(tmp_path, urls, '-A', 'worker_tasks', 'inspect', 'bumped', '-j')
    import json

    replies = json.loads(seen.stdout)
    assert list(replies.values()) == [{'total': 5, 'app': 'worker_tasks'}]
    shown = fastq(tmp_path, urls, '-A', 'worker_tasks', 'inspect', 'bumped').stdout
    assert shown.endswith('\n\n1 node online.\n'), shown  # (as for Celery's own inspect commands)
    assert 'online' not in fastq(tmp_path, urls, '-A', 'worker_tasks', 'control', 'bump', '1').stdout
    refused = fastq(tmp_path, urls, '-A', 'worker_tasks', 'control', 'bump', 'many', check=False)
    assert refused.returncode == 2 and "Command 'bump' takes arguments: [N=1]" in refused.stderr
    # listed with the built-in ones, as Celery's --list: help from the docstring's first line (none: the name
    # alone), not the aliases nor the commands defined with visible=False
    listing = fastq(tmp_path, urls, '-A', 'worker_tasks', 'control', '--list').stdout.splitlines()
    assert f"  {'bump [N=1]':30}  Bump the worker's counter by n." in listing and 'unbump' not in str(listing)
    at = listing.index(f"  {'bump [N=1]':30}  Bump the worker's counter by n.")
    assert listing[at - 1].startswith('  autoscale') and listing[at + 1].startswith('  cancel_consumer')  # in order
    listing = fastq(tmp_path, urls, '-A', 'worker_tasks', 'inspect', '--list').stdout.splitlines()
    assert '  bumped' in listing and 'bumps' not in str(listing)
    unknown = fastq(tmp_path, urls, '-A', 'worker_tasks', 'inspect', 'bumpz', check=False)
    assert 'Available inspect commands: active, active_queues, bumped, clock, conf,' in unknown.stderr


@pytest.mark.parametrize('broker_kind', ['redis'])
def test_duplicate_node_names_and_worker_purge(tmp_path: Path, worker: Any, tasks: Any, urls: dict[str, str]) -> None:
    tasks.add.apply_async((1, 1), queue='purged')
    tasks.add.apply_async((2, 2), queue='purged')
    first = worker('-n', 'dup@%h', '-Q', 'purged', '--purge')
    assert 'purge: Erased 2 messages from the queue.' in first.log  # Celery's words
    worker('-n', 'dup@%h')
    status = fastq(tmp_path, urls, '-A', 'worker_tasks', 'status')
    assert 'Received multiple replies from node name: dup@' in status.stderr  # (Celery's warning)


@pytest.mark.skipif(os.geteuid() != 0, reason='the refusal is for root')
def test_worker_as_root_accepting_pickle_is_refused_on_the_terminal(tmp_path: Path, urls: dict[str, str]) -> None:
    # The FAQ's "Is it safe to run celery worker as root?": refused with Celery's words on stderr, before
    # logging takes stderr over (no log-record prefixes, no "Error:"), exit status 1.
    (tmp_path / 'picklish.py').write_text(
        'from worker_tasks import app\n\napp.conf.accept_content = ["pickle", "json"]\n'
    )
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(tmp_path), str(HERE)]), **urls)
    env.pop('C_FORCE_ROOT', None)
    proc = subprocess.run(
        [sys.executable, '-m', 'fastq', '-A', 'picklish', 'worker', '-l', 'info'],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 1, proc.stderr
    assert proc.stderr.startswith(
        'Running a worker with superuser privileges when the\n'
        'worker accepts messages serialized with pickle is a very bad idea!\n'
    ), proc.stderr
    assert 'WARNING/MainProcess' not in proc.stderr and 'Error:' not in proc.stderr


def test_output_piped_into_a_reader_that_leaves_is_no_broker_error(tmp_path: Path, urls: dict[str, str]) -> None:
    # `fastq inspect stats | head -1`: the reader is gone before the output is written. That BrokenPipeError
    # is not the broker's: no "Could not connect to the message broker", no EX_UNAVAILABLE.
    env = dict(os.environ, PYTHONPATH=str(HERE), **urls)
    proc = subprocess.Popen(
        [sys.executable, '-m', 'fastq', '-A', 'worker_tasks', 'report'],
        cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()
    with proc.stderr:
        stderr = proc.stderr.read().decode()
    assert proc.wait(timeout=60) == 1, stderr
    assert 'Could not connect' not in stderr and 'Traceback' not in stderr, stderr
