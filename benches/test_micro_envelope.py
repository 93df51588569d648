"""Micro benchmarks of the task envelope: fastq's Rust codec vs a pure-Python reference vs kombu + Celery.

`make bench` runs these with pytest-benchmark. Each benchmark also checks its output is right
(`extra_info['correct']`), so a fast wrong answer cannot pass for a speed-up.

    encode: build a protocol-v2 message for add(1, 2) and the kombu JSON envelope Redis/SQLite store
    decode: parse that envelope, then the body, back into (headers, args, kwargs, embed)
"""

from __future__ import annotations

import base64
import json
import uuid
from typing import Any

import pytest

from fastq import _core, protocol
from fastq.serialization import json_default, json_tag_hook

ARGS = (1, 2)
KWARGS = {'flag': True, 'name': 'x' * 20}
TASK_ID = str(uuid.uuid4())
TAG = str(uuid.uuid4())


def fastq_encode() -> bytes:
    message = protocol.build_task_message(
        task_id=TASK_ID,
        name='bench.add',
        args=ARGS,
        kwargs=KWARGS,
        embed={},
        serializer='json',
        compression=None,
        eta=None,
        expires=None,
        reply_to='reply',
        origin='gen1@host',
    )
    return message.to_envelope('', 'celery', 0, 2, None, TAG)


def python_encode() -> bytes:
    """The same document built the obvious way in pure Python (the reference)."""
    body = json.dumps((ARGS, KWARGS, {'callbacks': None, 'errbacks': None, 'chain': None, 'chord': None}))
    headers = {
        'lang': 'py',
        'task': 'bench.add',
        'id': TASK_ID,
        'shadow': None,
        'eta': None,
        'expires': None,
        'group': None,
        'group_index': None,
        'retries': 0,
        'timelimit': [None, None],
        'root_id': TASK_ID,
        'parent_id': None,
        'argsrepr': repr(ARGS),
        'kwargsrepr': repr(KWARGS),
        'origin': 'gen1@host',
        'ignore_result': False,
        'replaced_task_nesting': 0,
        'stamped_headers': None,
        'stamps': {},
    }
    envelope = {
        'body': base64.b64encode(body.encode()).decode(),
        'content-encoding': 'utf-8',
        'content-type': 'application/json',
        'headers': headers,
        'properties': {
            'correlation_id': TASK_ID,
            'reply_to': 'reply',
            'delivery_mode': 2,
            'delivery_info': {'exchange': '', 'routing_key': 'celery'},
            'priority': 0,
            'body_encoding': 'base64',
            'delivery_tag': TAG,
        },
    }
    return json.dumps(envelope).encode()


@pytest.fixture(scope='module')
def celery_encode() -> Any:
    celery = pytest.importorskip('celery')
    from kombu.utils.json import dumps as kombu_dumps

    app = celery.Celery('bench', broker='memory://', set_as_current=False)
    amqp = app.amqp
    from kombu.serialization import dumps as serialize

    def encode() -> bytes:
        # What Celery + kombu do per message before the Redis LPUSH: as_task_v2, serialize, envelope, dumps.
        msg = amqp.as_task_v2(TASK_ID, 'bench.add', ARGS, KWARGS, reply_to='reply', origin='gen1@host')
        content_type, content_encoding, body = serialize(msg.body, 'json')
        envelope = {
            'body': base64.b64encode(body.encode() if isinstance(body, str) else body).decode(),
            'content-encoding': content_encoding,
            'content-type': content_type,
            'headers': msg.headers,
            'properties': dict(
                msg.properties,
                delivery_mode=2,
                delivery_info={'exchange': '', 'routing_key': 'celery'},
                priority=0,
                body_encoding='base64',
                delivery_tag=TAG,
            ),
        }
        return kombu_dumps(envelope).encode()

    return encode


def test_encode_fastq(benchmark: Any) -> None:
    out = benchmark(fastq_encode)
    benchmark.extra_info['correct'] = json.loads(out) == json.loads(python_encode())
    assert benchmark.extra_info['correct']


def test_encode_python_reference(benchmark: Any) -> None:
    out = benchmark(python_encode)
    benchmark.extra_info['correct'] = out == fastq_encode()
    assert benchmark.extra_info['correct']


def test_encode_celery_kombu(benchmark: Any, celery_encode: Any) -> None:
    out = benchmark(celery_encode)
    c, f = json.loads(out), json.loads(fastq_encode())
    benchmark.extra_info['correct'] = c['headers']['task'] == f['headers']['task'] and c['body'] == f['body']
    assert benchmark.extra_info['correct']


