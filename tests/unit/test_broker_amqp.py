"""The RabbitMQ broker's SPI behaviours against the session's node; Celery's own objects are the oracle for
declarations (redeclaring with kombu must not fail with 406 PRECONDITION_FAILED)."""

from __future__ import annotations

import marshal
import time
from collections.abc import Iterator
from typing import Any

import pytest

from fastq import Fastq, _core
from fastq.brokers.amqp import AMQPBroker, parse_urls
from fastq.brokers.amqp.consumer import AMQPConsumer
from fastq.brokers.amqp.topology import DEAD_LETTER_QUEUE, delayed_routing_key
from fastq.brokers.base import Delivery, Outgoing
from fastq.worker.trace import Outcome
from tests.harness import wait_until


@pytest.fixture
def app(amqp_url: str) -> Iterator[Fastq]:
    app = Fastq('t', broker=amqp_url, backend='memory://', set_as_current=False)
    yield app
    app.close()


def _broker(app: Fastq) -> AMQPBroker:
    broker = app.broker
    assert isinstance(broker, AMQPBroker)
    return broker


def _message(body: bytes = b'[[], {}, {}]', task_id: str = 'id-1', **headers: Any) -> _core.Message:
    return _core.Message(body, 'application/json', 'utf-8', {'id': task_id, 'task': 't.x', **headers}, {})


def _fetch(consumer: AMQPConsumer, want: int, timeout: float = 10.0) -> list[Delivery]:
    got: list[Delivery] = []
    deadline = time.monotonic() + timeout
    while len(got) < want and time.monotonic() < deadline:
        got += consumer.fetch(want - len(got), 0.5)
    return got


def _celery_declare(amqp_url: str, **conf: Any) -> None:
    """Declare what a Celery 5.7 app (these settings) declares, through kombu/py-amqp."""
    from celery import Celery

    capp = Celery('peer', broker=amqp_url.replace('amqp://', 'pyamqp://'), set_as_current=False)
    capp.conf.update(conf)
    with capp.connection_for_write() as conn:
        channel = conn.default_channel
        for queue in capp.amqp.queues.values():
            queue(channel).declare()


@pytest.mark.parametrize(
    'conf',
    [{}, {'task_queue_max_priority': 10}, {'task_default_queue_type': 'quorum'}],
    ids=['classic', 'max-priority', 'quorum'],
)
def test_declarations_equal_celerys(app: Fastq, amqp_url: str, conf: dict[str, Any]) -> None:
    app.conf.update(conf)
    broker = _broker(app)
    spec = broker.topology.spec('celery')
    if conf.get('task_default_queue_type') == 'quorum':
        assert spec.arguments == {'x-queue-type': 'quorum'}
    elif conf:
        assert spec.arguments == {'x-max-priority': 10}
    else:
        assert spec.arguments == {}
    broker.declare(['celery'])
    _celery_declare(amqp_url, **conf)  # raises PreconditionFailed on any difference
    app.send_task('t.x', (1,))
    assert broker.qsize('celery') == 1


def test_publish_confirmed_priorities_and_expiration(app: Fastq) -> None:
    app.conf.task_queue_max_priority = 10
    broker = _broker(app)
    broker.publish([Outgoing(_message(task_id=str(p)), 'celery', priority=p) for p in (1, 9, 5)])
    assert broker.qsize('celery') == 3  # confirms: the broker had them when publish returned
    consumer = broker.consumer(['celery'], 'w1')
    try:
        consumer.prefetch(10)
        got = _fetch(consumer, 3)
        assert [d.task_id for d in got] == ['9', '5', '1']  # RabbitMQ: higher priority first
        assert got[0].message is not None and got[0].message.properties['priority'] == 9
        consumer.ack([d.tag for d in got])
    finally:
        consumer.close()
    broker.publish([Outgoing(_message(), 'celery', expiration='1')])
    wait_until(lambda: broker.qsize('celery') == 0, 10, 'the message expired')  # RabbitMQ enforces the TTL
    broker.publish([Outgoing(_message(), 'celery') for _ in range(3)])
    assert broker.purge('celery') == 3 and broker.qsize('celery') == 0
    assert broker.purge('never-declared') == 0 and broker.qsize('never-declared') == 0
    assert 'celery' in broker.known_queues()


