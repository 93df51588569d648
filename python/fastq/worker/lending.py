"""Lending the broker's lead to a pool child while the worker is idle: one hand-over fewer per task.

An idle prefork worker's task is handed over twice before it runs: the broker wakes the parent's fetcher,
and the fetcher wakes a child. On a 2-vCPU machine each wake-up that crosses to the other vCPU costs both
sides 10-30 µs, and which vCPU each process lands on is the scheduler's choice: `add.delay(1, 1).get()`
took ~0.30 ms at p50 in one placement and 0.41-0.46 in the other; with the lead lent, 0.33-0.40 in every
round measured (benches/README.md). So while the worker has nothing to do, the parent lends its lead (the
consumer's first wait, with the fetch script queued behind it) to an idle child, which waits in the broker
itself and runs what it takes at once (pool/lent.py). The parent hears of each task (TOOK) and does the rest
of its bookkeeping beside it or after it: the reservation, events, the early ack, the hard time limit. A
task of a name known to run short is reported with its answer (acked by the child; the parent finds it in
shared memory if the child dies first), any other before it starts (acked by the parent, Celery's moment).

The parent takes the lead back (and its fetcher waits again) as soon as the worker is not idle in that one
way: tasks arrived by other ways (other queues, a child's hand-back), more were waiting behind the one taken,
a task is not known to be short (a task that runs long would leave its queue unwatched meanwhile), a short
one overruns (`WATCH`), or what the child was told goes stale (a revoke, a rate or time limit, the queues),
or the worker stops. It lends again once the worker is idle, not sooner than `HOLDOFF` after taking it back
because of load (or after tasks came just as the fetcher stopped waiting to lend it), so a busy worker does not
shuttle the lead to and fro.
"""

from __future__ import annotations

import logging
import marshal
import time
from typing import TYPE_CHECKING

from fastq import signals
from fastq.worker.pool.lent import Took, terms

if TYPE_CHECKING:
    from fastq.brokers.base import Consumer
    from fastq.worker.dispatcher import Dispatcher
    from fastq.worker.fetcher import Fetcher
    from fastq.worker.loop import Loop
    from fastq.worker.pool.prefork import PreforkPool, _Child

logger = logging.getLogger('fastq.worker.lending')

#: Seconds after the lead came back before it is lent again.
HOLDOFF = 0.2
#: Seconds before trying again after the consumer could not lend its lead (a broker error, say).
UNABLE_HOLDOFF = 5.0
#: How often to look for a task reported short that runs long in the child holding the lead (seconds); the
#: lead is taken back after one to two periods.
WATCH = 0.05
#: With more revoked ids than this kept, the lead is not lent (each loan carries them all).
MAX_REVOKED = 1000


