"""`fastq logtool` (Celery's): the same report and lines as `celery logtool` on Celery's log format, and the
received lines of Celery 5 and fastq workers counted as received (Celery's logtool only knows Celery 3's)."""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path

import pytest

from fastq.cli import main

CELERY = str(Path(sys.executable).parent / 'celery')

# Celery 3's words (what `celery logtool` was written for: of tasks with an ETA, as it fails on a received
# line that ends with the id), a failure with its traceback, one left running.
OLD_LOG = """\
[2014-05-30 10:00:00,000: WARNING/MainProcess] celery@host ready.
[2014-05-30 10:00:00,010: INFO/MainProcess] Received task: tasks.add[11111111-aaaa] eta:[2014-05-30 10:00:00+00:00]
[2014-05-30 10:00:00,020: INFO/MainProcess] Task tasks.add[11111111-aaaa] succeeded in 0.01s: 4
[2014-05-30 10:00:01,000: INFO/MainProcess] Received task: tasks.fail[22222222-bbbb] eta:[2014-05-30 10:00:00+00:00]
[2014-05-30 10:00:01,100: ERROR/MainProcess] Task tasks.fail[22222222-bbbb] raised unexpected: ValueError('boom')
Traceback (most recent call last):
  File "tasks.py", line 9, in fail
    raise ValueError('boom')
ValueError: boom
[2014-05-30 10:00:02,000: INFO/MainProcess] Received task: tasks.add[33333333-cccc] eta:[2014-05-30 10:00:00+00:00]
[2014-05-30 10:00:02,500: INFO/MainProcess] Received task: tasks.add[44444444-dddd] eta:[2014-05-30 10:00:00+00:00]
[2014-05-30 10:00:02,600: INFO/MainProcess] Task tasks.add[44444444-dddd] succeeded in 0.002s: 10
"""

# Celery 5's and fastq's (`Task name[id] received`), with a task logger's line in between.
NEW_LOG = """\
[2024-05-30 10:00:00,000: INFO/MainProcess] Task tasks.add[11111111-aaaa] received
[2024-05-30 10:00:00,020: INFO/ForkPoolWorker-1] Task tasks.add[11111111-aaaa] succeeded in 0.01s: 4
[2024-05-30 10:00:01,000: INFO/MainProcess] Task tasks.fail[22222222-bbbb] received
[2024-05-30 10:00:01,050: WARNING/ForkPoolWorker-2] tasks.fail[22222222-bbbb]: about to fail
[2024-05-30 10:00:01,100: ERROR/ForkPoolWorker-2] Task tasks.fail[22222222-bbbb] raised unexpected: ValueError('boom')
Traceback (most recent call last):
ValueError: boom
[2024-05-30 10:00:02,000: INFO/MainProcess] Task tasks.add[33333333-cccc] received
"""


def fastq_logtool(capsys: pytest.CaptureFixture[str], *args: str) -> str:
    with pytest.raises(SystemExit) as done:
        main(['logtool', *args])
    assert done.value.code == 0
    return capsys.readouterr().out


@pytest.mark.parametrize('action', ['stats', 'traces', 'errors', 'incomplete', 'debug'])
def test_same_output_as_celerys_logtool(tmp_path: Path, capsys: pytest.CaptureFixture[str], action: str) -> None:
    log = tmp_path / 'worker.log'
    log.write_text(OLD_LOG)
    theirs = subprocess.run([CELERY, 'logtool', action, str(log)], capture_output=True, text=True, check=True)
    assert fastq_logtool(capsys, action, str(log)) == theirs.stdout


def test_celery_5_and_fastq_logs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    log = tmp_path / 'worker.log'
    log.write_text(NEW_LOG)
    report = fastq_logtool(capsys, 'stats', str(log))
    assert report.splitlines()[1:] == [
        'Report',
        '======',
        'Task total: 3',
        'Task errors: 1',
        'Task success: 1',
        'Task completed: 2',
        'Tasks',
        '=====',
        'tasks.add: 2',
        'tasks.fail: 1',
        '',
    ]
    assert fastq_logtool(capsys, 'incomplete', str(log)) == 'Did not complete: 33333333-cccc\n'
    errors = fastq_logtool(capsys, 'errors', str(log))
    assert errors.split('\n')[0].endswith("Task tasks.fail[22222222-bbbb] raised unexpected: ValueError('boom')")
    assert 'about to fail' in fastq_logtool(capsys, 'debug', str(log))
    traces = fastq_logtool(capsys, 'traces', str(log))
    assert 'raised unexpected' in traces and 'Traceback (most recent call last):' in traces


def test_received_lines_without_an_eta(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    log = tmp_path / 'worker.log'
    log.write_text('[2014-05-30 10:00:00,010: INFO/MainProcess] Received task: tasks.add[11111111-aaaa]\n')
    assert 'Task total: 1\n' in fastq_logtool(capsys, 'stats', str(log))
    assert fastq_logtool(capsys, 'incomplete', str(log)) == 'Did not complete: 11111111-aaaa\n'


def test_several_files_and_standard_input(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    old, new = tmp_path / 'a.log', tmp_path / 'b.log'
    old.write_text(OLD_LOG)
    new.write_text(NEW_LOG.replace('-aaaa', '-eeee').replace('-bbbb', '-ffff').replace('-cccc', '-gggg'))
    assert 'Task total: 7\n' in fastq_logtool(capsys, 'stats', str(old), str(new))
    monkeypatch.setattr(sys, 'stdin', io.StringIO(NEW_LOG))
    assert 'Task total: 3\n' in fastq_logtool(capsys, 'stats')


def test_a_missing_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as done:
        main(['logtool', 'stats', str(tmp_path / 'nope.log')])
    assert done.value.code == 2
    assert capsys.readouterr().err == f'Error: {tmp_path / "nope.log"}: No such file or directory\n'
