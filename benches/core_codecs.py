"""Quick timings of fastq._core against the Python stack Celery uses (not a test; no assertions).

Run: python benches/core_codecs.py
"""

import base64
import timeit

import kombu.serialization
import kombu.utils.json as kjson
import msgpack
from celery import Celery
from kombu.transport import memory, virtual

from fastq import _core

TASK_BODY = [[1, 2], {'x': 'abc'}, {'callbacks': None, 'errbacks': None, 'chain': None, 'chord': None}]


def nested_document():
    """About 10 KB of typical nested JSON: records with strings, numbers, lists and sub-objects."""
    records = [
        {
            'id': i,
            'name': f'item-{i}',
            'price': 12.5 * i,
            'tags': ['alpha', 'beta', 'gamma'][: i % 3 + 1],
            'active': i % 2 == 0,
            'owner': {'user': f'user{i}', 'email': f'user{i}@example.com', 'score': i / 7},
            'note': 'naïve café' if i % 5 == 0 else None,
        }
        for i in range(52)
    ]
    return {'version': 2, 'records': records, 'meta': {'count': len(records), 'source': 'bench'}}


def default(o):
    raise TypeError(f'Object of type {o.__class__.__name__} is not JSON serializable')


def best(stmt, number):
    # The minimum over many repeats: the machine may be shared, and noise only ever adds time.
    return min(timeit.repeat(stmt, number=number, repeat=15)) / number * 1e6


def compare(label, theirs, ours, number):
    t, o = best(theirs, number), best(ours, number)
    print(f'{label:<44} {t:9.2f} µs  {o:9.2f} µs  x{t / o:5.1f}')


def main():
    doc = nested_document()
    text = kjson.dumps(doc).encode()
    body_text = kjson.dumps(TASK_BODY).encode()
    assert _core.json_dumps(doc, default) == text
    print(f'10 KB document: {len(text)} bytes')
    print(f'{"":<44} {"kombu/stdlib":>12}  {"_core":>12}  speed-up')
    compare(
        'json dumps, task body', lambda: kjson.dumps(TASK_BODY), lambda: _core.json_dumps(TASK_BODY, default), 100_000
    )
    compare(
        'json loads, task body',
        lambda: kjson.loads(body_text),
        lambda: _core.json_loads(body_text, kjson.object_hook),
        100_000,
    )
    compare('json dumps, 10 KB document', lambda: kjson.dumps(doc), lambda: _core.json_dumps(doc, default), 2_000)
    compare(
        'json loads, 10 KB document',
        lambda: kjson.loads(text),
        lambda: _core.json_loads(text, kjson.object_hook),
        2_000,
    )

    packed = msgpack.packb(doc, use_bin_type=True)
    compare(
        'msgpack packb, 10 KB document',
        lambda: msgpack.packb(doc, use_bin_type=True),
        lambda: _core.msgpack_packb(doc),
        5_000,
    )
    compare(
        'msgpack unpackb, 10 KB document',
        lambda: msgpack.unpackb(packed, raw=False),
        lambda: _core.msgpack_unpackb(packed),
        5_000,
    )

    # A whole task message: Celery's as_task_v2 + kombu's publish path, against task_message + to_envelope.
    app = Celery('bench', broker='memory://', set_as_current=False)
    stored = []
    memory.Channel._put = lambda self, queue, message, **kw: stored.append(message)
    virtual.Channel._next_delivery_tag = lambda self: 'tag'

    def celery_message():
        app.send_task('tasks.add', (1, 2), {'x': 'abc'}, task_id='id', reply_to='rt', ignore_result=False)
        return kjson.dumps(stored.pop())  # what the Redis transport does with it

    def fastq_message():
        body, ct, ce = _core.encode_task_body((1, 2), {'x': 'abc'}, None, None, None, None, 'json', default)
        message = _core.task_message(
            task_id='id', name='tasks.add', shadow=None, eta=None, expires=None, group_id=None, group_index=None,
            retries=0, time_limit=None, soft_time_limit=None, root_id='id', parent_id=None, argsrepr='(1, 2)',
            kwargsrepr="{'x': 'abc'}", origin='gen1@host', ignore_result=False, replaced_task_nesting=0,
            stamped_headers=None, stamps={}, extra_headers=None, reply_to='rt', body=body, content_type=ct,
            content_encoding=ce, compression=None,
        )  # fmt: skip
        return message.to_envelope('', 'celery', 0, 2, None, 'tag')

    def celery_build():
        """Only the building: as_task_v2, kombu's serializer, and the envelope the Redis transport dumps."""
        headers, properties, body, _ = app.amqp.as_task_v2(
            'id',
            'tasks.add',
            (1, 2),
            {'x': 'abc'},
            reply_to='rt',
            origin='gen1@host',
            ignore_result=False,
            argsrepr='(1, 2)',
            kwargsrepr="{'x': 'abc'}",
        )
        content_type, content_encoding, data = kombu.serialization.dumps(body, 'json')
        data = data.encode() if isinstance(data, str) else data
        properties.update(
            delivery_mode=2,
            delivery_info={'exchange': '', 'routing_key': 'celery'},
            priority=0,
            body_encoding='base64',
            delivery_tag='tag',
        )
        return kjson.dumps(
            {
                'body': base64.b64encode(data).decode(),
                'content-encoding': content_encoding,
                'content-type': content_type,
                'headers': headers,
                'properties': properties,
            }
        )

    celery_message()
    assert celery_build().encode() == fastq_message()
    compare('task message + envelope (send_task, memory)', celery_message, fastq_message, 2_000)
    compare('task message + envelope (building only)', celery_build, fastq_message, 20_000)
    envelope = fastq_message()
    compare(
        'envelope parse (json.loads vs from_envelope)',
        lambda: kjson.loads(envelope),
        lambda: _core.Message.from_envelope(envelope, kjson.object_hook),
        20_000,
    )


if __name__ == '__main__':
    main()
