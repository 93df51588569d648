"""Micro benchmarks of the worker's two compiled steps per task, against the ways they were done before.

    head: the parent reads the dozen headers it acts on (`_core.task_head`: the whole envelope checked,
          Python objects made for those headers only) vs decoding the envelope whole (`Message.from_envelope`,
          what the parent did before) vs the stdlib's `json.loads`
    job:  a pool child goes from the stored envelope to (args, kwargs, request) (`_core.job_request`: one
          call) vs the general path it falls back to (`from_envelope`, `request_of`, `decode_body`) vs the
          stdlib's `json.loads` and `base64` with the same request built from their dicts
    fetch: the parent turns a Redis fetch reply (a window of 32) into deliveries
          (`_core.fetched_deliveries`: one compiled loop) vs the Python loop over `task_head` it replaced

`make bench` runs these with pytest-benchmark; each checks its output against the others
(`extra_info['correct']`), so a fast wrong answer cannot pass for a speed-up.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from typing import Any

from fastq import _core, protocol
from fastq.brokers.base import Delivery
from fastq.brokers.redis.consumer import _counts
from fastq.serialization import json_tag_hook
from fastq.worker.job import embed_into, request_of
from test_micro_envelope import ACCEPT, ENVELOPE

QUEUE, HOSTNAME = 'celery', 'celery@bench'


def _picked(headers: dict[str, Any], content_type: str) -> tuple[tuple[Any, ...], str]:
    return tuple(headers.get(name) for name in _core.TASK_HEAD_FIELDS), content_type


def head_fastq() -> tuple[tuple[Any, ...], str]:
    head = _core.task_head(ENVELOPE)
    assert head is not None
    return head.fields, head.content_type


def head_full_decode() -> tuple[tuple[Any, ...], str]:
    message = _core.Message.from_envelope(ENVELOPE, None)
    return _picked(message.headers, message.content_type)


def head_stdlib() -> tuple[tuple[Any, ...], str]:
    envelope = json.loads(ENVELOPE)
    return _picked(envelope['headers'], envelope['content-type'])


def checked(benchmark: Any, run: Callable[[], Any], *others: Callable[[], Any]) -> None:
    """Benchmark `run` and check its output equals each of the `others`' (`extra_info['correct']`)."""
    out = benchmark(run)
    benchmark.extra_info['correct'] = all(out == other() for other in others)
    assert benchmark.extra_info['correct']


def test_head_fastq(benchmark: Any) -> None:
    checked(benchmark, head_fastq, head_stdlib, head_full_decode)


def test_head_full_decode(benchmark: Any) -> None:
    checked(benchmark, head_full_decode, head_stdlib)


def test_head_stdlib(benchmark: Any) -> None:
    checked(benchmark, head_stdlib, head_fastq)


Job = tuple[list[Any], dict[str, Any], dict[str, Any]]


def job_fastq() -> Job:
    out = _core.job_request(ENVELOPE, QUEUE, False, HOSTNAME, ACCEPT, json_tag_hook)
    assert out is not None
    return out


def job_general() -> Job:
    message = _core.Message.from_envelope(ENVELOPE, None)
    request = request_of(message, QUEUE, False, HOSTNAME)
    args, kwargs, embed = protocol.decode_body(message.body, message.content_type, None, ACCEPT)
    embed_into(request, embed)
    return args, kwargs, request


def job_stdlib() -> Job:
    envelope = json.loads(ENVELOPE)
    request = _core.task_request(envelope['headers'], envelope['properties'], QUEUE, False, HOSTNAME)
    args, kwargs, embed = json.loads(base64.b64decode(envelope['body']), object_hook=_hook)
    embed_into(request, embed)
    return args, kwargs, request


def _hook(o: dict[str, Any]) -> Any:
    return json_tag_hook(o) if o.keys() == {'__type__', '__value__'} else o


def test_job_fastq(benchmark: Any) -> None:
    checked(benchmark, job_fastq, job_general, job_stdlib)
    assert job_fastq()[2]['delivery_info']['routing_key'] == QUEUE


def test_job_general(benchmark: Any) -> None:
    checked(benchmark, job_general, job_fastq)


def test_job_stdlib(benchmark: Any) -> None:
    checked(benchmark, job_stdlib, job_fastq)


#: A fetch script's reply for a window of 32: (1-based queue key index, tag, envelope) triples.
REPLY = [item for i in range(32) for item in (1, f'tag-{i:04d}'.encode(), ENVELOPE)]
Fetched = list[tuple[Any, ...]]


def _undecoded(tag: str, queue: str, data: bytes) -> Delivery:
    raise AssertionError('every envelope here has a head')


def _summary(deliveries: list[Delivery]) -> Fetched:
    return [(d.tag, d.queue, d.raw, d.redelivered, d.deliveries, d.task_id) for d in deliveries]


def fetch_fastq() -> Fetched:
    out, _ = _core.fetched_deliveries(REPLY, [QUEUE], 1.0, Delivery, _undecoded, _counts)
    return _summary(out)


def fetch_python() -> Fetched:
    """The loop `RedisConsumer._deliveries` ran before it was compiled."""
    out, keys, tags = [], [QUEUE], []
    for i in range(0, len(REPLY), 3):
        queue = keys[int(REPLY[i]) - 1]
        tag = REPLY[i + 1].decode()
        payload = bytes(REPLY[i + 2])
        head = _core.task_head(payload)
        assert head is not None
        fields = head.fields
        redelivered, deliveries = _counts(fields[14], fields[15])
        out.append(Delivery(tag, queue, None, payload, redelivered, deliveries, None, 1.0, head))
        tags.append(tag)
    return _summary(out)


def test_fetch_fastq(benchmark: Any) -> None:
    checked(benchmark, fetch_fastq, fetch_python)


def test_fetch_python(benchmark: Any) -> None:
    checked(benchmark, fetch_python, fetch_fastq)
