"""fastq._ipc.Channel over real socketpairs: buffering, end of file, broken pipes, waits, signals, fork."""

from __future__ import annotations

import errno
import gc
import os
import random
import selectors
import signal
import socket
import threading
import time
from collections.abc import Iterator

import pytest

from fastq._core import encode_frame, encode_frames
from fastq._ipc import WAIT_READY, WAIT_TIMEOUT, Channel

KIND_JOB, KIND_RESULT, KIND_STOP, KIND_DONE = 1, 2, 3, 4
BIG = 8 * 1024 * 1024


def channel_pair() -> tuple[Channel, Channel]:
    a, b = socket.socketpair()
    return Channel(a.detach()), Channel(b.detach())


@pytest.fixture
def pair() -> Iterator[tuple[Channel, Channel]]:
    a, b = channel_pair()
    yield a, b
    a.close()
    b.close()


def recv_until(ch: Channel, count: int) -> list[tuple[int, int, bytes]]:
    """Collect `count` frames; the long wait only guards against a hang (it is not a timing assertion)."""
    got: list[tuple[int, int, bytes]] = []
    while len(got) < count:
        assert ch.wait(30) == WAIT_READY
        got += ch.recv()
    return got


def fill_socket(ch: Channel) -> None:
    """Queue more than any socket buffer holds while nobody reads, so output stays pending."""
    ch.send(0, KIND_JOB, bytes(4 * 1024 * 1024))
    assert ch.pending_output > 0


# -- round trips ------------------------------------------------------------------------------------


def test_single_frames_round_trip(pair: tuple[Channel, Channel]) -> None:
    w, r = pair
    frames = [(0, 0, b''), (1, 1, b'x'), (2**64 - 1, 255, b'\x00' * 1000), (42, 7, bytes(range(256)))]
    for frame in frames:
        w.send(*frame)
    assert w.pending_output == 0
    assert recv_until(r, len(frames)) == frames
    assert r.recv() == []


def test_batches_round_trip_both_ways(pair: tuple[Channel, Channel]) -> None:
    a, b = pair
    batch = [(i, i % 256, str(i).encode() * (i % 7)) for i in range(1000)]
    a.send_many(batch)
    b.send_many(batch[::-1])
    a.send_many([])
    assert recv_until(b, 1000) == batch
    assert recv_until(a, 1000) == batch[::-1]


def test_send_rejects_bad_frames(pair: tuple[Channel, Channel]) -> None:
    w, _ = pair
    with pytest.raises(OverflowError):
        w.send(-1, 0, b'')
    with pytest.raises(OverflowError):
        w.send(0, 256, b'')
    with pytest.raises(TypeError):
        w.send(0, 0, 'text')  # type: ignore[arg-type]
    assert w.pending_output == 0


# -- output buffering ----------------------------------------------------------------------------------


