"""The settler thread: sends acks to the broker in batches, so the worker's loop never waits on a broker write.

The loop hands over tags and carries on dispatching; this thread takes whatever has accumulated and acks it
in one broker call (one transaction on SQLite, one pipeline on Redis). An early ack is handed over when its
task is dispatched and sent within a round trip; a late ack only after the task's result was stored. If the
broker refuses, the tags are kept and retried with backoff; if the worker dies first, the broker redelivers
them (at least once).

A consumer that can (Redis) sends the acks waiting with its next fetch instead (`Consumer.carry_acks`): a
busy worker fetches more often than this thread would send them, so they cost neither a round trip nor a
wake-up of this thread; it sends only what no fetch took within its gathering delay (an idle worker's acks).
Acks queued by the fetching thread itself (`carrier`: it dispatches in the loop's place while the loop sleeps)
do not wake this thread at all: that thread's next fetch takes them, and before it waits for anything it
hands over what is still queued (`hand_over`). In a drain every ack is queued there, and waking this thread
for each batch cost ~0.8 us of CPU per task and a turn on the GIL taken from the thread doing the work.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from fastq.brokers.base import Consumer

logger = logging.getLogger('celery.worker.consumer.consumer')

#: How long the thread gathers acks before sending a batch smaller than GATHER_MAX (seconds).
GATHER_DELAY = 0.001
GATHER_MAX = 256


class Settler(threading.Thread):
    def __init__(self, consumer: Consumer, describe: str) -> None:
        super().__init__(name='fastq-settler', daemon=True)
        self.consumer = consumer
        self.describe = describe
        self._cond = threading.Condition()
        self._pending: list[Any] = []
        self._stopping = False
        self._busy = False
        self._carried = 0  # acks taken by `take` and not yet reported `settled`
        self._since = 0.0  # when the first of the acks pending was queued (monotonic)
        self._idle = False  # waiting for acks, with none pending (`ack` wakes it)
        self._waiting = 0  # threads in `drain`
        #: The thread whose fetches carry the acks (`Consumer.carry_acks`): what it queues waits for its
        #: next fetch, or its `hand_over`, instead of waking this thread.
        self.carrier: threading.Thread | None = None

    def ack(self, tags: Sequence[Any]) -> None:
        """Queue acks (from any thread); they are sent promptly, in a batch."""
        with self._cond:
            if not self._pending:
                self._since = time.monotonic()
            self._pending.extend(tags)
            if len(self._pending) >= GATHER_MAX or (self._idle and threading.current_thread() is not self.carrier):
                self._cond.notify()

    def hand_over(self) -> None:
        """(From the carrier, about to wait) the acks queued are not riding with a fetch soon: send them."""
        with self._cond:
            if self._pending and self._idle:
                self._cond.notify()

    def run(self) -> None:
        backoff = 0.0
        while True:
            with self._cond:
                tags = self._gathered()
                if tags is None:
                    return
                self._busy = True
            try:
                self.consumer.ack(tags)
                backoff = 0.0
            except Exception as exc:
                backoff = min(max(backoff * 2, 0.1), 5.0)
                logger.error('Cannot acknowledge %d message(s) on %s: %s; retrying', len(tags), self.describe, exc)
                with self._cond:
                    self._pending[:0] = tags
                    if self._stopping and backoff >= 5.0:
                        logger.error('Giving up on %d ack(s); the broker will redeliver them', len(self._pending))
                        self._pending.clear()
                    else:
                        self._cond.wait(backoff)
            finally:
                with self._cond:
                    self._busy = False
                    if self._waiting:
                        self._cond.notify_all()

    def _gathered(self) -> list[Any] | None:
        """(Holding the lock) wait for acks that have waited GATHER_DELAY, or GATHER_MAX of them, and take
        them; None once stopped with nothing left.

        A busy worker's fetches take the acks before they are due (`take`), and the acks of the next tasks
        start a new wait: the thread wakes once per GATHER_DELAY at most, and never for a fetch. (It used to
        be woken by each first ack and by each fetch's report, twice a fetch; every wake-up contends for the
        GIL with the thread doing the worker's work.)
        """
        while True:
            if self._pending:
                if self._stopping or len(self._pending) >= GATHER_MAX:
                    break
                # A busy worker settles a task every few microseconds: gathering for up to a millisecond
                # turns one broker round trip per task into one per batch. Nothing waits on an ack (the
                # ledger was freed already), so this only delays the broker's bookkeeping.
                due = self._since + GATHER_DELAY - time.monotonic()
                if due <= 0:
                    break
                self._cond.wait(due)
            elif self._stopping and not self._carried:
                return None
            else:
                # (stopping: acks a fetch carries may still come back unsent, to be sent from here)
                self._idle = True
                try:
                    self._cond.wait()
                finally:
                    self._idle = False
        tags, self._pending = self._pending, []
        return tags

    def take(self) -> list[Any]:
        """The acks waiting, for the consumer to send with its next fetch (`Consumer.carry_acks`); it reports
        them back through `settled`."""
        with self._cond:
            tags, self._pending = self._pending, []
            self._carried += len(tags)
            return tags

    def settled(self, tags: list[Any], sent: bool) -> None:
        """The consumer sent the acks `take` gave it, or could not (they are queued here again, due now)."""
        with self._cond:
            self._carried -= len(tags)
            if not sent:
                self._pending[:0] = tags
                self._since = time.monotonic() - GATHER_DELAY
                self._cond.notify_all()
            elif self._waiting or (self._stopping and not self._carried):
                self._cond.notify_all()

    def drain(self, timeout: float = 30.0) -> None:
        """Wait until everything queued so far has been sent."""
        with self._cond:
            self._waiting += 1
            self.hand_over()  # what the carrier queued: it may not fetch again soon (the lock is an RLock)
            try:
                self._cond.wait_for(lambda: not self._pending and not self._busy and not self._carried, timeout)
            finally:
                self._waiting -= 1

    def stop(self, timeout: float = 30.0) -> None:
        """Send what is queued, then end the thread."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        self.join(timeout)
