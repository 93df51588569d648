"""Beat as real processes: `fastq beat` and `fastq worker -B` sending an every-second entry to a real worker.

Every run is recorded by the task with the run key beat put in the message, so "each run once" is checked
exactly: no key may appear twice, however the beats are started, killed and restarted.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sqlite3
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.harness import READY_TIMEOUT, WorkerProcess, lines, wait_until

HERE = Path(__file__).resolve().parent
SENDING = 'Scheduler: Sending due task every-second (beat_tasks.record)'
LEADING = 'beat: Acquired the leader lock'

Start = Callable[..., WorkerProcess]


@pytest.fixture
def start(tmp_path: Path, urls: dict[str, str], request: pytest.FixtureRequest) -> Iterator[Start]:
    """`start('beat', '-s', path)` or `start('worker', '-B')`: a process of the beat_tasks app, stopped at the end."""
    started: list[WorkerProcess] = []
    env = dict(
        os.environ,
        PYTHONPATH=os.pathsep.join([str(HERE), os.environ.get('PYTHONPATH', '')]),
        BEAT_RECORD=str(tmp_path / 'runs.txt'),
        FASTQ_BEAT_LOCK_TIMEOUT='3',
        **urls,
    )
    env.pop('PYTEST_CURRENT_TEST', None)

    def run(kind: str, *args: str) -> WorkerProcess:
        command = [sys.executable, '-m', 'fastq', '-A', 'beat_tasks', kind]
        base = ['-l', 'info'] + (['-c', '1'] if kind == 'worker' else [])
        proc = WorkerProcess(tmp_path, env, [*base, *args], f'{kind}{len(started)}', command=command)
        started.append(proc)
        proc.start(wait=False)
        proc.wait_for('ready.' if kind == 'worker' else 'beat: Starting...', READY_TIMEOUT)
        return proc

    yield run
    failed = getattr(request.node, 'rep_call', None)
    for proc in started:
        if proc.proc is not None and proc.proc.poll() is None:
            try:
                proc.stop(30)
            except AssertionError:
                pass
        if failed is not None and failed.failed:
            print(f'--- {proc.logfile.name} ---\n{proc.log}')


def runs(tmp_path: Path) -> list[str]:
    return [line.split()[0] for line in lines(tmp_path / 'runs.txt')]


def wait_for_runs(tmp_path: Path, count: int) -> list[str]:
    wait_until(lambda: len(runs(tmp_path)) >= count, 30, f'{count} runs')
    done = runs(tmp_path)
    assert len(done) == len(set(done)), f'a run was sent twice: {done}'
    return done


def test_beat_sends_an_every_second_entry_to_a_worker(start: Start, tmp_path: Path) -> None:
    start('worker')
    beat = start('beat', '-s', str(tmp_path / 'schedule'))
    done = wait_for_runs(tmp_path, 4)
    assert all(run.startswith('every-second@') for run in done)
    assert 'LocalTime -> ' in beat.log and SENDING in beat.log
    assert beat.stop() == 0
    assert 'beat: Shutting down...' in beat.log


@pytest.mark.parametrize('broker_kind', ['sqlite'])
def test_what_beat_prints_goes_into_its_log(start: Start, tmp_path: Path) -> None:
    # As Celery's beat, once the banner is out stdout is the log's (worker_redirect_stdouts): a beat_init
    # receiver's print is a WARNING record; the banner before it stays plain text
    beat = start('beat', '-s', str(tmp_path / 'schedule'))
    beat.wait_for('beat_init: the scheduler is ready', READY_TIMEOUT)
    printed = [line for line in beat.log.splitlines() if 'beat_init: the scheduler is ready' in line]
    assert len(printed) == 1 and printed[0].endswith(' WARNING/MainProcess] beat_init: the scheduler is ready')
    assert any(line.startswith('LocalTime -> ') for line in beat.log.splitlines())
    assert beat.stop() == 0


@pytest.mark.parametrize('broker_kind', ['sqlite'])
def test_worker_B_embeds_beat(start: Start, tmp_path: Path) -> None:
    worker = start('worker', '-B', '-s', str(tmp_path / 'schedule'))
    wait_for_runs(tmp_path, 3)
    assert 'beat: Starting...' in worker.log and SENDING in worker.log
    assert 'not available' not in worker.log
    assert worker.stop() == 0


@pytest.mark.parametrize('broker_kind', ['sqlite'])
def test_killed_and_restarted_beat_sends_no_run_twice(start: Start, tmp_path: Path) -> None:
    schedule_file = tmp_path / 'schedule'
    start('worker')
    first = start('beat', '-s', str(schedule_file))
    wait_for_runs(tmp_path, 3)
    target = len(runs(tmp_path)) + 1
    first.wait_for(SENDING, count=target)
    wait_for_runs(tmp_path, first.log.count(SENDING))  # the line is logged before the publish completes
    first.kill()  # killed right after a send
    second = start('beat', '-s', str(schedule_file))
    wait_for_runs(tmp_path, len(runs(tmp_path)) + 3)
    second.stop()
    sent = first.log.count(SENDING) + second.log.count(SENDING)
    with sqlite3.connect(schedule_file) as db:
        [(count,)] = db.execute("SELECT total_run_count FROM entries WHERE name = 'every-second'").fetchall()
    assert count == sent  # the second beat went on from the first one's record
    wait_for_runs(tmp_path, sent)


def test_two_beats_one_sends_and_the_other_takes_over(start: Start, tmp_path: Path) -> None:
    start('worker')
    leader = start('beat', '-s', str(tmp_path / 'schedule-a'))
    leader.wait_for(LEADING)
    standby = start('beat', '-s', str(tmp_path / 'schedule-b'))
    standby.wait_for('beat: Standing by: another beat')
    wait_for_runs(tmp_path, 3)
    assert SENDING not in standby.log
    leader.kill()
    standby.wait_for(LEADING, 30)
    standby.wait_for(SENDING)
    before = len(runs(tmp_path))
    wait_for_runs(tmp_path, before + 3)


@pytest.mark.parametrize('broker_kind', ['sqlite'])
def test_detached_beat_writes_and_removes_its_pidfile(tmp_path: Path, urls: dict[str, str]) -> None:
    pidfile, logfile = tmp_path / 'beat.pid', tmp_path / 'beat.log'
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(HERE), os.environ.get('PYTHONPATH', '')]), **urls)
    env['BEAT_RECORD'] = str(tmp_path / 'runs.txt')
    command = [sys.executable, '-m', 'fastq', '-A', 'beat_tasks', 'beat', '-l', 'info', '--detach']
    # a pidfile or log file it cannot create is said on the terminal, before detaching (Celery's `detached`
    # checks both too), not left for a detached process to fail on with no one to hear
    for bad in (
        ['--logfile', str(logfile), '--pidfile', f'{tmp_path}/no/beat.pid'],
        ['--logfile', f'{tmp_path}/no/b.log'],
    ):
        failed = subprocess.run([*command, *bad], cwd=tmp_path, env=env, timeout=60, capture_output=True, text=True)
        assert (
            failed.returncode != 0
            and f'{tmp_path}/no/' in failed.stderr
            and 'No such file or directory' in failed.stderr
        )
    command += ['--logfile', str(logfile), '--pidfile', str(pidfile), '-s', str(tmp_path / 'schedule')]
    assert subprocess.run([*command, '--umask=077'], cwd=tmp_path, env=env, timeout=60).returncode == 0
    wait_until(lambda: pidfile.exists() and logfile.exists(), 30, 'a detached beat')
    pid = int(pidfile.read_text())
    assert {path.stat().st_mode & 0o777 for path in (pidfile, logfile)} == {0o600}  # --umask, its log file too
    try:
        wait_until(lambda: SENDING in logfile.read_text(), 30, 'a detached beat sending')
        os.kill(pid, signal.SIGTERM)
        wait_until(lambda: not pidfile.exists(), 30, 'the pidfile removed')
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    assert 'beat: Shutting down...' in logfile.read_text()


@pytest.mark.parametrize('broker_kind', ['redis'])
def test_beat_answers_ping_with_remote_control(start: Start, urls: dict[str, str]) -> None:
    # Celery 5.7: `beat --enable-remote-control` (-n to name it) answers `inspect ping`, a liveness probe,
    # and only that: worker-only commands do not count it
    from fastq import Fastq

    beat = start('beat', '--enable-remote-control', '-n', 'probe-beat@%h')
    beat.wait_for('beat pidbox: Connected to ', READY_TIMEOUT)
    app = Fastq('probe', broker=urls['FASTQ_BROKER_URL'], set_as_current=False)
    try:
        replies = app.control.inspect(timeout=2).ping() or {}
        assert [name for name in replies if name.startswith('probe-beat@')] and all(
            reply == {'ok': 'pong'} for reply in replies.values()
        )
        assert not any(name.startswith('probe-beat@') for name in app.control.inspect(timeout=1).active() or {})
    finally:
        app.close()