def test_unacked_deliveries_come_back_and_release_requeues(app: Fastq) -> None:
    broker = _broker(app)
    broker.publish([Outgoing(_message(task_id=str(i)), 'celery') for i in range(4)])
    first = broker.consumer(['celery'], 'w1')
    first.prefetch(4)
    got = _fetch(first, 4)
    first.ack([got[0].tag])
    first.release([got[1].tag])
    first.close()  # two still unacked: back in the queue with the connection
    second = broker.consumer(['celery'], 'w2')
    try:
        second.prefetch(10)
        again = _fetch(second, 3)
        assert sorted(d.task_id or '' for d in again) == ['1', '2', '3']
        assert all(d.redelivered for d in again)
        second.ack([d.tag for d in again])
        second.ack([d.tag for d in again])  # twice: a no-op, not a channel error
        assert second.fetch(1, 0.3) == []
    finally:
        second.close()


def test_a_channel_error_closes_that_channel_only(app: Fastq) -> None:
    """A 404 from a passive declare closes the admin channel; the publishing channel stays open and is used
    as it is (opening it again would be a second channel.open, which RabbitMQ answers by closing the
    connection: 504 CHANNEL_ERROR)."""
    broker = _broker(app)
    broker.publish([Outgoing(_message(), 'chan-q')])
    generation = broker.link.generation
    assert broker.qsize('no-such-queue') == 0  # 404 NOT_FOUND on the admin channel
    broker.publish([Outgoing(_message(task_id='id-2'), 'chan-q')])
    assert broker.purge('no-such-queue') == 0
    assert broker.qsize('chan-q') == 2
    broker.publish([Outgoing(_message(task_id='id-3'), 'chan-q')])
    assert broker.link.generation == generation  # the same connection throughout


class _FakeConn:
    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []

    def ack(self, channel: int, tag: int, multiple: bool) -> None:
        self.calls.append(('ack', tag, multiple))

    def reject(self, channel: int, tag: int, requeue: bool) -> None:
        self.calls.append(('reject', tag, requeue))


def test_batched_acks_only_over_a_contiguous_settled_prefix() -> None:
    consumer = AMQPConsumer.__new__(AMQPConsumer)
    from collections import deque

    consumer._order, consumer._settled, consumer._to_ack = deque(range(1, 9)), set(), set()
    conn: Any = _FakeConn()
    consumer._ack(conn, [1, 2, 3, 5])  # 4 still running
    assert conn.calls == [('ack', 3, True), ('ack', 5, False)]
    conn.calls.clear()
    consumer._reject(conn, [6], True)
    consumer._ack(conn, [4, 7])
    assert conn.calls == [('reject', 6, True), ('ack', 7, True)]  # 4..7 settled: one multiple ack
    assert list(consumer._order) == [8]


