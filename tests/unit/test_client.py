"""The client side of sending: cached send plans, envelopes built by Rust in batches, group publishing in one
batch, and the asyncio client (`adelay`, `aapply_async`, `aget`) on the memory, SQLite and Redis brokers.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from fastq import Fastq, _core, group, signals, states
from fastq.brokers.base import Outgoing
from fastq.exceptions import EncodeError, TimeoutError
from fastq.result import AsyncResult, GroupResult
from fastq.routing import Broadcast, Queue
from fastq.serialization import json_default
from fastq.utils.text import saferepr


@pytest.fixture
def app(any_app: Fastq) -> Fastq:
    return any_app


def _tasks(app: Fastq) -> Any:
    @app.task(name='client.add', shared=False)
    def add(x: int, y: int) -> int:
        return x + y

    @app.task(name='client.noop', shared=False, ignore_result=True)
    def noop() -> None:
        return None

    return add, noop


def _memory_payloads(app: Fastq) -> list[dict[str, Any]]:
    from fastq.brokers.memory import MemoryBroker

    broker = app.broker
    assert isinstance(broker, MemoryBroker)
    return [json.loads(m.payload) for m in broker._state.messages.values()]


# --- envelopes --------------------------------------------------------------------------------------------


FIELDS: dict[str, Any] = dict(
    task_id='tid',
    name='t.add',
    shadow=None,
    eta=None,
    expires=None,
    group_id=None,
    group_index=None,
    retries=0,
    time_limit=None,
    soft_time_limit=None,
    root_id='tid',
    parent_id=None,
    argsrepr=None,
    kwargsrepr=None,
    origin='gen1@host',
    ignore_result=False,
    replaced_task_nesting=0,
    stamped_headers=None,
    stamps={},
    extra_headers=None,
    reply_to='oid',
    args=(1, 2),
    kwargs={},
    callbacks=None,
    errbacks=None,
    chain=None,
    chord=None,
    serializer='json',
    compression=None,
    exchange='',
    routing_key='celery',
    priority=0,
    delivery_mode=2,
    expiration=None,
    delivery_tag='tag',
)


class _Unrepresentable:
    def __repr__(self) -> str:
        raise RuntimeError('no repr')

    def __json__(self) -> str:
        return 'x'


@pytest.mark.parametrize(
    'changes',
    [
        {},
        {'args': (), 'kwargs': {'a': [1, 2]}, 'serializer': 'msgpack', 'compression': 'application/x-gzip'},
        {'extra_headers': {'x': 1, 'task': 'replaced', 'compression': 'stale'}, 'compression': 'application/x-bz2'},
        {'extra_headers': {'x': 1}, 'stamped_headers': ['s'], 'stamps': {'s': [1]}, 'time_limit': 10},
        {'soft_time_limit': 5.5, 'group_id': 'g', 'group_index': 3, 'eta': '2030-01-01T00:00:00+00:00'},
        {'expiration': '1000', 'priority': 7, 'exchange': 'ex', 'delivery_mode': 1},
        {'args': ('x' * 5000,)},
        {'args': (1,), 'argsrepr': 'hidden', 'kwargsrepr': 'hidden too'},
        {'args': (_Unrepresentable(),)},
        {'callbacks': [{'task': 'a', 'args': [], 'kwargs': {}, 'options': {}}], 'chord': {'task': 'b'}},
    ],
)
def test_task_envelopes_match_task_message_then_to_envelope(changes: dict[str, Any]) -> None:
    """One definition of the format: the batch builder writes the bytes the two-step path writes."""
    f = {**FIELDS, **changes}
    body, content_type, encoding = _core.encode_task_body(
        f['args'], f['kwargs'], f['callbacks'], f['errbacks'], f['chain'], f['chord'], f['serializer'], json_default
    )
    message = _core.task_message(
        f['task_id'], f['name'], f['shadow'], f['eta'], f['expires'], f['group_id'], f['group_index'], f['retries'],
        f['time_limit'], f['soft_time_limit'], f['root_id'], f['parent_id'],
        f['argsrepr'] if f['argsrepr'] is not None else saferepr(f['args']),
        f['kwargsrepr'] if f['kwargsrepr'] is not None else saferepr(f['kwargs']),
        f['origin'], f['ignore_result'], f['replaced_task_nesting'], f['stamped_headers'], f['stamps'],
        f['extra_headers'], f['reply_to'], body, content_type, encoding, f['compression'],
    )  # fmt: skip
    expected = message.to_envelope(
        f['exchange'], f['routing_key'], f['priority'], f['delivery_mode'], f['expiration'], f['delivery_tag']
    )
    assert _core.task_envelopes([tuple(f.values())], json_default, saferepr) == [expected]


def test_task_envelopes_errors() -> None:
    with pytest.raises(ValueError, match='35 fields'):
        _core.task_envelopes([(1, 2)], None, saferepr)
    with pytest.raises(TypeError, match='not JSON serializable'):
        _core.task_envelopes([tuple({**FIELDS, 'args': (object(),)}.values())], None, saferepr)
    with pytest.raises(ValueError, match='serializer'):
        _core.task_envelopes([tuple({**FIELDS, 'serializer': 'pickle'}.values())], None, saferepr)


def test_uniform_run_and_envelopes() -> None:
    """The run stops at the first call with another name, task type, options object or a keyword outside the
    plain ones; each envelope is the template's with the call's ids, arguments and keywords."""
    from fastq.sending import PLAIN_KEYWORDS

    task, options = object(), {}
    calls: list[Any] = [('t.add', task, (i,), {}, {'group_index': i}, options) for i in range(4)]
    assert _core.uniform_run(calls, 0, PLAIN_KEYWORDS) == 4 and _core.uniform_run(calls, 4, PLAIN_KEYWORDS) == 0
    for odd in [
        ('t.other', task, (), {}, {}, options),
        ('t.add', object(), (), {}, {}, options),
        ('t.add', task, (), {}, {}, {}),
        ('t.add', task, (), {}, {'countdown': 1}, options),
        ('t.add', task, (), {}, None, options),
    ]:
        assert _core.uniform_run([*calls[:2], odd, *calls[2:]], 0, PLAIN_KEYWORDS) == 2
        assert _core.uniform_run([*calls[:2], odd, *calls[2:]], 3, PLAIN_KEYWORDS) == 2
    with pytest.raises(ValueError, match='6 items'):
        _core.uniform_run([('t.add',)], 0, PLAIN_KEYWORDS)

    template = tuple({**FIELDS, 'task_id': None, 'root_id': None, 'delivery_tag': None}.values())
    calls[1] = ('t.add', task, (1,), {'k': 1}, {'task_id': 'own', 'root_id': 'r', 'reply_to': 'rt'}, options)
    ids = [f'x{i}' for i in range(8)]
    envelopes, task_ids = _core.uniform_envelopes(template, calls, 1, 3, ids, json_default, saferepr)
    assert task_ids == ['own', 'x4']
    expected = [
        {**FIELDS, 'task_id': 'own', 'root_id': 'r', 'reply_to': 'rt', 'args': (1,), 'kwargs': {'k': 1},
         'delivery_tag': 'x3'},
        {**FIELDS, 'task_id': 'x4', 'root_id': 'x4', 'group_index': 2, 'args': (2,), 'delivery_tag': 'x5'},
    ]  # fmt: skip
    assert envelopes == _core.task_envelopes([tuple(f.values()) for f in expected], json_default, saferepr)
    with pytest.raises(ValueError, match='ids'):
        _core.uniform_envelopes(template, calls, 0, 4, ids[:7], json_default, saferepr)


def test_uuid4s() -> None:
    ids = _core.uuid4s(bytes(range(32)))
    assert ids == [str(uuid.UUID(bytes=bytes(range(i, i + 16)), version=4)) for i in (0, 16)]
    assert all(uuid.UUID(i).version == 4 for i in _core.uuid4s(uuid.uuid4().bytes * 4))
    with pytest.raises(ValueError, match='multiple of 16'):
        _core.uuid4s(b'x' * 17)


def test_before_task_publish_as_celery_sends_it(memory_app: Fastq) -> None:
    """Celery's arguments (the body's args a tuple, the retry policy in force) and properties a receiver
    sets are how the message is sent (Celery passes them to the producer)."""
    add, _ = _tasks(memory_app)
    seen: list[dict[str, Any]] = []

    def receiver(**kwargs: Any) -> None:
        seen.append(kwargs)
        kwargs['properties']['priority'] = 7

    signals.before_task_publish.connect(receiver)
    try:
        add.delay(2, 3)
        add.apply_async((1, 1), retry_policy={'max_retries': 1})
    finally:
        signals.before_task_publish.disconnect(receiver)
    assert seen[0]['body'][0] == (2, 3)
    defaults = memory_app.conf.task_publish_retry_policy
    assert seen[0]['retry_policy'] == defaults and seen[1]['retry_policy'] == {**defaults, 'max_retries': 1}
    payloads = _memory_payloads(memory_app)
    assert [p['properties']['priority'] for p in payloads] == [7, 7]
    assert all('priority' not in p['headers'] for p in payloads)
    assert [q.name for q in seen[0]['declare']] == [memory_app.conf.task_default_queue]


def test_before_task_publish_properties_hold_celerys_publish_options(memory_app: Fastq) -> None:
    """`properties` carries what Celery hands kombu besides the message's own: the priority asked for and
    the expiration in seconds; an expiration a receiver sets (seconds) goes on the wire in milliseconds."""
    add, _ = _tasks(memory_app)
    seen: list[dict[str, Any]] = []

    def receiver(properties: dict[str, Any], **kwargs: Any) -> None:
        seen.append({k: v for k, v in properties.items() if k in ('priority', 'expiration')})
        if len(seen) == 3:
            properties['expiration'] = 30

    signals.before_task_publish.connect(receiver)
    try:
        add.apply_async((1, 1), priority=3)
        add.apply_async((1, 1), expires=60)
        add.delay(1, 1)
    finally:
        signals.before_task_publish.disconnect(receiver)
    assert seen == [{'priority': 3}, {'expiration': 60}, {}]
    payloads = _memory_payloads(memory_app)
    assert [p['properties'].get('expiration') for p in payloads] == [None, '60000', '30000']


def test_before_task_publish_declare_as_celery(memory_app: Fastq) -> None:
    """`declare` is what the publish declares, as Celery passes it: the configured Queue published to, none for a
    Broadcast queue, the `declare` option when given."""
    hi, extra = Queue('hi', routing_key='hi'), Queue('extra')
    memory_app.conf.task_queues = [Queue('celery'), hi, Broadcast('bc')]
    add, _ = _tasks(memory_app)
    seen: list[list[Any]] = []

    def receiver(declare: list[Any], **kwargs: Any) -> None:
        seen.append(declare)

    signals.before_task_publish.connect(receiver)
    try:
        add.apply_async((1, 1), queue='hi')
        add.apply_async((1, 1), queue='bc')
        add.apply_async((1, 1), declare=[extra])
    finally:
        signals.before_task_publish.disconnect(receiver)
    assert seen[0] == [hi] and seen[0][0] is hi
    assert seen[1] == []
    assert seen[2] == [extra]


def test_envelope_same_with_and_without_publish_signals(memory_app: Fastq) -> None:
    """A before_task_publish receiver gets the headers as a dict (built in Python), and the bytes stay the same."""
    add, _ = _tasks(memory_app)
    add.apply_async((1, 2), task_id='same-id', countdown=30, priority=3, headers={'h': 1})
    fast = _memory_payloads(memory_app)[-1]
    seen: list[dict[str, Any]] = []

    def receiver(headers: dict[str, Any], **kwargs: Any) -> None:
        seen.append(headers)

    signals.before_task_publish.connect(receiver)
    try:
        add.apply_async((1, 2), task_id='same-id', countdown=30, priority=3, headers={'h': 1})
    finally:
        signals.before_task_publish.disconnect(receiver)
    slow = _memory_payloads(memory_app)[-1]
    assert seen and seen[0]['id'] == 'same-id'
    for doc in (fast, slow):
        doc['properties'].pop('delivery_tag')
        doc['headers'].pop('eta')  # a countdown from two different moments
        doc['headers'].pop('expires', None)
        doc['headers'].pop('fastq_sent_at')  # sent at two different moments
    assert fast == slow


def test_send_task_leaves_ignore_result_to_the_task_with_publish_signals_too(memory_app: Fastq) -> None:
    """`send_task` sends `ignore_result: None` (the worker then uses the task's setting), as Celery's; with a
    before_task_publish receiver connected fastq's sent False, so a task declared ignore_result=True stored its
    result."""
    seen: list[Any] = []

    def receiver(headers: dict[str, Any], **kwargs: Any) -> None:
        seen.append(headers['ignore_result'])

    signals.before_task_publish.connect(receiver)
    try:
        memory_app.send_task('tasks.anything', (1,))
        memory_app.send_task('tasks.anything', (1,), ignore_result=True)
    finally:
        signals.before_task_publish.disconnect(receiver)
    assert seen == [None, True]
    assert [doc['headers']['ignore_result'] for doc in _memory_payloads(memory_app)[-2:]] == [None, True]


# --- send plans ---------------------------------------------------------------------------------------------


def _queues(app: Fastq) -> list[str]:
    from fastq.brokers.memory import MemoryBroker

    broker = app.broker
    assert isinstance(broker, MemoryBroker)
    return [m.queue for m in broker._state.messages.values()]


@pytest.mark.parametrize(
    'kw',
    [
        {'reply_to': None, 'group_id': 'g', 'group_index': 3},
        {'reply_to': 'other-reply', 'group_id': 'g', 'group_index': 0, 'root_id': 'r'},
        {'root_id': None},
        {},
    ],
)
@pytest.mark.parametrize('options', [{}, {'priority': 7, 'time_limit': 5, 'headers': {'x': 1}, 'queue': 'q'}])
def test_plain_preparation_is_the_same_message(memory_app: Fastq, kw: dict[str, Any], options: dict[str, Any]) -> None:
    """A group member's message, prepared without looking up the keywords it cannot have, is the one the
    general path prepares."""
    from fastq import sending

    add, _ = _tasks(memory_app)
    assert kw.keys() <= sending.PLAIN_KEYWORDS
    context = sending._Context(memory_app)
    plan = sending.plan_for(memory_app, add.name, add.name, add, options, (1, 2), {})
    general = context.prepare(plan, add.name, (1, 2), {}, kw, 'tid', 'tag')
    plain = context.prepare_plain(plan, add.name, (1, 2), {}, kw, 'tid', 'tag', 0.0)
    assert plain.fields == general.fields
    assert (plain.eta, plain.result.id, plain.result.ignored) == (
        general.eta,
        general.result.id,
        general.result.ignored,
    )


@pytest.mark.parametrize(
    ('options', 'alike'),
    [
        ({}, True),
        ({'priority': 7, 'headers': {'x': 1}, 'queue': 'q', 'compression': 'gzip', 'soft_time_limit': 3}, False),
        ({'priority': 7, 'headers': {'x': 1}, 'queue': 'q', 'compression': 'gzip'}, True),
    ],
)
@pytest.mark.parametrize('frozen', [False, True], ids=['fresh', 'frozen'])
def test_a_batch_of_alike_calls_is_the_general_batch(
    memory_app: Fastq, monkeypatch: pytest.MonkeyPatch, options: dict[str, Any], alike: bool, frozen: bool
) -> None:
    """A group of one task, whose envelopes Rust writes from one template (`sending._send_uniform`), puts on
    the broker byte for byte what the general path puts there for the same ids and clock (a time limit given
    to the group is a keyword of each call: the general path sends that one)."""
    from fastq import protocol, sending

    add, noop = _tasks(memory_app)
    monkeypatch.setattr(sending.time, 'time', lambda: 1_700_000_000.25)
    counter = iter(range(10**6))
    monkeypatch.setattr(protocol, 'new_ids', lambda n: [f'id-{next(counter)}' for _ in range(n)])
    uniform = sending._send_uniform

    def publish(general: bool) -> tuple[list[bytes], list[Any]]:
        nonlocal counter
        counter = iter(range(10**6))
        memory_app.broker.purge('celery')
        memory_app.broker.purge('q')
        taken: list[bool] = []

        def watched(*args: Any) -> Any:
            sent = uniform(*args)
            taken.append(sent is not None)
            return sent

        monkeypatch.setattr(sending, '_send_uniform', (lambda *a: None) if general else watched)
        sigs = [add.s(i, y=i) if i % 3 == 0 else add.s(i, i) for i in range(7)]
        sigs += [add.s(i, i) for i in range(3)]
        if frozen:  # own task ids (and so the keyword task_id), as a group frozen before it is sent
            for i, sig in enumerate(sigs):
                sig.options['task_id'] = f'own-{i}'
        result = group(sigs).apply_async(task_id='g1', **options)
        single = group(noop.s(), noop.s()).apply_async(task_id='g2')
        assert taken == ([] if general else [alike, True])
        payloads = [m.payload for m in memory_app.broker._state.messages.values()]  # type: ignore[attr-defined]
        described = [(r.id, r.ignored) for r in [*result.results, *single.results]]
        return payloads, described

    assert publish(general=False) == publish(general=True)


def test_results_of_a_batch_are_made_as_init_makes_them(memory_app: Fastq) -> None:
    made = AsyncResult('t1', app=memory_app, task_name='client.add')
    made.ignored, made.sent_at = True, 5.0
    [fast] = AsyncResult._of_sent(['t1'], memory_app, 'client.add', True, 5.0)
    assert type(fast) is AsyncResult and vars(fast) == vars(made)


def test_plan_follows_settings_and_task_attributes(memory_app: Fastq) -> None:
    add, _ = _tasks(memory_app)
    add.delay(1, 1)
    memory_app.conf.task_default_queue = 'other'
    add.delay(1, 1)
    add.queue = 'own'  # changed at runtime: the next call sees it
    add.delay(1, 1)
    add.queue = None
    add.apply_async((1, 1), queue='given')
    assert _queues(memory_app) == ['celery', 'other', 'own', 'given']


def test_router_functions_see_every_call(memory_app: Fastq) -> None:
    def route(name: str, args: Any, kwargs: Any, options: Any, task: Any = None, **kw: Any) -> Any:
        return {'queue': f'q{args[0]}'}

    memory_app.conf.task_routes = [route]
    add, _ = _tasks(memory_app)
    add.delay(1, 1)
    add.delay(2, 2)
    assert _queues(memory_app) == ['q1', 'q2']


def test_unhashable_options_are_not_cached(memory_app: Fastq) -> None:
    add, _ = _tasks(memory_app)
    add.apply_async((1, 1), headers={'a': [1]})
    add.apply_async((1, 1), headers={'a': [2]})
    assert [p['headers']['a'] for p in _memory_payloads(memory_app)] == [[1], [2]]


def test_sending_through_a_producer_from_the_producer_pool(memory_app: Fastq) -> None:
    """The Calling guide's connection reuse: `with app.producer_pool.acquire(block=True) as producer:` then
    `apply_async(..., producer=producer)` (or Celery's old `publisher=`, and `app.amqp.publisher_pool`) sends
    the message a plain call sends."""
    add, _ = _tasks(memory_app)
    assert memory_app.producer_pool is memory_app.amqp.producer_pool is memory_app.amqp.publisher_pool
    with memory_app.producer_pool.acquire(block=True) as producer:
        assert producer.connection.as_uri() == 'memory://'
        add.apply_async((1, 1), task_id='a', producer=producer)
        add.apply_async((1, 1), task_id='b', publisher=producer)
    memory_app.producer_pool.release(memory_app.producer_pool.acquire())
    add.apply_async((1, 1), task_id='c')
    sent = _memory_payloads(memory_app)
    for p in sent:
        p['headers'].pop('id'), p['headers'].pop('root_id'), p['headers'].pop('fastq_sent_at')
        p['properties'].pop('correlation_id'), p['properties'].pop('delivery_tag')
    assert sent[0] == sent[1] == sent[2]


def test_connection_or_acquire_for_the_faqs_connection_reuse(memory_app: Fastq) -> None:
    """The FAQ's "How can I reuse the same connection when calling tasks?": `with app.connection_or_acquire()
    as conn:` then `apply_async(..., connection=conn)`; given a connection, the same one back (Celery's
    FallbackContext), and `default_connection` its older name. fastq had neither (AttributeError)."""
    add, _ = _tasks(memory_app)
    with memory_app.connection_or_acquire() as conn:
        assert conn.as_uri() == 'memory://'
        add.apply_async((1, 1), task_id='a', connection=conn)
        with memory_app.connection_or_acquire(conn) as same, memory_app.default_connection(conn) as again:
            assert same is conn and again is conn
    assert [p['headers']['id'] for p in _memory_payloads(memory_app)] == ['a']


# --- batch publishing -----------------------------------------------------------------------------------------


def test_group_is_one_publish(app: Fastq, monkeypatch: pytest.MonkeyPatch) -> None:
    add, _ = _tasks(app)
    batches: list[int] = []
    publish = app.broker.publish

    def counting(batch: Any) -> None:
        batches.append(len(batch))
        publish(batch)

    monkeypatch.setattr(app.broker, 'publish', counting)
    result = group(add.s(i, i) for i in range(2500)).apply_async()
    assert batches == [2500]
    assert app.broker.qsize('celery') == 2500
    assert len(result) == 2500 and len({r.id for r in result}) == 2500


def test_group_messages_in_order_with_their_ids(app: Fastq) -> None:
    """Every message carries the group id, its index and its own task id, in the group's order (also across
    Redis LPUSH chunks); GroupResult.save/restore are untouched by batching."""
    add, _ = _tasks(app)
    n = 2100
    result = group(add.s(i, i) for i in range(n)).apply_async()
    consumer = app.broker.consumer(['celery'], 'test')
    seen: list[tuple[str, int, str]] = []
    while len(seen) < n:
        for delivery in consumer.fetch(500, 5.0):
            assert delivery.message is not None
            h = delivery.message.headers
            seen.append((h['group'], h['group_index'], h['id']))
            consumer.ack([delivery.tag])
    consumer.close()
    assert seen == [(result.id, i, r.id) for i, r in enumerate(result.results)]
    if app.backend.persistent:
        result.save()
        restored = GroupResult.restore(result.id, app=app)
        assert restored is not None and [r.id for r in restored] == [r.id for r in result.results]


def test_group_with_workflows_and_options(memory_app: Fastq) -> None:
    add, _ = _tasks(memory_app)
    g = group(add.s(1, 1), add.s(2, 2).set(queue='q2', priority=5), add.s(3, 3) | add.s(4), add.si(5, 5))
    result = g.apply_async(countdown=10)
    payloads = _memory_payloads(memory_app)
    by_id = {p['headers']['id']: p for p in payloads}
    assert len(result) == 4
    assert by_id[result.results[1].id]['properties']['priority'] == 5
    assert _queues(memory_app).count('q2') == 1
    assert all(p['headers']['eta'] for p in payloads)  # the group's countdown reached every task
    assert [by_id[r.id]['headers']['group_index'] for r in result.results if r.id in by_id] == [0, 1, 3]


# --- the asyncio client -----------------------------------------------------------------------------------


def _store_later(app: Fastq, task_id: str, value: Any, state: str = states.SUCCESS, delay: float = 0.2) -> None:
    def store() -> None:
        time.sleep(delay)
        app.backend.store_result(task_id, value, state)

    threading.Thread(target=store, daemon=True).start()


def test_adelay_publishes_and_aget_waits(app: Fastq) -> None:
    add, noop = _tasks(app)

    async def main() -> None:
        result = await add.adelay(2, 3)
        assert app.broker.qsize('celery') == 1  # on the broker once adelay returned
        _store_later(app, result.id, 5)
        assert await result.aget(timeout=30) == 5
        assert await result.aget(timeout=0) == 5  # cached
        assert (await noop.adelay()).ignored
        other = await add.aapply_async((1, 1), task_id='fixed-id', queue='q9')
        assert other.id == 'fixed-id' and app.broker.qsize('q9') == 1

    asyncio.run(main())


def test_aget_raises_the_task_error_and_times_out(app: Fastq) -> None:
    add, _ = _tasks(app)

    async def main() -> None:
        result = await add.adelay(1, 1)
        with pytest.raises(TimeoutError):
            await result.aget(timeout=0.3)
        _store_later(app, result.id, KeyError('nope'), states.FAILURE)
        with pytest.raises(KeyError):
            await result.aget(timeout=30)
        assert isinstance(await result.aget(propagate=False), KeyError)

    asyncio.run(main())


def test_many_concurrent_agets_in_one_loop(app: Fastq) -> None:
    add, _ = _tasks(app)

    async def one(i: int) -> int:
        result = await add.adelay(i, i)
        _store_later(app, result.id, i + i, delay=0.05)
        value: int = await result.aget(timeout=60)
        return value

    async def main() -> list[int]:
        return await asyncio.gather(*(one(i) for i in range(200)))

    assert asyncio.run(main()) == [i + i for i in range(200)]


def test_async_client_per_loop(redis_url: str) -> None:
    """Each loop gets its own connections, closed when asyncio.run shuts the loop down (no warning: the
    suite turns ResourceWarnings into errors)."""
    app = Fastq('t', broker=redis_url, backend=redis_url, set_as_current=False)
    add, _ = _tasks(app)
    try:
        for _ in range(3):
            asyncio.run(add.adelay(1, 1))
        loops: list[Any] = []

        def in_thread() -> None:
            async def main() -> None:
                await add.adelay(1, 1)
                loops.append(app.broker._async_clients.peek())  # type: ignore[attr-defined]

            asyncio.run(main())

        threads = [threading.Thread(target=in_thread) for _ in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        assert len({id(c) for c in loops}) == 3
        assert app.broker.qsize('celery') == 6

        async def explicit_close() -> None:
            await add.adelay(1, 1)
            await app.aclose()
            await add.adelay(1, 1)  # a new connection after an explicit close
            await app.aclose()

        asyncio.run(explicit_close())
        assert app.broker.qsize('celery') == 8
    finally:
        app.close()


def test_redis_batch_is_one_transaction(redis_url: str) -> None:
    """Several LPUSH commands (priorities, big batches) go in one MULTI/EXEC, and an error inside it is raised
    (Redis runs the other commands of a transaction whatever one of them answers: the error must not be lost)."""
    import redis

    app = Fastq('t', broker=redis_url, set_as_current=False)
    add, _ = _tasks(app)
    try:
        group(add.s(1, 1), add.s(2, 2).set(priority=9)).apply_async()
        assert app.broker.qsize('celery') == 2
        client = redis.Redis.from_url(redis_url)
        client.set('celery', 'not a list')  # the priority-0 LPUSH fails inside the transaction
        client.delete(app.broker.layout.queue_key('celery', 9))  # type: ignore[attr-defined]
        with pytest.raises(Exception, match='WRONGTYPE|publishing failed'):
            group(add.s(1, 1), add.s(2, 2).set(priority=9)).apply_async()
        client.close()
    finally:
        app.close()


def _queued_ids(app: Fastq, queue: str = 'celery') -> list[str]:
    """Task ids in the Redis list `queue`, in the order workers get them (RPOP end first)."""
    import redis

    client = redis.Redis.from_url(app.conf.broker_url)
    try:
        return [json.loads(p)['headers']['id'] for p in reversed(client.lrange(queue, 0, -1))]
    finally:
        client.close()


def _member(add: Any, alike: bool, i: int, y: Any = None) -> Any:
    """`add.s(i, y)`; unless `alike`, every other one with options of its own (the same queue), so the batch
    is not one of alike calls (see `sending._send_uniform`)."""
    sig = add.s(i, i if y is None else y)
    return sig if alike or i % 2 else sig.set(queue='celery')


@pytest.mark.parametrize('alike', [True, False], ids=['alike', 'mixed'])
def test_redis_large_batch_is_streamed_as_one_transaction(
    redis_url: str, monkeypatch: pytest.MonkeyPatch, alike: bool
) -> None:
    """A batch larger than one part is written while it is built; it arrives whole, in order, once; a batch
    whose building fails after some parts were written leaves nothing on the broker (nor on the connection)."""
    from fastq import sending

    monkeypatch.setattr(sending, 'STREAM_PART', 100)
    app = Fastq('t', broker=redis_url, set_as_current=False)
    add, _ = _tasks(app)
    try:
        parts: list[int] = []
        stream = app.broker.publish_stream
        monkeypatch.setattr(app.broker, 'publish_stream', lambda: _counting(stream(), parts))
        result = group(_member(add, alike, i) for i in range(1050)).apply_async()
        assert parts == [100] * 10 + [50]
        assert _queued_ids(app) == [r.id for r in result.results]

        app.broker.purge('celery')
        with pytest.raises(EncodeError):  # the 8th part cannot be encoded: 7 parts were already written
            group(_member(add, alike, i, object() if i == 750 else i) for i in range(1050)).apply_async()
        assert app.broker.qsize('celery') == 0
        add.delay(1, 1)
        assert app.broker.qsize('celery') == 1
    finally:
        app.close()


@pytest.mark.parametrize('alike', [True, False], ids=['alike', 'mixed'])
def test_redis_stream_falls_back_when_the_connection_is_lost(
    redis_url: str, monkeypatch: pytest.MonkeyPatch, alike: bool
) -> None:
    """Redis drops a transaction whose client went away before EXEC; the batch is then published again
    (with the retry policy), so every task is on the broker exactly once."""
    import redis

    from fastq import sending

    monkeypatch.setattr(sending, 'STREAM_PART', 100)
    app = Fastq('t', broker=redis_url, set_as_current=False)
    add, _ = _tasks(app)
    killer = redis.Redis.from_url(redis_url)
    try:
        parts: list[int] = []
        stream = app.broker.publish_stream

        def kill_after_three() -> None:
            if len(parts) == 3:
                killer.client_kill_filter(_type='normal', skipme=True)

        def killing() -> Any:
            return _counting(stream(), parts, kill_after_three)

        monkeypatch.setattr(app.broker, 'publish_stream', killing)
        again: list[int] = []
        publish = sending.publish_with_retry
        monkeypatch.setattr(
            sending,
            'publish_with_retry',
            lambda app, batch, **kw: again.append(len(batch)) or publish(app, batch, **kw),
        )
        result = group(_member(add, alike, i) for i in range(1000)).apply_async()
        assert len(parts) == 10 and again == [1000]
        assert _queued_ids(app) == [r.id for r in result.results]
    finally:
        killer.close()
        app.close()


def _counting(stream: Any, parts: list[int], then: Callable[[], None] = lambda: None) -> Any:
    """`stream` with the size of each part it is given appended to `parts` (a batch of alike calls comes as
    envelopes, any other as `Outgoing`s), and `then()` called after each."""
    add_part, add_envelopes = stream.add, stream.add_envelopes

    def add(part: Any) -> None:
        parts.append(len(part))
        add_part(part)
        then()

    def add_alike(*args: Any) -> None:
        parts.append(len(args[-1]))
        add_envelopes(*args)
        then()

    stream.add, stream.add_envelopes = add, add_alike
    return stream


def test_outgoing_without_message_needs_envelope() -> None:
    with pytest.raises(ValueError, match='message or an envelope'):
        Outgoing(None, 'q').to_envelope()


@pytest.fixture
def eager_app() -> Iterator[Fastq]:
    app = Fastq('t', broker='memory://', backend='memory://', set_as_current=False, task_always_eager=True)
    yield app
    app.close()


def test_aapply_async_eager(eager_app: Fastq) -> None:
    add, _ = _tasks(eager_app)

    async def main() -> int:
        result = await add.adelay(2, 2)
        value: int = await result.aget()
        return value

    assert asyncio.run(main()) == 4


def test_async_client_survives_a_redis_restart() -> None:
    """A lost connection fails the calls on it; the publish retry policy and the listener reconnect."""
    from tests.servers import RedisServer

    server = RedisServer()
    app = Fastq('t', broker=server.url(1), backend=server.url(1), set_as_current=False)
    add, _ = _tasks(app)

    async def main() -> None:
        first = await add.adelay(1, 1)
        _store_later(app, first.id, 2, delay=0.05)
        assert await first.aget(timeout=30) == 2
        server.restart()
        second = await add.adelay(2, 2)  # the old connection is dead: retried on a new one
        _store_later(app, second.id, 4, delay=0.05)
        assert await second.aget(timeout=30) == 4

    try:
        app.conf.task_publish_retry_policy = {'max_retries': 5, 'interval_start': 0.2}
        app.conf.result_backend_transport_options = {'retry_policy': {'interval_start': 0.2, 'interval_step': 0.2}}
        asyncio.run(main())
        assert app.broker.qsize('celery') == 1  # the first was lost with the server's memory; the second is there
    finally:
        app.close()
        server.close()


def test_loop_local_closes_on_loop_shutdown() -> None:
    from fastq.utils.loops import LoopLocal

    closed: list[int] = []
    made = iter(range(10))

    async def close(value: int) -> None:
        closed.append(value)

    local: LoopLocal[int] = LoopLocal(lambda: next(made), close)

    async def use() -> tuple[int, int]:
        return await local.get(), await local.get()

    assert asyncio.run(use()) == (0, 0) and closed == [0]
    assert asyncio.run(use()) == (1, 1) and closed == [0, 1]

    async def explicit() -> int:
        await local.get()
        await local.aclose()
        return await local.get()

    assert asyncio.run(explicit()) == 3 and closed == [0, 1, 2, 3]
    assert local.peek() is None


def test_a_client_without_logging_set_up_prints_nothing_of_its_own(tmp_path: Any) -> None:
    """Celery's loggers have a NullHandler (kombu's `get_logger`), so a program that never set logging up
    sees none of their warnings on stderr: not the publish retries before the OperationalError the caller
    handles, not an `expires` already past. Nor does it see fastq's; and the error names the broker once."""
    import subprocess
    import sys

    from tests.servers import free_port

    script = tmp_path / 'client.py'
    script.write_text(
        'from datetime import datetime, timedelta, timezone\n'
        'from fastq import Fastq\n'
        'from fastq.exceptions import OperationalError\n'
        f"app = Fastq('c', broker='redis://127.0.0.1:{free_port()}/0', set_as_current=False)\n"
        "app.conf.task_publish_retry_policy = {'max_retries': 2, 'interval_start': 0, 'interval_step': 0}\n"
        "add = app.task(name='c.add')(lambda x, y: x + y)\n"
        'try:\n'
        '    add.delay(1, 1)\n'
        'except OperationalError as exc:\n'
        '    print(exc)\n'
        "app = Fastq('m', broker='memory://', set_as_current=False)\n"
        "add = app.task(name='c.add')(lambda x, y: x + y)\n"
        'add.apply_async((1, 1), expires=datetime.now(timezone.utc) - timedelta(seconds=5))\n'
    )
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=60, check=True)
    assert done.stderr == ''
    (said,) = done.stdout.splitlines()
    assert said.startswith('cannot publish to redis://127.0.0.1:') and said.count('redis://') == 1, said


def test_a_failed_publish_is_kombus_operational_error_too() -> None:
    """Code written for Celery catches a broker that is down with kombu's class (`except
    kombu.exceptions.OperationalError:` around `delay()`); fastq's own name, the task's attribute and
    pickling (a task failing with it, results in pickle) keep working."""
    import pickle

    import kombu.exceptions

    from fastq.exceptions import OperationalError
    from tests.servers import free_port

    app = Fastq('c', broker=f'redis://127.0.0.1:{free_port()}/0', set_as_current=False)
    try:
        add = app.task(name='c.add')(lambda x, y: x + y)
        with pytest.raises(kombu.exceptions.OperationalError) as caught:
            add.apply_async((1, 1), retry=False)
        exc = caught.value
        assert isinstance(exc, OperationalError) and isinstance(exc, add.OperationalError)
        assert type(exc).__name__ == 'OperationalError' and 'cannot publish to redis://' in str(exc)
        again = pickle.loads(pickle.dumps(exc))
        assert type(again) is type(exc) and again.args == exc.args
        with pytest.raises(kombu.exceptions.OperationalError):
            app.connection().connect()
    finally:
        app.close()


def test_before_task_publish_retry_policy_is_the_one_followed(memory_app: Fastq, monkeypatch: Any) -> None:
    """Celery publishes with the retry policy its before_task_publish receivers were handed ("can be
    modified"): a receiver setting max_retries=0 makes a refused publish fail at the first attempt."""
    from fastq.exceptions import OperationalError

    add, _ = _tasks(memory_app)
    attempts: list[int] = []

    def refuse(batch: Any) -> None:
        attempts.append(len(batch))
        raise OSError('connection refused')

    def no_retries(retry_policy: dict[str, Any], **kwargs: Any) -> None:
        retry_policy['max_retries'] = 0

    monkeypatch.setattr(memory_app.broker, 'publish', refuse)
    signals.before_task_publish.connect(no_retries)
    try:
        with pytest.raises(OperationalError):
            add.delay(1, 1)
    finally:
        signals.before_task_publish.disconnect(no_retries)
    assert attempts == [1]
    with pytest.raises(OperationalError):
        add.apply_async((1, 1), retry_policy={'max_retries': 1, 'interval_start': 0, 'interval_step': 0})
    assert attempts == [1, 1, 1]  # (without the receiver: the call's own policy, one retry)
