"""The fetcher thread: blocks in the broker until messages are ready and hands them to the loop.

It never takes more than the prefetch window allows: the `Ledger` counts what the worker holds, only this
thread adds to it, and the loop settles (frees) entries, so reading `free()` here can only under-estimate.
A consumer the broker pushes to (RabbitMQ: `Consumer.push_to`) is the exception: the broker's own window
(`basic.qos`, sized by `prefetch`) bounds what arrives, its I/O thread adds to the ledger in this one's place
(`accept`), and this thread only waits to be stopped.
When the window is full it sleeps until the loop frees a slot. Broker errors are retried with backoff and
logged with the broker's masked URL; the worker keeps what it holds meanwhile.

Under a steady stream of tasks published one at a time (many `delay()` calls), fetching each as it arrives
makes every stage pay per task what it could pay per batch: a fetch round trip, a hand-off to the loop, a
child's wake-up, a result store. So while tasks arrive faster than `LINGER_RATE`, more than one is usually
waiting when a fetch answers, and the last fetch emptied the queues (it got fewer than it asked for: a fetch
that got all it asked for may have left more), the fetcher waits `LINGER` before the next fetch and takes
what gathered meanwhile. On this project's 2-core VM, a client looping over `delay()` against an otherwise
idle worker cost ~300 µs of CPU per task in all with fetches as tasks arrived, ~200 with 2 ms waits (0.5
ms: ~300, 1 ms: ~240; see benches/README.md); a drain, which always gets what it asks for, never waits. An
idle worker, or one serving a caller that waits for each result before sending the next, finds one task per
fetch and never waits: its task starts within a round trip.
"""

from __future__ import annotations

import logging
import random
import threading
import time
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
#: Under load (see the module docstring): the wait before the next fetch (seconds), the arrival rate above
#: which it applies (tasks per second), and the mean size (over the last few fetches that brought something)
#: above which tasks are taken to be queueing up between fetches.
LINGER = 0.002
LINGER_RATE = 2000.0
LINGER_QUEUEING = 1.25


