"""Consuming from SQS: a long-polling thread per queue, receipts held and renewed, settled in batches.

SQS has no call that waits on several queues, and a ReceiveMessage in flight cannot be interrupted, so each
queue has a poller thread of its own, and `fetch` waits on what they bring (a `wakeup` ends the wait at once,
as the worker needs at shutdown). A poller asks only while a fetch wants messages, for at most what the fetch
still lacks (10 at most per call, SQS's limit); so that one queue's long poll does not starve another's while
the window is small, every queue may also ask for one message when nothing is ready. What arrives beyond the
fetch's limit waits here for the next fetch, reserved and renewed like everything else held: at most one
message per queue beyond the window.

Every message received is held under its receipt handle until it is settled: acked (DeleteMessageBatch),
requeued or released (ChangeMessageVisibilityBatch to 0: visible again at once, where kombu waits
`wait_time_seconds`), deferred to its ETA (made invisible until then), or rejected (deleted, unless the queue
has a redrive policy or a backoff policy for its task, which then decide, as kombu 5.7 does).
"""

from __future__ import annotations

import itertools
import logging
import math
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from fastq import _core
from fastq.brokers.base import Consumer, DeadLetter, Delivery, Tag
from fastq.brokers.sqs.client import PredefinedQueue, translated
from fastq.brokers.sqs.layout import MAX_MESSAGES, MAX_VISIBILITY, RECEIVE_COUNT, REDRIVE_POLICY_TTL, decode_body
from fastq.exceptions import OperationalError

if TYPE_CHECKING:
    from fastq.brokers.sqs import SQSBroker

logger = logging.getLogger('fastq.brokers.sqs')

MAX_BACKOFF = 30.0
#: Receipt-handle errors: the reservation is gone (its visibility timeout ran out, or it was settled already).
STALE_RECEIPT = frozenset({'ReceiptHandleIsInvalid', 'InvalidParameterValue', 'MessageNotInflight'})


@dataclass(slots=True)
class _Held:
    tag: int
    queue: str  # the queue's name as the worker knows it
    sqs_name: str
    url: str
    receipt: str
    received: float  # monotonic
    task: str | None
    receive_count: int