def test_dead_letters_go_to_the_named_queue_or_the_dlx(app: Fastq, amqp_url: str) -> None:
    from fastq import Queue

    app.conf.task_queues = [
        Queue('celery'),
        Queue('withdlx', queue_arguments={'x-dead-letter-exchange': '', 'x-dead-letter-routing-key': 'dlq'}),
    ]
    broker = _broker(app)
    broker.declare(['dlq'])
    broker.publish([Outgoing(_message(b'not json'), 'celery'), Outgoing(_message(task_id='d2'), 'withdlx')])
    consumer = broker.consumer(['celery', 'withdlx'], 'w1')
    try:
        got = {d.queue: d for d in _fetch(consumer, 2)}
        letter = consumer.dead_letter(got['celery'], 'malformed message: test')
        consumer.dead_letter(got['withdlx'], 'rejected')
    finally:
        consumer.close()
    store = broker.dead_letters
    assert store.count() == 1
    [stored] = store.list()
    assert (stored.id, stored.queue, stored.reason, stored.task_id) == (letter.id, 'celery', letter.reason, 'id-1')
    assert _core.Message.from_envelope(stored.payload, None).body == b'not json'
    wait_until(lambda: broker.qsize('dlq') == 1, 10, 'dead-lettered through the queue exchange')
    wait_until(lambda: store.count() == 1, 10, 'the letters read put back')  # basic.reject is asynchronous
    assert store.get('id-1') is not None
    wait_until(lambda: store.count() == 1, 10, 'the letters read put back')
    assert broker.requeue_dead_letter(letter.id) is not None  # `fastq deadletter requeue`
    assert store.count() == 0 and broker.qsize(DEAD_LETTER_QUEUE) == 0
    assert broker.qsize('celery') == 1


def test_defer_parks_in_celerys_delayed_chain(app: Fastq, amqp_url: str) -> None:
    from kombu.transport.native_delayed_delivery import calculate_routing_key

    assert delayed_routing_key(5, 'celery') == calculate_routing_key(5, 'celery')
    assert delayed_routing_key(3, delayed_routing_key(5, 'celery')) == calculate_routing_key(3, 'celery')
    broker = _broker(app)
    broker.publish([Outgoing(_message(task_id='eta'), 'celery')])
    consumer = broker.consumer(['celery'], 'w1')
    try:
        consumer.prefetch(4)
        [d] = _fetch(consumer, 1)
        consumer.defer(d.tag, time.time() + 1.5)
        assert consumer.fetch(1, 0.3) == []  # acked here, waiting in celery_delayed_0
        [back] = _fetch(consumer, 1, timeout=15)
        assert back.task_id == 'eta' and not back.redelivered
        consumer.ack([back.tag])
    finally:
        consumer.close()
    # Celery declares the same chain without a 406
    from celery import Celery
    from kombu.transport.native_delayed_delivery import declare_native_delayed_delivery_exchanges_and_queues

    capp = Celery('peer', broker=amqp_url.replace('amqp://', 'pyamqp://'), set_as_current=False)
    with capp.connection_for_write() as conn:
        declare_native_delayed_delivery_exchanges_and_queues(conn, 'quorum')


def test_pidbox_fanout_and_reply_queue(app: Fastq) -> None:
    from fastq.control import encode_envelope

    broker = _broker(app)
    sub = broker.subscribe('celery.pidbox')
    try:
        broker.fanout_publish(
            'celery.pidbox', encode_envelope({'method': 'ping'}, {'clock': 1}, 'celery.pidbox', '', 1)
        )
        [(_, raw)] = sub.get(5.0)
        assert _core.json_loads(_core.Message.from_envelope(raw, None).body, None) == {'method': 'ping'}
    finally:
        sub.close()
    broker.bind('reply.celery.pidbox', 'oid1', 'oid1.reply.celery.pidbox')
    broker.publish([Outgoing(_message(), 'oid1.reply.celery.pidbox', 'reply.celery.pidbox', 'oid1', 0, 1)])
    assert len(broker.pop('oid1.reply.celery.pidbox', 2.0)) == 1


