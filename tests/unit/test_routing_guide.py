"""Celery's Routing guide, as its users write it (kombu's `Exchange` and `Queue` in settings, topic exchanges,
manual routing with an exchange and a routing key), on a real Redis: each task lands in the list of the queue
Celery would have put it in."""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest
import redis
from kombu import Exchange as KombuExchange
from kombu import Queue as KombuQueue

from fastq import Fastq
from fastq.routing import Exchange, Queue, Router


@pytest.fixture
def app(redis_url: str) -> Iterator[Fastq]:
    app = Fastq('routing_guide', broker=redis_url)
    yield app
    app.close()


def lengths(redis_url: str) -> dict[str, int]:
    client = redis.Redis.from_url(redis_url)
    return {k.decode(): int(client.llen(k)) for k in client.keys('*') if client.type(k) == b'list'}


def test_kombu_queues_and_a_manual_route_through_an_exchange(app: Fastq, redis_url: str) -> None:
    # "Manual routing" (Routing Tasks): queues bound to a shared `media` exchange with their own keys
    app.conf.task_default_queue = 'default'
    app.conf.task_queues = (
        KombuQueue('default', KombuExchange('default'), routing_key='default'),
        KombuQueue('videos', KombuExchange('media'), routing_key='media.video'),
        KombuQueue('images', KombuExchange('media'), routing_key='media.image'),
    )
    app.broker.declare(['default', 'videos', 'images'])  # what a worker consuming them declares

    @app.task
    def plain() -> None: ...

    @app.task
    def process_image() -> None: ...

    plain.delay()
    process_image.apply_async(exchange='media', routing_key='media.image')
    process_image.apply_async(queue='videos')
    assert lengths(redis_url) == {'default': 1, 'images': 1, 'videos': 1}


def test_topic_exchange_example(app: Fastq, redis_url: str) -> None:
    # "Routing Tasks: Exchange types / topic", with the routes of its example
    app.conf.task_queues = (
        KombuQueue('default', routing_key='task.#'),
        KombuQueue('feed_tasks', routing_key='feed.#'),
    )
    app.conf.task_default_queue = 'default'
    app.conf.task_default_exchange = 'tasks'
    app.conf.task_default_exchange_type = 'topic'
    app.conf.task_default_routing_key = 'task.default'
    app.conf.task_routes = {'feeds.tasks.*': {'queue': 'feed_tasks', 'routing_key': 'feed.import'}}

    @app.task(name='feeds.tasks.import_feed')
    def import_feed() -> None: ...

    @app.task
    def other() -> None: ...

    import_feed.delay()
    other.delay()
    assert lengths(redis_url) == {'default': 1, 'feed_tasks': 1}


def test_routes_as_ordered_pairs() -> None:
    # "Configuration and defaults: task_routes": a list of (pattern, route) pairs, tried in order
    app = Fastq('pairs', broker='memory://')
    app.conf.task_routes = (
        [
            ('feed.tasks.*', {'queue': 'feeds'}),
            (re.compile(r'(video|image)\.tasks\..*'), {'queue': 'media'}),
            ('*', {'queue': 'rest'}),
        ],
    )
    router = Router(app.conf)
    assert [router.route({}, name)['queue'] for name in ('feed.tasks.a', 'image.tasks.b', 'x')] == [
        'feeds',
        'media',
        'rest',
    ]


def test_what_a_message_is_published_with() -> None:
    app = Fastq('published', broker='memory://')
    app.conf.task_queues = [
        Queue('plain'),
        Queue('videos', Exchange('media'), 'media.video'),
        Queue('news', Exchange('topics', 'topic'), 'news.#'),
    ]
    router = Router(app.conf)

    def sent(options: dict[str, object]) -> tuple[object, object]:
        routed = router.route(options, 'x')
        return routed['exchange'], routed['routing_key']

    # a direct queue is published to by name unless both an exchange and a routing key are given
    assert sent({'queue': 'plain'}) == ('', 'plain')
    assert sent({'queue': 'videos'}) == ('', 'videos')
    assert sent({'queue': 'videos', 'routing_key': 'media.video'}) == ('', 'videos')
    assert sent({'exchange': 'media', 'routing_key': 'media.video'}) == ('media', 'media.video')
    assert sent({'exchange': KombuExchange('media'), 'routing_key': 'media.video'}) == ('media', 'media.video')
    # a topic queue through its exchange, with its own key or the one given
    assert sent({'queue': 'news'}) == ('topics', 'news.#')
    assert sent({'queue': 'news', 'routing_key': 'news.sport'}) == ('topics', 'news.sport')
    assert sent({'queue': KombuQueue('adhoc')}) == ('', 'adhoc')


def test_map_and_starmap_go_where_their_task_is_routed_and_a_shadow_name_does_not_route(
    app: Fastq, redis_url: str
) -> None:
    # Celery routes `add.map(...)` as `add` (route_name), and a task sent with shadow= by its real name
    app.conf.task_routes = {'routing_guide.add': {'queue': 'addq'}, 'shown.as': {'queue': 'wrongq'}}

    @app.task(name='routing_guide.add')
    def add(x: int, y: int) -> int:
        return x + y

    add.starmap([(1, 2)]).apply_async()
    add.map([(1, 2)]).apply_async()
    add.apply_async((1, 2), shadow='shown.as')
    assert lengths(redis_url) == {'addq': 3}


@pytest.mark.parametrize(
    'conf',
    [{}, {'task_default_queue': 'dq'}, {'task_default_routing_key': 'drk'},
     {'task_default_exchange': 'dex', 'task_default_exchange_type': 'topic'}],
)  # fmt: skip
def test_task_queues_get_celerys_defaults(conf: dict[str, str]) -> None:
    # a queue without an exchange is on the default exchange, without a routing key bound with the default
    # key: the bindings a Celery worker declares for the same settings (Celery's app.amqp.queues as oracle)
    from celery import Celery

    def queues() -> tuple[object, ...]:
        return (
            KombuQueue('video'),
            KombuQueue('images', routing_key='img'),
            KombuQueue('media', KombuExchange('media'), routing_key='m'),
            KombuQueue('plain', KombuExchange('plainx')),
        )

    celery_app = Celery('x', set_as_current=False)
    celery_app.conf.update(conf, task_queues=queues())
    fastq_app = Fastq('x', broker='memory://', set_as_current=False)
    fastq_app.conf.update(conf, task_queues=queues())
    theirs = [(q.name, q.exchange.name, q.exchange.type, q.routing_key) for q in celery_app.amqp.queues.values()]
    ours = [(q.name, q.exchange.name, q.exchange.type, q.routing_key) for q in fastq_app.router.queues.values()]
    assert ours == theirs
    fastq_app.close()