class SQSConsumer(Consumer):
    def __init__(self, broker: SQSBroker, queues: list[str], owner: str) -> None:
        self.broker = broker
        self.queues = queues
        self.owner = owner
        self.options = broker.options
        self._cond = threading.Condition()
        self._ready: deque[Delivery] = deque()
        self._held: dict[int, _Held] = {}
        self._tags = itertools.count(1)
        self._want = 0  # what the waiting fetch still lacks (0: no fetch waiting)
        self._asking: dict[str, int] = {}  # queue -> messages asked for by its poll in flight
        self._woken = False
        self._closing = False
        self._error: Exception | None = None
        self._pollers: list[threading.Thread] = []
        self._redrive: dict[str, tuple[bool, float]] = {}  # url -> (has a redrive policy, when read)
        # A renewal in flight (`renew`): the tags it extends, and the visibility changes settled meanwhile for
        # some of them, applied again once its calls have returned (see `_settle_visibility`).
        self._renewing: set[int] = set()
        self._clashes: list[tuple[_Held, int]] = []

    # --- receiving ----------------------------------------------------------------------------------------

    def fetch(self, limit: int, timeout: float) -> list[Delivery]:
        deadline = time.monotonic() + timeout
        with self._cond:
            if not self._pollers:
                self._start_pollers()
            self._want = max(limit, 1)
            self._cond.notify_all()
            try:
                while not self._ready:
                    if self._error is not None:
                        error, self._error = self._error, None
                        raise error
                    remaining = deadline - time.monotonic()
                    if self._woken or remaining <= 0 or self._closing:
                        break
                    self._cond.wait(remaining)
                self._woken = False
                out = [self._ready.popleft() for _ in range(min(limit, len(self._ready)))]
            finally:
                self._want = 0
        return out

    def _start_pollers(self) -> None:
        # Every queue resolved (created if missing) first, so a misconfigured one fails this fetch, and the next
        # tries them all again.
        resolved = []
        for queue in self.queues:
            sqs_name = self.options.sqs_name(queue)
            url = self.broker.clients.url(sqs_name, create=True)
            assert url is not None  # (created when missing)
            resolved.append((queue, sqs_name, url))
        for queue, sqs_name, url in resolved:
            thread = threading.Thread(
                target=self._poll_loop, args=(queue, sqs_name, url), name=f'fastq-sqs-{queue}', daemon=True
            )
            self._pollers.append(thread)
            thread.start()

    def _room(self, queue: str) -> int:
        """(Holding the lock) how many messages this queue's poller may ask for now (0: none)."""
        if self._closing or self._want <= 0 or queue in self._asking:
            return 0
        room = self._want - len(self._ready) - sum(self._asking.values())
        if room <= 0 and not self._ready:
            room = 1  # every queue gets a poll while a fetch waits with nothing ready
        return min(room, MAX_MESSAGES)

    def _poll_loop(self, queue: str, sqs_name: str, url: str) -> None:
        client = self.broker.clients.for_queue(sqs_name)
        backoff = 0.0
        while True:
            with self._cond:
                count = self._room(queue)
                while not count:
                    if self._closing:
                        return
                    self._cond.wait()
                    count = self._room(queue)
                self._asking[queue] = count
            try:
                messages = self._receive(client, sqs_name, url, count)
            except Exception as exc:
                backoff = min(max(backoff * 2, 0.5), MAX_BACKOFF)
                with self._cond:
                    self._asking.pop(queue, None)
                    self._error = exc
                    self._cond.notify_all()
                    self._cond.wait(backoff)
                continue
            backoff = 0.0
            released = self._accept(queue, sqs_name, url, messages)
            if released:
                self._change_visibility([(h, 0) for h in released])
            if not messages and self.options.polling_interval:
                with self._cond:
                    if not self._closing:  # kombu's pause after an empty poll
                        self._cond.wait(self.options.polling_interval)

    def _receive(self, client: Any, sqs_name: str, url: str, count: int) -> list[dict[str, Any]]:
        with translated(self.broker.describe(), f'ReceiveMessage {sqs_name}'):
            reply = client.receive_message(
                QueueUrl=url,
                MaxNumberOfMessages=count,
                WaitTimeSeconds=self.options.wait_time_seconds,
                VisibilityTimeout=self.options.visibility_timeout,
                MessageSystemAttributeNames=[RECEIVE_COUNT],
            )
        messages: list[dict[str, Any]] = reply.get('Messages') or []
        return messages

    def _accept(self, queue: str, sqs_name: str, url: str, messages: list[dict[str, Any]]) -> list[_Held]:
        """(Poller thread) hold what a poll brought and make it ready; what arrives while closing is handed
        back instead (returned, for the caller to release)."""
        now, clock = time.time(), time.monotonic()
        with self._cond:
            self._asking.pop(queue, None)
            if self._closing:
                return [_Held(0, queue, sqs_name, url, m['ReceiptHandle'], clock, None, 0) for m in messages]
            for m in messages:
                tag = next(self._tags)
                count = int((m.get('Attributes') or {}).get(RECEIVE_COUNT, 1))
                delivery = _delivery(tag, queue, decode_body(m['Body']), count > 1, now)
                self._held[tag] = _Held(tag, queue, sqs_name, url, m['ReceiptHandle'], clock, delivery.task_name, count)
                self._ready.append(delivery)
            self._cond.notify_all()
        return []

    def wakeup(self) -> None:
        with self._cond:
            self._woken = True
            self._cond.notify_all()

    # --- settling -----------------------------------------------------------------------------------------

    def _take(self, tags: Sequence[Tag]) -> list[_Held]:
        with self._cond:
            return [h for h in (self._held.pop(t, None) for t in tags if isinstance(t, int)) if h is not None]

    def ack(self, tags: Sequence[Tag]) -> None:
        held = self._take(tags)
        if held:
            self._delete(held)

    def reject(self, tags: Sequence[Tag], requeue: bool) -> None:
        held = self._take(tags)
        if requeue:
            self._settle_visibility([(h, 0) for h in held])
            return
        doomed, backoff = [], []
        for h in held:
            spec = self._backoff_spec(h)
            if spec is not None:
                # kombu leaves a backoff task to SQS's redelivery, never deletes it: hidden for the policy's
                # delay at this receive count, else for what is left of its visibility timeout.
                delay = spec.backoff_policy.get(h.receive_count)
                if delay is not None:
                    backoff.append((h, delay))
            elif not self._has_redrive_policy(h):
                doomed.append(h)
        self._settle_visibility(backoff)
        self._delete(doomed)

    def _backoff_spec(self, h: _Held) -> PredefinedQueue | None:
        """The predefined queue whose backoff policy covers a rejected task (kombu's `QoS.is_backoff_task`)."""
        spec = self.options.predefined.get(h.sqs_name)
        if spec is None or not spec.backoff_policy or h.task not in spec.backoff_tasks:
            return None
        return spec

    def _has_redrive_policy(self, h: _Held) -> bool:
        """Whether SQS moves the queue's messages to a dead-letter queue after some receives: a rejected
        message is then left for it (kombu 5.7), read at most every REDRIVE_POLICY_TTL seconds."""
        cached = self._redrive.get(h.url)
        now = time.monotonic()
        if cached is not None and now - cached[1] < REDRIVE_POLICY_TTL:
            return cached[0]
        client = self.broker.clients.for_queue(h.sqs_name)
        try:
            with translated(self.broker.describe(), f'GetQueueAttributes {h.sqs_name}'):
                reply = client.get_queue_attributes(QueueUrl=h.url, AttributeNames=['RedrivePolicy'])
        except OperationalError as exc:
            logger.warning('Cannot read the redrive policy of %s, leaving rejected messages in it: %s', h.url, exc)
            return True
        has = 'RedrivePolicy' in (reply.get('Attributes') or {})
        self._redrive[h.url] = (has, now)
        return has

    def release(self, tags: Sequence[Tag]) -> None:
        self._settle_visibility([(h, 0) for h in self._take(tags)])

    def defer(self, tag: Tag, eta: float) -> None:
        """Hidden until its ETA (at most until 12 hours after it was received: then it comes back and is
        deferred again). On a FIFO queue this holds back the rest of its message group meanwhile, as any
        message in flight does."""
        held = self._take([tag])
        if not held:
            return
        h = held[0]
        allowance = MAX_VISIBILITY - math.ceil(time.monotonic() - h.received) - 1
        self._settle_visibility([(h, max(0, min(math.ceil(eta - time.time()), allowance)))])

    def renew(self) -> None:
        """Extend every reservation held by the visibility timeout (beyond Celery: a kombu worker lets a long
        acks_late task's message reappear once the queue's visibility timeout passes).

        The housekeeping thread renews while the loop settles: a message released (or requeued, or deferred)
        while this renewal is in flight could reach SQS before it, and the renewal would then hide a message
        handed back for a whole visibility timeout (30 minutes by default) instead of none. So what is settled
        meanwhile is sent again after the renewal's calls returned (`_settle_visibility`)."""
        with self._cond:
            held = list(self._held.values())
            self._renewing = {h.tag for h in held}
        try:
            now = time.monotonic()
            timeout = self.options.visibility_timeout
            changes = [(h, min(timeout, MAX_VISIBILITY - math.ceil(now - h.received) - 1)) for h in held]
            self._change_visibility([(h, t) for h, t in changes if t > 0], renewing=True)
        finally:
            with self._cond:
                clashes, self._clashes = self._clashes, []
                self._renewing = set()
            self._change_visibility(clashes)

    def _settle_visibility(self, changes: list[tuple[_Held, int]]) -> None:
        """Change the visibility of messages no longer held (released, requeued, deferred), and again after a
        renewal in flight that covered them (see `renew`)."""
        with self._cond:
            if self._renewing:
                self._clashes.extend((h, t) for h, t in changes if h.tag in self._renewing)
        self._change_visibility(changes)

    def dead_letter(self, delivery: Delivery, reason: str) -> DeadLetter:
        letter = DeadLetter.of(delivery, reason)
        self.broker.dead_letters.add(letter)
        held = self._take([delivery.tag])
        if held:
            self._delete(held)
        return letter

    def close(self) -> None:
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        # A poll in flight ends within wait_time_seconds; what it brings is released by its thread.
        deadline = time.monotonic() + self.options.wait_time_seconds + 2.0
        for thread in self._pollers:
            thread.join(max(0.0, deadline - time.monotonic()))
        with self._cond:
            held, self._held = list(self._held.values()), {}
            self._ready.clear()
        if held:
            try:
                self._change_visibility([(h, 0) for h in held])
            except Exception as exc:  # they come back when their visibility timeout runs out
                logger.warning('Cannot hand %d message(s) back to %s: %s', len(held), self.broker.describe(), exc)

    # --- batched calls ------------------------------------------------------------------------------------

    def _delete(self, held: list[_Held]) -> None:
        def entry(h: _Held, i: int) -> dict[str, Any]:
            return {'Id': str(i), 'ReceiptHandle': h.receipt}

        sent: list[_Held] = []
        try:
            failed = self._batches(held, 'delete_message_batch', 'DeleteMessageBatch', entry, sent)
        except Exception:
            # Not deleted (a connection error, a refusal): held again, so the settler's retry deletes them
            # (taken already, a retry found nothing to ack and the message ran again after its timeout).
            done = {id(h) for h in sent}
            with self._cond:
                self._held.update((h.tag, h) for h in held if id(h) not in done)
            raise
        if failed:
            stale = [h for h, code in failed if code in STALE_RECEIPT]
            if stale:
                logger.warning(
                    'Acked %d message(s) after their visibility timeout ran out on %s: they may run again',
                    len(stale),
                    self.broker.describe(),
                )
            rest = [(h, code) for h, code in failed if code not in STALE_RECEIPT]
            if rest:
                with self._cond:  # held again, so the settler's retry finds them
                    self._held.update((h.tag, h) for h, _ in rest)
                raise OperationalError(f'{self.broker.describe()}: DeleteMessageBatch failed: {rest[0][1]}')

    def _change_visibility(self, changes: list[tuple[_Held, int]], renewing: bool = False) -> None:
        if not changes:
            return
        timeouts = {id(h): t for h, t in changes}

        def entry(h: _Held, i: int) -> dict[str, Any]:
            return {'Id': str(i), 'ReceiptHandle': h.receipt, 'VisibilityTimeout': timeouts[id(h)]}

        failed = self._batches([h for h, _ in changes], 'change_message_visibility_batch', 'ChangeVisibility', entry)
        if renewing and failed:
            with self._cond:  # acked or handed back while the renewal was in flight: nothing is lost
                failed = [(h, code) for h, code in failed if h.tag in self._held]
        if failed:
            logger.warning(
                '%s %d message(s) on %s failed (%s)%s',
                'Renewing' if renewing else 'Changing the visibility of',
                len(failed),
                self.broker.describe(),
                failed[0][1],
                ': they may be delivered again' if renewing else '',
            )

    def _batches(
        self,
        held: list[_Held],
        method: str,
        what: str,
        entry: Callable[[_Held, int], dict[str, Any]],
        sent: list[_Held] | None = None,
    ) -> list[tuple[_Held, str]]:
        """Call a batch API per queue, 10 entries a call; the entries SQS refused, with their error codes.
        `sent` collects the entries of the calls that returned (when one raises, the rest were not sent)."""
        by_queue: dict[str, list[_Held]] = {}
        for h in held:
            by_queue.setdefault(h.sqs_name, []).append(h)
        failed: list[tuple[_Held, str]] = []
        for sqs_name, items in by_queue.items():
            client = self.broker.clients.for_queue(sqs_name)
            for start in range(0, len(items), MAX_MESSAGES):
                chunk = items[start : start + MAX_MESSAGES]
                with translated(self.broker.describe(), f'{what} {sqs_name}'):
                    reply = getattr(client, method)(
                        QueueUrl=chunk[0].url, Entries=[entry(h, i) for i, h in enumerate(chunk)]
                    )
                failed.extend((chunk[int(f['Id'])], str(f.get('Code', '?'))) for f in reply.get('Failed') or ())
                if sent is not None:
                    sent.extend(chunk)
        return failed


def _delivery(tag: int, queue: str, envelope: bytes, redelivered: bool, now: float) -> Delivery:
    """A delivery of an envelope: its head only when it has one (the pool child decodes the rest), else
    decoded the full way, which says what is wrong with it. SQS counts receives, not failed deliveries (a
    deferred ETA task is received again when due), so `deliveries` stays 0: poison messages are the redrive
    policy's job on SQS."""
    head = _core.task_head(envelope)
    if head is not None:
        return Delivery(tag, queue, None, envelope, redelivered, 0, None, now, head)
    try:
        message = _core.Message.from_envelope(envelope, None)
    except ValueError as exc:
        return Delivery(tag, queue, None, envelope, redelivered, 0, error=str(exc), received=now)
    return Delivery(tag, queue, message, envelope, redelivered, 0, received=now)
