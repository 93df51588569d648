"""`fastq shell`: the names `celery shell` starts with, in a real shell process reading its input."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from fastq import Fastq, chain, signature
from fastq.cli.shell import namespace

TASKS = """
from fastq import Fastq

app = Fastq('shelltasks', broker='memory://')


@app.task
def add(x, y):
    return x + y


@app.task(name='custom.name')
def mul(x, y):
    return x * y
"""


def test_the_namespace_has_the_app_the_canvas_and_the_tasks_by_function_name() -> None:
    app = Fastq('shell_ns', broker='memory://')

    @app.task(name='elsewhere.add')
    def add(x: int, y: int) -> int:
        return x + y

    names = namespace(app)
    assert names['app'] is app and names['celery'] is app
    assert names['chain'] is chain and names['signature'] is signature and names['subtask'] is signature
    assert names['add'] is add and add.__name__ == 'add'
    assert not any(name.startswith('celery.') for name in names)  # the built-in tasks stay out
    assert 'add' not in namespace(app, with_tasks=False)


def test_a_shell_session(tmp_path: Path) -> None:
    (tmp_path / 'shelltasks.py').write_text(TASKS)
    env = dict(os.environ, PYTHONPATH=str(tmp_path))
    session = 'print(add(2, 3), mul(4, 5), celery.main, add.name)\n'
    proc = subprocess.run(
        [sys.executable, '-m', 'fastq', '-A', 'shelltasks', 'shell', '--python'],
        input=session, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert '5 20 shelltasks shelltasks.add' in proc.stdout
