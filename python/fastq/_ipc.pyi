"""fastq's pool IPC (Cython): moves framed bytes between the worker parent and its children.

A `Channel` owns one end of a connected stream socket (socketpair). It never interprets payloads: frames are
`(job_id, kind, payload)` triples, encoded and decoded by `fastq._core`'s framing so the format is defined
once. Writes that do not fit in the socket buffer are kept and flushed later, so the parent's event loop never
blocks on a slow child; blocking waits release the GIL in short steps and check for signals.
"""

from collections.abc import Sequence
from typing import Final, final

WAIT_READY: Final[int]
"""`wait` result: the channel is readable (data or end of file)."""
WAIT_TIMEOUT: Final[int]
"""`wait` result: the timeout passed with nothing to read."""

@final
class Channel:
    def __init__(self, fd: int) -> None:
        """Take ownership of `fd` (a connected SOCK_STREAM socket) and make it non-blocking and close-on-exec."""
    def fileno(self) -> int: ...
    @property
    def closed(self) -> bool: ...
    @property
    def pending_output(self) -> int:
        """Bytes accepted by `send` but not yet written to the socket."""
    def send(self, job_id: int, kind: int, payload: bytes) -> None:
        """Queue one frame and write as much as the socket takes now, without blocking.

        Raises:
            BrokenPipeError: the peer has closed its end.
        """
    def send_many(self, frames: Sequence[tuple[int, int, bytes]]) -> None:
        """Queue several frames with one write."""
    def flush(self) -> bool:
        """Write queued output without blocking; True when nothing is left queued."""
    def flush_blocking(self, timeout: float | None = None) -> None:
        """Write all queued output, waiting (GIL released, signals checked) for the peer to read.

        Raises:
            TimeoutError: the timeout passed with output still queued.
            BrokenPipeError: the peer has closed its end.
        """
    def recv(self) -> list[tuple[int, int, bytes]]:
        """Read everything available now, without blocking, and return the complete frames (maybe none).

        Raises:
            EOFError: the peer closed its end and no complete frame is left.
            ValueError: the stream is corrupt (a frame announces an impossible length).
        """
    def wait(self, timeout: float | None) -> int:
        """Block until readable or `timeout` seconds pass (None: forever), with the GIL released in steps of
        at most 50 ms and signals checked between steps (a KeyboardInterrupt raised by a handler propagates).
        Returns WAIT_READY or WAIT_TIMEOUT."""
    def close(self) -> None:
        """Close the socket (idempotent); queued output is dropped."""
