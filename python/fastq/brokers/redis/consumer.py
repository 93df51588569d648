"""Reserving from Redis lists in kombu's layout: one atomic script per batch, and waiting inside Redis.

Fetching is one Lua call that pops up to the free window and records every message in `unacked` /
`unacked_index`, so a message is always somewhere a restore sweep can find it. A script cannot block, so
while the queues are empty the fetching thread has a `BLMOVE key key RIGHT RIGHT` outstanding on each list key
(one connection per key; it returns as soon as the list has an element and leaves the list as it was) and
waits in select() on their sockets: the first reply starts the next fetch. There is no polling and no thread
hand-off: an idle worker starts a published task within a round trip.

The first key's watch (the lead: the first queue's default priority, where most tasks arrive) has the fetch
script queued behind its BLMOVE on the same connection, so Redis reserves a task the moment it arrives and
answers both at once: the task reaches the worker in one round trip instead of two. The script's limit is
set when it is queued, so until it answers the other fetches take only what is left of the window (a window
that shrinks meanwhile, as when ETA tasks held in memory are released, can be exceeded by the difference
until then); a task on another key unblocks the lead (CLIENT UNBLOCK), whose script then reserves from every
key in order.

Acks waiting when the lead is armed go in the same write, ahead of its BLMOVE (Redis runs them at once, then
blocks): an idle worker's early ack then costs no round trip and no wake-up of the settler thread of its own.

While a single queue keeps filling whole windows, the script gives way to plain LMOVEs into a hold list,
recorded in `unacked` one write later (holding.py): Redis's share of a drained task less than half.
"""

from __future__ import annotations

import logging
import math
import os
import select
import threading
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

import redis.exceptions

from fastq import _core
from fastq.brokers.base import Consumer, DeadLetter, Delivery, Tag
from fastq.brokers.redis.holding import Holding, Write, tag_of
from fastq.brokers.redis.layout import DELIVERIES_HEADER
from fastq.utils.rediswire import Link

if TYPE_CHECKING:
    from fastq.brokers.redis import RedisBroker
    from fastq.brokers.redis.layout import Layout

logger = logging.getLogger('fastq.brokers.redis')

_R = TypeVar('_R')

WAIT_TIMEOUT = 2  # seconds one BLMOVE blocks in Redis before it answers nil (and is sent again)
#: The smallest fetch that moves messages into a hold instead of running the script: a small window's every
#: fetch is "full", and its holds would mostly be recorded in a write of their own before the worker waits.
MOVING_MIN = 8


