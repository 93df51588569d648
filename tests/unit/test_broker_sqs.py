"""The SQS broker against moto's SQS server, with kombu's SQS transport as the oracle for the layout."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Iterator
from typing import Any

import pytest

from fastq import Fastq
from fastq.brokers.base import Consumer
from fastq.brokers.sqs import SQSBroker
from fastq.brokers.sqs.client import Options
from fastq.brokers.sqs.layout import decode_body, entity_name
from fastq.exceptions import ImproperlyConfigured

pytest.importorskip('boto3')


@pytest.fixture
def app(sqs_url: str, sqs_options: dict[str, Any]) -> Iterator[Fastq]:
    app = Fastq('t', broker=sqs_url, backend='memory://', set_as_current=False)
    app.conf.broker_transport_options = sqs_options

    @app.task(name='t.add')
    def add(x: int, y: int) -> int:
        return x + y

    yield app
    app.close()


@pytest.fixture
def broker(app: Fastq) -> SQSBroker:
    assert isinstance(app.broker, SQSBroker)
    return app.broker


@pytest.fixture
def consumers(broker: SQSBroker) -> Iterator[Any]:
    made: list[Consumer] = []

    def make(*queues: str) -> Consumer:
        made.append(broker.consumer(list(queues or ['celery']), 'me'))
        return made[-1]

    yield make
    for c in made:
        c.close()


def _raw(server: Any, broker: SQSBroker, queue: str) -> list[dict[str, Any]]:
    """What SQS holds in a queue, received (and hidden for a moment) by a plain boto3 client."""
    url = broker.clients.url(broker.options.sqs_name(queue), create=False)
    reply = server.client().receive_message(
        QueueUrl=url, MaxNumberOfMessages=10, VisibilityTimeout=1, MessageSystemAttributeNames=['All']
    )
    return list(reply.get('Messages') or [])


def _fetch(consumer: Consumer, count: int = 1, timeout: float = 10.0) -> list[Any]:
    got: list[Any] = []
    deadline = time.monotonic() + timeout
    while len(got) < count and time.monotonic() < deadline:
        got += consumer.fetch(count - len(got), 1.0)
    return got


# --- layout: kombu's as the oracle ------------------------------------------------------------------------


@pytest.mark.parametrize(
    'name', ['celery', 'a.b.c', 'x:y/z@w', 'jobs.v1.fifo', 'dash-and_under', 'celery@host.celery.pidbox']
)
def test_queue_names_as_kombu(name: str) -> None:
    from kombu.transport.SQS import Channel

    assert entity_name(name) == Channel.entity_name(None, name)


@pytest.mark.parametrize(
    'body',
    ['eyJhIjogMX0=', '{"a": 1}', 'bm90IGpzb24', '////', 'YWJj\n', 'plain text', base64.b64encode(b'\xff').decode()],
)
def test_body_decoding_as_kombu(body: str) -> None:
    from kombu.transport.SQS import Channel

    class Probe:
        B64_REGEX = Channel.B64_REGEX
        _optional_b64_decode = Channel._optional_b64_decode

    assert decode_body(body) == Channel._decode_python_message_body(Probe(), body)


def test_kombu_sends_the_same_body(app: Fastq, broker: SQSBroker, sqs_server: Any, sqs_url: str) -> None:
    """Byte for byte: kombu's SQS channel, given the envelope fastq sent, sends the same MessageBody."""
    from kombu import Connection

    app.tasks['t.add'].delay(2, 3)
    [ours] = _raw(sqs_server, broker, 'celery')
    envelope = base64.b64decode(ours['Body'])
    options = dict(broker.transport_options, queue_name_prefix=broker.options.queue_name_prefix + 'k-')
    with Connection(sqs_url, transport_options=options) as conn:
        conn.default_channel._put('celery', json.loads(envelope))
        theirs = _raw(sqs_server, SQSBroker(sqs_url, _conf(options)), 'celery')
    assert [m['Body'] for m in theirs] == [ours['Body']]


def _conf(options: dict[str, Any]) -> Any:
    app = Fastq('k', broker='memory://', set_as_current=False)
    app.conf.broker_transport_options = options
    return app.conf


# --- options ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize('name', ['sts_role_arn', 'supports_fanout', 'predefined_exchanges'])
def test_unsupported_options_are_refused_by_name(name: str) -> None:
    with pytest.raises(ImproperlyConfigured, match=name):
        Options.parse('sqs://', {name: 'arn:aws:iam::1:role/x' if name == 'sts_role_arn' else True})


