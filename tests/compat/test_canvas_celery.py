"""Workflows across fastq and the real `celery` package on one redis-server.

Canvases built by fastq run on a Celery worker, canvases built by Celery run on a fastq worker (chain, group,
chord, nested), and one chord's header runs on a Celery worker and a fastq worker at once: both return parts
to the same Redis join, and the body runs once, with the header results in order.
"""

from __future__ import annotations

import gc
from pathlib import Path
from typing import Any

import pytest

from fastq import chain, chord, group
from tests.harness import lines, wait_until

pytestmark = pytest.mark.slow


def _settle(result: Any) -> None:
    """Wait for a Celery result and all its parents (a chord's header, a chain's first steps): Celery keeps
    unfinished results subscribed in its backend, and unsubscribing them when they are collected after the
    session's redis-server is gone fails noisily."""
    node = result
    while node is not None:
        node.get(timeout=60, propagate=False)
        node = node.parent
    gc.collect()


def test_fastq_canvases_on_a_celery_worker(fastq_client: Any, workers: Any) -> None:
    workers('celery')
    t = fastq_client
    r = (t.add.s(1, 1) | t.mul.s(10) | t.add.s(1)).apply_async()
    assert r.get(timeout=60) == 21 and r.parent.get(timeout=5) == 20
    assert group(t.mul.s(i, i) for i in range(5)).apply_async().get(timeout=60) == [0, 1, 4, 9, 16]
    assert chord([t.add.s(i, i) for i in range(6)], t.tsum.s()).apply_async().get(timeout=60) == 30
    r = chain(t.add.s(1, 1), group(t.add.s(1), t.mul.s(2)), t.tsum.s(), t.mul.s(10)).apply_async()
    assert r.get(timeout=60) == 70
    assert chord([t.add.s(1, 1), t.add.s(2, 2)], t.tsum.s() | t.mul.s(2)).apply_async().get(timeout=60) == 12


def test_celery_canvases_on_a_fastq_worker(celery_client: Any, workers: Any) -> None:
    from celery import chain as c_chain
    from celery import chord as c_chord
    from celery import group as c_group

    workers('fastq')

    def sig(name: str, *args: Any) -> Any:
        return celery_client.signature(f'worker_tasks.{name}', args=args)

    r = c_chain(sig('add', 1, 1), sig('mul', 10), sig('add', 1)).apply_async()
    assert r.get(timeout=60) == 21 and r.parent.get(timeout=5) == 20
    _settle(r)
    g = c_group(sig('mul', i, i) for i in range(5)).apply_async()
    assert g.get(timeout=60) == [0, 1, 4, 9, 16]
    r = c_chord([sig('add', i, i) for i in range(6)], sig('tsum')).apply_async()
    assert r.get(timeout=60) == 30
    _settle(r)
    r = c_chain(sig('add', 1, 1), c_group(sig('add', 1), sig('mul', 2)), sig('tsum'), sig('mul', 10)).apply_async()
    assert r.get(timeout=60) == 70
    _settle(r)
    body = c_chain(sig('tsum'), sig('mul', 2))
    r = c_chord([sig('add', 1, 1), sig('add', 2, 2)], body).apply_async()
    assert r.get(timeout=60) == 12
    _settle(r)


@pytest.mark.parametrize('sender', ['fastq', 'celery'])
def test_chord_header_on_a_mixed_fleet(
    celery_client: Any, fastq_client: Any, workers: Any, tmp_path: Path, sender: str
) -> None:
    out, body_out = tmp_path / 'ran.txt', tmp_path / 'body.txt'
    workers('fastq', '-n', 'fastq1@%h')
    workers('celery', '-n', 'celery1@%h')
    size = 40
    if sender == 'fastq':
        t = fastq_client
        result = chord([t.record.s(str(out), str(i)) for i in range(size)], t.record_body.s(str(body_out)))()
    else:
        from celery import chord as c_chord

        header = [celery_client.signature('worker_tasks.record', args=(str(out), str(i))) for i in range(size)]
        body = celery_client.signature('worker_tasks.record_body', args=(str(body_out),))
        result = c_chord(header, body).apply_async()
    assert result.get(timeout=120) == [str(i) for i in range(size)]  # header order, from both sides
    ran = lines(out)
    assert sorted(int(line.split()[1]) for line in ran) == list(range(size))
    by_celery = [line for line in ran if line.split()[2] == 'celery']
    assert by_celery and len(by_celery) < size  # both kinds of worker returned parts
    wait_until(lambda: len(lines(body_out)) >= 1, message='body ran')
    assert len(lines(body_out)) == 1
    if sender == 'celery':
        _settle(result)