class _Watch:
    """A connection with a BLMOVE on one list key, possibly still outstanding; the lead's may have the fetch
    script queued behind it (`fetching`: the script's limit, and the keys it reserves from, in order), and an
    ack transaction ahead of it (`acks`: its tags; `ack_replies`: its replies, `ack_expected` of them)."""

    __slots__ = (
        'ack_expected',
        'ack_replies',
        'ack_report',
        'acks',
        'can_fetch',
        'client_id',
        'fetch_keys',
        'fetching',
        'key',
        'link',
        'pending',
        'replies',
        'timeout',
    )

    def __init__(self, consumer: RedisConsumer, key: str, timeout: float = WAIT_TIMEOUT) -> None:
        self.key = key
        self.link = Link(consumer.broker.client)
        self.pending = False
        self.timeout = timeout
        self.fetching = 0
        self.fetch_keys: list[str] = []
        self.replies: list[Any] = []
        self.client_id: int | None = None
        self.can_fetch = True
        self.acks: list[Tag] = []
        self.ack_expected = 0
        self.ack_replies: list[Any] = []
        self.ack_report: Callable[[list[Tag], bool], None] | None = None  # `carry_acks`'s `settled`

    def arm(self) -> None:
        if not self.pending:
            self.link.send(('BLMOVE', self.key, self.key, 'RIGHT', 'RIGHT', self.timeout))
            self.pending = True

    def arm_fetching(self, consumer: RedisConsumer, limit: int) -> None:
        """Arm with the fetch script (up to `limit` messages) queued behind the BLMOVE."""
        if self.pending or not self.can_fetch:
            return
        if self.client_id is None or self.link.fileno() < 0:  # a new connection is a new client
            try:
                self.client_id = int(self.link.call('CLIENT', 'ID'))
            except redis.exceptions.ResponseError as exc:  # an ACL without CLIENT: wait as the other watches
                logger.info('Waiting for tasks without a queued fetch (CLIENT ID: %s)', exc)
                self.can_fetch = False
                return
        keys = consumer._ordered_keys()
        script_keys, args = consumer._fetch_call(keys, limit)
        acks, report = consumer._take_carried()
        if acks:  # those of held messages are settled there (a delete must follow its record on one connection)
            rest = consumer._holding.settle(acks)
            if len(rest) < len(acks):
                kept = set(rest)
                consumer._carried_settled([t for t in acks if t not in kept], True, report)
                acks = rest
        ahead = consumer._ack_commands(acks) if acks else []
        try:
            self.link.send_all(
                [
                    *ahead,
                    ('BLMOVE', self.key, self.key, 'RIGHT', 'RIGHT', self.timeout),
                    ('EVALSHA', consumer.broker.scripts.fetch_script.sha, len(script_keys), *script_keys, *args),
                ]
            )
        except BaseException:
            if acks:
                consumer._carried_settled(acks, False, report)
            raise
        self.pending = True
        self.fetching, self.fetch_keys = limit, keys
        self.acks, self.ack_expected, self.ack_report = acks, len(ahead), report

    def _read(self, consumer: RedisConsumer) -> list[Any]:
        """The replies that arrived, after those of the acks sent ahead (settled once all of theirs are in)."""
        replies = self.link.replies()
        if self.ack_expected:
            taken = self.ack_expected - len(self.ack_replies)
            self.ack_replies += replies[:taken]
            replies = replies[taken:]
            if len(self.ack_replies) == self.ack_expected:
                acks, report, ok = self.acks, self.ack_report, _all_ok(self.ack_replies)
                self.acks, self.ack_expected, self.ack_replies, self.ack_report = [], 0, [], None
                consumer._carried_settled(acks, ok, report)
        return replies

    def drop_acks(self, consumer: RedisConsumer) -> None:
        """The connection failed: acks whose replies did not all come are sent another way (the settler's)."""
        if self.ack_expected:
            acks, report = self.acks, self.ack_report
            self.acks, self.ack_expected, self.ack_replies, self.ack_report = [], 0, [], None
            consumer._carried_settled(acks, False, report)

    def hit(self, consumer: RedisConsumer) -> bool:
        """Whether the BLMOVE answered with an element (the list filled); False for nil or nothing yet."""
        replies = self._read(consumer)
        if replies:
            self.pending = False
        for reply in replies:
            if isinstance(reply, redis.exceptions.RedisError):
                raise reply
        return any(reply is not None for reply in replies)

    def fetched(self, consumer: RedisConsumer) -> tuple[list[str], list[Any]] | None:
        """Of a watch armed with `arm_fetching`: None until both replies are in, then the keys the script
        reserved from and its reply. A script error is raised (the BLMOVE's own answer does not matter:
        the script ran either way, and what it reserved must not be lost)."""
        self.replies += self._read(consumer)
        if len(self.replies) < 2:
            return None
        reply = self.replies[1]
        keys = self.fetch_keys
        self.pending, self.replies, self.fetching, self.fetch_keys = False, [], 0, []
        if isinstance(reply, redis.exceptions.RedisError):
            raise reply
        return keys, reply


