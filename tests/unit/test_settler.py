"""The settler thread's side of acks carried by fetches (`Consumer.carry_acks`)."""

from __future__ import annotations

import threading
from typing import Any

from fastq.worker.settler import Settler
from tests.harness import wait_until


class _Consumer:
    """Records the acks the settler sends itself."""

    def __init__(self) -> None:
        self.acked: list[Any] = []

    def ack(self, tags: list[Any]) -> None:
        self.acked.extend(tags)


def test_acks_taken_by_a_fetch_are_not_sent_again_and_unsent_ones_come_back() -> None:
    consumer = _Consumer()
    settler = Settler(consumer, 'test://')  # type: ignore[arg-type]
    settler.ack([1, 2])
    assert settler.take() == [1, 2]  # a fetch carries them
    settler.start()
    try:
        drained = threading.Event()
        threading.Thread(target=lambda: (settler.drain(10.0), drained.set()), daemon=True).start()
        assert not drained.wait(0.05)  # carried, not yet reported: not drained
        settler.settled([1, 2], True)
        assert drained.wait(5.0)
        assert consumer.acked == []  # sent by the fetch, not again by the settler
        settler.ack([3])
        taken = settler.take()
        settler.settled(taken, False)  # the fetch could not send them: the settler does
        wait_until(lambda: consumer.acked == [3], message='the settler sent the returned ack')
    finally:
        settler.stop(5.0)
    assert not settler.is_alive()


def test_stopping_waits_for_carried_acks_to_be_reported() -> None:
    consumer = _Consumer()
    settler = Settler(consumer, 'test://')  # type: ignore[arg-type]
    settler.start()
    settler.ack([7])
    taken = settler.take()
    stopper = threading.Thread(target=settler.stop, args=(10.0,), daemon=True)
    stopper.start()
    stopper.join(0.1)
    assert stopper.is_alive()  # a fetch still carries an ack that may come back
    settler.settled(taken, False)
    stopper.join(5.0)
    assert not stopper.is_alive() and consumer.acked == [7]


def test_acks_no_fetch_takes_are_sent_after_the_gathering_delay_and_once() -> None:
    consumer = _Consumer()
    settler = Settler(consumer, 'test://')  # type: ignore[arg-type]
    settler.start()
    try:
        settler.ack([1, 2])  # an idle settler: woken by the first ack, sends after its gathering delay
        wait_until(lambda: consumer.acked == [1, 2], message='the settler sent the acks itself')
        settler.ack([3])
        taken = settler.take()  # a fetch takes them during the settler's wait: it must not send them too
        assert taken == [3]
        settler.settled(taken, True)
        settler.ack([4])
        wait_until(lambda: consumer.acked == [1, 2, 4], message='the next ack is sent')
        settler.drain(5.0)
        assert consumer.acked == [1, 2, 4]
    finally:
        settler.stop(5.0)
    assert not settler.is_alive()


def test_the_carriers_acks_wait_for_its_fetch_or_its_hand_over() -> None:
    consumer = _Consumer()
    settler = Settler(consumer, 'test://')  # type: ignore[arg-type]
    settler.start()
    carrier_acks: list[list[Any]] = []
    go = threading.Event()

    def carrier() -> None:  # the fetcher: queues acks while dispatching, then fetches (takes) or waits
        settler.ack([1, 2])
        go.wait(5.0)
        carrier_acks.append(settler.take())
        settler.settled(carrier_acks[-1], True)
        settler.ack([3])
        settler.hand_over()  # about to block waiting for messages: the settler sends what is queued

    thread = threading.Thread(target=carrier, daemon=True)
    settler.carrier = thread
    try:
        wait_until(lambda: settler._idle, message='the settler waiting for acks')
        thread.start()
        thread.join(0.2)
        assert consumer.acked == []  # not woken for the carrier's acks: its next fetch takes them
        go.set()
        thread.join(5.0)
        assert carrier_acks == [[1, 2]]
        wait_until(lambda: consumer.acked == [3], message='the handed-over ack sent by the settler')
        settler.ack([4])  # from any other thread: wakes the settler as before
        wait_until(lambda: consumer.acked == [3, 4], message='an ack from another thread sent')
    finally:
        settler.stop(5.0)
    assert not settler.is_alive()


def test_drain_sends_what_the_carrier_queued() -> None:
    consumer = _Consumer()
    settler = Settler(consumer, 'test://')  # type: ignore[arg-type]
    settler.carrier = threading.current_thread()
    settler.start()
    try:
        wait_until(lambda: settler._idle, message='the settler waiting for acks')
        settler.ack([5])  # from the carrier: waits for its fetch
        settler.drain(5.0)
        assert consumer.acked == [5]
    finally:
        settler.stop(5.0)
