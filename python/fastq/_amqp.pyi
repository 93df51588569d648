"""fastq._amqp: an AMQP 0-9-1 connection over rabbitmq-c (Cython). Used by fastq.brokers.amqp only.

A `Connection` belongs to one thread: rabbitmq-c is not thread-safe and answers heartbeats only inside its own
calls, so the owning thread calls `wait` whenever it has nothing to send. Every blocking call releases the GIL.
"""

from typing import Any, Final, final

DELIVER: Final[str]
"""`wait` event: (DELIVER, channel, consumer_tag, delivery_tag, redelivered, exchange, routing_key, properties,
body)."""
CONFIRM_ACK: Final[str]
"""`wait` event: (CONFIRM_ACK, channel, delivery_tag, multiple): the broker has the published message(s)."""
CONFIRM_NACK: Final[str]
"""`wait` event: (CONFIRM_NACK, channel, delivery_tag, multiple): the broker refused the published message(s)."""
CHANNEL_CLOSED: Final[str]
"""`wait` event: (CHANNEL_CLOSED, channel, reply_code, reply_text); the close was answered, open it again."""
CANCELLED: Final[str]
"""`wait` event: (CANCELLED, channel, consumer_tag): the broker cancelled a consumer (its queue was deleted)."""
RETURNED: Final[str]
"""`wait` event: (RETURNED, channel, reply_code, reply_text, exchange, routing_key): a mandatory message had
no queue."""

@final
class Connection:
    """One AMQP connection, logged in when constructed.

    Raises (every method):
        fastq.exceptions.BrokerConnectionError: the connection could not be made or is lost; the object is
            unusable afterwards (`is_open` is False).
        fastq.exceptions.AMQPChannelError: the broker closed the channel (reply_code, reply_text, channel);
            the close was answered and the channel may be opened again (the others stay open).
    """

    heartbeat: int
    """The heartbeat interval asked for (seconds, 0 = none)."""
    server_properties: dict[str, Any]
    """What the broker announced in connection.start (product, version, capabilities, ...)."""

    def __init__(
        self,
        host: str,
        port: int,
        vhost: str,
        user: str,
        password: str,
        heartbeat: int,
        frame_max: int,
        connect_timeout: float,
        rpc_timeout: float,
        ssl: dict[str, Any] | None,
    ) -> None:
        """Connect and log in (PLAIN). `ssl` (keys ca_certs, certfile, keyfile, verify_peer,
        verify_hostname) switches to TLS."""
    @property
    def is_open(self) -> bool: ...
    def fileno(self) -> int:
        """The socket's descriptor (-1 once closed)."""
    def open_channel(self, channel: int) -> None: ...
    def close_channel(self, channel: int) -> None: ...
    def exchange_declare(
        self, channel: int, name: str, type: str, passive: bool, durable: bool, auto_delete: bool,
        arguments: dict[str, Any],
    ) -> None: ...  # fmt: skip
    def exchange_bind(self, channel: int, destination: str, source: str, routing_key: str) -> None: ...
    def queue_declare(
        self, channel: int, name: str, passive: bool, durable: bool, exclusive: bool, auto_delete: bool,
        arguments: dict[str, Any],
    ) -> tuple[str, int, int]:  # fmt: skip
        """Returns (queue name, ready messages, consumers)."""
    def queue_bind(
        self, channel: int, queue: str, exchange: str, routing_key: str, arguments: dict[str, Any]
    ) -> None: ...
    def queue_purge(self, channel: int, queue: str) -> int:
        """Returns how many messages were removed."""
    def queue_delete(self, channel: int, queue: str, if_unused: bool = False, if_empty: bool = False) -> int: ...
    def exchange_delete(self, channel: int, name: str, if_unused: bool = False) -> None: ...
    def qos(self, channel: int, prefetch_count: int, is_global: bool) -> None: ...
    def confirm_select(self, channel: int) -> None:
        """Publisher confirms on: each publish on the channel gets a sequence number from 1, confirmed by
        CONFIRM_ACK / CONFIRM_NACK events from `wait`."""
    def consume(self, channel: int, queue: str, consumer_tag: str, no_ack: bool, arguments: dict[str, Any]) -> str:
        """basic.consume; deliveries arrive as DELIVER events from `wait`. Returns the consumer tag."""
    def cancel(self, channel: int, consumer_tag: str) -> None: ...
    def publish(
        self, channel: int, exchange: str, routing_key: str, body: bytes, properties: dict[str, Any], mandatory: bool
    ) -> None:
        """basic.publish (asynchronous). `properties` uses kombu's names (content_type, content_encoding,
        headers, delivery_mode, priority, correlation_id, reply_to, expiration, message_id, timestamp, type,
        app_id); header values may be str, int, float, bool, None, bytes, lists and dicts of them.

        Raises:
            TypeError: a header value of another type.
        """
    def ack(self, channel: int, delivery_tag: int, multiple: bool) -> None: ...
    def reject(self, channel: int, delivery_tag: int, requeue: bool) -> None: ...
    def nack(self, channel: int, delivery_tag: int, multiple: bool, requeue: bool) -> None: ...
    def get(
        self, channel: int, queue: str, no_ack: bool
    ) -> tuple[int, bool, str, str, int, dict[str, Any], bytes] | None:
        """basic.get: None when empty, else (delivery_tag, redelivered, exchange, routing_key, messages left,
        properties, body)."""
    def wait(self, timeout: float, wake_fd: int) -> list[tuple[Any, ...]]:
        """Wait up to `timeout` seconds (GIL released) for frames, or until `wake_fd` (-1: none) is readable
        (it is not read here). Returns the events that arrived, maybe none; answers heartbeats, and returns
        at least every heartbeat/4 seconds so the caller keeps calling it."""
    def close(self) -> None:
        """Close the connection politely and free it; idempotent."""
