"""The fork server: a single-threaded process that forks pool children on the parent's request.

The worker parent runs threads (fetcher, lease renewal, doorbell watchers) and holds broker connections;
forking it to replace a child would copy locks held by other threads and connections that must not be shared.
The zygote is forked once, early, before any of that exists, and every child is forked from it: each child
starts from the same clean state (app loaded, tasks imported, nothing connected).

Control protocol over a SOCK_SEQPACKET pair (message boundaries kept, descriptors passed with SCM_RIGHTS):
    parent -> zygote  b'spawn <index>'
    zygote -> parent  b'spawned <index> <pid>' + the parent's end of the child's socketpair
    zygote -> parent  b'exited <pid> <wait status>'  (the zygote reaps its children)
Parent death: the zygote gets SIGKILL (PR_SET_PDEATHSIG) and so, in turn, do the children.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
import select
import signal
import socket
import sys
from collections.abc import Callable

PR_SET_PDEATHSIG = 1


def die_with_parent(expected_parent: int) -> None:
    """Ask the kernel to SIGKILL this process when its parent dies (Linux), then check it has not already."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library('c') or 'libc.so.6', use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):
        pass
    if os.getppid() != expected_parent:
        os._exit(1)


class Zygote:
    """Parent-side handle of the fork server."""

    def __init__(self, child_main: Callable[[socket.socket, int, int], int]) -> None:
        parent_sock, zygote_sock = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        parent_pid = os.getpid()
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            parent_sock.close()
            code = 1
            try:
                die_with_parent(parent_pid)
                code = _serve(zygote_sock, child_main)
            finally:
                os._exit(code)
        zygote_sock.close()
        self.pid = pid
        self.sock = parent_sock
        self.sock.setblocking(False)

    def fileno(self) -> int:
        return self.sock.fileno()

    def request_spawn(self, index: int) -> None:
        self.sock.setblocking(True)
        try:
            self.sock.send(f'spawn {index}'.encode())
        finally:
            self.sock.setblocking(False)

    def read_events(self) -> list[tuple[str, int, int, int | None]]:
        """Pending events: ('spawned', index, pid, fd) and ('exited', pid, status, None). Raises EOFError."""
        events: list[tuple[str, int, int, int | None]] = []
        while True:
            try:
                msg, fds, _, _ = socket.recv_fds(self.sock, 256, 4)
            except BlockingIOError:
                return events
            if not msg:
                raise EOFError('the fork server exited')
            kind, a, b = msg.decode().split()
            if kind == 'spawned':
                events.append(('spawned', int(a), int(b), fds[0] if fds else None))
            else:
                for fd in fds:
                    os.close(fd)
                events.append(('exited', int(a), int(b), None))

    def wait_spawned(self, timeout: float) -> list[tuple[str, int, int, int | None]]:
        """Block until at least one event arrives (used at startup)."""
        ready, _, _ = select.select([self.sock.fileno()], [], [], timeout)
        return self.read_events() if ready else []

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()
        with contextlib.suppress(ChildProcessError, OSError):
            os.waitpid(self.pid, 0)


def _serve(sock: socket.socket, child_main: Callable[[socket.socket, int, int], int]) -> int:
    """The zygote's loop: fork children on request, report their exits, exit when the parent goes away.

    Each child gets its index (reused: `%i` in file names) and its number, counted from 1 over the pool's
    life (billiard's process counter: ForkPoolWorker-<number>, never reused); the parent counts the spawns
    in the same order."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGUSR2, signal.SIG_IGN)  # (the worker's break-point signal: no session in here)
    my_pid = os.getpid()
    wake_r, wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    signal.signal(signal.SIGCHLD, lambda *_: None)
    signal.set_wakeup_fd(wake_w, warn_on_full_buffer=False)
    children: set[int] = set()
    spawned = 0
    while True:
        ready, _, _ = select.select([sock.fileno(), wake_r], [], [], 1.0)
        if wake_r in ready:
            with contextlib.suppress(BlockingIOError):
                os.read(wake_r, 4096)
        _reap(sock, children)
        if sock.fileno() not in ready:
            continue
        try:
            msg = sock.recv(256)
        except InterruptedError:
            continue
        if not msg:
            return 0
        _, index_text = msg.decode().split()
        index = int(index_text)
        spawned += 1
        parent_end, child_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                signal.set_wakeup_fd(-1)
                signal.signal(signal.SIGCHLD, signal.SIG_DFL)
                signal.signal(signal.SIGUSR2, signal.SIG_DFL)
                os.close(wake_r)
                os.close(wake_w)
                sock.close()
                parent_end.close()
                die_with_parent(my_pid)
                code = child_main(child_end, index, spawned)
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else 1
            except BaseException:
                import traceback

                traceback.print_exc()
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(code)
        children.add(pid)
        child_end.close()
        socket.send_fds(sock, [f'spawned {index} {pid}'.encode()], [parent_end.fileno()])
        parent_end.close()


def _reap(sock: socket.socket, children: set[int]) -> None:
    while children:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            children.clear()
            return
        if pid == 0:
            return
        children.discard(pid)
        with contextlib.suppress(OSError):
            sock.send(f'exited {pid} {status}'.encode())