def test_failover_urls_and_masked_passwords() -> None:
    app = Fastq('t', broker='memory://', backend='memory://', set_as_current=False)
    conf = app.conf
    conf.broker_heartbeat = 30
    eps = parse_urls('amqp://u:s%40cret@h1:5673/v%2Fx; pyamqp://h2//;librabbitmq://h3', conf)
    assert [(e.host, e.port, e.vhost, e.user, e.password) for e in eps] == [
        ('h1', 5673, 'v/x', 'u', 's@cret'),
        ('h2', 5672, '/', 'guest', 'guest'),
        ('h3', 5672, '/', 'guest', 'guest'),
    ]
    assert eps[0].url == 'amqp://u:**@h1:5673/v%2Fx' and eps[0].heartbeat == 30
    conf.broker_use_ssl = {'ca_certs': '/ca.pem', 'cert_reqs': 0}
    [tls] = parse_urls('amqps://h', conf)
    assert tls.port == 5671 and tls.ssl == {'ca_certs': '/ca.pem', 'cert_reqs': 0, 'verify_peer': False}
    broker = AMQPBroker('amqp://u:secret@h1//;amqp://u:secret@h2//', conf)
    assert 'secret' not in broker.describe() and 'secret' not in repr(broker)


def test_broker_login_method_other_than_a_password_is_refused() -> None:
    # Celery's py-amqp logs in with the configured mechanism or fails ("Couldn't find appropriate auth mechanism"):
    # fastq, which has user/password login only, must not log in with the URL's credentials instead.
    from fastq.exceptions import ImproperlyConfigured

    app = Fastq('t', broker='memory://', backend='memory://', set_as_current=False)
    for method in (None, 'AMQPLAIN', 'PLAIN', 'plain'):
        app.conf.broker_login_method = method
        assert parse_urls('amqp://h//', app.conf)[0].host == 'h'
    app.conf.broker_login_method = 'EXTERNAL'
    with pytest.raises(ImproperlyConfigured, match="broker_login_method 'EXTERNAL'"):
        parse_urls('amqps://h//', app.conf)
    app.close()


@pytest.mark.parametrize(
    ('settings', 'options', 'warned'),
    [
        ({'task_time_limit': 7200}, {}, ['task_time_limit (7200s) exceeds RabbitMQ consumer_timeout (1800.0s']),
        ({'task_soft_time_limit': 90, 'task_time_limit': 60}, {'consumer_timeout': 75},
         ['task_soft_time_limit (90s) exceeds RabbitMQ consumer_timeout (75.0s']),
        ({'task_time_limit': 3600, 'task_soft_time_limit': 3000}, {'consumer_timeout': 600},
         ['task_time_limit (3600s) exceeds', 'task_soft_time_limit (3000s) exceeds']),
        ({'task_time_limit': 1800}, {}, []),  # equal is not more
        ({'task_time_limit': 7200}, {'consumer_timeout': 7200 * 2}, []),  # the node's timeout was raised
        ({}, {'consumer_timeout': 60}, []),  # no limits at all
    ],
    ids=['hard-over-default', 'soft-over-option', 'both', 'equal', 'raised', 'none'],
)  # fmt: skip
def test_warns_when_a_time_limit_exceeds_consumer_timeout(
    settings: dict[str, Any], options: dict[str, Any], warned: list[str], caplog: pytest.LogCaptureFixture
) -> None:
    """The worker's consumer warns (once per limit) when a task could hold its delivery unacked longer than
    the node's consumer_timeout (transport option `consumer_timeout`, seconds, default RabbitMQ's 30 min)."""
    app = Fastq('t', broker='memory://', backend='memory://', set_as_current=False)
    app.conf.update(settings, broker_transport_options=options)
    broker = AMQPBroker('amqp://guest:guest@127.0.0.1:1//', app.conf)
    caplog.set_level('WARNING', logger='fastq.brokers.amqp')
    try:
        broker._warn_consumer_timeout()
    finally:
        broker.close()
    messages = [r.getMessage() for r in caplog.records if r.name == 'fastq.brokers.amqp']
    assert len(messages) == len(warned)
    for message, start in zip(messages, warned, strict=True):
        assert message.startswith(start) and 'transport option consumer_timeout' in message


