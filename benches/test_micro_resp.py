"""Micro benchmarks of framing a batch publish for Redis: one LPUSH of 1,000 task envelopes of ~1 KB.

fastq's `_core.resp_pack` (what `fastq.brokers.redis.connection.pack` calls) against hiredis's own packer
and redis-py's pure-Python one, the way kombu's Redis transport sends commands. Each checks its bytes are the
same as hiredis's (`extra_info['correct']`).
"""

from __future__ import annotations

from typing import Any

import hiredis
import redis.connection

from fastq import _core
from fastq.brokers.redis.connection import PACK_BUFFER, PASS_THROUGH

ENVELOPES = [(b'{"body": "W1sxLCAyXSwge31d", "headers": {"id": "%04d"}}' % i).ljust(1000, b' ') for i in range(1000)]
COMMAND = ('LPUSH', 'celery', *ENVELOPES)
EXPECTED = hiredis.pack_command(COMMAND)


def test_resp_pack_fastq(benchmark: Any) -> None:
    out = benchmark(lambda: _core.resp_pack([COMMAND], PACK_BUFFER, PASS_THROUGH))
    benchmark.extra_info['correct'] = b''.join(out) == EXPECTED
    assert benchmark.extra_info['correct']


def test_resp_pack_hiredis(benchmark: Any) -> None:
    out = benchmark(lambda: hiredis.pack_command(COMMAND))
    benchmark.extra_info['correct'] = out == EXPECTED
    assert benchmark.extra_info['correct']


def test_resp_pack_redis_py(benchmark: Any) -> None:
    conn = redis.connection.Connection()
    packer = redis.connection.PythonRespSerializer(conn._buffer_cutoff, conn.encoder.encode)
    out = benchmark(lambda: packer.pack(*COMMAND))
    benchmark.extra_info['correct'] = b''.join(out) == EXPECTED
    assert benchmark.extra_info['correct']