def test_url_and_options() -> None:
    o = Options.parse('sqs://AK:S%2Fk@127.0.0.1:4566', {'region': 'eu-west-1', 'visibility_timeout': '60.5'})
    assert (o.endpoint_url, o.access_key_id, o.secret_access_key) == ('http://127.0.0.1:4566', 'AK', 'S/k')
    assert (o.region, o.visibility_timeout, o.wait_time_seconds) == ('eu-west-1', 60, 10)
    assert Options.parse('sqs://', {'endpoint_url': 'http://x:1'}).endpoint_url == 'http://x:1'
    assert Options.parse('sqs://', {}).endpoint_url is None
    assert Options.parse('sqs://', {'queue_name_prefix': 'dev.'}).sqs_name('a.b') == 'dev-a-b'
    with pytest.raises(ImproperlyConfigured, match='wait_time_seconds'):
        Options.parse('sqs://', {'wait_time_seconds': 30})
    with pytest.raises(ImproperlyConfigured, match='FIFO'):
        Options.parse('sqs://', {'predefined_queues': {'q.fifo': {'url': 'http://x/1/q'}}})


def test_missing_boto3_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    import fastq.brokers.sqs.client as client

    monkeypatch.setattr(client, 'boto3', None)
    app = Fastq('t', broker='sqs://', set_as_current=False)
    with pytest.raises(ImproperlyConfigured, match=r'pip install "fastq\[sqs\]"'):
        app.broker  # noqa: B018


# --- publishing and consuming -----------------------------------------------------------------------------


def test_publish_fetch_ack(app: Fastq, broker: SQSBroker, consumers: Any) -> None:
    app.tasks['t.add'].delay(1, 2)
    assert broker.qsize('celery') == 1
    assert broker.known_queues() == ['celery']
    c = consumers()
    [d] = _fetch(c)
    assert d.task_name == 't.add' and d.message is not None and not d.redelivered
    c.ack([d.tag])
    assert broker.qsize('celery') == 0
    assert c.fetch(1, 0.5) == []


def test_a_group_is_sent_in_batches(app: Fastq, consumers: Any) -> None:
    from fastq import group

    add = app.tasks['t.add']
    sent = group(add.s(i, i) for i in range(23)).apply_async()
    c = consumers()
    got = _fetch(c, 23, 20)
    assert sorted(d.task_id for d in got) == sorted(r.id for r in sent.results)
    c.ack([d.tag for d in got])


def test_requeue_release_and_reject(app: Fastq, broker: SQSBroker, consumers: Any) -> None:
    app.tasks['t.add'].delay(1, 2)
    c = consumers()
    [d] = _fetch(c)
    c.reject([d.tag], requeue=True)
    [d] = _fetch(c)  # at once, not after the visibility timeout
    assert d.redelivered
    c.release([d.tag])
    [d] = _fetch(c)
    c.reject([d.tag], requeue=False)
    assert c.fetch(1, 0.5) == []
    assert broker.qsize('celery') == 0


def test_reject_leaves_the_message_to_a_redrive_policy(
    app: Fastq, broker: SQSBroker, consumers: Any, sqs_server: Any
) -> None:
    client = sqs_server.client()
    dlq = broker.clients.url(broker.options.sqs_name('dlq'), create=True)
    arn = client.get_queue_attributes(QueueUrl=dlq, AttributeNames=['QueueArn'])['Attributes']['QueueArn']
    url = broker.clients.url(broker.options.sqs_name('celery'), create=True)
    policy = json.dumps({'deadLetterTargetArn': arn, 'maxReceiveCount': 1})
    client.set_queue_attributes(QueueUrl=url, Attributes={'RedrivePolicy': policy})
    app.tasks['t.add'].delay(1, 2)
    c = consumers()
    [d] = _fetch(c)
    c.reject([d.tag], requeue=False)
    attributes = client.get_queue_attributes(QueueUrl=url, AttributeNames=['ApproximateNumberOfMessagesNotVisible'])
    assert attributes['Attributes']['ApproximateNumberOfMessagesNotVisible'] == '1'  # left for SQS to move


def test_renew_keeps_a_reservation(app: Fastq, broker: SQSBroker, consumers: Any, sqs_options: dict[str, Any]) -> None:
    app.conf.broker_transport_options = dict(sqs_options, visibility_timeout=2)
    app.close()
    short = app.broker
    assert isinstance(short, SQSBroker)
    app.tasks['t.add'].delay(1, 2)
    holder, other = short.consumer(['celery'], 'a'), short.consumer(['celery'], 'b')
    try:
        [d] = _fetch(holder)
        for _ in range(6):  # 3 s: past the visibility timeout, renewed every half second
            holder.renew()
            time.sleep(0.5)
        assert other.fetch(1, 0.5) == []
        holder.ack([d.tag])
    finally:
        holder.close()
        other.close()


