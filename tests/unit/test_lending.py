"""When the worker asks its fetcher to lend the lead (fastq.worker.lending), with the parts it reads as plain
objects: the lending itself, with real workers, is in tests/integration/test_lending.py."""

from __future__ import annotations

import threading
from types import SimpleNamespace
from typing import Any

import pytest

from fastq.worker import lending
from fastq.worker.lending import Lending


class _Fetcher:
    def __init__(self) -> None:
        self.paused = threading.Event()
        self.caught_up = True
        self.asked = 0
        self.on_lead_free: Any = None

    def request_lend(self) -> None:
        self.asked += 1


class _Loop:
    def on_idle(self, fn: Any) -> None:
        pass

    def call_repeatedly(self, interval: float, fn: Any) -> None:
        pass

    def call_soon_threadsafe(self, fn: Any) -> None:
        fn()


@pytest.fixture(autouse=True)
def _no_task_received_receivers(monkeypatch: pytest.MonkeyPatch) -> None:
    """The lead is not lent while a `task_received` receiver is connected: one another test of this process
    left connected must not decide these."""
    monkeypatch.setattr(lending, 'signals', SimpleNamespace(task_received=SimpleNamespace(connected=False)))


def _lending() -> tuple[Lending, _Fetcher]:
    dispatcher = SimpleNamespace(
        accepting=True, running={}, ready=[], held=[], ledger=[], revoked=set(), revoked_stamps=None
    )
    pool = SimpleNamespace(lent_to=None, lendable_child=lambda: object())
    fetcher = _Fetcher()
    consumer = SimpleNamespace(unlend=lambda: None)
    return Lending(dispatcher, consumer, fetcher, pool, _Loop()), fetcher  # type: ignore[arg-type]


def test_an_idle_worker_asks_to_lend_once_until_answered() -> None:
    lent, fetcher = _lending()
    lent.check()
    lent.check()
    assert fetcher.asked == 1


def test_tasks_found_as_the_fetcher_stopped_hold_off_the_next_ask(monkeypatch: Any) -> None:
    """A stream of single publishes leaves the worker idle for a moment between most tasks: each 'busy' answer
    (tasks came as the fetcher stopped waiting) is load, so the next ask waits `HOLDOFF` as after a give-back."""
    clock = [1000.0]
    monkeypatch.setattr(lending.time, 'monotonic', lambda: clock[0])
    lent, fetcher = _lending()
    lent.check()
    fetcher.on_lead_free('busy')
    lent.check()
    assert fetcher.asked == 1
    clock[0] += lending.HOLDOFF / 2
    lent.check()
    assert fetcher.asked == 1
    clock[0] += lending.HOLDOFF
    lent.check()
    assert fetcher.asked == 2


def test_a_consumer_unable_to_lend_is_asked_again_much_later(monkeypatch: Any) -> None:
    clock = [1000.0]
    monkeypatch.setattr(lending.time, 'monotonic', lambda: clock[0])
    lent, fetcher = _lending()
    lent.check()
    fetcher.on_lead_free('unable')
    clock[0] += lending.HOLDOFF * 2
    lent.check()
    assert fetcher.asked == 1
    clock[0] += lending.UNABLE_HOLDOFF
    lent.check()
    assert fetcher.asked == 2
