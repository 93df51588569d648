"""The worker parent's loop (fastq/worker/loop.py): borrowing it from another thread while it sleeps."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from fastq.worker.loop import Loop


@pytest.fixture
def loop() -> Iterator[Loop]:
    loop = Loop()
    yield loop
    loop.close()


def _sleeping(loop: Loop, max_wait: float = 30.0) -> tuple[threading.Thread, list[BaseException]]:
    """Run one pass of `loop` in a thread (it sleeps in select up to `max_wait`); errors are collected."""
    errors: list[BaseException] = []

    def run() -> None:
        try:
            loop.run_once(max_wait)
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, errors


def _borrow(loop: Loop, callback: Callable[[], None]) -> None:
    """Borrow the loop once it sleeps (until then the loop's thread holds it)."""
    deadline = time.monotonic() + 10
    while not loop.run_borrowed(callback):
        assert time.monotonic() < deadline, 'the loop never let go'
        time.sleep(0.001)


def test_a_sleeping_loop_runs_the_callback_and_its_idle_callbacks_in_the_borrowing_thread(loop: Loop) -> None:
    seen: list[Any] = []
    loop.on_idle(lambda: seen.append(('idle', threading.current_thread().name)))
    thread, errors = _sleeping(loop)
    _borrow(loop, lambda: seen.append(('work', threading.current_thread().name)))
    me = threading.current_thread().name
    assert seen == [('work', me), ('idle', me)]
    loop.call_soon_threadsafe(lambda: None)  # wake it up
    thread.join(10)
    assert not thread.is_alive() and not errors


def test_a_loop_that_is_not_asleep_cannot_be_borrowed(loop: Loop) -> None:
    # This thread made the loop and has not waited in it yet: it holds the loop.
    ran: list[int] = []
    assert not loop.run_borrowed(lambda: ran.append(1))
    assert ran == []


def test_posted_work_keeps_its_order(loop: Loop) -> None:
    # Something already posted runs first, in the loop's thread: borrowing would overtake it.
    ran: list[str] = []
    loop.call_soon_threadsafe(lambda: ran.append('posted'))
    result: list[bool] = []
    borrower = threading.Thread(target=lambda: result.append(loop.run_borrowed(lambda: ran.append('borrowed'))))
    loop._owner.release()  # as if the loop slept, but with the inbox still full
    try:
        borrower.start()
        borrower.join(10)
    finally:
        loop._owner.acquire()
    assert result == [False] and ran == []
    loop.run_once(0)
    assert ran == ['posted']


def test_an_exception_is_raised_in_the_loops_thread(loop: Loop) -> None:
    thread, errors = _sleeping(loop)

    def boom() -> None:
        raise KeyError('bug')

    _borrow(loop, boom)
    thread.join(10)
    assert not thread.is_alive()
    assert len(errors) == 1 and isinstance(errors[0], KeyError)


def test_a_timer_set_while_borrowed_wakes_the_loop(loop: Loop) -> None:
    fired = threading.Event()
    thread, errors = _sleeping(loop, max_wait=60.0)
    _borrow(loop, lambda: loop.call_later(0, fired.set))
    # The loop slept with a 60 s timeout computed before the timer existed; it must look again now.
    assert fired.wait(10)
    thread.join(10)
    assert not errors
