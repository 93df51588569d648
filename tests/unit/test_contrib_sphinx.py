"""`fastq.contrib.sphinx` against `celery.contrib.sphinx`: the same project documented with each, the same text.

Celery's "Documenting Tasks with Sphinx" guide: `automodule` lists tasks with the `(task)` prefix and the
signature of the function (a bound task's `self` left out), `.. autotask::` documents one, `:task:` links.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip('sphinx')
pytest.importorskip('celery')

TASKS = '''
{import_line}
app = App('{module}', set_as_current=False)


@app.task
def add(x: int, y: int = 2) -> int:
    """Add two numbers."""
    return x + y


@app.task(bind=True)
def bound(self, a, *, b=1):
    """A bound task."""
    return a


def helper(z):
    """A plain function."""
    return z
'''

INDEX = """Tasks
=====

.. automodule:: {module}
   :members:

.. autotask:: {module}.add
   :no-index:

See :task:`{module}.add`.
"""


def _build(root: Path, module: str, import_line: str, extension: str, prefix: str | None = None) -> str:
    root.mkdir()
    (root / f'{module}.py').write_text(TASKS.format(import_line=import_line, module=module))
    conf = f'import os, sys\nsys.path.insert(0, os.path.abspath("."))\nextensions = [{extension!r}]\n'
    conf += 'autodoc_use_legacy_class_based = True\n'
    if prefix is not None:
        conf += f'celery_task_prefix = {prefix!r}\n'
    (root / 'conf.py').write_text(conf)
    (root / 'index.rst').write_text(INDEX.format(module=module))
    run = subprocess.run(
        [sys.executable, '-m', 'sphinx', '-q', '-W', '-b', 'text', str(root), str(root / '_build')],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stderr
    return (root / '_build' / 'index.txt').read_text().replace(module, 'tasks')


@pytest.mark.parametrize('prefix', [None, '[task] '])
def test_tasks_documented_as_celery_documents_them(tmp_path: Path, prefix: str | None) -> None:
    ours = _build(tmp_path / 'f', 'ftasks', 'from fastq import Fastq as App', 'fastq.contrib.sphinx', prefix)
    theirs = _build(tmp_path / 'c', 'ctasks', 'from celery import Celery as App', 'celery.contrib.sphinx', prefix)
    assert ours == theirs
    expected = '(task)' if prefix is None else '[task] '
    assert f'{expected}tasks.add(x: int, y: int = 2) -> int' in ours
    assert f'{expected}tasks.bound(a, *, b=1)' in ours
    assert 'tasks.helper(z)' in ours
