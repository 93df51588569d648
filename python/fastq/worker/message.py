"""The message `task_unknown` and `task_rejected` receivers get: kombu's `Message` as Celery hands it to them.

Those receivers inspect what arrived (`message.payload`, `message.delivery_info`, `message.headers`) to log or
route it elsewhere; fastq's own message (`fastq._core.Message`) holds only what the wire carries. By the time
the signal is sent the worker has settled the message (dead-lettered, acked), so `acknowledged` is True, as
Celery's is. `fastq.contrib.migrate` hands its filters the same reading of messages it has not settled yet.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from fastq.brokers.amqp_properties import celery_properties

if TYPE_CHECKING:
    from fastq._core import Message
    from fastq.brokers.base import Delivery

__all__ = ['ReceivedMessage']


class ReceivedMessage:
    """kombu's `Message` reading of a delivery: headers, properties, body, content type and encoding,
    `delivery_info`, `delivery_tag`, `payload` (the body decoded), `decode()`."""

    acknowledged = True
    errors: list[Any] = []

    def __init__(self, delivery: Delivery, message: Message) -> None:
        self._message = message
        self.headers = message.headers
        self.properties = celery_properties(message)  # (py-amqp's on RabbitMQ, as Celery's receivers get them)
        self.body = message.body
        self.content_type = message.content_type
        self.content_encoding = message.content_encoding
        info = dict(message.properties.get('delivery_info') or {})
        info.setdefault('routing_key', delivery.queue)
        self.delivery_info = info
        # (the virtual transports' own, RabbitMQ's channel tag, else the worker's)
        self.delivery_tag = message.properties.get('delivery_tag', info.get('delivery_tag', delivery.tag))
        self._decoded: Any = None
        self._decoded_yet = False

    @property
    def payload(self) -> Any:
        """The body decoded (decompressed first when a `compression` header says so), as kombu's."""
        if not self._decoded_yet:
            self._decoded, self._decoded_yet = self.decode(), True
        return self._decoded

    def decode(self) -> Any:
        from fastq.serialization import decompress, loads

        body = self.body
        compression = self.headers.get('compression')
        if compression:
            body = decompress(body, compression)
        return loads(body, self.content_type, None)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._message, name)

    def __repr__(self) -> str:
        return f'<Message object at {id(self):#x} with details {self.headers.get("task")!r}>'