class Fetcher(threading.Thread):
    def __init__(
        self,
        consumer: Consumer,
        ledger: Ledger,
        deliver: Callable[[list[Delivery]], None],
        describe: str,
        deliver_here: Callable[[list[Delivery]], bool] | None = None,
    ) -> None:
        super().__init__(name='fastq-fetcher', daemon=True)
        self.consumer = consumer
        # Tried first from this thread: hands deliveries over without waking the loop when it is idle
        # (False: it was busy, post them with `deliver`). Not used from a push consumer's I/O thread, which
        # the worker's own calls to the consumer may wait on.
        self.deliver_here = deliver_here
        self.ledger = ledger
        self.deliver = deliver
        self.describe = describe
        self.window_open = threading.Event()
        self.window_open.set()
        self._stop_event = threading.Event()
        self.paused = threading.Event()
        self.reconnects = 0  # times fetching worked again after failing: a metric
        # Called before this thread waits, when the acks it queues ride with its fetches (`Settler.carrier`).
        self.handover: Callable[[], None] | None = None
        # After the broker was lost (Celery's broker_connection_retry / broker_connection_max_retries): whether
        # to try again, how many times in a row, and what to call when giving up (the worker shuts down).
        self.retry = True
        self.max_retries: int | None = None
        self.on_give_up: Callable[[], None] | None = None
        # Called (in this thread) when fetching first fails, and when it works again after failing: the
        # worker restarts its consumer bootsteps across the outage, as Celery restarts its consumer.
        self.on_lost: Callable[[], None] | None = None
        self.on_regained: Callable[[], None] | None = None
        # Lending the lead to a pool child (fastq.worker.lending): asked for, and told whether it stopped
        # waiting on the lead (True) or kept it (False).
        self._lend_asked = False
        self.on_lead_free: Callable[[str], None] | None = None
        # Whether the last fetch got less than it asked for: the queues were empty then. A draining worker
        # looks idle for a moment between two fetches of a full window (every task handed out, the next
        # batch not yet in); asking to lend its lead then woke this thread's wait and the loop, and back,
        # for nothing (~150 times in a 200,000-task drain), so it is lent only once its queues ran out.
        self.caught_up = True

    def request_lend(self) -> None:
        """(Any thread) stop waiting on the lead between fetches, and say how it went through `on_lead_free`
        ('free', 'busy': tasks came as it stopped, or 'unable')."""
        self._lend_asked = True
        self.consumer.wakeup()

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
        if self.consumer.push_to(self.accept):
            self._stop_event.wait()
            return
        backoff = 0.0
        failures = 0
        pace = _Pace()
        linger = False
        while not self._stop_event.is_set():
            if self._lend_asked:
                self._lend()
            if linger:
                self._before_waiting(brief=True)
                self._stop_event.wait(LINGER)
            free = min(self.ledger.free(), MAX_BATCH)
            if free <= 0 or self.paused.is_set():
                self.window_open.clear()
                if self.ledger.free() <= 0 or self.paused.is_set():
                    self._before_waiting()
                    self.window_open.wait(1.0)
                continue
            if free < self._batch_floor():
                # A busy worker frees its window one task at a time; fetching each slot as it frees costs a
                # broker round trip per task. Wait briefly for half the window (the worker still holds the
                # other half, so it does not run dry meanwhile); an idle worker has its whole window free.
                self.window_open.clear()
                if self.ledger.free() < self._batch_floor():
                    self._before_waiting(brief=True)
                    self.window_open.wait(GATHER_DELAY)
                free = min(self.ledger.free(), MAX_BATCH)
            try:
                deliveries = self.consumer.fetch(free, FETCH_TIMEOUT)
            except Exception as exc:
                failures += 1
                if self._fetch_failed(exc, failures):
                    return
                backoff = min(max(backoff * 2, 0.5), 30.0)
                logger.error(
                    'consumer: Cannot fetch from %s: %s.\nTrying again in %.2f seconds...',
                    self.describe,
                    exc,
                    backoff,
                )
                self._before_waiting()
                self._stop_event.wait(backoff * (0.5 + random.random() / 2))
                continue
            if backoff:
                self._regained()
                backoff = 0.0
            failures = 0
            self.caught_up = len(deliveries) < free
            linger = pace.fetched(len(deliveries), free, time.monotonic())
            if deliveries:
                self.accept(deliveries, self.deliver_here)

    def _fetch_failed(self, exc: Exception, failures: int) -> bool:
        """After a failed fetch: whether to stop fetching for good; the first failure in a row is announced
        (`on_lost`)."""
        if self._give_up(exc, failures):
            return True
        if failures == 1 and self.on_lost is not None:
            self.on_lost()
        return False

    def _regained(self) -> None:
        logging.getLogger('celery.worker.consumer.connection').info('Connected to %s', self.describe)
        self.reconnects += 1
        if self.on_regained is not None:
            self.on_regained()

    def _give_up(self, exc: Exception, failures: int) -> bool:
        """Whether to stop fetching for good after a broker error: retries disabled, or too many in a row
        (the worker then shuts down with exit code 1, as Celery's)."""
        if self.on_give_up is None:
            return False
        if not self.retry:
            logger.critical(
                'Retrying to re-establish a connection to the message broker after a connection loss has been '
                'disabled (app.conf.broker_connection_retry=False). Shutting down... (%s: %s)',
                self.describe,
                exc,
            )
        elif self.max_retries is not None and failures > self.max_retries:
            logger.critical(
                'Cannot connect to %s: %s. Retry limit exceeded (broker_connection_max_retries=%d): shutting down.',
                self.describe,
                exc,
                self.max_retries,
            )
        else:
            return False
        self.on_give_up()
        return True

    def _lend(self) -> None:
        self._lend_asked = False
        try:
            got = self.consumer.lend_lead()
        except Exception as exc:  # the fetch that follows reports a broker that is down
            logger.debug('could not stop waiting on the lead: %r', exc)
            got = None
        if got:
            self.caught_up = False
            self.accept(got, self.deliver_here)
        if self.on_lead_free is not None:
            self.on_lead_free('unable' if got is None else 'busy' if got else 'free')

    def _before_waiting(self, brief: bool = False) -> None:
        self.consumer.before_wait(brief)
        if self.handover is not None:
            self.handover()

    def accept(self, deliveries: list[Delivery], deliver_here: Callable[[list[Delivery]], bool] | None = None) -> None:
        """Count deliveries in the window and hand them to the loop (from this thread, the consumer's, or the
        loop's: what a pool child holding the lent lead reserved and left to the parent)."""
        accepted = []
        for d in deliveries:
            try:
                self.ledger.add(d.tag)
            except KeyError:
                logger.warning('broker handed out delivery %r twice; ignoring the duplicate', d.tag)
            else:
                accepted.append(d)
        if accepted and (deliver_here is None or not deliver_here(accepted)):
            self.deliver(accepted)


class _Pace:
    """How fast tasks arrive and how many a fetch finds (moving averages), and so whether to linger."""

    __slots__ = ('last', 'rate', 'size')

    def __init__(self) -> None:
        self.last = time.monotonic()
        self.rate = 0.0  # tasks per second, over fetches
        self.size = 1.0  # tasks per fetch that brought any

    def fetched(self, count: int, asked: int, now: float) -> bool:
        """Account for a fetch that brought `count` of the `asked` tasks at `now`; whether to wait before the
        next one (not after a fetch that got all it asked for: more may be waiting)."""
        if now > self.last:
            self.rate = 0.7 * self.rate + 0.3 * count / (now - self.last)
        self.last = now
        if not count:
            return False
        self.size = 0.7 * self.size + 0.3 * count
        return count < asked and self.rate >= LINGER_RATE and self.size > LINGER_QUEUEING
