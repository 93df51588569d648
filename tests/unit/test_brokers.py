"""The broker SPI contract, one body run against every embedded broker (memory and SQLite)."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest

from fastq import Fastq, protocol
from fastq.brokers import broker_class
from fastq.brokers.base import Broker, Outgoing
from fastq.exceptions import ImproperlyConfigured


def message(app: Fastq, task_id: str = 'id-1', name: str = 't.add', args: tuple[Any, ...] = (1, 2)) -> Any:
    return protocol.build_task_message(
        task_id=task_id,
        name=name,
        args=args,
        kwargs={},
        embed={},
        serializer='json',
        compression=None,
        eta=None,
        expires=None,
        reply_to='r',
        origin='gen1@host',
    )


def publish(broker: Broker, app: Fastq, *ids: str, queue: str = 'celery', **kw: Any) -> None:
    broker.publish([Outgoing(message(app, i), queue, **kw) for i in ids])


def fetch_until(broker: Broker, consumer: Any, n: int = 1, timeout: float = 10.0) -> list[Any]:
    """Fetch while letting the broker do its housekeeping (the Redis restore sweep runs there)."""
    deadline = time.monotonic() + timeout
    got: list[Any] = []
    while time.monotonic() < deadline and len(got) < n:
        broker.maintenance()
        got += consumer.fetch(n - len(got), 0.1)
    return got


@pytest.fixture
def broker(any_app: Fastq) -> Broker:
    b = any_app.broker
    b.connect()
    return b


def test_publish_fetch_ack(broker: Broker, any_app: Fastq) -> None:
    publish(broker, any_app, 'a', 'b', 'c')
    assert broker.qsize('celery') == 3
    consumer = broker.consumer(['celery'], owner='w1')
    got = consumer.fetch(10, 1.0)
    assert [d.task_id for d in got] == ['a', 'b', 'c']  # FIFO
    assert all(d.message is not None and d.message.headers['task'] == 't.add' for d in got)
    assert broker.qsize('celery') == 0
    consumer.ack([d.tag for d in got])
    assert consumer.fetch(10, 0.05) == []
    consumer.close()


def test_fetch_respects_limit_and_reservations(broker: Broker, any_app: Fastq) -> None:
    publish(broker, any_app, *[str(i) for i in range(5)])
    c1 = broker.consumer(['celery'], owner='w1')
    c2 = broker.consumer(['celery'], owner='w2')
    first = c1.fetch(2, 1.0)
    second = c2.fetch(10, 1.0)
    assert [d.task_id for d in first] == ['0', '1']
    assert [d.task_id for d in second] == ['2', '3', '4']
    c1.close()
    c2.close()


def test_reject_requeue_and_release(broker: Broker, any_app: Fastq) -> None:
    publish(broker, any_app, 'a', 'b')
    c = broker.consumer(['celery'], owner='w1')
    a, b = c.fetch(2, 1.0)
    assert a.deliveries == 1 and not a.redelivered
    c.reject([a.tag], requeue=True)
    c.release([b.tag])
    again = {d.task_id: d for d in c.fetch(2, 1.0)}
    assert again['a'].deliveries == 2 and again['a'].redelivered  # a rejection counts as a delivery
    assert again['b'].deliveries == 1  # a release does not
    c.reject([again['a'].tag], requeue=False)
    c.ack([again['b'].tag])
    assert c.fetch(2, 0.05) == []
    c.close()


def test_close_hands_back_reservations(broker: Broker, any_app: Fastq) -> None:
    publish(broker, any_app, 'a')
    c = broker.consumer(['celery'], owner='w1')
    assert len(c.fetch(1, 1.0)) == 1
    c.close()
    c2 = broker.consumer(['celery'], owner='w2')
    got = c2.fetch(1, 1.0)
    assert [d.task_id for d in got] == ['a'] and got[0].deliveries == 1
    c2.close()


def test_priorities(broker: Broker, any_app: Fastq) -> None:
    publish(broker, any_app, 'low', priority=0)
    publish(broker, any_app, 'high', priority=9)
    publish(broker, any_app, 'mid', priority=5)
    c = broker.consumer(['celery'], owner='w1')
    order = ['high', 'mid', 'low'] if broker.features.higher_priority_first else ['low', 'mid', 'high']
    assert [d.task_id for d in c.fetch(3, 1.0)] == order
    c.close()


def test_eta_messages_wait_in_the_broker(broker: Broker, any_app: Fastq) -> None:
    if not broker.features.delayed_publish:
        pytest.skip('ETA messages go to their queue on this broker (the worker parks them)')
    publish(broker, any_app, 'later', eta=time.time() + 0.3)
    publish(broker, any_app, 'now')
    c = broker.consumer(['celery'], owner='w1')
    assert [d.task_id for d in c.fetch(5, 0.05)] == ['now']
    got = c.fetch(5, 5.0)  # wakes when the ETA passes, without a publish
    assert [d.task_id for d in got] == ['later']
    c.close()


def test_defer_parks_until_eta(broker: Broker, any_app: Fastq) -> None:
    publish(broker, any_app, 'a')
    c = broker.consumer(['celery'], owner='w1')
    (d,) = c.fetch(1, 1.0)
    c.defer(d.tag, time.time() + 0.3)
    assert c.fetch(1, 0.05) == []
    (again,) = fetch_until(broker, c)
    assert again.task_id == 'a' and again.deliveries == 1  # parking is not a failed delivery
    c.close()


def test_lease_expires_without_renewal(any_app: Fastq) -> None:
    broker = any_app.broker
    broker.visibility_timeout = 0.2
    broker.connect()
    publish(broker, any_app, 'a')
    c1 = broker.consumer(['celery'], owner='w1')
    assert len(c1.fetch(1, 1.0)) == 1
    c2 = broker.consumer(['celery'], owner='w2')
    got = fetch_until(broker, c2)
    assert [d.task_id for d in got] == ['a'] and got[0].deliveries == 2
    c1.close()
    c2.close()


def test_renewed_lease_is_not_handed_out_twice(any_app: Fastq) -> None:
    broker = any_app.broker
    broker.visibility_timeout = 0.3
    broker.connect()
    publish(broker, any_app, 'a')
    c1 = broker.consumer(['celery'], owner='w1')
    assert len(c1.fetch(1, 1.0)) == 1
    c2 = broker.consumer(['celery'], owner='w2')
    deadline = time.monotonic() + 1.2
    while time.monotonic() < deadline:
        c1.renew()
        broker.maintenance()
        assert c2.fetch(1, 0.05) == []
    c1.close()
    c2.close()


def test_wakeup_interrupts_fetch(broker: Broker) -> None:
    c = broker.consumer(['celery'], owner='w1')
    threading.Timer(0.1, c.wakeup).start()
    started = time.monotonic()
    assert c.fetch(1, 30.0) == []
    assert time.monotonic() - started < 25  # returned because woken, not because the timeout passed
    c.close()


def test_publish_wakes_a_waiting_fetch(broker: Broker, any_app: Fastq) -> None:
    c = broker.consumer(['celery'], owner='w1')
    threading.Timer(0.1, lambda: publish(broker, any_app, 'x')).start()
    got = c.fetch(1, 30.0)
    assert [d.task_id for d in got] == ['x']
    c.close()


def test_queues_are_separate(broker: Broker, any_app: Fastq) -> None:
    publish(broker, any_app, 'a', queue='one')
    publish(broker, any_app, 'b', queue='two')
    c = broker.consumer(['two'], owner='w1')
    assert [d.task_id for d in c.fetch(5, 1.0)] == ['b']
    assert broker.qsize('one') == 1
    assert set(broker.known_queues()) >= {'one', 'two'}
    assert broker.purge('one') == 1 and broker.qsize('one') == 0
    c.close()


def test_dead_letters(broker: Broker, any_app: Fastq) -> None:
    publish(broker, any_app, 'a')
    c = broker.consumer(['celery'], owner='w1')
    (d,) = c.fetch(1, 1.0)
    letter = c.dead_letter(d, 'because')
    store = broker.dead_letters
    assert store.count() == 1
    assert store.get(letter.id) == store.get('a')
    got = store.get('a')
    assert got is not None and got.reason == 'because' and got.task_name == 't.add' and got.queue == 'celery'
    assert broker.qsize('celery') == 0
    requeued = broker.requeue_dead_letter('a')
    assert requeued is not None and store.count() == 0
    (again,) = c.fetch(1, 1.0)
    assert again.task_id == 'a' and again.message is not None
    c.ack([again.tag])
    c.close()
    assert store.purge() == 0


def test_unparseable_payload_is_a_delivery_with_an_error(broker: Broker) -> None:
    broker._publish_raw('celery', b'not json at all')
    c = broker.consumer(['celery'], owner='w1')
    (d,) = c.fetch(1, 1.0)
    assert d.message is None and d.error and d.raw == b'not json at all'
    c.dead_letter(d, 'malformed')
    c.close()


def test_fanout(broker: Broker) -> None:
    sub1 = broker.subscribe('celery.pidbox')
    sub2 = broker.subscribe('celery.pidbox')
    other = broker.subscribe('celeryev')
    broker.fanout_publish('celery.pidbox', b'ping', 'key')
    assert sub1.get(1.0) == [('key', b'ping')]
    assert sub2.get(1.0) == [('key', b'ping')]
    assert other.get(0.05) == []
    late = broker.subscribe('celery.pidbox')
    assert late.get(0.05) == []  # sees only what is published after it subscribed


def test_unknown_scheme_suggests_closest() -> None:
    with pytest.raises(ImproperlyConfigured, match=r'did you mean sqlite://\?'):
        broker_class('sqlit:///x.db')
    for url in ('amqp://guest@localhost//', 'pyamqp://h//', 'librabbitmq://h//', 'amqps://h//'):
        assert broker_class(url).__name__ == 'AMQPBroker'


def test_sqlite_url_forms(tmp_path: Any) -> None:
    from fastq.utils.sqlite import path_from_url

    assert path_from_url('sqlite:////abs/x.db', 'broker_url') == '/abs/x.db'
    assert path_from_url('sqlite:///rel.db', 'broker_url').endswith('/rel.db')
    with pytest.raises(ImproperlyConfigured, match='in-memory'):
        path_from_url('sqlite:///:memory:', 'broker_url')


def test_sqlite_dead_owner_reservations_return_at_once(tmp_path: Any) -> None:
    """A consumer whose process died (its lock released) loses its reservations without waiting for expiry."""
    import multiprocessing

    url = f'sqlite:///{tmp_path}/b.db'
    app = Fastq('t', broker=url, backend='memory://', set_as_current=False)
    app.broker.visibility_timeout = 3600
    publish(app.broker, app, 'a')

    def reserve_and_die() -> None:
        child = Fastq('t', broker=url, backend='memory://', set_as_current=False)
        c = child.broker.consumer(['celery'], owner='doomed')
        assert len(c.fetch(1, 5.0)) == 1
        import os

        os._exit(0)  # no close(): the reservation is left behind, its lock released by the kernel

    proc = multiprocessing.get_context('fork').Process(target=reserve_and_die)
    proc.start()
    proc.join(30)
    c = app.broker.consumer(['celery'], owner='survivor')
    got = c.fetch(1, 10.0)
    assert [d.task_id for d in got] == ['a']
    c.close()
    app.close()
