"""Tasks are typed: mypy checks `.delay()` arguments against the function and types the result."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

mypy_api = pytest.importorskip('mypy.api')

SNIPPET = """
from fastq import Fastq

app = Fastq('t')

@app.task
def add(x: int, y: int) -> int:
    return x + y

@app.task(bind=True, acks_late=True)
def bound(self, name: str) -> str:
    return name

r = add.delay(1, 2)
reveal_type(r)
reveal_type(r.get(timeout=1))
add.delay('a', 2)
add.delay(1)
bound.delay('x')
bound.delay(1)
add.apply_async((1, 2), countdown=1)
"""


def test_delay_is_checked_by_mypy(tmp_path: Path) -> None:
    path = tmp_path / 'snippet.py'
    path.write_text(textwrap.dedent(SNIPPET))
    stdout, _, _ = mypy_api.run([str(path), '--no-incremental', '--cache-dir', str(tmp_path / '.mypy')])
    errors = {line.split(':')[1]: line for line in stdout.splitlines() if ': error:' in line or ': note:' in line}
    assert 'AsyncResult[int]' in errors['15'] and '"int"' in errors['16'].split('Revealed type is')[1]
    assert 'incompatible type "str"; expected "int"' in errors['17']
    assert 'Missing positional argument "y"' in errors['18']
    assert '19' not in errors
    assert 'incompatible type "int"; expected "str"' in errors['20']
    assert '21' not in errors