class RedisConsumer(Consumer):
    def __init__(self, broker: RedisBroker, queues: list[str], owner: str) -> None:
        self.broker = broker
        self.layout = broker.layout
        self.queues = queues
        self.owner = owner
        self.client = broker.client
        self._use_queues(queues)
        self._new_queues: list[str] | None = None  # set by set_queues, applied by the fetching thread
        self._held: set[Tag] = set()
        self._held_lock = threading.Lock()
        self._interrupted = False
        self._drained = False
        self._closed = False
        # The hot path's own connections (fetches come from the fetcher thread, acks from the settler's).
        self._fetch_link = Link(broker.client)
        self._ack_link = Link(broker.client)
        self._watches = self._new_watches()
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._backoff = 0.0
        # (take, settled) of `carry_acks`: acks sent in the fetches' writes; `_handover` before blocking
        self._carry: tuple[Callable[[], list[Tag]], Callable[[list[Tag], bool], None]] | None = None
        self._handover: Callable[[], None] | None = None
        # The lead is lent to a pool child (`lend_lead`): this thread neither arms it nor waits on it.
        self._lent = False
        # Reserving with LMOVEs into holds (holding.py) while the last fetch filled the window (`_burst`).
        self._holding = Holding(self.layout)
        self._burst = False

    def is_closed(self) -> bool:
        return self._closed

    def _use_queues(self, queues: list[str]) -> None:
        self.queues = queues
        self._burst = False
        ordered = sorted(queues) if self.broker.queue_order_strategy == 'sorted' else list(queues)
        self._keys = self.layout.consume_keys(ordered)
        self._key_queue = dict(self._keys)
        #: The queues in round-robin order: kombu's cycle, where a queue that delivers goes to the back.
        self._cycle = ordered if self.broker.queue_order_strategy == 'round_robin' and len(ordered) > 1 else None

    def set_queues(self, queues: Sequence[str]) -> None:
        self.broker.declare(queues)
        self._new_queues = list(queues)
        self.wakeup()

    def _apply_new_queues(self) -> None:
        """In the fetching thread, which alone touches the watches: swap the keys and their BLMOVEs."""
        queues, self._new_queues = self._new_queues, None
        if queues is None:
            return
        self._close_watches()  # with the old keys: what the lead reserved from them is handed back
        self._use_queues(queues)
        self._watches = self._new_watches()
        self._drained = False

    def _new_watches(self) -> list[_Watch]:
        """One watch per key; the first (the lead) also fetches. Its script's reservation time is set when
        it is queued, so it waits in Redis at most a quarter of the visibility timeout: a reservation
        scored that much early is still renewed (every quarter) long before any sweep would restore it."""
        timeout = min(WAIT_TIMEOUT, max(self.broker.visibility_timeout / 4, 0.01))
        return [_Watch(self, key, timeout if i == 0 else WAIT_TIMEOUT) for i, (key, _) in enumerate(self._keys)]

    def _close_watches(self) -> None:
        """Drop every BLMOVE with its connection; what the lead's script reserved meanwhile is handed back."""
        lead = self._watches[0] if self._watches else None
        if lead is not None and lead.fetching:
            try:
                got = self._finish_lead(lead)
            except redis.exceptions.RedisError as exc:  # the sweep brings them back after the visibility timeout
                logger.warning('Could not collect the last reservations at close: %s', exc)
            else:
                if got:
                    self.release([d.tag for d in got])
        for watch in self._watches:
            watch.drop_acks(self)
            watch.link.close()

    def _finish_lead(self, lead: _Watch) -> list[Delivery]:
        """Unblock the lead's BLMOVE and collect what its script reserved (in the thread that fetches, or
        once it has stopped)."""
        assert lead.client_id is not None
        self._fetch_link.call('CLIENT', 'UNBLOCK', lead.client_id)
        deadline = time.monotonic() + 2.0
        while (fetched := lead.fetched(self)) is None:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise redis.exceptions.TimeoutError('no answer from the unblocked fetch')
            fd = lead.link.fileno()
            if fd < 0:  # the connection was lost with the answer: what it reserved comes back in time
                raise redis.exceptions.ConnectionError('the waiting connection was lost')
            select.select([fd], [], [], remaining)
        return self._deliveries(*fetched)

    # --- lending the lead to a pool child (fastq.worker.lending) --------------------------------------------

    def lend_lead(self) -> list[Delivery] | None:
        """Stop waiting on the lead so a pool child can wait in its place (`lead_spec`): what the lead's script
        reserved meanwhile (to be delivered as usual; the lead is then not lent), or None when this consumer
        cannot lend it (no queued fetch here: an ACL without CLIENT). In the fetching thread."""
        if self._new_queues is not None:
            self._apply_new_queues()
        if not self._watches:  # (no queue to wait on)
            return None
        lead = self._watches[0]
        if not lead.can_fetch or self._closed:
            return None
        got: list[Delivery] = []
        if lead.pending:
            if lead.fetching:
                got = self._finish_lead(lead)
            else:  # a bare BLMOVE (armed while the window was full): dropped with its connection
                lead.link.close()
                lead.pending, lead.replies = False, []
        self._lent = not got
        return got

    def unlend(self) -> None:
        """The lead is this consumer's again (any thread): the fetching thread arms it from its next wait."""
        self._lent = False
        self.wakeup()

    def lead_spec(self) -> dict[str, Any]:
        """What a pool child needs to wait on the lead (`ChildLead`): the keys in serving order, their queues,
        and how long one BLMOVE blocks."""
        return {
            'keys': [key for key, _ in self._keys],
            'queues': [queue for _, queue in self._keys],
            'timeout': self._watches[0].timeout if self._watches else WAIT_TIMEOUT,
        }

    def taken(self, keys: list[str], raw: list[Any]) -> list[Delivery]:
        """The deliveries a pool child reserved with the lent lead (the fetch script's reply), now held by this
        consumer as if it had fetched them."""
        return self._deliveries(keys, raw)

    def recover_taken(self, tag: str) -> Delivery | None:
        """A task a pool child took with the lent lead and did not report before it died: its delivery, held
        here, if it is still reserved (None if it was acked, or is not kombu's record)."""
        raw = self.client.hget(self.layout.unacked, tag)
        if raw is None:
            return None
        try:
            envelope, _, routing_key = _core.json_loads(raw, None)
        except (ValueError, TypeError):
            return None
        if not isinstance(envelope, dict):
            return None
        queue = routing_key if routing_key in self.queues else self.queues[0]
        delivery = _decoded(tag, queue, _core.json_dumps(envelope, None))
        with self._held_lock:
            self._held.add(tag)
        return delivery

    # --- fetching -----------------------------------------------------------------------------------------

    def _ordered_keys(self) -> list[str]:
        """Keys in serving order: step-major; with round robin (kombu's default), the queues in the order of
        their cycle (see `_rotate`)."""
        if self._cycle is not None:
            return [key for key, _ in self.layout.consume_keys(self._cycle)]
        return [key for key, _ in self._keys]

    def _rotate(self, deliveries: list[Delivery]) -> None:
        """Each queue that delivered goes to the back of the cycle, as kombu's round_robin_cycle.rotate moves
        it after each message: queues take turns one message each (-Q c,b,a with c empty: b, a, b, a, ...).
        Under `_held_lock`; the cycle is replaced, never changed in place, for `_ordered_keys` to read."""
        cycle = self._cycle
        if cycle is None or not deliveries:
            return
        cycle = list(cycle)
        for delivery in deliveries:
            if delivery.queue in cycle:
                cycle.remove(delivery.queue)
                cycle.append(delivery.queue)
        self._cycle = cycle

    def fetch(self, limit: int, timeout: float) -> list[Delivery]:
        deadline = time.monotonic() + timeout
        # The last fetch got less than it asked for, so the lists were empty a moment ago: wait for a BLMOVE
        # to see one fill instead of running the script once more for nothing (it answers at once if one
        # filled meanwhile). Saves a script call per task on a worker that keeps up with its queues.
        if self._new_queues is not None:
            self._apply_new_queues()
        if not self._watches:  # no queue at all (cancel_consumer of the worker's last): wait to be given one
            self._sleep(timeout)
            return []
        # While the lead is lent, the child holding it reserves from its lists: a reservation from here too
        # would take a second task for one free slot (the child's is not in the window yet).
        skip = (self._drained or self._lent) and limit > 0
        while True:
            lead = self._watches[0]
            budget = limit - lead.fetching  # the lead's queued script may still take up to its limit
            got = self._reserve(budget) if budget > 0 and not skip else []
            skip = False
            if got or self._closed:
                self._drained = len(got) < budget
                return got
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return []
            waited = self._wait(remaining, limit)
            if isinstance(waited, list):
                if waited:
                    self._drained = len(waited) < limit
                    return waited
                skip = True  # the script found nothing (another worker was first, or the BLMOVE timed out)
            elif not waited:
                return []

    def _wait(self, timeout: float, limit: int) -> bool | list[Delivery]:
        """Until a list may have filled (True), or `timeout` / `wakeup` (False), or the lead's script
        answered (what it reserved)."""
        deadline = time.monotonic() + timeout
        while not self._closed:
            try:
                outcome = self._wait_once(deadline, limit)
            except redis.exceptions.NoScriptError:  # the lead's script: Redis restarted, or SCRIPT FLUSH
                return True  # the fetch that follows loads it (`Link.evalsha`)
            except redis.exceptions.RedisError as exc:
                for watch in self._watches:
                    watch.pending = watch.pending and watch.link.fileno() >= 0
                    if not watch.pending:
                        watch.fetching, watch.replies = 0, []
                        watch.drop_acks(self)
                # Let the fetch see (and report, with backoff) the problem, after a pause here so a broker
                # that is down is not hammered from this loop.
                self._backoff = min(max(self._backoff * 2, 0.1), 5.0)
                logger.debug('waiting on the queues failed (%s); fetching in %.1fs', exc, self._backoff)
                self._sleep(min(self._backoff, max(deadline - time.monotonic(), 0.0)))
                return True
            self._backoff = 0.0
            if outcome is not None:
                return outcome
        return False

    def _wait_once(self, deadline: float, limit: int) -> bool | list[Delivery] | None:
        """One select() over the watches: as `_wait`, or None to keep waiting."""
        self._write_holds(carry=True)  # before waiting for long: nothing stays in a hold meanwhile
        lead = self._watches[0]
        lent = self._lent
        watches = self._watches[1:] if lent else self._watches
        if limit > 0 and not lent:
            lead.arm_fetching(self, limit)
        for watch in watches:
            watch.arm()
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return False
        if self._handover is not None:
            self._handover()
        fds = [watch.link.fileno() for watch in watches]
        readable, _, _ = select.select([self._wake_r, *fds], [], [], remaining)
        if self._wake_r in readable:
            self._drain_wake()
            if self._interrupted:
                self._interrupted = False
                self._settle_ahead(lead)
                return False
            if lent and not self._lent:
                # The lead is back from a pool child, which may have taken tasks meanwhile: `limit` predates
                # them, so the fetcher reads its window again before the lead is armed (else one task over it).
                return False
        if lead.fetching and not self._lent and fds[0] in readable:
            fetched = lead.fetched(self)
            if fetched is not None:
                return self._deliveries(*fetched)
        hit = False
        for watch, fd in zip(watches, fds, strict=True):
            if fd in readable and not watch.fetching:
                hit = watch.hit(self) or hit
        if hit and lead.fetching and not self._lent:
            # A task on another key: the lead's script reserves from every key, once unblocked.
            assert lead.client_id is not None
            self._fetch_link.call('CLIENT', 'UNBLOCK', lead.client_id)
            return None
        return True if hit else None

    def _settle_ahead(self, lead: _Watch, timeout: float = 1.0) -> None:
        """Before handing control back (a stop may follow): read the replies of the acks the lead sent ahead of
        its BLMOVE. Redis answers them at once, so this rarely waits; what does not come is acked again."""
        deadline = time.monotonic() + timeout
        while lead.ack_expected and (remaining := deadline - time.monotonic()) > 0 and lead.link.fileno() >= 0:
            if select.select([lead.link.fileno()], [], [], remaining)[0]:
                lead.replies += lead._read(self)
        lead.drop_acks(self)

    def _sleep(self, seconds: float) -> None:
        if seconds > 0:
            if self._handover is not None:
                self._handover()
            readable, _, _ = select.select([self._wake_r], [], [], seconds)
            if readable:
                self._drain_wake()

    def _drain_wake(self) -> None:
        try:
            while os.read(self._wake_r, 4096):
                pass
        except BlockingIOError:
            pass

    def carry_acks(
        self,
        take: Callable[[], list[Tag]] | None,
        settled: Callable[[list[Tag], bool], None] | None,
        handover: Callable[[], None] | None = None,
    ) -> bool:
        self._carry = (take, settled) if take is not None and settled is not None else None
        self._handover = handover if self._carry is not None else None
        return True

    def _take_carried(self) -> tuple[list[Tag], Callable[[list[Tag], bool], None] | None]:
        """The acks waiting to ride with this thread's next write to Redis (none if acks are not carried), and
        where to report them settled."""
        carry = self._carry
        return (carry[0](), carry[1]) if carry is not None else ([], None)

    def _carried_settled(self, tags: list[Tag], acked: bool, report: Callable[[list[Tag], bool], None] | None) -> None:
        if acked:
            self._forget(tags)
        if report is not None:
            report(tags, acked)

    def _reserve(self, limit: int) -> list[Delivery]:
        if self._holding.orphans:
            self._restore_orphans()
        if self._burst and len(self.queues) == 1 and limit >= MOVING_MIN:
            got = self._reserve_moving(limit)
        else:
            got = self._reserve_script(limit)
        # A window filled from one queue: more are likely waiting there (a drain), so the next fetch moves them
        # without the script. Several queues keep the script's order (round robin, priorities across queues).
        self._burst = len(got) >= limit > 0 and len(self.queues) == 1
        return got

    def _reserve_script(self, limit: int) -> list[Delivery]:
        keys = self._ordered_keys()
        script = self.broker.scripts.fetch_script
        tags, report = self._take_carried()
        holding = self._holding
        if not tags and not holding.pending():
            return self._deliveries(keys, self._fetch_link.evalsha(script, *self._fetch_call(keys, limit)))
        # The acks waiting ride in front of the fetch: one write and one round trip for both (a busy worker
        # fetches more often than the settler would send them), Redis running the ack transaction first; so do
        # the records the last holds still owe (holding.py).
        with holding.writing:
            ahead, write = holding.begin(tags, reservation_time())
            replies, raw = self._sent(
                write,
                tags,
                report,
                lambda: self._fetch_link.evalsha_after(ahead, script, *self._fetch_call(keys, limit)),
            )
            ok = _transaction_ok(replies)
            holding.done(write, ok)
        if tags:
            self._carried_settled(tags, ok, report)
        if isinstance(raw, redis.exceptions.ResponseError):
            raise raw
        return self._deliveries(keys, raw)

    def _reserve_moving(self, limit: int) -> list[Delivery]:
        """Reserve up to `limit` from the first key with one LMOVE each into a new hold, in the write that
        settles the last hold (see holding.py)."""
        key, queue = self._keys[0]
        holding = self._holding
        tags, report = self._take_carried()
        now = reservation_time()
        with holding.writing:
            ahead, write = holding.begin(tags, now)
            commands = ahead + holding.fill(write, key, limit, now)
            replies = self._sent(write, tags, report, lambda: self._fetch_link.execute(commands))
            ok = _transaction_ok(replies[: len(ahead)])
            moved = replies[len(ahead) + 1 :]
            try:
                out, held = _core.moved_deliveries(moved, queue, time.time(), Delivery, _decoded, _counts, tag_of)
            except BaseException:  # what was read is held all the same (and recorded by the next write)
                holding.done(write, ok, {tag_of(m): (m, queue) for m in moved if isinstance(m, bytes)})
                raise
            holding.done(write, ok, {tag: (d.raw, queue) for tag, d in zip(held, out, strict=True)})
        if tags:
            self._carried_settled(tags, ok, report)
        if not out:
            error = next((reply for reply in moved if isinstance(reply, Exception)), None)
            if error is not None:
                raise error
            return []
        with self._held_lock:
            self._held.update(held)
        return out

    def _write_holds(self, carry: bool = False, brief: bool = False) -> None:
        """Write what the holds owe (records, deletes, holds to drop) now: before this consumer waits, or
        something reads a record. `carry`: with the acks waiting to ride (the fetching thread's); `brief`: only
        when records are owed (before a short wait, deletes can ride with the next fetch)."""
        holding = self._holding
        if holding.orphans:
            self._restore_orphans()
        if not (holding.inflight or (holding.unrecorded if brief else holding.pending())):
            return
        with holding.writing:  # after any write on its way (another thread's), whose records may be the ones owed
            if not (holding.unrecorded if brief else holding.pending()):
                return
            tags, report = self._take_carried() if carry else ([], None)
            commands, write = holding.begin(tags, reservation_time())
            replies = self._sent(write, tags, report, lambda: self._fetch_link.execute(commands) if commands else [])
            ok = _transaction_ok(replies)
            holding.done(write, ok)
        if tags:
            self._carried_settled(tags, ok, report)
        if not ok:
            raise redis.exceptions.ResponseError(f'recording reserved messages failed: {replies!r}')

    def _sent(
        self, write: Write, tags: list[Tag], report: Callable[[list[Tag], bool], None] | None, send: Callable[[], _R]
    ) -> _R:
        """`send()`, the write carrying what `write` owes and the acks `tags`: when it fails, the holding owes
        it all again and the acks are reported unsent (to be acked another way). Under `holding.writing`."""
        try:
            return send()
        except BaseException:
            self._holding.done(write, False)
            if tags:
                self._carried_settled(tags, False, report)
            raise

    def _restore_orphans(self) -> None:
        """Put back on their queues the holds of writes that failed (their messages were never seen here)."""
        for i, hold in enumerate(orphans := self._holding.take_orphans()):
            try:
                self.broker.unhold(hold, count_delivery=False)
            except BaseException:
                with self._holding.lock:
                    self._holding.orphans += orphans[i:]
                raise

    def _record(self, tags: Sequence[Tag]) -> None:
        """Before anything reads the `unacked` records of `tags` (park, restore, dead-letter): written, if held."""
        if self._holding.holds_any(tags):
            self._write_holds()

    def before_wait(self, brief: bool) -> None:
        try:
            self._write_holds(carry=True, brief=brief)
        except redis.exceptions.RedisError as exc:  # kept: the next fetch writes them, or reports the broker
            logger.debug('could not record reserved messages before waiting: %r', exc)

    def _fetch_call(self, keys: list[str], limit: int) -> tuple[list[str], list[Any]]:
        """The fetch script's KEYS and ARGV for reserving up to `limit` from `keys`, in that order."""
        return [self.layout.unacked, self.layout.unacked_index, *keys], [limit, reservation_time()]

    def _deliveries(self, keys: list[str], raw: list[Any]) -> list[Delivery]:
        """The fetch script's reply (key index, tag, envelope, ...) as deliveries, now held by this consumer."""
        if not raw:
            return []
        key_queue = self._key_queue
        out, tags = fetched_deliveries(raw, [key_queue.get(key, key) for key in keys])
        with self._held_lock:
            self._held.update(tags)
            self._rotate(out)
        return out

    def wakeup(self) -> None:
        self._interrupted = True
        try:
            os.write(self._wake_w, b'!')
        except (BlockingIOError, OSError):  # already signalled, or closed
            pass

    # --- settling -----------------------------------------------------------------------------------------

    def forget(self, tags: Sequence[Tag]) -> None:
        self._forget(tags)

    def _forget(self, tags: Sequence[Tag]) -> None:
        with self._held_lock:
            self._held.difference_update(tags)

    def ack(self, tags: Sequence[Tag]) -> None:
        if not tags:
            return
        holding = self._holding
        rest = holding.settle(tags)
        if len(rest) < len(tags):  # held and never recorded (or recorded in a write on its way): settled there
            kept = set(rest)
            self._forget([t for t in tags if t not in kept])
            tags = rest
            if holding.deletes:  # owed by the fetching thread's next write: not after a wait of seconds
                self.wakeup()
            if not tags:
                return
        for reply in self._ack_link.execute(self._ack_commands(tags)):
            if isinstance(reply, redis.exceptions.ResponseError):
                raise reply
        self._forget(tags)

    def _ack_commands(self, tags: Sequence[Tag]) -> list[Any]:
        return ack_commands(self.layout, tags)

    def reject(self, tags: Sequence[Tag], requeue: bool) -> None:
        if requeue:
            self._record(tags)
            self.broker.restore(tags, leftmost=True, count_delivery=True)
            self._forget(tags)
        else:
            self.ack(tags)

    def release(self, tags: Sequence[Tag]) -> None:
        self._record(tags)
        self.broker.restore(tags, leftmost=False, count_delivery=False)
        self._forget(tags)

    def defer(self, tag: Tag, eta: float) -> None:
        self._record([tag])
        self.broker.park(str(tag), eta, self.owner)
        self._forget([tag])

    def parked(self, limit: int) -> list[_core.Message]:
        """What this node parked (the owner is the worker's node name), so a restarted node lists its tasks."""
        return self.broker.parked(self.owner, limit)

    def renew(self) -> None:
        """Move our reservations' scores to now, so no sweep (fastq's or kombu's) restores a running task."""
        with self._held_lock:
            tags = list(self._held)
        if not tags:
            return
        now = reservation_time()
        with self.client.pipeline(transaction=False) as pipe:
            for i in range(0, len(tags), 500):
                pipe.zadd(self.layout.unacked_index, {str(t): now for t in tags[i : i + 500]}, xx=True)
            pipe.execute()

    def dead_letter(self, delivery: Delivery, reason: str) -> DeadLetter:
        letter = DeadLetter.of(delivery, reason)
        self._record([delivery.tag])
        self.broker.dead_letter_store.add(letter, remove_tag=str(delivery.tag))
        self._forget([delivery.tag])
        return letter

    def __del__(self) -> None:
        for fd in (getattr(self, '_wake_r', -1), getattr(self, '_wake_w', -1)):
            if fd >= 0:
                try:
                    os.close(fd)
                except OSError:
                    pass

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self.wakeup()
        try:
            self._write_holds()  # what the holds owe, so the reservations handed back below have their records
        except redis.exceptions.RedisError as exc:  # the sweep restores the holds after the visibility timeout
            logger.warning('Could not record the last reservations at close: %s', exc)
        self._close_watches()  # first: what the lead's script reserved is held, then handed back below
        with self._held_lock:
            held, self._held = list(self._held), set()
        if held:
            try:
                self.broker.restore(held, leftmost=False, count_delivery=False)
            except Exception as exc:  # the sweep will bring them back after the visibility timeout
                logger.warning('Could not hand back %d reservation(s) at close: %s', len(held), exc)
        self.broker.delete_auto_queues(self.queues)  # (this consumer's broadcast queues go with it, as kombu's)
        self._fetch_link.close()
        self._ack_link.close()
        # The pipe stays open: a fetch in another thread may still be about to select on it (closed with us).


