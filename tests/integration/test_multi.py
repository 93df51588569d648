"""`fastq multi` with real detached workers: started, serving, restarted, stopped, found by their pidfiles."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from fastq.cli.base import pid_alive
from fastq.utils.nodenames import gethostname
from tests.harness import wait_until

from .conftest import HERE

pytestmark = pytest.mark.slow


@pytest.mark.parametrize('broker_kind', ['sqlite'])
def test_start_serve_restart_and_stop_named_workers(tmp_path: Path, urls: dict[str, str], tasks: Any) -> None:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(HERE), os.environ.get('PYTHONPATH', '')]), **urls)
    env.pop('PYTEST_CURRENT_TEST', None)
    paths = [f'--pidfile={tmp_path}/run/%n.pid', f'--logfile={tmp_path}/log/%n%I.log']
    host = gethostname()
    run, log = tmp_path / 'run', tmp_path / 'log'

    def multi(*args: str) -> subprocess.CompletedProcess[str]:
        command = [sys.executable, '-m', 'fastq', '-A', 'worker_tasks', 'multi', *args, *paths, '-c', '1']
        return subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)

    def pids() -> dict[str, int]:
        return {p.stem: int(p.read_text()) for p in run.glob('*.pid')}

    def ready(name: str) -> bool:
        main = log / f'{name}.log'
        return main.exists() and f'{name}@{host} ready.' in main.read_text()

    started = multi('start', 'w1', 'w2', '-l', 'info')
    try:
        assert started.returncode == 0, started.stderr
        assert '> Starting nodes...' in started.stdout
        assert f'\t> w1@{host}: OK' in started.stdout and f'\t> w2@{host}: OK' in started.stdout
        wait_until(lambda: ready('w1') and ready('w2'), 60, 'both nodes ready')
        first = pids()
        assert sorted(first) == ['w1', 'w2'] and all(pid_alive(pid) for pid in first.values())

        # they serve, and a pool child logs to a file of its own (%I)
        assert tasks.add.delay(20, 22).get(timeout=30) == 42
        wait_until(lambda: any('succeeded' in p.read_text() for p in log.glob('w?-1.log')), 30, 'a child log')
        assert not any('succeeded' in (log / f'{name}.log').read_text() for name in ('w1', 'w2'))

        # SIGHUP (a detached worker has no terminal): restarted in place, as Celery's execv, so the pid that a
        # service manager (systemd's PIDFile=) and the pidfile hold stays the worker's
        os.kill(first['w1'], signal.SIGHUP)
        wait_until(lambda: (log / 'w1.log').read_text().count('ready.') == 2, 60, 'w1 restarted')
        assert 'Restarting fastq worker (' in (log / 'w1.log').read_text()
        assert pids() == first and pid_alive(first['w1'])

        held = multi('start', 'w1')  # its pidfile is held: refused, and said so
        assert held.returncode == 1 and 'FAILED' in held.stdout
        assert 'already exists' in held.stderr

        restarted = multi('restart', 'w1', 'w2', '-l', 'info')
        assert restarted.returncode == 0, restarted.stdout + restarted.stderr
        assert f'> Restarting node w1@{host}: OK' in restarted.stdout
        wait_until(lambda: len(pids()) == 2 and ready('w1') and ready('w2'), 60, 'both nodes back')
        second = pids()
        assert not set(second.values()) & set(first.values())
        assert not any(pid_alive(pid) for pid in first.values())
        assert tasks.add.delay(1, 2).get(timeout=30) == 3

        stopped = multi('stopwait', 'w1', 'w2')
        assert stopped.returncode == 0
        assert f'\t> w1@{host}: TERM -> {second["w1"]}' in stopped.stdout
        assert '> Waiting for 2 nodes -> ' in stopped.stdout
        assert not pids() and not any(pid_alive(pid) for pid in second.values())
        assert f'> w1@{host}: DOWN' in multi('stop', 'w1').stdout
    finally:
        for pid in pids().values():
            if pid_alive(pid):
                os.kill(pid, 9)


@pytest.mark.parametrize('broker_kind', ['sqlite'])
def test_kill_and_a_failing_start(tmp_path: Path, urls: dict[str, str]) -> None:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(HERE), os.environ.get('PYTHONPATH', '')]), **urls)
    paths = [f'--pidfile={tmp_path}/%n.pid', f'--logfile={tmp_path}/%n.log']

    def multi(app: str, *args: str) -> subprocess.CompletedProcess[str]:
        command = [sys.executable, '-m', 'fastq', '-A', app, 'multi', *args, *paths]
        return subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)

    bad = multi('no_such_module', 'start', 'w1')  # the app cannot load: the worker exits before detaching
    assert bad.returncode == 1 and 'FAILED' in bad.stdout and 'no_such_module' in bad.stderr
    assert multi('worker_tasks', 'start', 'w1', '-c', '1', '--umask=077').returncode == 0
    pidfile = tmp_path / 'w1.pid'
    seen: set[int] = set()  # every node this test started, killed at the end whatever failed on the way

    def current() -> int:
        pid = int(pidfile.read_text())
        seen.add(pid)
        return pid

    try:
        wait_until(pidfile.exists, 60, 'a pidfile')
        pid = current()
        # --umask: every file the detached worker makes, its log file too (made before detaching, to check it)
        assert {(tmp_path / name).stat().st_mode & 0o777 for name in ('w1.pid', 'w1.log')} == {0o600}
        killed = multi('worker_tasks', 'kill', 'w1')
        assert f'Sending KILL to node w1@{gethostname()} ({pid})' in killed.stdout
        wait_until(lambda: not pid_alive(pid), 30, 'the node killed')
        # the stale pidfile does not stop the next start
        assert multi('worker_tasks', 'start', 'w1', '-c', '1').returncode == 0
        wait_until(lambda: pidfile.exists() and current() != pid, 60, 'a new pidfile')
        assert multi('worker_tasks', 'stopwait', 'w1').returncode == 0
        assert not pidfile.exists()
    finally:
        if pidfile.exists():
            current()
        for pid in seen:
            if pid_alive(pid):
                os.kill(pid, 9)
