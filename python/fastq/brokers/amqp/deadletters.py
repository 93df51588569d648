"""Dead letters on RabbitMQ: messages in the durable queue `fastq.deadletters`, each with a header naming why.

Reading them means taking them off the queue (basic.get) and putting back what stays (RabbitMQ does that
asynchronously, so a count right after a read may lag), so `list` is for the `fastq deadletter` command, not a
hot path. Queues with their own dead-letter exchange never land here:
RabbitMQ moves their rejected messages there itself.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from fastq import _core
from fastq.brokers.amqp.link import CH_ADMIN
from fastq.brokers.amqp.topology import DEAD_LETTER_QUEUE
from fastq.brokers.base import DeadLetter, DeadLetterStore, Outgoing

if TYPE_CHECKING:
    from fastq import _amqp
    from fastq.brokers.amqp import AMQPBroker


class AMQPDeadLetters(DeadLetterStore):
    def __init__(self, broker: AMQPBroker) -> None:
        self.broker = broker
        self._declared = False

    def declare(self) -> None:
        if not self._declared:
            self.broker.link.call(self._declare)
            self._declared = True

    def _declare(self, conn: _amqp.Connection) -> None:
        self.broker.link.ensure_channel(conn, CH_ADMIN)
        conn.queue_declare(CH_ADMIN, DEAD_LETTER_QUEUE, False, True, False, False, {})

    def add(self, letter: DeadLetter) -> None:
        from fastq.brokers.amqp.consumer import ID_HEADER, QUEUE_HEADER, REASON_HEADER

        self.declare()
        message = _core.Message.from_envelope(letter.payload, None)
        message.headers.update({REASON_HEADER: letter.reason, QUEUE_HEADER: letter.queue, ID_HEADER: letter.id})
        self.broker.publish([Outgoing(message, DEAD_LETTER_QUEUE)])

    def _take_all(self) -> list[tuple[int, DeadLetter, tuple[Any, ...]]]:
        """Every letter, taken unacked on the admin channel (the caller acks or requeues them)."""
        from fastq.brokers.amqp import _envelope_of
        from fastq.brokers.amqp.consumer import ID_HEADER, QUEUE_HEADER, REASON_HEADER

        self.declare()

        def run(conn: _amqp.Connection) -> list[tuple[int, DeadLetter, tuple[Any, ...]]]:
            out: list[tuple[int, DeadLetter, tuple[Any, ...]]] = []
            while True:
                got = conn.get(CH_ADMIN, DEAD_LETTER_QUEUE, False)
                if got is None:
                    return out
                dtag, _, exchange, routing_key, _, props, body = got
                headers = props.get('headers') or {}
                letter = DeadLetter(
                    id=str(headers.get(ID_HEADER) or dtag),
                    queue=str(headers.get(QUEUE_HEADER) or routing_key),
                    reason=str(headers.get(REASON_HEADER) or ''),
                    payload=_envelope_of(body, props, exchange, routing_key),
                    created=float(props.get('timestamp') or time.time()),
                    task_id=headers.get('id'),
                    task_name=headers.get('task'),
                )
                out.append((dtag, letter, got))

        return self.broker.link.call(run)

    def _settle(self, keep: list[int], drop: list[int]) -> None:
        def run(conn: _amqp.Connection) -> None:
            for dtag in drop:
                conn.ack(CH_ADMIN, dtag, False)
            for dtag in keep:
                conn.reject(CH_ADMIN, dtag, True)

        self.broker.link.call(run)

    def list(self, limit: int = 100) -> list[DeadLetter]:
        taken = self._take_all()
        self._settle([dtag for dtag, _, _ in taken], [])
        return [letter for _, letter, _ in reversed(taken)][:limit]

    def get(self, ident: str) -> DeadLetter | None:
        for letter in self.list(1_000_000):
            if ident in (letter.id, letter.task_id):
                return letter
        return None

    def remove(self, ident: str) -> DeadLetter | None:
        taken = self._take_all()
        found = None
        for dtag, letter, _ in reversed(taken):
            if ident in (letter.id, letter.task_id):
                found = (dtag, letter)
                break
        self._settle([dtag for dtag, _, _ in taken if found is None or dtag != found[0]],
                     [] if found is None else [found[0]])  # fmt: skip
        return None if found is None else found[1]

    def requeue(self, ident: str) -> DeadLetter | None:
        """Publish a letter back to its queue and drop it, in one pass over the queue: letters just read are put
        back asynchronously by RabbitMQ, so a second pass could miss the one it looks for."""
        taken = self._take_all()
        found = None
        for dtag, letter, _ in reversed(taken):
            if ident in (letter.id, letter.task_id):
                found = (dtag, letter)
                break
        try:
            if found is not None:
                self.broker._publish_raw(found[1].queue, found[1].payload)
        finally:
            drop = [] if found is None else [found[0]]
            self._settle([dtag for dtag, _, _ in taken if dtag not in drop], drop)
        return None if found is None else found[1]

    def purge(self) -> int:
        self.declare()
        return self.broker.purge(DEAD_LETTER_QUEUE)

    def count(self) -> int:
        self.declare()
        return self.broker.qsize(DEAD_LETTER_QUEUE)
