"""The fetcher thread: blocks in the broker until messages are ready and hands them to the loop.

It never takes more than the prefetch window allows: the `Ledger` counts what the worker holds, only this
thread adds to it, and the loop settles (frees) entries, so reading `free()` here can only under-estimate.
A consumer the broker pushes to (RabbitMQ: `Consumer.push_to`) is the exception: the broker's own window
(`basic.qos`, sized by `prefetch`) bounds what arrives, its I/O thread adds to the ledger in this one's place
(`_accept`), and this thread only waits to be stopped.
When the window is full it sleeps until the loop frees a slot. Broker errors are retried with backoff and
logged with the broker's masked URL; the worker keeps what it holds meanwhile.
"""

from __future__ import annotations

import logging
import random
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from fastq._core import Ledger
    from fastq.brokers.base import Consumer, Delivery

logger = logging.getLogger('celery.worker.consumer.consumer')

FETCH_TIMEOUT = 1.0
MAX_BATCH = 1000
#: With fewer free slots than half the window, wait this long for more before fetching (seconds).
GATHER_DELAY = 0.001


class Fetcher(threading.Thread):
    def __init__(
        self,
        consumer: Consumer,
        ledger: Ledger,
        deliver: Callable[[list[Delivery]], None],
        describe: str,
    ) -> None:
        super().__init__(name='fastq-fetcher', daemon=True)
        self.consumer = consumer
        self.ledger = ledger
        self.deliver = deliver
        self.describe = describe
        self.window_open = threading.Event()
        self.window_open.set()
        self._stop_event = threading.Event()
        self.paused = threading.Event()
        self.reconnects = 0  # times fetching worked again after failing: a metric

    def stop(self) -> None:
        self._stop_event.set()
        self.consumer.push_to(None)  # when it returns, nothing more is handed over
        self.window_open.set()
        self.consumer.wakeup()

    def notify_window(self) -> None:
        """Called by the loop after it settled deliveries."""
        if not self.window_open.is_set() and self.ledger.free() >= self._batch_floor():
            self.window_open.set()

    def _batch_floor(self) -> int:
        return max(1, min(self.ledger.window // 2, MAX_BATCH)) if self.ledger.window else 1

    def run(self) -> None:
        if self.consumer.push_to(self._accept):
            self._stop_event.wait()
            return
        backoff = 0.0
        while not self._stop_event.is_set():
            free = min(self.ledger.free(), MAX_BATCH)
            if free <= 0 or self.paused.is_set():
                self.window_open.clear()
                if self.ledger.free() <= 0 or self.paused.is_set():
                    self.window_open.wait(1.0)
                continue
            if free < self._batch_floor():
                # A busy worker frees its window one task at a time; fetching each slot as it frees costs a
                # broker round trip per task. Wait briefly for half the window (the worker still holds the
                # other half, so it does not run dry meanwhile); an idle worker has its whole window free.
                self.window_open.clear()
                if self.ledger.free() < self._batch_floor():
                    self.window_open.wait(GATHER_DELAY)
                free = min(self.ledger.free(), MAX_BATCH)
            try:
                deliveries = self.consumer.fetch(free, FETCH_TIMEOUT)
            except Exception as exc:
                backoff = min(max(backoff * 2, 0.5), 30.0)
                logger.error(
                    'consumer: Cannot fetch from %s: %s.\nTrying again in %.2f seconds...',
                    self.describe,
                    exc,
                    backoff,
                )
                self._stop_event.wait(backoff * (0.5 + random.random() / 2))
                continue
            if backoff:
                logger.info('Connected to %s', self.describe)
                self.reconnects += 1
                backoff = 0.0
            if deliveries:
                self._accept(deliveries)

    def _accept(self, deliveries: list[Delivery]) -> None:
        """Count deliveries in the window and hand them to the loop (in this thread, or the consumer's)."""
        accepted = []
        for d in deliveries:
            try:
                self.ledger.add(d.tag)
            except KeyError:
                logger.warning('broker handed out delivery %r twice; ignoring the duplicate', d.tag)
            else:
                accepted.append(d)
        if accepted:
            self.deliver(accepted)