ENVELOPE = python_encode()
ACCEPT = frozenset({'application/json'})


def fastq_decode() -> tuple[dict[str, Any], list[Any], dict[str, Any], dict[str, Any]]:
    message = _core.Message.from_envelope(ENVELOPE, None)
    args, kwargs, embed = protocol.decode_body(message.body, message.content_type, None, ACCEPT)
    return message.headers, args, kwargs, embed


def python_decode() -> tuple[dict[str, Any], list[Any], dict[str, Any], dict[str, Any]]:
    envelope = json.loads(ENVELOPE)
    args, kwargs, embed = json.loads(base64.b64decode(envelope['body']), object_hook=_hook)
    return envelope['headers'], args, kwargs, embed


def _hook(o: dict[str, Any]) -> Any:
    return json_tag_hook(o) if o.keys() == {'__type__', '__value__'} else o


def test_decode_fastq(benchmark: Any) -> None:
    out = benchmark(fastq_decode)
    benchmark.extra_info['correct'] = out == python_decode()
    assert benchmark.extra_info['correct']


def test_decode_python_reference(benchmark: Any) -> None:
    out = benchmark(python_decode)
    benchmark.extra_info['correct'] = out == fastq_decode()
    assert benchmark.extra_info['correct']


def test_decode_kombu(benchmark: Any) -> None:
    from kombu.utils.json import loads as kombu_loads

    def decode() -> Any:
        envelope = kombu_loads(ENVELOPE)
        args, kwargs, embed = kombu_loads(base64.b64decode(envelope['body']))
        return envelope['headers'], args, kwargs, embed

    out = benchmark(decode)
    benchmark.extra_info['correct'] = out == fastq_decode()
    assert benchmark.extra_info['correct']


def test_json_body_fastq(benchmark: Any) -> None:
    doc = [list(range(100)), {f'k{i}': {'v': [i, str(i), None, True, 1.5]} for i in range(50)}]
    out = benchmark(_core.json_dumps, doc, json_default)
    benchmark.extra_info['correct'] = out == json.dumps(doc).encode()
    assert benchmark.extra_info['correct']


def test_json_body_stdlib(benchmark: Any) -> None:
    doc = [list(range(100)), {f'k{i}': {'v': [i, str(i), None, True, 1.5]} for i in range(50)}]
    benchmark(json.dumps, doc, default=json_default)


# --- a group's envelopes: 1,000 members of one task, per call ------------------------------------------------

GROUP = 1000
_IDS = [f'{i:08d}-0000-4000-8000-000000000000' for i in range(2 * GROUP)]
_CALLS = [
    ('bench.add', None, (i, i), {}, {'group_id': 'g', 'group_index': i, 'reply_to': 'reply'}, {}) for i in range(GROUP)
]


def _fields(task_id: Any, root_id: Any, args: Any, group_index: Any, tag: Any) -> tuple[Any, ...]:
    """`task_envelopes`' 35 fields for a group member of `bench.add` (None ids: the template)."""
    return (
        task_id, 'bench.add', None, None, None, 'g' if task_id else None, group_index, 0, None, None, root_id,
        None, None, None, 'gen1@host', False, 0, None, {}, {'fastq_sent_at': 1.5}, 'reply', args, {}, None, None,
        None, None, 'json', None, '', 'celery', 0, 2, None, tag,
    )  # fmt: skip


_TEMPLATE = _fields(None, None, (), None, None)


def group_uniform() -> list[bytes]:
    """A group as `send_batch` writes one of alike calls: Rust reads the calls, one template."""
    return protocol.uniform_envelopes(_TEMPLATE, _CALLS, 0, GROUP, _IDS)[0]


def group_general() -> list[bytes]:
    """The same group the general way: a message tuple per member built in Python, then one Rust call."""
    return protocol.task_envelopes(
        [_fields(_IDS[2 * i], _IDS[2 * i], (i, i), i, _IDS[2 * i + 1]) for i in range(GROUP)]
    )


def test_group_envelopes_uniform(benchmark: Any) -> None:
    out = benchmark(group_uniform)
    benchmark.extra_info['correct'] = out == group_general()
    assert benchmark.extra_info['correct']


def test_group_envelopes_general(benchmark: Any) -> None:
    out = benchmark(group_general)
    benchmark.extra_info['correct'] = len(out) == GROUP and json.loads(out[7])['headers']['group_index'] == 7
    assert benchmark.extra_info['correct']
