"""A RabbitMQ delivery's properties as Celery's users read them (py-amqp's `Message.properties`).

fastq hands a delivery from RabbitMQ on in kombu's virtual-transport shape (the envelope Redis stores: see
`to_message` in brokers/amqp), so the worker's parent and its pool children treat every broker alike. But
Celery on RabbitMQ shows py-amqp's properties where that shape has its own: `self.request.properties`, a
`task_received` receiver's `request.request_dict['properties']` and a `task_unknown` receiver's
`message.properties` read `content_type`, `content_encoding`, `application_headers` (the headers),
`delivery_mode`, `priority`, `correlation_id`, `reply_to` ... and no `delivery_info`, `body_encoding` or
`delivery_tag` (kombu keeps those on the message, not among its properties).

A delivery's properties carry `MARK` to say they came from RabbitMQ; `celery_properties` gives Celery's
reading of them, computed when asked for (most tasks never ask). This module imports nothing: a pool child
reads it without loading the AMQP broker.

One difference stays: for a message sent with no priority (Celery's `apply_async(queue=...)` sends none),
the pool child's `self.request.delivery_info['priority']` reads 0 where Celery's reads None (the envelope
always has a priority, and the child's request is built from it in Rust, not from these properties); the
properties themselves, and the parent's `task_received` request, have none, as Celery's.
"""

from __future__ import annotations

from typing import Any

__all__ = ['BASIC_PROPERTIES', 'MARK', 'VIRTUAL_PROPERTIES', 'celery_properties']

#: The property that marks a RabbitMQ delivery: 1, or 0 when it came without a priority (the virtual
#: envelope always has one, 0 then, where py-amqp's properties have none).
MARK = 'x-fastq-amqp'

#: AMQP's basic properties, in py-amqp's order (`amqp.basic_message.Message.PROPERTIES`).
BASIC_PROPERTIES = (
    'content_type', 'content_encoding', 'application_headers', 'delivery_mode', 'priority', 'correlation_id',
    'reply_to', 'expiration', 'message_id', 'timestamp', 'type', 'user_id', 'app_id', 'cluster_id',
)  # fmt: skip

#: What the virtual transports add to a message's properties (and fastq's mark), not AMQP properties.
VIRTUAL_PROPERTIES = frozenset({'delivery_info', 'body_encoding', 'delivery_tag', MARK})


def celery_properties(message: Any) -> dict[str, Any]:
    """The properties of `message` (a `fastq._core.Message`) as Celery shows them: py-amqp's for a RabbitMQ
    delivery (its `MARK`), else as they are (kombu's virtual transports, Redis among them, show their own)."""
    properties: dict[str, Any] = message.properties
    mark = properties.get(MARK)
    if mark is None:
        return properties
    given = dict(properties)
    given['content_type'] = message.content_type or None
    given['content_encoding'] = message.content_encoding or None
    given['application_headers'] = message.headers
    if not mark:
        given.pop('priority', None)
    return {key: given[key] for key in BASIC_PROPERTIES if given.get(key) is not None}