def ack_commands(layout: Layout, tags: Sequence[Tag]) -> list[Any]:
    """One transaction that forgets the reservations of `tags` (kombu's layout: the hash and the index)."""
    commands: list[Any] = [('MULTI',)]
    for i in range(0, len(tags), 500):
        chunk = [str(t) for t in tags[i : i + 500]]
        commands.append(('HDEL', layout.unacked, *chunk))
        commands.append(('ZREM', layout.unacked_index, *chunk))
    commands.append(('EXEC',))
    return commands


def fetched_deliveries(raw: list[Any], queues: list[str]) -> tuple[list[Delivery], list[str]]:
    """The fetch script's reply (key index, tag, envelope, ...) as deliveries, `queues[i - 1]` naming key i's
    queue, and their tags. (Once per message in the worker's one busy thread, so the loop is compiled.)"""
    out, tags = _core.fetched_deliveries(raw, queues, time.time(), Delivery, _decoded, _counts)
    return out, tags


def _decoded(tag: str, queue: str, payload: bytes) -> Delivery:
    """A delivery whose envelope `task_head` did not vouch for: decoded whole (or its error kept)."""
    try:
        message = _core.Message.from_envelope(payload, None)
    except ValueError as exc:
        return Delivery(tag, queue, None, payload, False, 1, error=str(exc))
    headers = message.headers
    redelivered, deliveries = _counts(headers.get(DELIVERIES_HEADER), headers.get('redelivered'))
    return Delivery(tag, queue, message, payload, redelivered, deliveries)


