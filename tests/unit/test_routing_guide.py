"""Celery's Routing guide, as its users write it (kombu's `Exchange` and `Queue` in settings, topic exchanges,
manual routing with an exchange and a routing key), on a real Redis: each task lands in the list of the queue
Celery would have put it in."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from kombu import Exchange as KombuExchange
from kombu import Queue as KombuQueue

from fastq import Fastq
from fastq.routing import Broadcast, Exchange, Queue, Router, topic_pattern


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


class ThreeRouter:
    """A router as Celery 3 wrote them, which Celery 5 still asks."""

    def route_for_task(self, task: str, args: Any = None, kwargs: Any = None) -> dict[str, str] | None:
        if task == 'tasks.add':
            return {'queue': f'math-{len(args)}-{sorted(kwargs)}'}
        return None


def test_celery_3_routers_by_object_and_by_the_path_of_their_class() -> None:
    app = Fastq('old_routers', broker='memory://', set_as_current=False)
    for routes in (ThreeRouter(), (f'{__name__}.ThreeRouter',), [ThreeRouter(), {'tasks.*': 'other'}]):
        app.conf.task_routes = routes
        router = Router(app.conf)
        assert router.route({}, 'tasks.add', (1, 2), {'z': 1})['queue'] == "math-2-['z']"
        assert router.route({}, 'tasks.mul')['queue'] == ('other' if isinstance(routes, list) else 'celery')


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


def test_task_queues_as_names_and_dicts_as_celery_reads_them() -> None:
    # "Routing Tasks: Defining queues" and the older dict form: kombu's Queue.from_dict options
    from celery import Celery

    queues = {
        'video': {'exchange': 'video', 'exchange_type': 'topic', 'binding_key': 'video.#', 'durable': False},
        'images': {'exchange': 'media', 'routing_key': 'media.image', 'queue_arguments': {'x-max-priority': 10}},
        'plain': {},
        'kind_only': {'exchange_type': 'topic'},
        'ad': {'exchange': 'ad', 'auto_delete': True, 'exchange_durable': True},
    }
    celery_app = Celery('x', set_as_current=False)
    celery_app.conf.task_queues = queues
    fastq_app = Fastq('x', broker='memory://', set_as_current=False)
    fastq_app.conf.task_queues = queues

    def described(q: Any) -> tuple[object, ...]:
        ex = q.exchange
        return (q.name, ex.name, ex.type, bool(ex.durable), q.routing_key, bool(q.durable), bool(q.auto_delete),
                q.queue_arguments or None)  # fmt: skip

    theirs = [described(q) for q in celery_app.amqp.queues.values()]
    assert [described(q) for q in fastq_app.router.queues.values()] == theirs
    fastq_app.close()


def test_a_route_fills_in_what_the_call_leaves_out() -> None:
    # Celery asks the routes even when the call names a queue; the call's options win where both say
    from celery import Celery

    routes = {'a': {'queue': 'qa', 'priority': 5, 'routing_key': 'zz'}}
    celery_app = Celery('x', set_as_current=False)
    celery_app.conf.task_routes = routes
    fastq_app = Fastq('x', broker='memory://', set_as_current=False)
    fastq_app.conf.task_routes = routes
    for options in ({'queue': 'b'}, {}, {'priority': 1}):
        theirs = celery_app.amqp.router.route(dict(options), 'a')
        ours = fastq_app.router.route(dict(options), 'a')
        assert (ours['queue'], ours.get('priority')) == (theirs['queue'].name, theirs.get('priority'))
    fastq_app.close()


def test_a_router_functions_exchange_type_decides_how_it_is_published() -> None:
    # "Routing Tasks: Routers": the example router answers with an exchange, its type and a routing key
    def route_task(name: str, args: Any, kwargs: Any, options: Any, task: Any = None, **kw: Any) -> Any:
        if name == 'myapp.tasks.compress_video':
            return {'exchange': 'video', 'exchange_type': 'topic', 'routing_key': 'video.compress'}
        return None

    app = Fastq('x', broker='memory://', set_as_current=False)
    app.conf.task_routes = (route_task,)
    routed = app.router.route({}, 'myapp.tasks.compress_video')
    assert (routed['exchange'], routed['routing_key'], 'exchange_type' in routed) == ('video', 'video.compress', False)
    # a direct exchange with no routing key of its own is still the queue's name on the default exchange
    routed = app.router.route({'exchange': 'video', 'exchange_type': 'direct'}, 'x')
    assert (routed['exchange'], routed['routing_key']) == ('', 'celery')
    app.close()


@pytest.mark.parametrize('key', ['feed.#', 'task.#', '*.stock.#', 'usd.stock', 'a_b-c.*', '#', '', 'x\x00y'])
def test_topic_patterns_are_kombus(key: str) -> None:
    from kombu.transport.virtual.exchange import TopicExchange

    assert topic_pattern(key) == TopicExchange(None).key_to_pattern(key)


def test_broadcast_queues_by_their_alias() -> None:
    # "Routing Tasks: Broadcast": routes and -Q/-X name the exchange; the queue is bcast.<uuid>
    from celery import Celery
    from kombu.common import Broadcast as KombuBroadcast

    for broadcast in (Broadcast('broadcast_tasks'), KombuBroadcast('broadcast_tasks')):
        conf = {
            'task_queues': (broadcast, KombuQueue('celery')),
            'task_routes': {'tasks.reload_cache': {'queue': 'broadcast_tasks', 'exchange': 'broadcast_tasks'}},
        }
        fastq_app = Fastq('x', broker='memory://', set_as_current=False)
        fastq_app.conf.update(conf)
        router = fastq_app.router
        routed = router.route({}, 'tasks.reload_cache')
        assert (routed['queue'], routed['exchange']) == (broadcast.name, 'broadcast_tasks')
        assert router.worker_queues(['broadcast_tasks', 'celery']) == [broadcast.name, 'celery']
        assert router.queue_name('broadcast_tasks') == broadcast.name and router.queue_name('celery') == 'celery'
        queue = router.queue('broadcast_tasks')
        assert (queue.exchange.type, queue.auto_delete, queue.alias) == ('fanout', True, 'broadcast_tasks')
        assert fastq_app.amqp.queues['broadcast_tasks'] is queue  # (by alias, as Celery's Queues)
        if isinstance(broadcast, KombuBroadcast):  # (Celery takes kombu's objects only)
            celery_app = Celery('x', set_as_current=False)
            celery_app.conf.update(conf)
            theirs = celery_app.amqp.queues['broadcast_tasks']
            assert (queue.name, queue.routing_key) == (theirs.name, theirs.routing_key)
        fastq_app.close()


def _empty_router(name: str, args: Any, kwargs: Any, options: Any, task: Any = None, **kw: Any) -> Any:
    return {}


@pytest.mark.parametrize(
    ('conf', 'name', 'options'),
    [
        ({'task_create_missing_queues': False, 'task_routes': {'a': {'queue': 'feeds'}}}, 'a', {}),
        ({'task_create_missing_queues': False}, 'b', {'queue': 'zzz'}),
        ({'task_create_missing_queues': False}, 'b', {}),
        ({'task_create_missing_queues': False, 'task_default_queue': 'dq'}, 'b', {'queue': 'dq'}),
        ({'task_routes': (_empty_router, {'*': {'queue': 'other'}})}, 'a', {}),
        ({'task_routes': {'t.a?': 'q1', 't.[ab]': 'q2'}}, 't.ab', {}),
        ({'task_routes': {'t.a?': 'q1', 't.[ab]': 'q2'}}, 't.[ab]', {}),
        ({'task_routes': {'t.a': {'queue': ''}}}, 't.a', {}),
    ],
)
def test_the_queue_a_task_is_routed_to_is_celerys(conf: dict[str, Any], name: str, options: dict[str, Any]) -> None:
    # Celery's Router as oracle: without task_create_missing_queues (and no task_queues) only the default
    # queue exists; a router answering {} ends the search; only '*' makes a task_routes key a pattern; an
    # empty queue in a route is the default queue
    from celery import Celery

    def queue_of(route: Any) -> str:
        try:
            return str(getattr(route(), 'get', lambda k: None)('queue'))
        except Exception as exc:
            return f'{type(exc).__name__}: {exc}'

    celery_app = Celery('x', set_as_current=False)
    celery_app.conf.update(conf)
    fastq_app = Fastq('x', broker='memory://', set_as_current=False)
    fastq_app.conf.update(conf)

    def theirs() -> Any:
        routed = celery_app.amqp.router.route(dict(options), name)
        queue = routed.get('queue') or celery_app.amqp.default_queue  # (what send_task_message falls back to)
        return {'queue': queue.name}

    assert queue_of(lambda: fastq_app.router.route(dict(options), name)) == queue_of(theirs)
    fastq_app.close()


def test_a_worker_without_create_missing_queues_refuses_an_undefined_queue() -> None:
    # `celery worker -Q feeds` with task_create_missing_queues=False: ImproperlyConfigured, in Celery's words
    from celery.worker.worker import SELECT_UNKNOWN_QUEUE

    from fastq.exceptions import ImproperlyConfigured

    app = Fastq('x', broker='memory://', set_as_current=False)
    app.conf.task_create_missing_queues = False
    with pytest.raises(ImproperlyConfigured) as info:
        app.router.worker_queues(['celery', 'feeds'])
    assert str(info.value) == SELECT_UNKNOWN_QUEUE.strip().format(['celery', 'feeds'], KeyError('feeds'))
    assert app.router.worker_queues(['celery']) == ['celery']
    app.close()
    app = Fastq('x', broker='memory://', set_as_current=False)
    app.conf.update(task_create_missing_queues=False, task_queues=[Queue('feeds'), Broadcast('bc')])
    assert app.router.worker_queues(['feeds', 'bc'])[0] == 'feeds'
    with pytest.raises(ImproperlyConfigured):
        app.router.worker_queues(['celery'])
    app.close()


def test_a_router_function_sees_the_task_and_the_queue_as_celerys_do(app: Fastq, redis_url: str) -> None:
    # "Routing Tasks: Routers": `task` is the registered task (send_task by its name too, as Celery 5.7's
    # send_task looks it up), and a queue already chosen is its Queue object (Celery's expand_destination)
    seen: list[tuple[str, str | None, str | None]] = []

    def route_task(name: str, args: Any, kwargs: Any, options: Any, task: Any = None, **kw: Any) -> Any:
        queue = options.get('queue')
        seen.append((name, getattr(task, 'name', None), None if queue is None else queue.name))
        return {'queue': getattr(task, 'route_to', 'plain')}

    app.conf.task_routes = (route_task,)

    @app.task(name='routing_guide.add')
    def add(x: int, y: int) -> int:
        return x + y

    add.route_to = 'special'  # type: ignore[attr-defined]
    app.send_task('routing_guide.add', (1, 2))
    app.send_task('routing_guide.other', (1, 2), queue='q2')
    assert seen == [('routing_guide.add', 'routing_guide.add', None), ('routing_guide.other', None, 'q2')]
    assert lengths(redis_url) == {'special': 1, 'q2': 1}


def _queue_settings() -> list[dict[str, Any]]:
    from kombu import binding
    from kombu.common import Broadcast as KombuBroadcast

    return [
        {
            'task_queues': (
                KombuQueue('default', routing_key='task.#'),
                KombuQueue('videos', KombuExchange('media'), routing_key='media.video'),
            ),
            'task_default_queue': 'default',
            'task_default_exchange': 'tasks',
            'task_default_exchange_type': 'topic',
            'task_default_routing_key': 'task.default',
        },
        {
            'task_queues': (
                KombuQueue('p', KombuExchange('p'), 'p', queue_arguments={'x-max-priority': 10}),
                KombuQueue('m', max_priority=5),
                KombuQueue('ad', auto_delete=True, durable=False, exclusive=True),
            )
        },
        {'task_queue_max_priority': 10},
        {'task_default_exchange': 'tx', 'task_default_exchange_type': 'topic', 'task_default_routing_key': 'rk.#'},
        {'task_create_missing_queue_exchange_type': 'topic', 'task_create_missing_queue_type': 'quorum'},
        {'task_queues': {'video': {'exchange': 'video', 'exchange_type': 'topic', 'binding_key': 'video.#'}}},
        {'task_queues': (KombuBroadcast('bc'), KombuQueue('celery'))},
        {'task_queues': (KombuQueue('b', bindings=[binding(KombuExchange('e1', 'topic'), routing_key='x.#')]),)},
    ]


@pytest.mark.parametrize('index', range(len(_queue_settings())))
def test_active_queues_describe_each_queue_as_celerys_worker_does(index: int) -> None:
    # `inspect active_queues` replies with kombu's Queue.as_dict(recurse=True) of app.amqp.queues[name]: a
    # queue given without an exchange is on task_default_exchange (of its type), a missing one on a direct
    # exchange of its name, task_queue_max_priority in queue_arguments, max_priority, flags, bindings
    import json
    import types

    from celery import Celery

    from fastq.worker.inspect import _active_queues

    celery_app = Celery('x', set_as_current=False)
    celery_app.conf.update(_queue_settings()[index])  # (each app its own kombu objects: Celery changes them)
    fastq_app = Fastq('x', broker='memory://', set_as_current=False)
    fastq_app.conf.update(_queue_settings()[index])
    names = [q.alias or name for name, q in celery_app.amqp.queues.items()] + ['missing']

    def plain(value: Any) -> Any:
        return json.loads(re.sub(r'bcast\.[0-9a-f-]{36}', 'bcast', json.dumps(value)))

    theirs = plain([celery_app.amqp.queues[name].as_dict(recurse=True) for name in names])
    worker = types.SimpleNamespace(app=fastq_app, queues=names, added_bindings={})
    ours = plain(_active_queues(worker))  # type: ignore[arg-type]
    assert ours == theirs
    fastq_app.close()


@pytest.mark.parametrize('index', range(len(_queue_settings())))
def test_app_amqp_queues_are_celerys(index: int) -> None:
    # app.amqp.queues[name], which code written for Celery reads: the default queue on the default exchange,
    # a missing queue added (unless task_create_missing_queues is off), task_queue_max_priority applied
    from celery import Celery

    def described(queue: Any) -> tuple[object, ...]:
        ex = queue.exchange
        return (re.sub(r'bcast\.[0-9a-f-]{36}', 'bcast', queue.name), ex.name, ex.type, queue.routing_key,
                queue.queue_arguments, queue.max_priority)  # fmt: skip

    for missing in (True, False):
        celery_app = Celery('x', set_as_current=False)
        celery_app.conf.update(_queue_settings()[index], task_create_missing_queues=missing)
        fastq_app = Fastq('x', broker='memory://', set_as_current=False)
        fastq_app.conf.update(_queue_settings()[index], task_create_missing_queues=missing)
        theirs, ours = celery_app.amqp.queues, fastq_app.amqp.queues
        assert [described(q) for q in ours.values()] == [described(q) for q in theirs.values()]
        if missing:
            assert described(ours['other']) == described(theirs['other'])
        else:
            with pytest.raises(KeyError):
                ours['other']
        fastq_app.close()


def test_the_default_queue_is_on_the_default_exchange_without_task_queues(app: Fastq, redis_url: str) -> None:
    # Celery's app.amqp.queues makes the default queue on task_default_exchange (of its type) bound with
    # task_default_routing_key, and publishes through that exchange: the same binding and delivery_info here
    import json

    app.conf.update(
        task_default_exchange='tasks', task_default_exchange_type='topic', task_default_routing_key='task.default'
    )
    app.broker.declare(['celery'])  # what a worker consuming it declares
    client = redis.Redis.from_url(redis_url)
    assert client.smembers('_kombu.binding.tasks') == {
        '\x06\x16'.join(['task.default', topic_pattern('task.default'), 'celery']).encode()
    }

    @app.task
    def plain() -> None: ...

    plain.delay()
    sent = json.loads(client.lindex('celery', 0) or b'{}')
    assert sent['properties']['delivery_info'] == {'exchange': 'tasks', 'routing_key': 'task.default'}


def test_the_default_queue_declared_on_rabbitmq_is_celerys() -> None:
    # (the declaration a fastq worker makes on RabbitMQ for the default queue, without task_queues)
    from celery import Celery

    from fastq.brokers.amqp.topology import Topology

    conf = {'task_default_exchange': 'tasks', 'task_default_exchange_type': 'topic', 'task_default_routing_key': 'td'}
    celery_app = Celery('x', set_as_current=False)
    celery_app.conf.update(conf)
    theirs = celery_app.amqp.queues['celery']
    fastq_app = Fastq('x', broker='memory://', set_as_current=False)
    fastq_app.conf.update(conf)
    spec = Topology(fastq_app.conf).spec('celery')
    assert (spec.exchange, spec.exchange_type, spec.routing_key) == (
        theirs.exchange.name,
        theirs.exchange.type,
        theirs.routing_key,
    )
    fastq_app.close()
