"""Node names (`celery@host`, `gen1234@host`) and the `%h/%n/%d/%i/%I/%p` abbreviations Celery's CLI expands."""

from __future__ import annotations

import functools
import os
import socket
import threading
import uuid

NODENAME_SEP = '@'
NODENAME_DEFAULT = 'celery'


@functools.cache
def gethostname() -> str:
    return socket.gethostname()


def nodename(name: str, hostname: str) -> str:
    return f'{name}{NODENAME_SEP}{hostname}'


def nodesplit(name: str) -> tuple[str | None, str]:
    head, sep, tail = name.partition(NODENAME_SEP)
    return (head, tail) if sep else (None, head)


def anon_nodename(hostname: str | None = None, prefix: str = 'gen') -> str:
    """The node name of a process that is not a worker (the `origin` header of the messages it sends)."""
    return nodename(f'{prefix}{os.getpid()}', hostname or gethostname())


def default_nodename(hostname: str | None, default_name: str = NODENAME_DEFAULT) -> str:
    name, host = nodesplit(hostname or '')
    return nodename(name or default_name, host or gethostname())


def host_format(
    s: str, host: str | None = None, name: str | None = None, index: int | None = None, **extra: str
) -> str:
    """Expand `%h` (host), `%n` (name part of host), `%d` (domain), `%i`/`%I` (pool process index: `0`/`` in
    the main process, `1`/`-1` in the first child), `%%`, and the one-letter keys of `extra`."""
    host = host or gethostname()
    hname, _, domain = host.partition('.')
    keys = {
        'h': host,
        'n': name or hname,
        'd': domain,
        'i': str(index or 0),
        'I': f'-{index}' if index else '',
        **extra,
    }
    out = []
    i = 0
    while i < len(s):
        ch = s[i]
        if ch == '%' and i + 1 < len(s):
            key = s[i + 1]
            if key == '%':
                out.append('%')
                i += 2
                continue
            if key in keys:
                out.append(keys[key])
                i += 2
                continue
        out.append(ch)
        i += 1
    return ''.join(out)


def node_format(s: str, nodename: str, index: int | None = None, **extra: str) -> str:
    """Expand the abbreviations in a path given to the worker node `nodename` (`--logfile=%n%I.log`,
    `--pidfile=%n.pid`): as `host_format`, with the node's host, its name as `%n` and the whole name as `%p`."""
    name, host = nodesplit(nodename)
    return host_format(s, host, name or NODENAME_DEFAULT, index, **{'p': nodename, **extra})


def oid_from(instance: object) -> str:
    """A stable id for (host, process, thread, object), as kombu's `oid_from`: the `reply_to` of task messages."""
    ent = f'{uuid.getnode():x}-{os.getpid():x}-{threading.get_ident():x}-{id(instance):x}'
    return str(uuid.uuid3(uuid.NAMESPACE_OID, ent))
