"""The gevent pool's own bookkeeping, in a process gevent has patched (a subprocess: patching is for good)."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

pytest.importorskip('gevent')

KILLED_BEFORE_START = textwrap.dedent(
    """
    from gevent import monkey
    monkey.patch_all()

    import types
    from fastq import Fastq
    from fastq.worker.loop import Loop
    from fastq.worker.pool.green import GeventPool

    app = Fastq('t', broker='memory://', backend='memory://', set_as_current=False)
    loop = Loop()
    lost, results = [], []
    pool = GeventPool(
        app=app, concurrency=2, loop=loop, accept=frozenset({'json'}),
        on_result=lambda job, outcome: results.append(job.id),
        on_lost=lambda job, reason: lost.append((job.id, reason)),
        on_requeue=lambda jobs: None,
    )
    job = types.SimpleNamespace(id=1, started=None, time_limit=None, payload=lambda: 1 / 0)
    pool.submit(job)
    # revoke(terminate=True) in the same loop pass: the hub has not switched to the greenlet yet
    assert pool.kill_job(job, 'revoked')
    for _ in range(20):
        loop.run_once(0.05)
        if lost:
            break
    assert lost == [(1, 'revoked')] and not results, (lost, results)
    assert pool.idle()
    print('ok')
    """
)


def test_a_job_killed_before_its_greenlet_started_is_reported() -> None:
    """gevent never runs a greenlet killed before its first switch, so the `finally` that reports the job
    never ran: it stayed active for good (unsettled, and a warm shutdown waited on it forever)."""
    done = subprocess.run([sys.executable, '-c', KILLED_BEFORE_START], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and done.stdout.strip() == 'ok', done.stderr[-2000:]
