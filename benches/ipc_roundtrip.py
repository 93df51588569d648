"""Round-trip throughput of fastq._ipc: parent -> forked child (echo) -> parent over one socketpair.

The parent works like the pool's event loop (selector, non-blocking `send_many` / `flush` / `recv`); the child
like a pool process (`wait`, `recv`, `send_many`, `flush_blocking`). Prints frames/s; asserts nothing.

    python benches/ipc_roundtrip.py [--frames 1000000] [--batch 100] [--payload 100] [--window 64]
"""

from __future__ import annotations

import argparse
import os
import selectors
import socket
import time

from fastq._ipc import Channel


def child(ch: Channel) -> int:
    while True:
        ch.wait(None)
        try:
            frames = ch.recv()
        except EOFError:
            return 0
        if frames:
            ch.send_many(frames)
            ch.flush_blocking(None)


def parent(ch: Channel, frames: int, batch: int, payload: bytes, window: int) -> float:
    """Keeps up to `window` batches in flight; returns the elapsed seconds once every frame came back."""
    template = [(i, 1, payload) for i in range(batch)]
    sel = selectors.DefaultSelector()
    sel.register(ch.fileno(), selectors.EVENT_READ)
    sent = received = 0
    start = time.perf_counter()
    while received < frames:
        while sent < frames and sent - received < window * batch:
            ch.send_many(template)
            sent += batch
        sel.modify(ch.fileno(), selectors.EVENT_READ | (selectors.EVENT_WRITE if ch.pending_output else 0))
        for _, events in sel.select():
            if events & selectors.EVENT_WRITE:
                ch.flush()
            if events & selectors.EVENT_READ:
                received += len(ch.recv())
    elapsed = time.perf_counter() - start
    sel.close()
    return elapsed


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--frames', type=int, default=1_000_000)
    ap.add_argument('--batch', type=int, default=100)
    ap.add_argument('--payload', type=int, default=100, help='payload bytes per frame')
    ap.add_argument('--window', type=int, default=64, help='batches in flight')
    args = ap.parse_args()
    frames = args.frames // args.batch * args.batch
    a, b = socket.socketpair()
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            a.close()
            code = child(Channel(b.detach()))
        finally:
            os._exit(code)
    b.close()
    ch = Channel(a.detach())
    elapsed = parent(ch, frames, args.batch, b'x' * args.payload, args.window)
    ch.close()
    status = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
    print(
        f'{frames:,} frames of {args.payload} B, batches of {args.batch}, {args.window} batches in flight: '
        f'{elapsed:.2f} s, {frames / elapsed:,.0f} frames/s round trip '
        f'({frames / args.batch / elapsed:,.0f} batches/s), child exit {status}'
    )


if __name__ == '__main__':
    main()
