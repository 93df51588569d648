"""What lives on SQS, in kombu's layout (kombu/transport/SQS), so Celery peers share queues with fastq.

queue names       `queue_name_prefix` + the queue's name, dots turned to dashes and any other punctuation but
                  `-` and `_` to underscores (a `.fifo` suffix is kept: it makes the queue a FIFO queue)
message body      base64 of kombu's virtual envelope, the same JSON document the Redis broker stores
                  (`sqs_base64_encoding: False` sends the JSON as it is); received bodies are taken as base64
                  only when they read back exactly, as kombu decides
FIFO queues       MessageGroupId and MessageDeduplicationId from the envelope's properties when a sender put
                  them there (Celery does with `apply_async(MessageGroupId=...)`), else group 'default'
delivery          DeleteMessage with the receipt handle acks; ChangeMessageVisibility hands back or hides
fastq-deadletter  a queue of fastq's own: one message per dead letter, a JSON record (`deadletters.py`)
"""

from __future__ import annotations

import base64
import binascii
import string

#: kombu's CHARS_REPLACE_TABLE: '.' -> '-', punctuation other than '-', '_' and '.' -> '_'.
CHARS_REPLACE_TABLE = {ord(c): 0x5F for c in string.punctuation if c not in '-_.'}
CHARS_REPLACE_TABLE[0x2E] = 0x2D

FIFO_SUFFIX = '.fifo'
MAX_MESSAGES = 10  # ReceiveMessage, DeleteMessageBatch, SendMessageBatch, ChangeMessageVisibilityBatch
MAX_BATCH_BYTES = 256 * 1024  # SendMessageBatch's payload limit as most regions and servers still enforce it
MAX_DELAY = 900  # DelaySeconds
MAX_VISIBILITY = 43200  # 12 hours: the longest a received message stays invisible, renewals included
MAX_WAIT = 20  # WaitTimeSeconds
DEFAULT_VISIBILITY_TIMEOUT = 1800  # kombu's Channel.default_visibility_timeout
DEFAULT_WAIT_TIME_SECONDS = 10  # kombu's Channel.default_wait_time_seconds
DEFAULT_POLLING_INTERVAL = 1.0  # kombu's Transport.polling_interval (after an empty poll)
DEFAULT_REGION = 'us-east-1'
DEFAULT_GROUP = 'default'  # kombu's MessageGroupId when the sender named none
RECEIVE_COUNT = 'ApproximateReceiveCount'
REDRIVE_POLICY_TTL = 300.0  # kombu's redrive_policy_cache_ttl: how long a queue's RedrivePolicy is trusted
DEAD_LETTER_QUEUE = 'fastq-deadletter'


def entity_name(name: str) -> str:
    """A queue name as SQS allows it (kombu's `Channel.entity_name`)."""
    if name.endswith(FIFO_SUFFIX):
        return name[: -len(FIFO_SUFFIX)].translate(CHARS_REPLACE_TABLE) + FIFO_SUFFIX
    return name.translate(CHARS_REPLACE_TABLE)


def is_fifo(sqs_name: str) -> bool:
    return sqs_name.endswith(FIFO_SUFFIX)


def encode_body(envelope: bytes, base64_encoding: bool) -> str:
    """The MessageBody kombu sends for an envelope."""
    if base64_encoding:
        return base64.b64encode(envelope).decode('ascii')
    return envelope.decode('utf-8')


def decode_body(body: str) -> bytes:
    """The envelope in a received MessageBody: base64-decoded only when it is base64 that reads back exactly
    and decodes to UTF-8 (kombu's `_optional_b64_decode`), so raw JSON bodies from `sqs_base64_encoding: False`
    senders are taken as they are."""
    raw = body.encode('utf-8')
    candidate = raw.strip()
    if not candidate or candidate[:1] == b'{':
        return raw
    try:
        decoded = base64.b64decode(candidate, validate=True)
    except (binascii.Error, ValueError):
        return raw
    if base64.b64encode(decoded).rstrip(b'=') != candidate.rstrip(b'='):
        return raw
    try:
        decoded.decode('utf-8')
    except UnicodeDecodeError:
        return raw
    return decoded