def test_large_payload_reader_thread_drains_while_writer_flushes(pair: tuple[Channel, Channel]) -> None:
    w, r = pair
    payload = bytes(range(256)) * (BIG // 256)
    w.send(7, KIND_JOB, payload)  # returns without blocking although the socket holds far less
    assert 0 < w.pending_output <= len(payload) + 13
    got: list[tuple[int, int, bytes]] = []
    reader = threading.Thread(target=lambda: got.extend(recv_until(r, 1)))
    reader.start()
    w.flush_blocking(30)
    reader.join(30)
    assert w.pending_output == 0
    assert w.flush() is True
    assert got == [(7, KIND_JOB, payload)]


def test_large_batch_interleaved_flush_and_recv(pair: tuple[Channel, Channel]) -> None:
    w, r = pair
    payloads = [bytes([i]) * (3 * 1024 * 1024 + i) for i in range(3)]
    w.send_many([(i, KIND_JOB, p) for i, p in enumerate(payloads)])
    w.send(3, KIND_JOB, b'tail')  # queued behind the batch, in order
    assert w.pending_output > 0
    got: list[tuple[int, int, bytes]] = []
    while len(got) < 4:
        w.flush()
        got += r.recv()
    assert w.pending_output == 0
    assert got == [(i, KIND_JOB, p) for i, p in enumerate(payloads)] + [(3, KIND_JOB, b'tail')]


def test_flush_blocking_times_out_when_nobody_reads(pair: tuple[Channel, Channel]) -> None:
    w, _ = pair
    fill_socket(w)
    pending = w.pending_output
    assert w.flush() is False
    with pytest.raises(TimeoutError):
        w.flush_blocking(0.05)
    with pytest.raises(TimeoutError):
        w.flush_blocking(0)
    assert w.pending_output == pending


# -- reading ----------------------------------------------------------------------------------------------


def test_partial_frames_across_reads() -> None:
    raw, sock = socket.socketpair()
    r = Channel(sock.detach())
    try:
        frames = [(1, 2, b'abc'), (2, 3, b'x' * 1000), (3, 4, b'')]
        data = encode_frames(frames)
        first_end = len(encode_frame(*frames[0]))
        got: list[tuple[int, int, bytes]] = []
        for i in range(len(data)):
            raw.sendall(data[i : i + 1])
            got += r.recv()
            if i + 1 < first_end:
                assert got == []  # no frame can come out before its last byte was sent
        got += recv_until(r, len(frames) - len(got)) if len(got) < len(frames) else []
        assert got == frames
    finally:
        raw.close()
        r.close()


def test_eof_comes_after_the_frames_sent_before_it() -> None:
    w, r = channel_pair()
    try:
        frames = [(i, KIND_RESULT, b'%d' % i) for i in range(5)]
        w.send_many(frames[:3])
        w.send_many(frames[3:])
        w.close()
        got: list[tuple[int, int, bytes]] = []
        while True:
            assert r.wait(30) == WAIT_READY
            try:
                got += r.recv()
            except EOFError:
                break
        assert got == frames
        assert r.wait(None) == WAIT_READY  # end of file stays readable
        with pytest.raises(EOFError):
            r.recv()
    finally:
        r.close()


def test_eof_in_the_middle_of_a_frame() -> None:
    raw, sock = socket.socketpair()
    r = Channel(sock.detach())
    try:
        data = encode_frame(1, KIND_JOB, b'payload')
        raw.sendall(data + data[:5])
        raw.close()
        assert recv_until(r, 1) == [(1, KIND_JOB, b'payload')]
        with pytest.raises(EOFError, match='middle of a frame'):
            while True:
                r.recv()
    finally:
        r.close()


def test_corrupt_stream_raises_value_error() -> None:
    raw, sock = socket.socketpair()
    r = Channel(sock.detach())
    try:
        raw.sendall(b'\xff\xff\xff\xff' + bytes(9))
        assert r.wait(30) == WAIT_READY
        with pytest.raises(ValueError, match='exceeds'):
            r.recv()
    finally:
        raw.close()
        r.close()


# -- a closed peer -------------------------------------------------------------------------------------


def test_broken_pipe_when_peer_closed(pair: tuple[Channel, Channel]) -> None:
    w, r = pair
    r.close()
    with pytest.raises(BrokenPipeError):
        w.send(1, KIND_JOB, b'x')
    with pytest.raises(BrokenPipeError):
        w.send_many([(2, KIND_JOB, b'y')])
    with pytest.raises(BrokenPipeError):
        w.flush()
    with pytest.raises(BrokenPipeError):
        w.flush_blocking(1)


def test_broken_pipe_drops_queued_output_and_reading_ends_in_eof(pair: tuple[Channel, Channel]) -> None:
    w, r = pair
    fill_socket(w)
    r.close()  # with our data unread: Linux then reports ECONNRESET to our reads, which is still an EOF
    with pytest.raises(BrokenPipeError):
        w.flush_blocking(30)
    assert w.pending_output == 0
    with pytest.raises(EOFError):
        w.recv()


# -- waiting ----------------------------------------------------------------------------------------------


def test_wait_times_out(pair: tuple[Channel, Channel]) -> None:
    _, r = pair
    assert r.wait(0) == WAIT_TIMEOUT
    assert r.wait(0.05) == WAIT_TIMEOUT
    assert r.wait(-1) == WAIT_TIMEOUT
    with pytest.raises(ValueError):
        r.wait(float('nan'))


def test_wait_ready_when_another_thread_sends(pair: tuple[Channel, Channel]) -> None:
    w, r = pair
    sender = threading.Timer(0.1, w.send, (5, KIND_RESULT, b'done'))
    sender.start()
    try:
        assert r.wait(30) == WAIT_READY
        assert recv_until(r, 1) == [(5, KIND_RESULT, b'done')]
    finally:
        sender.join()


def test_closing_from_another_thread_ends_a_wait(pair: tuple[Channel, Channel]) -> None:
    _, r = pair
    closer = threading.Timer(0.1, r.close)
    closer.start()
    try:
        with pytest.raises(ValueError, match='closed'):
            r.wait(30)
    finally:
        closer.join()


class Interrupted(Exception):
    pass


@pytest.mark.timeout(60, method='thread')  # the default 'signal' method would share SIGALRM with this test
@pytest.mark.parametrize('exc', [Interrupted, KeyboardInterrupt])
@pytest.mark.parametrize('blocking_call', ['wait', 'flush_blocking'])
def test_signal_handler_exception_interrupts(
    pair: tuple[Channel, Channel], exc: type[BaseException], blocking_call: str
) -> None:
    w, r = pair

    def handler(signum: int, frame: object) -> None:
        raise exc

    previous = signal.signal(signal.SIGALRM, handler)
    try:
        if blocking_call == 'flush_blocking':
            fill_socket(w)
        signal.setitimer(signal.ITIMER_REAL, 0.1)
        with pytest.raises(exc):
            if blocking_call == 'wait':
                r.wait(None)
            else:
                w.flush_blocking(None)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    assert not r.closed and not w.closed


# -- lifecycle --------------------------------------------------------------------------------------------


def test_init_makes_the_fd_non_blocking_and_close_on_exec() -> None:
    a, b = socket.socketpair()
    fd = a.detach()
    os.set_blocking(fd, True)
    os.set_inheritable(fd, True)
    ch = Channel(fd)
    try:
        assert ch.fileno() == fd
        assert not os.get_blocking(fd)
        assert not os.get_inheritable(fd)
    finally:
        ch.close()
        b.close()


def test_init_rejects_what_is_not_a_stream_socket() -> None:
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    with a, b:
        with pytest.raises(ValueError, match='SOCK_STREAM'):
            Channel(a.fileno())
        os.fstat(a.fileno())  # still open: a failed __init__ does not take the fd
    rfd, wfd = os.pipe()
    try:
        with pytest.raises(OSError) as info:
            Channel(rfd)
        assert info.value.errno == errno.ENOTSOCK
    finally:
        os.close(rfd)
        os.close(wfd)


def test_close_is_idempotent_and_later_calls_fail() -> None:
    a, b = channel_pair()
    fd = a.fileno()
    a.send(1, KIND_JOB, b'x')
    a.close()
    a.close()
    assert a.closed
    assert a.pending_output == 0
    with pytest.raises(OSError):
        os.fstat(fd)
    for call in (a.fileno, a.recv, a.flush, lambda: a.wait(0), lambda: a.send(1, 1, b''), lambda: a.flush_blocking(0)):
        with pytest.raises(ValueError, match='closed'):
            call()
    b.close()


def test_dealloc_closes_the_fd() -> None:
    a, b = channel_pair()
    fd = a.fileno()
    del a
    gc.collect()
    with pytest.raises(OSError):
        os.fstat(fd)
    b.close()


def test_uninitialised_channel_is_closed() -> None:
    ch = Channel.__new__(Channel)
    assert ch.closed
    with pytest.raises(ValueError):
        ch.fileno()


# -- a forked child, as in the prefork pool -------------------------------------------------------------


def _echo_child(ch: Channel) -> int:
    """The child's side: block for work, answer every job, report the count when told to stop."""
    count = 0
    while True:
        ch.wait(None)
        replies = []
        stop = False
        for job_id, kind, payload in ch.recv():
            if kind == KIND_STOP:
                stop = True
                continue
            count += 1
            if job_id % 3 == 0:
                ch.send(job_id, KIND_RESULT, payload[::-1])
            else:
                replies.append((job_id, KIND_RESULT, payload[::-1]))
        ch.send_many(replies)
        if stop:
            ch.send(0, KIND_DONE, b'%d' % count)
        ch.flush_blocking(60)
        if stop:
            ch.close()
            return 0


def _payload(i: int) -> bytes:
    return b'%08d' % i * (i % 50) + (bytes(300_000) if i % 1000 == 999 else b'')


def _reap(pid: int) -> int:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        time.sleep(0.01)
    os.kill(pid, signal.SIGKILL)
    return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])


