"""Dead letters on SQS: a queue of fastq's own (`<prefix>fastq-deadletter`), one JSON record per message.

SQS cannot look a message up or list a queue, so reading the store receives every record, hidden for
`SCAN_HIDE` seconds while it is read, and hands back those it keeps. A second reader at the same moment sees
fewer letters; a letter is never lost by it. SQS's own dead-letter queues (a redrive policy) are another
matter: they hold what SQS moved there, untouched by fastq.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from fastq.brokers.base import DeadLetter, DeadLetterStore
from fastq.brokers.sqs.client import translated
from fastq.brokers.sqs.layout import DEAD_LETTER_QUEUE, MAX_MESSAGES

if TYPE_CHECKING:
    from fastq.brokers.sqs import SQSBroker

SCAN_HIDE = 30  # seconds a scanned record stays invisible unless handed back
MAX_SCAN = 100_000  # records read at most by one scan


def _find(found: Sequence[tuple[DeadLetter, str]], ident: str) -> tuple[DeadLetter, str] | None:
    """A letter by its id, else the newest of the task `ident`."""
    for pair in found:
        if pair[0].id == ident:
            return pair
    matches = [pair for pair in found if pair[0].task_id == ident]
    return max(matches, key=lambda p: p[0].created) if matches else None


class SQSDeadLetters(DeadLetterStore):
    def __init__(self, broker: SQSBroker) -> None:
        self.broker = broker
        self.sqs_name = broker.options.sqs_name(DEAD_LETTER_QUEUE)

    def _url(self, create: bool) -> str | None:
        return self.broker.clients.url(self.sqs_name, create)

    def add(self, letter: DeadLetter) -> None:
        url = self._url(create=True)
        with translated(self.broker.describe(), 'SendMessage (dead letter)'):
            self.broker.clients.default.send_message(QueueUrl=url, MessageBody=letter.to_json())

    def _scan(self) -> tuple[str | None, list[tuple[DeadLetter, str]]]:
        """Every record with its receipt handle, hidden until handed back (`_settle`)."""
        url = self._url(create=False)
        found: list[tuple[DeadLetter, str]] = []
        if url is None:
            return None, found
        client = self.broker.clients.default
        with translated(self.broker.describe(), 'ReceiveMessage (dead letters)'):
            while len(found) < MAX_SCAN:
                reply = client.receive_message(
                    QueueUrl=url, MaxNumberOfMessages=MAX_MESSAGES, WaitTimeSeconds=0, VisibilityTimeout=SCAN_HIDE
                )
                messages = reply.get('Messages') or []
                if not messages:
                    break
                for m in messages:
                    try:
                        found.append((DeadLetter.from_json(m['Body']), m['ReceiptHandle']))
                    except (ValueError, KeyError, TypeError):
                        continue  # not ours: left hidden for a moment, never deleted
        return url, found

    def _settle(self, url: str | None, keep: list[str], delete: list[str]) -> None:
        if url is None:
            return
        client = self.broker.clients.default
        with translated(self.broker.describe(), 'dead letters'):
            for handles, method, extra in (
                (keep, 'change_message_visibility_batch', {'VisibilityTimeout': 0}),
                (delete, 'delete_message_batch', {}),
            ):
                for start in range(0, len(handles), MAX_MESSAGES):
                    chunk = handles[start : start + MAX_MESSAGES]
                    entries: list[dict[str, Any]] = [
                        {'Id': str(i), 'ReceiptHandle': h, **extra} for i, h in enumerate(chunk)
                    ]
                    getattr(client, method)(QueueUrl=url, Entries=entries)

    def list(self, limit: int = 100) -> list[DeadLetter]:
        url, found = self._scan()
        self._settle(url, [h for _, h in found], [])
        return sorted((letter for letter, _ in found), key=lambda d: -d.created)[:limit]

    def get(self, ident: str) -> DeadLetter | None:
        url, found = self._scan()
        self._settle(url, [h for _, h in found], [])
        pair = _find(found, ident)
        return None if pair is None else pair[0]

    def remove(self, ident: str) -> DeadLetter | None:
        url, found = self._scan()
        pair = _find(found, ident)
        doomed = [] if pair is None else [pair[1]]
        self._settle(url, [h for _, h in found if h not in doomed], doomed)
        return None if pair is None else pair[0]

    def purge(self) -> int:
        url, found = self._scan()
        self._settle(url, [], [h for _, h in found])
        return len(found)

    def count(self) -> int:
        url = self._url(create=False)
        if url is None:
            return 0
        with translated(self.broker.describe(), 'GetQueueAttributes (dead letters)'):
            attributes = self.broker.clients.default.get_queue_attributes(
                QueueUrl=url, AttributeNames=['ApproximateNumberOfMessages', 'ApproximateNumberOfMessagesNotVisible']
            ).get('Attributes', {})
        return sum(int(v) for v in attributes.values())
