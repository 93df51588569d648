"""Amazon SQS broker in kombu's layout: Celery clients and workers share SQS queues with fastq.

URLs: `sqs://` (credentials from boto3: the environment, ~/.aws, an instance role), `sqs://KEY:SECRET@` (URL-
quote a secret holding `/` or `+`), `sqs://KEY:SECRET@host:port` (a host is the endpoint, http unless
`is_secure`, as kombu; `endpoint_url` says it outright). Needs boto3: `pip install "fastq[sqs]"`.

Transport options (`broker_transport_options`), kombu's names and defaults:
    region                   boto3's default region, else us-east-1
    visibility_timeout       1800   seconds a received message stays invisible (new queues get it too)
    wait_time_seconds        10     long poll of each ReceiveMessage (0..20; 0 polls)
    polling_interval         1      seconds to pause after an empty poll
    queue_name_prefix        ''     prepended to every queue name
    predefined_queues        {name: {url, access_key_id, secret_access_key, session_token, region,
                                     backoff_policy, backoff_tasks}}: only these queues, never created
    sqs_base64_encoding      True   bodies as base64 (False: the JSON envelope as it is)
    sqs-creation-attributes, queue_tags, client-config, is_secure; endpoint_url (fastq's)
Refused with ImproperlyConfigured: sts_role_arn, supports_fanout and predefined_exchanges (SNS fanout).

Features: delayed messages (an ETA up to 15 minutes ahead is sent with DelaySeconds, which Celery's workers
also honour since they read the ETA header when it arrives; a delivered ETA task is made invisible until due),
leases (fastq workers extend what they hold by the visibility timeout, so long acks_late tasks are not handed
out twice; Celery's workers do not), FIFO queues (`.fifo`). No priorities, no fanout: no remote control, no
events (as Celery's docs say of SQS), and no delivery counts (SQS counts receives: use a redrive policy).
Revocations (without remote control, a worker learns of none), beat's claims and leader lease are kept in the
process: run one beat, as Celery requires.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from fastq.brokers.base import Broker, BrokerFeatures, Consumer, DeadLetterStore, Outgoing
from fastq.brokers.sqs.client import Clients, Options, translated
from fastq.brokers.sqs.consumer import SQSConsumer
from fastq.brokers.sqs.deadletters import SQSDeadLetters
from fastq.brokers.sqs.layout import (
    DEAD_LETTER_QUEUE,
    DEFAULT_GROUP,
    MAX_BATCH_BYTES,
    MAX_DELAY,
    MAX_MESSAGES,
    MAX_WAIT,
    decode_body,
    encode_body,
    is_fifo,
)
from fastq.exceptions import OperationalError

if TYPE_CHECKING:
    from fastq.config import Settings

__all__ = ['SQSBroker']

logger = logging.getLogger('fastq.brokers.sqs')

#: Envelope properties kombu's SQS transport acts on; the envelope is parsed only when one may be there.
_PROPERTY_MARKS = (
    b'"MessageGroupId"',
    b'"MessageDeduplicationId"',
    b'"message_attributes"',
    b'"delay_seconds"',
    b'"DelaySeconds"',
)


class SQSBroker(Broker):
    scheme = 'sqs'
    features = BrokerFeatures(
        priorities=False,
        delayed=True,
        delayed_publish=False,  # DelaySeconds reaches 15 minutes only
        leases=True,
        delivery_count=False,
        fanout=False,
        shared=True,
    )

    def __init__(self, url: str, conf: Settings) -> None:
        super().__init__(url, conf)
        self.options = Options.parse(url, self.transport_options)
        self.visibility_timeout = float(self.options.visibility_timeout)
        self.clients = Clients(self.options, self.describe())
        self._dead = SQSDeadLetters(self)
        self._local_lock = threading.Lock()
        self._claims: dict[str, float] = {}
        self._leases: dict[str, tuple[str, float]] = {}

    @property
    def lease_renew_interval(self) -> float:
        return max(min(self.visibility_timeout / 3, 60.0), 0.5)

    def connect(self) -> None:
        """One cheap authenticated call: ListQueues, or GetQueueAttributes of a predefined queue (credentials
        limited to some queues may not list)."""
        o = self.options
        with translated(self.describe(), 'connect'):
            if o.predefined:
                name, spec = next(iter(o.predefined.items()))
                self.clients.for_queue(name).get_queue_attributes(QueueUrl=spec.url, AttributeNames=['QueueArn'])
            else:
                self.clients.default.list_queues(QueueNamePrefix=o.queue_name_prefix, MaxResults=1)

    # --- publishing ---------------------------------------------------------------------------------------

    def publish(self, batch: Sequence[Outgoing]) -> None:
        """SendMessage, or SendMessageBatch for several messages to one queue (10 a call, in order)."""
        if not batch:
            return
        now = time.time()
        by_queue: dict[str, list[dict[str, Any]]] = {}
        for out in batch:
            # The default exchange names the queue by routing key; any other was routed by the sender already.
            sqs_name = self.options.sqs_name(out.queue if out.exchange else out.routing_key or out.queue)
            envelope = out.envelope if out.envelope is not None else out.to_envelope()
            by_queue.setdefault(sqs_name, []).append(self._entry(sqs_name, envelope, out.eta, now))
        for sqs_name, entries in by_queue.items():
            self._send(sqs_name, entries)

    def _entry(
        self, sqs_name: str, envelope: bytes, eta: float | None, now: float, resend: bool = False
    ) -> dict[str, Any]:
        """SendMessage's parameters for an envelope, as kombu's `Channel._put` sets them. `resend`: the
        envelope was delivered before (a dead letter requeued), so on a FIFO queue it gets a deduplication id
        of its own: its delivery tag's would have SQS drop it as a repeat within 5 minutes of the first send."""
        fifo = is_fifo(sqs_name)
        entry: dict[str, Any] = {}
        properties: dict[str, Any] = {}
        delay: int | None = None
        if fifo or any(mark in envelope for mark in _PROPERTY_MARKS):
            document = json.loads(envelope)
            properties = document.get('properties') or {}
            attributes = properties.pop('message_attributes', None)
            if attributes is not None:  # sent as SQS attributes, not in the body (kombu)
                entry['MessageAttributes'] = attributes
                envelope = json.dumps(document).encode()
            if 'MessageGroupId' in properties:
                entry['MessageGroupId'] = properties['MessageGroupId']
            delay = _delay_property(properties)
        entry['MessageBody'] = encode_body(envelope, self.options.base64)
        if fifo:
            # FIFO queues take no per-message delay: an ETA task is deferred by the worker that receives it.
            entry.setdefault('MessageGroupId', DEFAULT_GROUP)
            # The envelope's delivery tag (new per publish, kept by a retry of it): SQS drops a repeat within
            # 5 minutes, where kombu's fresh uuid would not.
            entry['MessageDeduplicationId'] = str(
                (None if resend else properties.get('MessageDeduplicationId') or properties.get('delivery_tag'))
                or uuid.uuid4()
            )
        else:
            if delay is None and eta is not None and eta > now:
                delay = int(eta - now)  # never visible after its ETA; the worker holds it the last moment
            if delay:
                entry['DelaySeconds'] = min(delay, MAX_DELAY)
        return entry

    def _send(self, sqs_name: str, entries: list[dict[str, Any]]) -> None:
        url = self.clients.url(sqs_name, create=True)
        client = self.clients.for_queue(sqs_name)
        describe = self.describe()
        if len(entries) == 1:
            with translated(describe, f'SendMessage {sqs_name}'):
                client.send_message(QueueUrl=url, **entries[0])
            return
        for chunk in _chunks(entries):
            with translated(describe, f'SendMessageBatch {sqs_name}'):
                reply = client.send_message_batch(
                    QueueUrl=url, Entries=[{'Id': str(i), **e} for i, e in enumerate(chunk)]
                )
            failed = reply.get('Failed') or []
            for f in failed:  # each on its own, once: the contract is all of the batch or an error
                if f.get('SenderFault'):
                    raise OperationalError(f'{describe}: SendMessageBatch {sqs_name}: {f.get("Code")}: {f}')
                with translated(describe, f'SendMessage {sqs_name}'):
                    client.send_message(QueueUrl=url, **chunk[int(f['Id'])])

    def _publish_raw(self, queue: str, payload: bytes) -> None:
        sqs_name = self.options.sqs_name(queue)
        self._send(sqs_name, [self._entry(sqs_name, payload, None, time.time(), resend=True)])

    # --- consuming and queues -----------------------------------------------------------------------------

    def consumer(self, queues: Sequence[str], owner: str) -> Consumer:
        return SQSConsumer(self, list(queues), owner)

    def pop(self, queue: str, timeout: float) -> list[bytes]:
        sqs_name = self.options.sqs_name(queue)
        url = self.clients.url(sqs_name, create=False)
        if url is None:
            time.sleep(max(0.0, timeout))
            return []
        client = self.clients.for_queue(sqs_name)
        with translated(self.describe(), f'ReceiveMessage {sqs_name}'):
            messages = (
                client.receive_message(
                    QueueUrl=url, MaxNumberOfMessages=MAX_MESSAGES, WaitTimeSeconds=min(MAX_WAIT, max(0, int(timeout)))
                ).get('Messages')
                or []
            )
            if messages:
                client.delete_message_batch(
                    QueueUrl=url,
                    Entries=[{'Id': str(i), 'ReceiptHandle': m['ReceiptHandle']} for i, m in enumerate(messages)],
                )
        return [decode_body(m['Body']) for m in messages]

    def _attributes(self, queue: str, names: list[str]) -> dict[str, str] | None:
        sqs_name = self.options.sqs_name(queue)
        url = self.clients.url(sqs_name, create=False)
        if url is None:
            return None
        with translated(self.describe(), f'GetQueueAttributes {sqs_name}'):
            reply = self.clients.for_queue(sqs_name).get_queue_attributes(QueueUrl=url, AttributeNames=names)
        return dict(reply.get('Attributes') or {})

    def qsize(self, queue: str) -> int:
        """Approximate, as SQS counts: visible and delayed messages."""
        attributes = self._attributes(queue, ['ApproximateNumberOfMessages', 'ApproximateNumberOfMessagesDelayed'])
        return sum(int(v) for v in (attributes or {}).values())

    def purge(self, queue: str) -> int:
        """PurgeQueue; SQS may take up to a minute to finish it, and refuses a second one within that minute."""
        count = self.qsize(queue)
        sqs_name = self.options.sqs_name(queue)
        url = self.clients.url(sqs_name, create=False)
        if url is None:
            return 0
        with translated(self.describe(), f'PurgeQueue {sqs_name}'):
            self.clients.for_queue(sqs_name).purge_queue(QueueUrl=url)
        return count

    def known_queues(self) -> list[str]:
        """The queues under `queue_name_prefix` (by their SQS names, prefix removed: the names a worker or
        `fastq purge -Q` can be given), fastq's dead-letter queue left out."""
        prefix = self.options.queue_name_prefix
        dead = self.options.sqs_name(DEAD_LETTER_QUEUE)
        return [name[len(prefix) :] for name in self.clients.list_names() if name != dead and name.startswith(prefix)]

    @property
    def dead_letters(self) -> DeadLetterStore:
        return self._dead

    # --- beat's coordination: SQS has nothing atomic to keep it in, so it holds within this process ---------
    # (one beat per schedule, as Celery requires on any broker; two beats on SQS would both send)

    def claim(self, key: str, ttl: float) -> bool:
        now = time.time()
        with self._local_lock:
            if self._claims.get(key, 0.0) > now:
                return False
            for stale in [k for k, until in self._claims.items() if until <= now]:
                del self._claims[stale]
            self._claims[key] = now + ttl
            return True

    def lease(self, name: str, holder: str, ttl: float) -> bool:
        now = time.time()
        with self._local_lock:
            current = self._leases.get(name)
            if current is not None and current[0] != holder and current[1] > now:
                return False
            self._leases[name] = (holder, now + ttl)
            return True

    def release_lease(self, name: str, holder: str) -> None:
        with self._local_lock:
            if self._leases.get(name, ('', 0.0))[0] == holder:
                del self._leases[name]

    def lease_holder(self, name: str) -> str | None:
        with self._local_lock:
            current = self._leases.get(name)
            return current[0] if current is not None and current[1] > time.time() else None

    def close(self) -> None:
        return None


def _delay_property(properties: dict[str, Any]) -> int | None:
    """A per-message delay a sender put in the properties (kombu's `_resolve_delay_seconds`), clamped."""
    for key in ('delay_seconds', 'DelaySeconds'):
        value = properties.get(key)
        if value is None:
            continue
        try:
            delay = int(value)
        except (TypeError, ValueError, OverflowError):
            logger.warning('SQS delay %r is not a number, publishing without a delay', value)
            return None
        return max(0, min(delay, MAX_DELAY))
    return None


def _chunks(entries: list[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    """Entries in batches of at most 10 and MAX_BATCH_BYTES of bodies (kept in order)."""
    chunks: list[list[dict[str, Any]]] = []
    size = 0
    for e in entries:
        length = len(e['MessageBody'])
        if not chunks or len(chunks[-1]) >= MAX_MESSAGES or size + length > MAX_BATCH_BYTES:
            chunks.append([])
            size = 0
        chunks[-1].append(e)
        size += length
    return chunks