def test_forked_child_exchanges_10000_frames_both_ways() -> None:
    n = 10_000
    a, b = socket.socketpair()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        code = 1
        try:
            a.close()
            code = _echo_child(Channel(b.detach()))
        finally:
            os._exit(code)
    b.close()
    parent = Channel(a.detach())
    rng = random.Random(1234)
    results: dict[int, bytes] = {}
    done: list[bytes] = []
    next_job = 0
    eof = False
    sel = selectors.DefaultSelector()
    sel.register(parent.fileno(), selectors.EVENT_READ)
    deadline = time.monotonic() + 100  # only guards against a hang
    try:
        while not eof:
            assert time.monotonic() < deadline, f'stuck after {len(results)} results'
            # Keep the child busy without letting our output queue grow without bound.
            can_send = next_job <= n and parent.pending_output < 256 * 1024
            if can_send:
                if next_job == n:
                    parent.send(0, KIND_STOP, b'')
                    next_job += 1
                elif rng.random() < 0.2:
                    parent.send(next_job, KIND_JOB, _payload(next_job))
                    next_job += 1
                else:
                    stop = min(n, next_job + rng.randint(1, 300))
                    parent.send_many([(i, KIND_JOB, _payload(i)) for i in range(next_job, stop)])
                    next_job = stop
            events = selectors.EVENT_READ | (selectors.EVENT_WRITE if parent.pending_output else 0)
            sel.modify(parent.fileno(), events)
            for _, ready in sel.select(timeout=0.0 if can_send else 1.0):
                if ready & selectors.EVENT_WRITE:
                    parent.flush()
                if ready & selectors.EVENT_READ:
                    try:
                        frames = parent.recv()
                    except EOFError:
                        eof = True
                        break
                    for job_id, kind, payload in frames:
                        if kind == KIND_DONE:
                            done.append(payload)
                        else:
                            assert kind == KIND_RESULT
                            assert job_id not in results
                            results[job_id] = payload
    finally:
        sel.close()
        parent.close()
        exit_code = _reap(pid)
    assert exit_code == 0
    assert done == [b'%d' % n]
    assert len(results) == n
    for i in range(n):
        assert results[i] == _payload(i)[::-1], i