def test_warns_about_a_tasks_own_time_limit_beyond_consumer_timeout(caplog: pytest.LogCaptureFixture) -> None:
    """Limits set on a task itself are checked against consumer_timeout too, naming the task; the worker shows
    the broker its tasks before it starts consuming."""
    app = Fastq('t', broker='memory://', backend='memory://', set_as_current=False)
    app.conf.broker_transport_options = {'consumer_timeout': 600}

    @app.task(name='t.report', time_limit=3600)
    def report() -> None: ...

    @app.task(name='t.digest', soft_time_limit=900, time_limit=300)
    def digest() -> None: ...

    @app.task(name='t.quick', time_limit=60)
    def quick() -> None: ...

    broker = AMQPBroker('amqp://guest:guest@127.0.0.1:1//', app.conf)
    caplog.set_level('WARNING', logger='fastq.brokers.amqp')
    try:
        broker.check_tasks(app.tasks.values())
    finally:
        broker.close()
    messages = sorted(r.getMessage() for r in caplog.records if r.name == 'fastq.brokers.amqp')
    assert [m.split(' exceeds')[0] for m in messages] == [
        'Task t.digest: soft_time_limit (900s)',
        'Task t.report: time_limit (3600s)',
    ]
    assert all('consumer_timeout (600' in m for m in messages)


def test_warns_about_the_workers_own_time_limit_beyond_consumer_timeout(caplog: pytest.LogCaptureFixture) -> None:
    """`--time-limit` is the worker's, not the app's `task_time_limit` (which messages sent from its tasks
    would carry): the worker shows it with its tasks, and it is warned about by its option's name."""
    app = Fastq('t', broker='memory://', backend='memory://', set_as_current=False)
    app.conf.broker_transport_options = {'consumer_timeout': 600}
    app.conf.task_soft_time_limit = 900  # (the setting's own warning is the consumer's: not repeated here)
    broker = AMQPBroker('amqp://guest:guest@127.0.0.1:1//', app.conf)
    caplog.set_level('WARNING', logger='fastq.brokers.amqp')
    try:
        broker.check_tasks([], (3600, 900))
    finally:
        broker.close()
    messages = [r.getMessage() for r in caplog.records if r.name == 'fastq.brokers.amqp']
    assert [m.split(' exceeds')[0] for m in messages] == ['--time-limit (3600s)']


def test_unreachable_broker_names_the_masked_url(amqp_url: str) -> None:
    from fastq.exceptions import BrokerConnectionError
    from tests.servers import free_port

    app = Fastq('t', broker=f'amqp://guest:hidden@127.0.0.1:{free_port()}//', set_as_current=False)
    app.conf.broker_connection_timeout = 0.5
    try:
        with pytest.raises(BrokerConnectionError, match=r'guest:\*\*@') as info:
            app.broker.connect()
        assert 'hidden' not in str(info.value)
    finally:
        app.close()


def test_amqps_with_broker_use_ssl(rabbit_server: Any) -> None:
    import ssl

    if rabbit_server.cert is None:
        pytest.skip('openssl is not installed')
    app = Fastq('t', broker=rabbit_server.url(rabbit_server.vhost(), tls=True), set_as_current=False)
    app.conf.broker_use_ssl = {'ca_certs': str(rabbit_server.cert), 'cert_reqs': ssl.CERT_REQUIRED}
    try:
        broker = _broker(app)
        broker.publish([Outgoing(_message(task_id='tls'), 'celery')])
        consumer = broker.consumer(['celery'], 'w1')
        try:
            consumer.prefetch(1)
            [d] = _fetch(consumer, 1)
            assert d.task_id == 'tls'
            consumer.ack([d.tag])
        finally:
            consumer.close()
    finally:
        app.close()
    untrusted = Fastq('t', broker=rabbit_server.url('/', tls=True), set_as_current=False)
    untrusted.conf.broker_use_ssl = {'cert_reqs': ssl.CERT_REQUIRED}  # no CA: the self-signed one is refused
    untrusted.conf.broker_connection_timeout = 2
    try:
        from fastq.exceptions import BrokerConnectionError

        with pytest.raises(BrokerConnectionError):
            untrusted.broker.connect()
    finally:
        untrusted.close()