def _transaction_ok(replies: list[Any]) -> bool:
    """Whether a MULTI ... EXEC went through with no error (no replies: nothing was sent, nothing failed)."""
    if not replies:
        return True
    done = replies[-1]
    return _all_ok(replies) and isinstance(done, list) and not any(isinstance(reply, Exception) for reply in done)


def _all_ok(replies: list[Any]) -> bool:
    """Whether no reply of an ack transaction is an error (it then counts as sent)."""
    return not any(isinstance(reply, redis.exceptions.ResponseError) for reply in replies)


def reservation_time() -> int:
    """A reservation's score in `unacked_index`: now, in whole seconds rounded up.

    Whole seconds because Redis keeps a small sorted set as a listpack and reads a fractional score back
    with strtod for every member it walks past: adding a fetch's batch cost three times as much with
    `time.time()` as it is (95 against 32 us for 32 tasks), inside the fetch script every worker waits on.
    Rounded up, so a reservation is restored at most a second after its visibility timeout, never before.
    kombu compares these scores with `time.time() - visibility_timeout`, which whole numbers serve as well.
    """
    return math.ceil(time.time())


def _counts(earlier: Any, redelivered: Any) -> tuple[bool, int]:
    """(redelivered, hand-outs including this one) from a message's deliveries count and redelivered flag."""
    deliveries = earlier + 1 if isinstance(earlier, int) and earlier > 0 else 1
    return deliveries > 1 or bool(redelivered), deliveries
