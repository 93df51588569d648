"""A remote debugger for tasks running in pool children (Celery's `celery.contrib.rdb`).

A task's process has no terminal, so `pdb.set_trace()` cannot be used in it. `rdb.set_trace()` opens pdb on
a TCP port instead and waits for someone to connect (`telnet 127.0.0.1 6900`); the worker's log says where:

    from fastq.contrib import rdb

    @app.task
    def add(x, y):
        result = x + y
        rdb.set_trace()
        return result

The port is the first free one from `CELERY_RDB_PORT` (6899), offset by the pool child's number so that
children do not race for the same one; `CELERY_RDB_HOST` (127.0.0.1: local connections only) is the address
bound. `FASTQ_RDB_HOST`/`FASTQ_RDB_PORT` are read too. `exit` or `continue` in the session lets the task go on.

The break-point signal: a worker started with `CELERY_RDBSIG` (or `FASTQ_RDBSIG`) set in its environment opens
a session wherever a process is when it gets SIGUSR2, in the main process and in each pool child, as Celery's
does (`kill -USR2 <pid>`: a task that hangs can be looked at without having been edited first); see
`fastq.utils.platforms.install_rdb_handler`.
"""

from __future__ import annotations

import errno
import multiprocessing
import os
import socket
import sys
from pdb import Pdb
from types import FrameType
from typing import IO, Any

__all__ = ['CELERY_RDB_HOST', 'CELERY_RDB_PORT', 'DEFAULT_PORT', 'Rdb', 'debugger', 'set_trace']

DEFAULT_PORT = 6899
CELERY_RDB_HOST = os.environ.get('FASTQ_RDB_HOST') or os.environ.get('CELERY_RDB_HOST') or '127.0.0.1'
CELERY_RDB_PORT = int(os.environ.get('FASTQ_RDB_PORT') or os.environ.get('CELERY_RDB_PORT') or DEFAULT_PORT)

NO_AVAILABLE_PORT = """\
{ident}: Couldn't find an available port.

Please specify one using the CELERY_RDB_PORT environment variable.
"""
BANNER = """\
{ident}: Ready to connect: telnet {host} {port}

Type `exit` in session to continue.

{ident}: Waiting for client...
"""
SESSION_STARTED = '{ident}: Now in session with {remote}.'
SESSION_ENDED = '{ident}: Session with {remote} ended.'

_current: list[Rdb | None] = [None]


def _child_number() -> int:
    """The pool child's number (its process name ends in -N), so each child starts at its own port."""
    _, _, number = multiprocessing.current_process().name.rpartition('-')
    return int(number) if number.isdigit() else 0


class Rdb(Pdb):
    """pdb over a TCP connection: listens, waits for one client, and debugs through it."""

    me = 'Remote Debugger'

    def __init__(
        self,
        host: str = CELERY_RDB_HOST,
        port: int = CELERY_RDB_PORT,
        port_search_limit: int = 100,
        port_skew: int = +0,
        out: IO[str] | None = None,
    ) -> None:
        self.active = True
        self.out = out if out is not None else sys.stdout  # (a worker's: its log)
        self._previous = sys.stdin, sys.stdout
        self._listener, self.port = self._listen(host, port, port_search_limit, port_skew)
        self.host = host
        self.ident = f'{self.me}:{self.port}'
        self.say(BANNER.format(ident=self.ident, host=host, port=self.port))
        self._client, address = self._listener.accept()
        self.remote_addr = ':'.join(str(part) for part in address)
        self.say(SESSION_STARTED.format(ident=self.ident, remote=self.remote_addr))
        self._handle: IO[str] | None = self._client.makefile('rw')
        sys.stdin = sys.stdout = self._handle
        super().__init__(completekey='tab', stdin=self._handle, stdout=self._handle)

    def _listen(self, host: str, port: int, limit: int, skew: int) -> tuple[socket.socket, int]:
        skew = skew or _child_number()
        for i in range(limit):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            candidate = port + skew + i
            try:
                sock.bind((host, candidate))
            except OSError as exc:
                sock.close()
                if exc.errno in (errno.EADDRINUSE, errno.EINVAL):
                    continue
                raise
            sock.listen(1)
            return sock, candidate
        raise Exception(NO_AVAILABLE_PORT.format(ident=f'{self.me}:{port}'))

    def say(self, message: str) -> None:
        print(message, file=self.out, flush=True)

    def __enter__(self) -> Rdb:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self._close_session()

    def _close_session(self) -> None:
        self.stdin, self.stdout = sys.stdin, sys.stdout = self._previous
        if self.active:
            for closable in (self._handle, self._client, self._listener):
                if closable is not None:
                    closable.close()
            self._handle = None
            self.active = False
            self.say(SESSION_ENDED.format(ident=self.ident, remote=self.remote_addr))

    def do_continue(self, arg: str) -> bool:
        self._close_session()
        self.set_continue()
        return True

    do_c = do_cont = do_continue

    def do_quit(self, arg: str) -> bool:
        self._close_session()
        self.set_quit()
        return True

    do_q = do_exit = do_quit

    def set_quit(self) -> None:
        # pdb's would raise BdbQuit in the task; leaving the session lets the task go on instead
        sys.settrace(None)


def debugger() -> Rdb:
    """The debugger of this process, opened (and waiting for a client) if none is active."""
    rdb = _current[0]
    if rdb is None or not rdb.active:
        rdb = _current[0] = Rdb()
    return rdb


def set_trace(frame: FrameType | None = None) -> None:
    """Break here: wait for a client on the debugger's port, then debug the caller through it."""
    if frame is None:
        frame = sys._getframe().f_back
    debugger().set_trace(frame)