def test_defer_hides_until_the_eta(app: Fastq, consumers: Any) -> None:
    app.tasks['t.add'].delay(1, 2)
    c = consumers()
    [d] = _fetch(c)
    c.defer(d.tag, time.time() + 2)
    assert c.fetch(1, 0.5) == []
    [again] = _fetch(c)
    assert again.task_id == d.task_id
    c.ack([again.tag])


def test_countdown_is_sent_with_a_delay(app: Fastq, broker: SQSBroker, sqs_server: Any) -> None:
    app.tasks['t.add'].apply_async((1, 2), countdown=60)
    url = broker.clients.url(broker.options.sqs_name('celery'), create=False)
    attributes = sqs_server.client().get_queue_attributes(QueueUrl=url, AttributeNames=['All'])['Attributes']
    assert (attributes['ApproximateNumberOfMessagesDelayed'], attributes['ApproximateNumberOfMessages']) == ('1', '0')


def test_fifo_queue(app: Fastq, broker: SQSBroker, consumers: Any, sqs_server: Any) -> None:
    add = app.tasks['t.add']
    sent = [add.apply_async((i, i), queue='jobs.fifo') for i in range(5)]
    c = consumers('jobs.fifo')
    order = []
    for _ in range(5):
        [d] = _fetch(c)
        order.append(d.task_id)
        c.ack([d.tag])
    assert order == [r.id for r in sent]
    add.apply_async((9, 9), queue='jobs.fifo')
    [raw] = _raw(sqs_server, broker, 'jobs.fifo')
    envelope = json.loads(base64.b64decode(raw['Body']))
    assert raw['Attributes']['MessageGroupId'] == 'default'
    assert raw['Attributes']['MessageDeduplicationId'] == envelope['properties']['delivery_tag']


def test_raw_json_bodies(app: Fastq, sqs_options: dict[str, Any], sqs_server: Any, consumers: Any) -> None:
    app.conf.broker_transport_options = dict(sqs_options, sqs_base64_encoding=False)
    app.close()
    broker = app.broker
    assert isinstance(broker, SQSBroker)
    app.tasks['t.add'].delay(1, 2)
    [raw] = _raw(sqs_server, broker, 'celery')
    assert json.loads(raw['Body'])['headers']['task'] == 't.add'
    time.sleep(1.1)
    c = broker.consumer(['celery'], 'me')
    try:
        [d] = _fetch(c)
        assert d.task_name == 't.add'
        c.ack([d.tag])
    finally:
        c.close()


def test_predefined_queues(sqs_server: Any, sqs_url: str, sqs_options: dict[str, Any]) -> None:
    prefix = sqs_options['queue_name_prefix']
    url = sqs_server.client().create_queue(QueueName=f'{prefix}celery')['QueueUrl']
    options = dict(
        sqs_options,
        predefined_queues={f'{prefix}celery': {'url': url, 'access_key_id': 'other', 'secret_access_key': 'x'}},
    )
    app = Fastq('t', broker=sqs_url, backend='memory://', set_as_current=False)
    app.conf.broker_transport_options = options
    try:
        app.send_task('t.add', (1, 2))
        assert app.broker.qsize('celery') == 1
        with pytest.raises(ImproperlyConfigured, match='predefined_queues'):
            app.send_task('t.add', (1, 2), queue='elsewhere')
        assert app.broker.known_queues() == ['celery']
    finally:
        app.close()


def test_dead_letters(app: Fastq, broker: SQSBroker, consumers: Any) -> None:
    app.tasks['t.add'].delay(1, 2)
    c = consumers()
    [d] = _fetch(c)
    letter = c.dead_letter(d, 'poison')
    assert broker.qsize('celery') == 0
    [listed] = broker.dead_letters.list()
    assert (listed.id, listed.task_id, listed.reason) == (letter.id, d.task_id, 'poison')
    assert broker.requeue_dead_letter(d.task_id or '') is not None
    assert broker.dead_letters.list() == []
    [back] = _fetch(c)
    assert back.task_id == d.task_id


def test_no_remote_control(app: Fastq) -> None:
    with pytest.raises(ImproperlyConfigured, match='no fanout'):
        app.control.inspect(timeout=0.1).ping()


def test_beat_coordination_within_the_process(broker: SQSBroker) -> None:
    assert broker.claim('beat.x/run@1', 60) and not broker.claim('beat.x/run@1', 60)
    assert broker.lease('beat', 'a', 60) and not broker.lease('beat', 'b', 60)
    assert broker.lease_holder('beat') == 'a'
    broker.release_lease('beat', 'a')
    assert broker.lease('beat', 'b', 60)