def test_celery_events_reach_a_subscription(app: Fastq, amqp_url: str) -> None:
    """`celeryev` is Celery's durable topic exchange on AMQP: fastq (the dashboard) subscribes without a 406
    either way round, and sees what a Celery worker's event dispatcher sends."""
    from celery import Celery

    from fastq.events.event import decode_events

    broker = _broker(app)
    sub = broker.subscribe('celeryev')
    capp = Celery('peer', broker=amqp_url, set_as_current=False)
    try:
        with capp.connection_for_write() as conn:
            dispatcher = capp.events.Dispatcher(conn, hostname='celery@peer', enabled=True, buffer_while_offline=False)
            dispatcher.send('worker-heartbeat', freq=2.0)
            dispatcher.close()
        got = sub.get(5.0)
        assert got and got[0][0] == 'worker.heartbeat'
        [event] = decode_events(got[0][1])
        assert event['type'] == 'worker-heartbeat' and event['hostname'] == 'celery@peer'
    finally:
        sub.close()
        capp.close()


def test_countdown_to_a_quorum_queue_goes_through_the_delayed_chain(app: Fastq) -> None:
    """As Celery >= 5.5 clients do: nothing waits in the queue (or in a worker) before the task is due."""
    app.conf.task_default_queue_type = 'quorum'
    broker = _broker(app)
    broker.publish([Outgoing(_message(task_id='later'), 'celery', eta=time.time() + 2.5)])
    assert broker.qsize('celery') == 0
    assert sum(broker.qsize(f'celery_delayed_{level}') for level in range(3)) == 1
    consumer = broker.consumer(['celery'], 'w1')
    try:
        consumer.prefetch(4)
        [d] = _fetch(consumer, 1, timeout=20)
        assert d.task_id == 'later' and d.message is not None
        assert d.message.properties['delivery_info']['routing_key'] == 'celery'  # retries go back to the queue
        consumer.ack([d.tag])
    finally:
        consumer.close()


def test_broadcast_queues_follow_the_event_and_control_settings() -> None:
    # event_queue_ttl/expires, control_queue_ttl/expires and event_exchange (Celery's), defaults as before
    from fastq import Fastq
    from fastq.brokers.amqp.topology import (
        EVENT_QUEUE_ARGUMENTS,
        PIDBOX_QUEUE_ARGUMENTS,
        broadcast_exchange,
        broadcast_queue_arguments,
    )

    app = Fastq('bq', broker='memory://', set_as_current=False)
    conf = app.conf
    assert broadcast_queue_arguments('topic', conf) == EVENT_QUEUE_ARGUMENTS
    assert broadcast_queue_arguments('fanout', conf) == PIDBOX_QUEUE_ARGUMENTS
    conf.update(event_queue_ttl=1.5, event_queue_expires=None, control_queue_ttl=None, event_exchange='myev')
    assert broadcast_queue_arguments('topic', conf) == {'x-message-ttl': 1500}
    assert broadcast_queue_arguments('fanout', conf) == {'x-expires': 10000}
    assert broadcast_exchange('myev', conf) == ('topic', True) and broadcast_exchange('celery.pidbox', conf) == (
        'fanout',
        False,
    )
    app.close()


