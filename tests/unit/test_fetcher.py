"""The fetcher thread's pacing (fastq/worker/fetcher.py) against a scripted consumer: when it waits before a
fetch and when it must not. No timing is asserted: the waits are recorded, not measured."""

from __future__ import annotations

import threading
from typing import Any

import pytest

from fastq import _core
from fastq.brokers.base import Delivery
from fastq.worker import fetcher as fetcher_module
from fastq.worker.fetcher import LINGER, LINGER_RATE, MAX_BATCH, Fetcher, _Pace


class _Consumer:
    """Hands out `per_fetch` deliveries per fetch, `fetches` times; records the waits made between fetches."""

    def __init__(self, fetches: int, per_fetch: int, events: list[Any]) -> None:
        self.left = fetches
        self.per_fetch = per_fetch
        self.events = events
        self.done = threading.Event()
        self.next_tag = 0

    def push_to(self, accept: Any) -> bool:
        return False

    def wakeup(self) -> None:
        pass

    def before_wait(self, brief: bool) -> None:
        pass

    def fetch(self, limit: int, timeout: float) -> list[Delivery]:
        if self.left == 0:
            self.done.set()
            self.done.wait(timeout)
            return []
        self.left -= 1
        self.events.append('fetch')
        out = []
        for _ in range(min(self.per_fetch, limit)):
            self.next_tag += 1
            out.append(Delivery(self.next_tag, 'celery', None))
        return out


def _run(monkeypatch: pytest.MonkeyPatch, per_fetch: int, rate_floor: float = 0.0) -> list[Any]:
    """The sequence of fetches and lingers of a fetcher over 6 fetches (the rate threshold set to `rate_floor`,
    so the test does not depend on how fast this machine runs the loop)."""
    monkeypatch.setattr(fetcher_module, 'LINGER_RATE', rate_floor)
    events: list[Any] = []
    consumer = _Consumer(6, per_fetch, events)
    delivered: list[Delivery] = []
    f = Fetcher(consumer, _core.Ledger(0), delivered.extend, 'test://')  # type: ignore[arg-type]
    wait = f._stop_event.wait

    def recorded(timeout: float | None = None) -> bool:
        if timeout == LINGER:
            events.append('linger')
        return wait(timeout)

    monkeypatch.setattr(f._stop_event, 'wait', recorded)
    f.start()
    assert consumer.done.wait(10)
    f.stop()
    f.join(10)
    assert len(delivered) == 6 * per_fetch  # nothing lost or doubled by waiting
    return events


def test_a_stream_that_queues_up_between_fetches_waits_before_each_fetch(monkeypatch: pytest.MonkeyPatch) -> None:
    events = _run(monkeypatch, per_fetch=2)
    assert events == ['fetch', 'linger'] * 6


def test_one_task_per_fetch_never_waits(monkeypatch: pytest.MonkeyPatch) -> None:
    # e.g. a caller doing add.delay(1, 1).get() in a loop, however fast: its next task is never queued up
    assert _run(monkeypatch, per_fetch=1) == ['fetch'] * 6


def test_a_fetch_that_gets_all_it_asked_for_does_not_wait(monkeypatch: pytest.MonkeyPatch) -> None:
    # more may be waiting (a drain): the next fetch goes at once
    assert _run(monkeypatch, per_fetch=MAX_BATCH) == ['fetch'] * 6


def test_a_slow_stream_does_not_wait(monkeypatch: pytest.MonkeyPatch) -> None:
    # arrivals slower than LINGER_RATE: an unreachable threshold stands in for a slow stream
    assert _run(monkeypatch, per_fetch=2, rate_floor=float('inf')) == ['fetch'] * 6


def _paced(pace: _Pace, counts: list[int], interval: float, asked: int = 32) -> list[bool]:
    now = pace.last
    out = []
    for count in counts:
        now += interval
        out.append(pace.fetched(count, asked, now))
    return out


def test_pace_follows_the_stream() -> None:
    pace = _Pace()
    fast = 1 / LINGER_RATE  # two tasks per fetch: twice the threshold rate
    # a sequential caller at ten times the threshold rate: one task per fetch, never a wait
    assert not any(_paced(pace, [1] * 50, 0.1 / LINGER_RATE))
    # tasks start queueing up: lingering starts within a few fetches and holds while they do
    assert _paced(pace, [2] * 20, fast)[-10:] == [True] * 10
    # an empty fetch (a BLMOVE that timed out) is never followed by a wait
    assert _paced(pace, [0], fast) == [False]
    # the fetches get all they ask for (a window nearly full, or a backlog): no waiting
    assert _paced(pace, [2] * 5, fast, asked=2) == [False] * 5
    # the stream thins out to one task now and then: lingering stops
    assert _paced(pace, [1] * 20, 10 / LINGER_RATE)[-10:] == [False] * 10


@pytest.mark.parametrize('idle', [True, False])
def test_deliveries_are_handed_over_in_this_thread_when_the_loop_is_idle(idle: bool) -> None:
    events: list[Any] = []
    consumer = _Consumer(3, 2, events)
    here: list[Delivery] = []
    posted: list[Delivery] = []

    def deliver_here(ds: list[Delivery]) -> bool:
        if idle:
            here.extend(ds)
        return idle

    f = Fetcher(consumer, _core.Ledger(0), posted.extend, 'test://', deliver_here)  # type: ignore[arg-type]
    f.start()
    assert consumer.done.wait(10)
    f.stop()
    f.join(10)
    assert [d.tag for d in (here if idle else posted)] == [1, 2, 3, 4, 5, 6]
    assert (posted if idle else here) == []
