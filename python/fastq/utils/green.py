"""gevent's monkey-patching for `fastq worker -P gevent`, done as Celery does it: before anything else.

Patching has to come first: a lock, socket or thread made before it stays a real one, and a greenlet that
waits on it blocks the whole process. So `fastq`'s entry point looks for `-P gevent` / `--pool=gevent` on the
command line and patches before it imports the app (Celery's `maybe_patch_concurrency`); a worker asked for
the gevent pool any other way (`worker_pool = 'gevent'` in settings, `app.Worker(pool='gevent')`) in a
process that was not patched is refused at startup, naming what to do, rather than left to stall.
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ['is_patched', 'maybe_patch_concurrency', 'pool_from_argv']

_SHORT, _LONG = '-P', '--pool'


def pool_from_argv(argv: Sequence[str]) -> str | None:
    """The pool named by `-P NAME`, `-PNAME`, `--pool NAME` or `--pool=NAME` in `argv` (the last one wins),
    before a `--` that starts settings."""
    found = None
    args = list(argv)
    for i, arg in enumerate(args):
        if arg == '--':
            break
        if arg in (_SHORT, _LONG) and i + 1 < len(args):
            found = args[i + 1]
        elif arg.startswith(f'{_LONG}='):
            found = arg.partition('=')[2]
        elif arg.startswith(_SHORT) and len(arg) > len(_SHORT) and not arg.startswith('--'):
            found = arg[len(_SHORT) :]
    return found


def maybe_patch_concurrency(argv: Sequence[str]) -> None:
    """Monkey-patch the standard library for gevent when the command line asks for its pool (a missing
    gevent is reported when the worker starts, in the worker's own words)."""
    if pool_from_argv(argv) != 'gevent' or 'multi' in argv:  # (`multi` passes -P on to the workers it starts)
        return
    try:
        from gevent import monkey
    except ImportError:
        return
    monkey.patch_all()


def is_patched() -> bool:
    """Whether gevent has patched this process (its sockets and threads are greenlet-aware)."""
    try:
        from gevent import monkey
    except ImportError:
        return False
    return bool(monkey.is_module_patched('socket') and monkey.is_module_patched('threading'))