def test_queue_bindings_are_declared_as_kombus(app: Fastq, amqp_url: str) -> None:
    """kombu's `Queue(name, bindings=[binding(...), ...])`: bound through each binding, and not to the default
    exchange (kombu's Queue drops its own exchange when given bindings), as a Celery worker declares it."""
    from celery import Celery
    from kombu import Exchange, Queue, binding

    media = Exchange('media', 'topic')
    app.conf.task_queues = [Queue('multi', bindings=[binding(media, routing_key='a.#'), binding(media, 'b.#')])]
    broker = _broker(app)
    spec = broker.topology.spec('multi')
    assert spec.exchange == '' and sorted((b.exchange, b.exchange_type, b.routing_key) for b in spec.bindings) == [
        ('media', 'topic', 'a.#'),
        ('media', 'topic', 'b.#'),
    ]
    broker.declare(['multi'])
    for key in ('a.x', 'b.y', 'c.z'):
        broker.publish([Outgoing(_message(task_id=key), 'multi', 'media', key, 0, 2)])
    wait_until(lambda: broker.qsize('multi') == 2, 10, 'a.x and b.y routed to multi')
    capp = Celery('peer', broker=amqp_url.replace('amqp://', 'pyamqp://'), set_as_current=False)
    capp.conf.task_queues = app.conf.task_queues
    with capp.connection_for_write() as conn:
        capp.amqp.queues['multi'](conn.default_channel).declare()  # the same bindings: no 406


def test_celery_countdown_to_a_topic_quorum_queue_reaches_its_consumer(app: Fastq, amqp_url: str) -> None:
    """A Celery client sends a countdown through the delayed chain with the queue's routing key (not its name):
    the consumer binds `celery_delayed_delivery` -> the queue's exchange -> the queue with `#.<routing key>`,
    as kombu's `bind_queue_to_native_delayed_delivery_exchange` does on a Celery worker."""
    from celery import Celery
    from kombu import Exchange, Queue

    queues = [Queue('videos', Exchange('media', 'topic'), 'media.video', queue_arguments={'x-queue-type': 'quorum'})]
    app.conf.task_queues = queues
    broker = _broker(app)
    consumer = broker.consumer(['videos'], 'w1')
    capp = Celery('peer', broker=amqp_url.replace('amqp://', 'pyamqp://'), set_as_current=False)
    capp.conf.task_queues = queues
    try:
        consumer.prefetch(4)
        sent = capp.send_task('t.x', (1,), countdown=1, queue='videos')
        [d] = _fetch(consumer, 1, timeout=30)
        assert d.task_id == sent.id and d.message is not None
        assert d.message.properties['delivery_info']['routing_key'] == 'media.video'
        consumer.ack([d.tag])
    finally:
        consumer.close()
        capp.close()


def test_prefetch_window_applies_to_quorum_queue_consumers(app: Fastq) -> None:
    """Per-consumer QoS (quorum queues): basic.qos applies to consumers started after it, so the worker's window,
    set once consuming, must reach them; else the consumer takes the whole queue (prefetch 0 = unlimited)."""
    app.conf.task_default_queue_type = 'quorum'
    broker = _broker(app)
    consumer = broker.consumer(['celery'], 'w1')
    try:
        assert not consumer.global_qos
        consumer.prefetch(2)
        broker.publish([Outgoing(_message(task_id=f'q{i}'), 'celery') for i in range(5)])
        got = _fetch(consumer, 2)
        assert len(got) == 2
        assert broker.qsize('celery') == 3 and consumer.fetch(5, 0.5) == []  # the window is full
        consumer.ack([d.tag for d in got])
        assert len(_fetch(consumer, 2)) == 2
    finally:
        consumer.close()


def test_a_message_without_a_priority_is_sent_with_priority_0_as_kombu_sends_it() -> None:
    # (a Celery worker reads the property into request.delivery_info['priority']: 0 from a Celery client)
    from fastq.brokers.amqp import to_amqp

    assert to_amqp(Outgoing(_message(), 'celery'))[3]['priority'] == 0
    assert to_amqp(Outgoing(_message(), 'celery', priority=7))[3]['priority'] == 7