class Lending:
    def __init__(
        self, dispatcher: Dispatcher, consumer: Consumer, fetcher: Fetcher, pool: PreforkPool, loop: Loop
    ) -> None:
        self.dispatcher = dispatcher
        self.consumer = consumer
        self.fetcher = fetcher
        self.pool = pool
        self.loop = loop
        self.asked = False  # the fetcher was asked to stop waiting on the lead
        self.gen = 0
        self.back_at = 0.0  # when the lead last came back (monotonic)
        pool.on_taken = self.took
        pool.on_released = self.released
        pool.on_taken_lost = self.taken_lost
        dispatcher.on_terms_changed = self.recall
        fetcher.on_lead_free = lambda outcome: loop.call_soon_threadsafe(lambda: self.lead_free(outcome))
        self._unreported: tuple[_Child | None, int] | None = None  # the holder, seen running a task unreported
        loop.on_idle(self.check)
        loop.call_repeatedly(WATCH, self._watch)

    @property
    def holder(self) -> _Child | None:
        """The child the lead is lent to (the pool keeps it: it skips that child when it dispatches)."""
        return self.pool.lent_to

    def _idle(self) -> bool:
        d = self.dispatcher
        return (
            d.accepting
            and not d.running
            and not d.ready
            and not d.held
            and not len(d.ledger)
            and not self.fetcher.paused.is_set()
            and self.fetcher.caught_up
            and len(d.revoked) <= MAX_REVOKED
            and not d.revoked_stamps  # (checked on the message's headers, which the child does not decode)
            # Celery sends task_received in the worker's main process before the task runs; a child that
            # takes a task runs it first. While a handler is connected, tasks come the usual way.
            and not signals.task_received.connected
        )

    def check(self) -> None:
        """(Each loop pass) lend the lead when the worker is idle; take it back when it is not."""
        holder = self.holder
        if holder is not None:
            d = self.dispatcher
            if (
                d.ready
                or d.held
                or not d.accepting
                or len(d.running) > len(holder.jobs)
                or self.fetcher.paused.is_set()
            ):
                self.recall()
            return
        if self.asked or time.monotonic() - self.back_at < HOLDOFF or not self._idle():
            return
        if self.pool.lendable_child() is None:
            return
        self.asked = True
        self.fetcher.request_lend()

    def lead_free(self, outcome: str) -> None:
        """(From the fetcher) it stopped waiting on the lead ('free'), found tasks as it stopped ('busy': it
        delivers them and keeps the lead; the next idle moment after `HOLDOFF` tries again), or cannot lend it
        ('unable': tried again after `UNABLE_HOLDOFF`)."""
        self.asked = False
        if outcome != 'free':
            # Tasks that came as the fetcher stopped are load, as much as a lead given back: under a stream of
            # single publishes the worker is idle for a moment between most of them, and asking again at each
            # of those moments cost a wake-up and an unblock of the fetcher's wait per few tasks (a client
            # looping over `delay()`: ~30% more CPU per task in the worker than with the hold-off).
            self.back_at = time.monotonic() + (UNABLE_HOLDOFF if outcome == 'unable' else 0.0)
            return
        child = self.pool.lendable_child() if self._idle() else None
        if child is not None:
            self.gen += 1
            d = self.dispatcher
            names = d.lendable()
            payload = terms(
                self.gen,
                self.consumer.lead_spec(),
                names,
                frozenset(name for name in names if self.pool.known_short(name)),
                list(d.revoked),
                (d.default_time_limit, d.default_soft_time_limit),
                d.max_redeliveries,
                d.hostname,
            )
            if self.pool.lend(child, self.gen, payload):
                return
        self._back(False)

    def _back(self, busy: bool) -> None:
        """The lead is the fetcher's again; not lent again for `HOLDOFF` if it came back because of load."""
        self.pool.lent_to = None
        if busy:
            self.back_at = time.monotonic()
        self.consumer.unlend()

    def recall(self) -> None:
        """Take the lead back from its child; the fetcher waits on it again."""
        holder = self.holder
        if holder is not None:
            self.pool.recall(holder)
            self._back(True)

    def took(self, child: _Child, job_id: int, payload: bytes) -> None:
        """(TOOK) `child` reserved a task with the lead: it runs it (adopted here), or left it to this process."""
        keys, raw, ran, held, acked, logged = Took.loads(payload)
        # The child gave the lead back (it ran, and more tasks were waiting): the fetcher gets it only once what
        # the child took is in the ledger, else it could fetch into the slot that task fills (one task over the
        # prefetch window, which `--prefetch-multiplier 1` with acks_late must not exceed).
        give_back = not held and child is self.holder
        job = None
        try:
            deliveries = self.consumer.taken(keys, raw)
            if not ran:
                self.fetcher.accept(deliveries)
            else:
                child.took_tag = str(deliveries[0].tag)
                job = self.dispatcher.adopt(deliveries[0], job_id, acked, logged)
        except Exception as exc:  # a bug: the task still runs (or ran); its answer is then logged and dropped
            logger.exception('Could not take over what %s took from the broker: %r', child.name, exc)
        finally:
            if give_back:
                self._back(ran)
        if job is None:
            return
        self.pool.adopt(child, job)
        if child is self.holder and not self.pool.known_short(job.request.task):
            self.recall()

    def _watch(self) -> None:
        """(Every `WATCH` seconds) the holder still runs the same task it has not reported (one of a name known
        short) as a period ago: it runs long after all, and its queue is not watched meanwhile. Take the lead
        back."""
        holder = self.holder
        started = self.pool.started_unreported(holder) if holder is not None else None
        if started is not None and self._unreported == (holder, started):
            self.recall()
            started = None
        self._unreported = (holder, started) if started is not None else None

    def released(self, child: _Child, gen: int, payload: bytes) -> None:
        """(RELEASED, or the child is gone) `child` no longer waits on the lead; the early acks it could not
        send are sent from here."""
        acks = marshal.loads(payload) if payload else None
        if acks:
            self.dispatcher.ack_for_child(acks)
        if child is self.holder and gen in (-1, self.gen):
            self._back(True)

    def taken_lost(self, child: _Child, tag: str, reason: str) -> None:
        """`child` died after taking the task of `tag` and before reporting it."""
        try:
            delivery = self.consumer.recover_taken(tag)
        except Exception as exc:  # the broker restores it after the visibility timeout
            logger.error('Could not look up task %s that %s took before it died: %r', tag, child.name, exc)
            return
        if delivery is not None:
            self.dispatcher.lost_taken(delivery, reason)

    def stop(self) -> None:
        self.recall()
