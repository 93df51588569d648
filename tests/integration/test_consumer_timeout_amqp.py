"""RabbitMQ's consumer_timeout against a real fastq worker: an ETA task outlives the node's timeout check
without the node ever closing the worker's channel (Celery issue 6760), because the worker parks it in
Celery's delayed-delivery chain (`celery_delayed_*`) instead of holding it unacked.

The node gets consumer_timeout = 60 s, the least RabbitMQ supports. It checks the timeout on every channel's
tick, every `channel_tick_interval` ms (60 s by default, so a held delivery is cut off 60 to 120 s after it was
delivered); this node's advanced.config sets the tick to 1 s, so the cut comes 60 to 61 s after delivery and
the test costs about one ETA of 80 s. One such test, not many: see the issue.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from fastq import _core, states
from fastq.brokers.amqp.consumer import AMQPConsumer
from fastq.brokers.amqp.topology import DELAYED_LEVELS, delayed_level
from fastq.brokers.base import Delivery, Outgoing
from tests.harness import lines, wait_until
from tests.servers import RabbitServer

pytestmark = pytest.mark.slow

CONSUMER_TIMEOUT = 60.0  # seconds: RabbitMQ supports nothing shorter
CHANNEL_TICK = 1000  # ms between the node's consumer_timeout checks on a channel (default 60000)
COUNTDOWN = 80.0  # the ETA task waits past the node's first check of every delivery it saw (~61 s)


@pytest.fixture(scope='module')
def strict_rabbit() -> Iterator[RabbitServer]:
    server = RabbitServer(
        extra_config=f'consumer_timeout = {int(CONSUMER_TIMEOUT * 1000)}\n',
        advanced=f'[{{rabbit, [{{channel_tick_interval, {CHANNEL_TICK}}}]}}].\n',
    )
    yield server
    server.close()


@pytest.fixture
def vhost(strict_rabbit: RabbitServer) -> str:
    return strict_rabbit.vhost()


@pytest.fixture
def urls(strict_rabbit: RabbitServer, vhost: str, redis_url: str) -> dict[str, str]:
    return {'FASTQ_BROKER_URL': strict_rabbit.url(vhost), 'FASTQ_RESULT_BACKEND': redis_url}


def _consumer_tags(server: RabbitServer, vhost: str, queue: str) -> set[str]:
    """The consumer tags on `queue` (fastq's carry a per-connection nonce: a reconnect changes them)."""
    out = server.ctl('list_consumers', '-p', vhost, 'queue_name', 'consumer_tag', '-q', '--no-table-headers')
    return {tag for name, _, tag in (line.partition('\t') for line in out.splitlines()) if name == queue}


def _unacked(server: RabbitServer, vhost: str, queue: str) -> int:
    out = server.ctl('list_queues', '-p', vhost, 'name', 'messages_unacknowledged', '-q', '--no-table-headers')
    counts = {name: int(n) for name, _, n in (line.partition('\t') for line in out.splitlines())}
    return counts[queue]


def _fetch_one(consumer: AMQPConsumer, timeout: float) -> Delivery:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = consumer.fetch(1, 0.5)
        if got:
            return got[0]
    raise AssertionError(f'no delivery within {timeout}s')


def test_eta_task_outlives_consumer_timeout_without_the_channel_being_closed(
    tasks: Any, worker: Any, strict_rabbit: RabbitServer, vhost: str, tmp_path: Path
) -> None:
    out = tmp_path / 'ran.txt'
    broker = tasks.app.broker
    w = worker('-c', '2')
    assert tasks.record.delay(str(out), 'before').get(timeout=30) == 'before'
    worker_tags = _consumer_tags(strict_rabbit, vhost, 'celery')
    assert len(worker_tags) == 1

    # The control: fastq's own consumer holding one delivery unacked, from the moment the ETA task is sent.
    # The node must cut it off (406, consumer_timeout) while the ETA task is still waiting, else this test
    # would prove nothing about the worker.
    message = _core.Message(b'[[], {}, {}]', 'application/json', 'utf-8', {'id': 'held', 'task': 'x'}, {})
    broker.publish([Outgoing(message, 'control')])
    control = broker.consumer(['control'], 'control')
    try:
        control.prefetch(1)
        held = _fetch_one(control, 30)
        assert not held.redelivered
        sent = time.time()
        eta_result = tasks.record.apply_async((str(out), 'eta'), countdown=COUNTDOWN)
        assert tasks.record.delay(str(out), 'after').get(timeout=30) == 'after'

        # The worker got the ETA task (from the classic `celery` queue, where a fastq client sends it at
        # once), republished it to the delayed chain and acked it: the chain holds it, the worker nothing.
        def parked() -> bool:
            return any(broker.qsize(delayed_level(level)) for level in range(DELAYED_LEVELS))

        wait_until(parked, timeout=30, message='the ETA task waiting in celery_delayed_*')
        wait_until(lambda: _unacked(strict_rabbit, vhost, 'celery') == 0, timeout=30, message='nothing unacked')

        # The node enforces consumer_timeout: the control's channel is closed and its delivery comes back.
        wait_until(lambda: control.link.generation > 1, timeout=CONSUMER_TIMEOUT + 60, message='control cut off')
        again = _fetch_one(control, 30)
        assert again.redelivered
        control.ack([again.tag])
        assert eta_result.state == states.PENDING, 'the ETA task ran before the node checked consumer_timeout'
        assert parked() and _unacked(strict_rabbit, vhost, 'celery') == 0
    finally:
        control.close()
    assert tasks.record.delay(str(out), 'after-the-check').get(timeout=30) == 'after-the-check'

    assert eta_result.get(timeout=COUNTDOWN + 90) == 'eta'
    assert tasks.record.delay(str(out), 'last').get(timeout=30) == 'last'
    ran = [line.split() for line in lines(out)]
    assert sorted(key for _, key, _, _ in ran) == sorted(['before', 'after', 'eta', 'after-the-check', 'last'])
    [eta_ran] = [float(line[3]) for line in ran if line[1] == 'eta']
    assert eta_ran >= sent + COUNTDOWN  # not before its ETA

    # The worker's consuming channel was never closed: same consumer, no error, no reconnect, no redelivery.
    assert _consumer_tags(strict_rabbit, vhost, 'celery') == worker_tags
    for sign in ('PRECONDITION_FAILED', 'timed out', 'closed channel', 'lost', 'reconnecting', 'Cannot connect'):
        assert sign not in w.log, f'{sign!r} in the worker log:\n{w.log}'
    node_log = '\n'.join(p.read_text(errors='replace') for p in (strict_rabbit.dir / 'log').glob('*.log'))
    assert node_log.count('delivery acknowledgement on channel') == 1  # the control's, not the worker's