def _delivered(props: dict[str, Any]) -> Any:
    """A task message as RabbitMQ delivers it (the DELIVER event), made a Message as the consumer makes it."""
    from fastq.brokers.amqp import to_message

    headers = {'id': 'id-1', 'task': 'noop', 'custom': 'v'}
    props = {'content_type': 'application/json', 'content_encoding': 'utf-8', 'headers': headers, **props}
    return to_message(('', 0, 'ctag', 5, False, '', 'celery', props, b'[[], {}, {}]'))


@pytest.mark.parametrize('priority', [3, None])
def test_a_delivery_reads_py_amqps_properties_wherever_celery_shows_them(priority: int | None) -> None:
    """Celery on RabbitMQ: self.request.properties, task_received's request_dict['properties'] and
    task_unknown's message.properties are py-amqp's (content_type ... application_headers ... no
    delivery_info, body_encoding or delivery_tag; no priority when the message had none). fastq's were
    kombu's Redis envelope's."""
    from fastq.task import ENVELOPE, Context
    from fastq.worker.job import prepare_payload
    from fastq.worker.message import ReceivedMessage

    props: dict[str, Any] = {'delivery_mode': 2, 'correlation_id': 'id-1', 'reply_to': 'r', 'message_id': 'm'}
    if priority is not None:
        props['priority'] = priority
    message = _delivered(props)
    expected = {
        'content_type': 'application/json',
        'content_encoding': 'utf-8',
        'application_headers': {'id': 'id-1', 'task': 'noop', 'custom': 'v'},
        'delivery_mode': 2,
        **({'priority': priority} if priority is not None else {}),
        'correlation_id': 'id-1',
        'reply_to': 'r',
        'message_id': 'm',
    }
    assert ReceivedMessage(Delivery(5, 'celery', message), message).properties == expected
    # What the pool child is given: the envelope the consumer builds (see AMQPConsumer._on_deliver).
    raw = message.to_envelope('', 'celery', priority or 0, 2, None, '5')
    worker_app = Fastq('t', broker='memory://', backend='cache+memory://', set_as_current=False)

    @worker_app.task(name='noop')
    def noop() -> None: ...

    prepared = prepare_payload(
        worker_app, marshal.dumps((raw, 'celery', False, None, None, 'w@h')), frozenset({'application/json'})
    )
    assert not isinstance(prepared, Outcome) and ENVELOPE in prepared.request
    ctx = Context.adopt(prepared.request)
    assert ctx.properties == expected and list(ctx.properties) == list(expected)
    # (the worker's own reading of the delivery keeps kombu's delivery_info, py-amqp's)
    info = {'consumer_tag': 'ctag', 'delivery_tag': 5, 'exchange': '', 'routing_key': 'celery', 'redelivered': False}
    assert message.properties['delivery_info'] == info
    received = ReceivedMessage(Delivery(1 << 40 | 5, 'celery', message), message)
    assert received.delivery_info == info and received.delivery_tag == 5


def test_task_receiveds_request_reads_the_delivery_as_celerys() -> None:
    """A task_received receiver's request: correlation_id is the message's property (None for a message sent
    without one, as Celery's `apply_async(correlation_id=None)` sends it), not the task id; its message the
    delivery as kombu's Message reads it."""
    from fastq.protocol import parse_delivery
    from fastq.worker.job import Job
    from fastq.worker.request import Request

    requests = []
    for props in ({'correlation_id': 'id-1', 'priority': 0}, {}):
        message = _delivered({'delivery_mode': 2, 'reply_to': 'r', **props})
        delivery = Delivery(5, 'celery', message)
        job = Job(1, delivery, parse_delivery(delivery), False, False, None, None, 'w@h', 0.0)
        requests.append(Request(job, None, None))
    assert [r.correlation_id for r in requests] == ['id-1', None]
    assert [r.request_dict['correlation_id'] for r in requests] == ['id-1', None]
    assert [r.delivery_info['priority'] for r in requests] == [0, None]
    assert requests[0].message.delivery_tag == 5 and requests[0].message.acknowledged is False