# --- regressions ------------------------------------------------------------------------------------------


def test_a_dead_letter_requeued_to_a_fifo_queue_is_not_dropped_as_a_repeat(
    app: Fastq, broker: SQSBroker, consumers: Any, sqs_server: Any
) -> None:
    """The requeued envelope is the one first sent, delivery tag and all: sent with that tag as its
    deduplication id, SQS dropped it as a repeat within 5 minutes of the first send (and the letter was gone;
    moto dedups only against messages still queued, so the id is checked here)."""
    app.tasks['t.add'].apply_async((1, 2), queue='jobs.fifo')
    c = consumers('jobs.fifo')
    [d] = _fetch(c)
    first = json.loads(d.raw)['properties']['delivery_tag']
    c.dead_letter(d, 'poison')
    assert broker.requeue_dead_letter(d.task_id or '') is not None
    [raw] = _raw(sqs_server, broker, 'jobs.fifo')
    assert raw['Attributes']['MessageDeduplicationId'] not in ('', first)
    [back] = _fetch(c)
    assert back.task_id == d.task_id
    c.ack([back.tag])


def test_an_ack_that_failed_is_sent_again_by_the_retry(
    app: Fastq, broker: SQSBroker, consumers: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The settler retries a failed ack with the same tags: they must still be held, or the retry deletes
    nothing and the task runs again once its visibility timeout passes."""
    from fastq.exceptions import BrokerConnectionError

    app.tasks['t.add'].delay(1, 2)
    c = consumers()
    [d] = _fetch(c)
    client = broker.clients.for_queue(broker.options.sqs_name('celery'))
    real = client.delete_message_batch

    def down(**kwargs: Any) -> Any:
        raise BrokerConnectionError('down')

    monkeypatch.setattr(client, 'delete_message_batch', down)
    with pytest.raises(BrokerConnectionError):
        c.ack([d.tag])
    monkeypatch.setattr(client, 'delete_message_batch', real)
    c.ack([d.tag])
    hidden = broker._attributes('celery', ['ApproximateNumberOfMessagesNotVisible'])
    assert hidden == {'ApproximateNumberOfMessagesNotVisible': '0'}  # deleted, not waiting to come back


def test_a_release_during_a_renewal_is_not_hidden_by_it(
    app: Fastq, broker: SQSBroker, consumers: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The housekeeping thread's renewal and the loop's release race: the release reaching SQS first, the
    renewal hid the message handed back for a whole visibility timeout. Here the release lands while the
    renewal's call is in flight (before it, at SQS): the message is visible again all the same."""
    app.tasks['t.add'].delay(1, 2)
    c = consumers()
    [d] = _fetch(c)
    client = broker.clients.for_queue(broker.options.sqs_name('celery'))
    real = client.change_message_visibility_batch
    calls: list[int] = []

    def change(**kwargs: Any) -> Any:
        calls.append(kwargs['Entries'][0]['VisibilityTimeout'])
        if len(calls) == 1:  # the renewal: the release goes first
            c.release([d.tag])
        return real(**kwargs)

    monkeypatch.setattr(client, 'change_message_visibility_batch', change)
    c.renew()
    assert calls[0] > 0 and calls[-1] == 0
    [back] = _fetch(c)
    assert back.task_id == d.task_id
    c.ack([back.tag])


def test_a_backoff_task_past_its_policy_is_left_to_redelivery(
    sqs_server: Any, sqs_url: str, sqs_options: dict[str, Any]
) -> None:
    """kombu never deletes a rejected task its queue's backoff policy covers (`QoS.is_backoff_task`): SQS
    redelivers it. One received more often than the policy names was deleted here, and lost."""
    prefix = sqs_options['queue_name_prefix']
    url = sqs_server.client().create_queue(QueueName=f'{prefix}celery')['QueueUrl']
    spec = {'url': url, 'backoff_policy': {1: 1}, 'backoff_tasks': ['t.add']}
    app = Fastq('t', broker=sqs_url, backend='memory://', set_as_current=False)
    app.conf.broker_transport_options = dict(
        sqs_options, visibility_timeout=1, predefined_queues={f'{prefix}celery': spec}
    )
    c = app.broker.consumer(['celery'], 'me')
    try:
        app.send_task('t.add', (1, 2))
        [d] = _fetch(c)
        c.reject([d.tag], requeue=False)  # first receive: hidden for the policy's 1 s
        [d] = _fetch(c)
        c.reject([d.tag], requeue=False)  # second: the policy names none; left, back after its timeout
        [d] = _fetch(c)
        assert d.task_name == 't.add'
        c.ack([d.tag])
    finally:
        c.close()
        app.close()
