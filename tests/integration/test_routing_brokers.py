"""Celery's "Routing Tasks" guide on real brokers, with kombu (what a Celery worker or client writes) as the
oracle: topic bindings on Redis carry kombu's pattern, so a Celery client sending through a topic exchange
reaches only the queues it matches; `Broadcast` queues get a copy each, on Redis and on RabbitMQ."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from kombu import Connection
from kombu import Exchange as KombuExchange
from kombu import Queue as KombuQueue
from kombu.common import Broadcast as KombuBroadcast

from fastq import Fastq
from fastq.brokers.base import Consumer, Delivery
from fastq.routing import Broadcast


def _fetch(consumer: Consumer, want: int, timeout: float = 10.0) -> list[Delivery]:
    got: list[Delivery] = []
    deadline = time.monotonic() + timeout
    while len(got) < want and time.monotonic() < deadline:
        got += consumer.fetch(want - len(got), 0.2)
    return got


def _lists(url: str) -> dict[str, int]:
    client = redis.Redis.from_url(url)
    return {k.decode(): int(client.llen(k)) for k in client.keys('*') if client.type(k) == b'list'}


def _members(url: str, key: str) -> set[bytes]:
    return set(redis.Redis.from_url(url).smembers(key))


TOPIC_CONF: dict[str, Any] = {
    'task_default_queue': 'default',
    'task_default_exchange': 'tasks',
    'task_default_exchange_type': 'topic',
    'task_default_routing_key': 'task.default',
}


def _topic_queues(queue: Any = KombuQueue) -> tuple[Any, ...]:
    return (queue('default', routing_key='task.#'), queue('feed_tasks', routing_key='feed.#'))


@pytest.fixture
def topic_app(redis_url: str) -> Iterator[Fastq]:
    app = Fastq('topics', broker=redis_url, set_as_current=False)
    app.conf.update(TOPIC_CONF, task_queues=_topic_queues())
    yield app
    app.close()


def test_topic_bindings_are_the_ones_a_celery_worker_writes(topic_app: Fastq, redis_url: str) -> None:
    topic_app.broker.declare(['default', 'feed_tasks'])  # what a fastq worker consuming them declares
    ours = _members(redis_url, '_kombu.binding.tasks')
    redis.Redis.from_url(redis_url).flushdb()
    from celery import Celery

    capp = Celery('topics', broker=redis_url, set_as_current=False)
    capp.conf.update(TOPIC_CONF, task_queues=_topic_queues())
    with capp.connection_for_write() as conn:
        for queue in capp.amqp.queues.values():
            queue(conn.default_channel).declare()
    assert ours == _members(redis_url, '_kombu.binding.tasks')
    assert b'feed.#\x06\x16^feed\\..*?$\x06\x16feed_tasks' in ours


def test_a_celery_client_through_a_topic_exchange_reaches_only_the_matching_queue(
    topic_app: Fastq, redis_url: str
) -> None:
    # kombu matches a topic binding by its stored pattern: one without it would match every routing key
    topic_app.broker.declare(['default', 'feed_tasks'])
    with Connection(redis_url) as conn:
        producer = conn.Producer()
        tasks = KombuExchange('tasks', 'topic')
        producer.publish({'x': 1}, exchange=tasks, routing_key='feed.import', declare=[tasks])
        producer.publish({'x': 2}, exchange=tasks, routing_key='task.other', declare=[tasks])
    assert _lists(redis_url) == {'default': 1, 'feed_tasks': 1}


def test_a_fastq_client_matches_topic_keys_as_kombu_does(topic_app: Fastq, redis_url: str) -> None:
    # bindings a Celery worker wrote (with their patterns); `feed.#` is kombu's `^feed\..*?$`: not `feed`
    tasks = KombuExchange('tasks', 'topic')
    with Connection(redis_url) as conn:
        channel = conn.default_channel
        for queue in (KombuQueue('default', tasks, 'task.#'), KombuQueue('feed_tasks', tasks, 'feed.#')):
            queue(channel).declare()
    for key in ('feed.import', 'feed.a.b', 'task.x'):
        topic_app.send_task('feeds.x', queue='feed_tasks', routing_key=key)
    broker: Any = topic_app.broker
    assert broker.lookup('tasks', 'feed') == []
    assert broker.lookup('tasks', 'feed.x') == ['feed_tasks']
    assert _lists(redis_url) == {'feed_tasks': 2, 'default': 1}


def _broadcast_app(url: str, **conf: Any) -> Fastq:
    app = Fastq('bcast', broker=url, set_as_current=False)
    app.conf.update(
        task_queues=(Broadcast('broadcast_tasks'), KombuQueue('celery')),
        task_routes={'tasks.reload_cache': {'queue': 'broadcast_tasks', 'exchange': 'broadcast_tasks'}},
        **conf,
    )
    return app


@pytest.mark.parametrize('kind', ['redis', 'amqp'])
def test_broadcast_every_worker_gets_a_copy(kind: str, request: pytest.FixtureRequest) -> None:
    # "Routing Tasks: Broadcast": each worker process has a queue of its own (a new bcast.<uuid> each time
    # the settings are read) bound to the fanout exchange; the route names the exchange's name
    url = request.getfixturevalue('redis_url' if kind == 'redis' else 'amqp_url')
    workers = [_broadcast_app(url), _broadcast_app(url)]
    client = _broadcast_app(url)
    consumers: list[Consumer] = []
    try:
        queues = [w.router.worker_queues(['broadcast_tasks']) for w in workers]  # `-Q broadcast_tasks`
        assert queues[0] != queues[1] and all(q[0].startswith('bcast.') for q in queues)
        assert [w.router.worker_queues(None)[0] for w in workers] == [q[0] for q in queues]
        consumers = [w.broker.consumer(q, f'w{i}') for i, (w, q) in enumerate(zip(workers, queues, strict=True))]
        for consumer in consumers:
            consumer.prefetch(10)
        client.send_task('tasks.reload_cache', ('a',))
        client.send_task('tasks.reload_cache', ('b',))
        client.send_task('tasks.other')
        for consumer, queue in zip(consumers, queues, strict=True):
            got = _fetch(consumer, 2)
            assert sorted(json.loads(d.message.body)[0][0] for d in got if d.message is not None) == ['a', 'b']
            assert {d.queue for d in got} == set(queue)
            consumer.ack([d.tag for d in got])
            assert consumer.fetch(1, 0.2) == []
        assert workers[0].broker.qsize('celery') == 1
    finally:
        for consumer in consumers:
            consumer.close()
        for app in (*workers, client):
            app.close()


def test_a_broadcast_queue_goes_with_its_consumer_on_redis(redis_url: str) -> None:
    # kombu deletes an auto-delete fanout queue when its channel closes: no copies pile up for a gone worker
    worker, client = _broadcast_app(redis_url), _broadcast_app(redis_url)
    try:
        queue = worker.router.worker_queues(None)[0]
        consumer = worker.broker.consumer([queue], 'w')
        assert _members(redis_url, '_kombu.binding.broadcast_tasks') == {f'celery\x06\x16\x06\x16{queue}'.encode()}
        consumer.close()
        assert _members(redis_url, '_kombu.binding.broadcast_tasks') == set()
        client.send_task('tasks.reload_cache')  # nobody is listening: dropped, as kombu's PUB/SUB drops it
        assert _lists(redis_url) == {}
    finally:
        worker.close()
        client.close()


def test_kombus_broadcast_in_settings(redis_url: str) -> None:
    app = Fastq('bcast', broker=redis_url, set_as_current=False)
    app.conf.task_queues = (KombuBroadcast('broadcast_tasks'),)
    try:
        queue = app.router.queue('broadcast_tasks')
        assert queue.name.startswith('bcast.') and queue.auto_delete
        routed = app.router.route({'queue': 'broadcast_tasks'}, 'x')  # (the guide's older form: no exchange)
        assert (routed['queue'], routed['exchange']) == (queue.name, 'broadcast_tasks')
    finally:
        app.close()
