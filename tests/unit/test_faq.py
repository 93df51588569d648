"""Celery's FAQ and Next Steps answers that are plain API: the names and words they show work the same in fastq."""

from __future__ import annotations

import sys

import pytest

from fastq import Fastq
from fastq.backends.rpc import E_NO_CHORDS


def test_discard_all_is_purge(memory_app: Fastq) -> None:
    # "How do I purge all waiting tasks?" shows app.control.purge(); older code calls it discard_all.
    @memory_app.task
    def add(x: int, y: int) -> int:
        return x + y

    for i in range(3):
        add.delay(i, i)
    assert memory_app.control.discard_all() == 3
    assert memory_app.control.purge(connection=None) == 0


def test_rpc_refuses_chords_in_celerys_words() -> None:
    from celery.backends.rpc import E_NO_CHORD_SUPPORT

    assert E_NO_CHORDS == E_NO_CHORD_SUPPORT.strip()


def test_app_start_reads_the_command_line(
    memory_app: Fastq, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # Next Steps' proj/celery.py ends with `if __name__ == '__main__': app.start()`: Celery's docstring says it
    # uses sys.argv when no argv is given (fastq took no arguments then, and printed its help).
    from fastq import __version__

    monkeypatch.setattr(sys, 'argv', ['proj/celery.py', '--version'])
    with pytest.raises(SystemExit) as exited:
        memory_app.start()
    assert exited.value.code == 0
    assert capsys.readouterr().out.strip() == f'{__version__} (fastq)'
