"""Cross-process wakeups for the SQLite broker and backend: ring after a commit, wake waiters in microseconds.

A doorbell is a file next to the database. Ringing it touches its mtime (one `utime` call, made after the
commit returns, so a woken waiter always sees the data); waiters block in `select` on an inotify watch of the
doorbell's directory and wake when that file's attributes change. Nothing is registered, so a crashed process
leaves nothing behind, and a producer pays one syscall per commit whoever listens.

Where inotify is missing (not Linux, some network file systems) waiters fall back to polling at most once a
second, and the poll is always kept as a safety net: a lost event can delay a wakeup, never lose work.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
import select
import struct
import threading
import time

__all__ = ['Doorbell']

_IN_ATTRIB = 0x00000004
_IN_CLOSE_WRITE = 0x00000008
_IN_MODIFY = 0x00000002
_IN_CREATE = 0x00000100
_IN_MOVED_TO = 0x00000080
_IN_IGNORED = 0x00008000
_IN_NONBLOCK = 0o4000
_IN_CLOEXEC = 0o2000000
_EVENT = struct.Struct('iIII')
FALLBACK_POLL = 1.0

_libc: ctypes.CDLL | None = None
_libc_checked = False


def _get_libc() -> ctypes.CDLL | None:
    global _libc, _libc_checked
    if not _libc_checked:
        _libc_checked = True
        name = ctypes.util.find_library('c')
        try:
            lib = ctypes.CDLL(name or 'libc.so.6', use_errno=True)
            lib.inotify_init1  # noqa: B018 - probe for the symbol
            _libc = lib
        except (OSError, AttributeError):
            _libc = None
    return _libc


class _Watch:
    """The process's one inotify instance, with a watch on each doorbell directory.

    One instance for every directory, not one each: the kernel allows a user only a few instances
    (`fs.inotify.max_user_instances`, 128 by default) and many more watches, and an instance per
    directory ran out in a process that opened SQLite brokers in many directories (a test suite's
    temporary ones), where every doorbell then fell back to its poll. A background thread reads the
    events and bumps a generation counter per (directory, file name); waiters wait on a condition for
    their file's counter to move. Recreated after fork (threads do not survive it).
    """

    _instance: _Watch | None = None
    _failed = False
    _lock = threading.Lock()
    _pid = os.getpid()

    @classmethod
    def for_directory(cls, directory: str) -> _Watch | None:
        with cls._lock:
            if cls._pid != os.getpid():
                cls._instance, cls._failed, cls._pid = None, False, os.getpid()
            watch = cls._instance
            if watch is None:
                libc = _get_libc()
                if libc is None or cls._failed:
                    return None
                try:
                    watch = cls._instance = cls(libc)
                except OSError:
                    cls._failed = True
                    return None
            return watch if watch.add(directory) else None

    def __init__(self, libc: ctypes.CDLL) -> None:
        fd = libc.inotify_init1(_IN_NONBLOCK | _IN_CLOEXEC)
        if fd < 0:
            raise OSError(ctypes.get_errno(), 'inotify_init1 failed')
        self.fd = fd
        self.libc = libc
        self.cond = threading.Condition()
        self.generations: dict[tuple[str, str], int] = {}
        self.directories: dict[int, str] = {}  # watch descriptor -> directory
        self.watched: set[str] = set()
        thread = threading.Thread(target=self._run, name='fastq-doorbell', daemon=True)
        thread.start()

    def add(self, directory: str) -> bool:
        """Watch `directory` (once); False if it cannot be watched now (its doorbells then poll, and ask
        again next time)."""
        with self.cond:
            if directory in self.watched:
                return True
        mask = _IN_ATTRIB | _IN_CLOSE_WRITE | _IN_MODIFY | _IN_CREATE | _IN_MOVED_TO
        wd = int(self.libc.inotify_add_watch(self.fd, os.fsencode(directory), mask))
        if wd < 0:
            return False
        with self.cond:
            self.directories[wd] = directory
            self.watched.add(directory)
        return True

    def _run(self) -> None:
        while True:
            try:
                select.select([self.fd], [], [], None)
                data = os.read(self.fd, 65536)
            except BlockingIOError:
                continue
            except OSError as exc:
                if exc.errno == errno.EINTR:
                    continue
                return
            keys = set()
            offset = 0
            with self.cond:
                while offset + _EVENT.size <= len(data):
                    wd, event, _, length = _EVENT.unpack_from(data, offset)
                    raw = data[offset + _EVENT.size : offset + _EVENT.size + length]
                    directory = self.directories.get(wd)
                    if event & _IN_IGNORED and directory is not None:  # (the directory is gone: a new one of
                        del self.directories[wd]  # that path is watched anew when a doorbell asks for it)
                        self.watched.discard(directory)
                    elif directory is not None:
                        keys.add((directory, raw.rstrip(b'\0').decode('utf-8', 'surrogateescape')))
                    offset += _EVENT.size + length
                for key in keys:
                    self.generations[key] = self.generations.get(key, 0) + 1
                self.cond.notify_all()


class Doorbell:
    """A named wakeup channel between processes that share a directory."""

    def __init__(self, path: str) -> None:
        self.path = os.path.abspath(path)
        self.directory, self.name = os.path.split(self.path)
        self.key = (self.directory, self.name)
        self._ensure_file()

    def _ensure_file(self) -> None:
        if not os.path.exists(self.path):
            try:
                with open(self.path, 'ab'):
                    pass
            except OSError:
                pass

    def ring(self) -> None:
        """Wake every process waiting on this doorbell (call after the commit it announces)."""
        try:
            os.utime(self.path, None)
        except FileNotFoundError:
            self._ensure_file()

    def generation(self) -> int:
        """A counter to pass to `wait`: take it *before* checking for work, so no ring between is missed."""
        watch = _Watch.for_directory(self.directory)
        if watch is None:
            return 0
        with watch.cond:
            return watch.generations.get(self.key, 0)

    def wait(self, since: int, timeout: float) -> bool:
        """Block until rung after generation `since`, or until `timeout` (capped at the fallback poll).

        Returns True when woken by a ring, False on timeout (the caller re-checks for work either way).
        """
        timeout = min(timeout, FALLBACK_POLL)
        if timeout <= 0:
            return False
        watch = _Watch.for_directory(self.directory)
        if watch is None:
            time.sleep(timeout)
            return False
        deadline = time.monotonic() + timeout
        with watch.cond:
            while watch.generations.get(self.key, 0) == since:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                watch.cond.wait(remaining)
            return True

    def interrupt(self) -> None:
        """Wake waiters in this process only (e.g. a consumer's `wakeup`), without touching the file."""
        watch = _Watch.for_directory(self.directory)
        if watch is not None:
            with watch.cond:
                watch.generations[self.key] = watch.generations.get(self.key, 0) + 1
                watch.cond.notify_all()
