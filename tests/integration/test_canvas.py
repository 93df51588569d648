"""Workflows through real worker processes (prefork), on SQLite and on Redis: chains, groups, chords and their
nestings; chord failures; and a chord whose header worker is SIGKILLed mid-task, so a header task runs again
on another worker and the body must still run exactly once, with the header results in order.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any

import pytest

from fastq import chain, chord, group
from fastq.exceptions import ChordError
from tests.harness import lines, wait_until

pytestmark = pytest.mark.slow


def test_workflows(tasks: Any, worker: Any) -> None:
    worker()
    t = tasks
    r = (t.add.s(1, 1) | t.mul.s(10) | t.add.s(1)).apply_async()
    assert r.get(timeout=60) == 21 and r.parent.get(timeout=5) == 20 and r.parent.parent.get(timeout=5) == 2
    g = group(t.mul.s(i, i) for i in range(8)).apply_async()
    assert g.get(timeout=60) == [i * i for i in range(8)] and g.completed_count() == 8
    assert chord([t.add.s(i, i) for i in range(10)], t.tsum.s()).apply_async().get(timeout=60) == 90
    # a chain of groups (the group followed by a task becomes a chord), with a chain after it
    r = chain(t.add.s(1, 1), group(t.add.s(1), t.mul.s(2)), t.tsum.s(), t.mul.s(10)).apply_async()
    assert r.get(timeout=60) == 70
    # a group of chains
    assert group(t.add.s(1, 1) | t.mul.s(3), t.add.s(2, 2) | t.mul.s(3)).apply_async().get(timeout=60) == [6, 12]
    # a chain as the chord body; a chord in the header of a chord (its body's result is one part)
    assert chord([t.add.s(1, 1), t.add.s(2, 2)], t.tsum.s() | t.mul.s(2)).apply_async().get(timeout=60) == 12
    inner = chord([t.add.s(1, 1), t.add.s(2, 2)], t.tsum.s())
    assert chord([inner, t.add.s(3, 3)], t.xsum.s()).apply_async().get(timeout=60) == 12
    assert t.add.chunks([(i, i) for i in range(6)], 4).apply_async().get(timeout=60) == [[0, 2, 4, 6], [8, 10]]


def test_replace(tasks: Any, worker: Any) -> None:
    worker()
    t = tasks
    assert t.replaced.delay(1).get(timeout=60) == 2  # the replacement's result, under the replaced task's id
    assert (t.replaced.s(1) | t.add.s(10)).delay().get(timeout=60) == 12  # the chain goes on after it
    assert t.replaced_by_group.delay(3).get(timeout=60) == [0, 2, 4]


def test_chord_failure(tasks: Any, worker: Any, tmp_path: Path) -> None:
    worker()
    out = tmp_path / 'errors.txt'
    t = tasks
    body = t.tsum.s().on_error(t.on_error.s(str(out)))
    r = chord([t.add.s(1, 1), t.fail.s('second'), t.fail.s('third')], body).apply_async()
    with pytest.raises(ChordError) as info:
        r.get(timeout=60, follow_parents=False)
    assert f'Dependency {r.parent.results[1].id} raised ValueError' in str(info.value)  # header order decides
    wait_until(lambda: f'error {r.id} ChordError False' in lines(out), message='the body errback ran')
    # a task's errbacks, both styles: (request, exc, traceback) called in place, (task_id) sent as a task
    r = t.fail.apply_async(('boom',), link_error=[t.on_error.s(str(out)), t.on_error_id.s(path=str(out))])
    with pytest.raises(ValueError):
        r.get(timeout=60)
    wait_until(lambda: {f'error {r.id} ValueError True', f'error-id {r.id}'} <= set(lines(out)), message='errbacks')
    # a failed chain step fails what comes after it, so its result does not wait forever
    r = (t.add.s(1, 1) | t.fail.s() | t.add.s(1)).apply_async()
    with pytest.raises(ValueError):
        r.get(timeout=60, follow_parents=False)


def test_chord_body_once_after_header_worker_sigkill(tasks: Any, worker: Any, tmp_path: Path) -> None:
    """h1 is killed mid-run (it runs again); h3 is killed after returning its part but before its ack, so its
    redelivered copy returns the same part again. The body runs once, with the parts in header order."""
    out, body_out = tmp_path / 'parts.txt', tmp_path / 'body.txt'
    short = {'FASTQ_BROKER_TRANSPORT_OPTIONS': '{"visibility_timeout": 3}'}  # Redis: redeliver soon
    w = worker('-c', '2', extra_env=short)
    header = [
        tasks.chord_part_hang.s(str(out), f'h{i}', i) if i == 3 else tasks.chord_part.s(str(out), f'h{i}', i, 0.1)
        for i in range(6)
    ]
    header[1] = tasks.chord_part.s(str(out), 'h1', 1, 3)
    result = chord(header, tasks.record_body.s(str(body_out))).apply_async()

    def seen(prefix: str) -> int:
        return len([line for line in lines(out) if line.startswith(prefix)])

    wait_until(lambda: seen('start h1') and seen('returned h3'), message='h1 running, h3 returned, unacked')
    os.kill(w.pid, signal.SIGKILL)
    w.proc.wait(10)
    wait_until(lambda: not w.children(), message='children gone')
    worker('-c', '2', extra_env=short)
    assert result.get(timeout=90) == list(range(6))
    assert seen('start h1') == 2 and seen('done h1') == 1
    assert seen('returned h3') == 2  # the same part, returned twice
    wait_until(lambda: len(lines(body_out)) >= 1, message='body ran')
    assert [line.split(' [')[0] for line in lines(body_out)] == ['body']  # exactly once


def test_chord_header_ended_outside_its_task(tasks: Any, worker: Any) -> None:
    """Header tasks that never return through their own code (killed at the hard time limit, or expired before
    they ran) still return their part: the chord errors naming that task and its body never runs."""
    from datetime import UTC, datetime, timedelta

    worker('-c', '2')
    t = tasks
    r = chord([t.add.s(1, 1), t.long.s(30).set(time_limit=1)], t.tsum.s()).apply_async()
    with pytest.raises(ChordError) as info:
        r.get(timeout=60, follow_parents=False)
    assert f'Dependency {r.parent.results[1].id} raised TimeLimitExceeded' in str(info.value)
    past = datetime.now(UTC) - timedelta(minutes=1)
    r = chord([t.add.s(1, 1).set(expires=past), t.add.s(2, 2)], t.tsum.s()).apply_async()
    with pytest.raises(ChordError) as info:
        r.get(timeout=60, follow_parents=False)
    assert f'Dependency {r.parent.results[0].id} raised TaskRevokedError' in str(info.value)
    # a chain whose first step expired: the steps after it fail too, instead of waiting forever
    r = (t.add.s(1, 1).set(expires=past) | t.add.s(1)).apply_async()
    with pytest.raises(Exception, match='expired'):
        r.get(timeout=60, follow_parents=False)
