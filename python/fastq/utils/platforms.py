"""Daemon options as Celery's `celery.platforms` applies them: `--uid`/`--gid` (drop root), `--umask`; and the
break-point signal (`CELERY_RDBSIG`).

A service started as root (an init script, `multi` from a root shell) should not run tasks as root: with
`--uid`/`--gid` the process switches user and group once it has done what needs root (opened its log
file, written its pidfile), and cannot switch back. A worker still root after that is warned, and refused
when it accepts pickle (a message that can run code would run it as root), unless C_FORCE_ROOT is set:
Celery's `check_privileges`, in its words.
"""

from __future__ import annotations

import os
import signal
import sys
import warnings
from collections.abc import Iterable
from types import FrameType

from fastq.exceptions import ImproperlyConfigured, SecurityWarning

__all__ = [
    'SecurityError',
    'check_privileges',
    'install_rdb_handler',
    'maybe_drop_privileges',
    'parse_gid',
    'parse_uid',
    'set_umask',
]

ROOT_DISALLOWED = """\
Running a worker with superuser privileges when the
worker accepts messages serialized with pickle is a very bad idea!

If you really want to continue then you have to set the C_FORCE_ROOT
environment variable (but please think about this before you do).

User information: uid={uid} euid={euid} gid={gid} egid={egid}
"""

ROOT_DISCOURAGED = """\
You're running the worker with superuser privileges: this is
absolutely not recommended!

Please specify a different user using the --uid option.

User information: uid={uid} euid={euid} gid={gid} egid={egid}
"""

ASSUMING_ROOT = """\
An entry for the specified gid or egid was not found.
We're assuming this is a potential security issue.
"""

#: Content that runs code when it is loaded (by name or by content type).
_PICKLE = {'pickle', 'application/x-python-serialize', 'application/group-python-serialize'}
#: Groups whose members can become root.
_ROOT_GROUPS = ('sudo', 'wheel')


def check_privileges(accept_content: Iterable[str]) -> None:
    """Warn a worker that runs as root (or in a group that can become root) with SecurityWarning; refuse with
    SecurityError when it also accepts pickle, unless the environment has C_FORCE_ROOT."""
    import grp

    pickle = any(str(c).lower() in _PICKLE for c in accept_content or ())
    uid, gid, euid, egid = os.getuid(), os.getgid(), os.geteuid(), os.getegid()
    try:
        groups = (grp.getgrgid(gid).gr_name, grp.getgrgid(egid).gr_name)
    except KeyError:
        warnings.warn(SecurityWarning(ASSUMING_ROOT), stacklevel=2)
    else:
        if uid != 0 and euid != 0 and not any(group in groups for group in _ROOT_GROUPS):
            return
    info = {'uid': uid, 'euid': euid, 'gid': gid, 'egid': egid}
    if pickle and not os.environ.get('C_FORCE_ROOT'):
        raise SecurityError(ROOT_DISALLOWED.format(**info))
    warnings.warn(SecurityWarning(ROOT_DISCOURAGED.format(**info)), stacklevel=2)


def parse_uid(uid: str | int) -> int:
    """A user id from a number or a user name."""
    try:
        return int(uid)
    except ValueError:
        import pwd

        try:
            return pwd.getpwnam(str(uid)).pw_uid
        except KeyError:
            raise ImproperlyConfigured(f'--uid: user {uid!r} does not exist') from None


def parse_gid(gid: str | int) -> int:
    """A group id from a number or a group name."""
    try:
        return int(gid)
    except ValueError:
        import grp

        try:
            return grp.getgrnam(str(gid)).gr_gid
        except KeyError:
            raise ImproperlyConfigured(f'--gid: group {gid!r} does not exist') from None


def maybe_drop_privileges(uid: str | int | None = None, gid: str | int | None = None) -> None:
    """Become `uid` (and `gid`, or the user's own group), for good: a later attempt to regain root fails,
    which is checked. Nothing to do without either."""
    if uid is None and gid is None:
        return
    import pwd

    target_uid = parse_uid(uid) if uid is not None else None
    target_gid = parse_gid(gid) if gid is not None else None
    if target_uid is not None and target_gid is None:
        target_gid = pwd.getpwuid(target_uid).pw_gid
    if target_gid is not None:
        if target_uid is not None:
            os.initgroups(pwd.getpwuid(target_uid).pw_name, target_gid)
        else:
            os.setgroups([target_gid])
        os.setgid(target_gid)
    if target_uid is not None:
        os.setuid(target_uid)
        try:
            os.setuid(0)
        except OSError:
            pass  # (as it should be)
        else:
            raise SecurityError('non-root user able to restore privileges after setuid.')


class SecurityError(ImproperlyConfigured):
    """Privileges could not be given up."""


def set_umask(umask: str | int | None) -> None:
    """`--umask` (octal text, as Celery reads it: '022'), for the files this process creates."""
    if umask is None or umask == '':
        return
    try:
        os.umask(int(umask, 8) if isinstance(umask, str) else int(umask))
    except ValueError:
        raise ImproperlyConfigured(f'--umask: expected an octal number such as 022, got {umask!r}') from None


def install_rdb_handler(envvar: str = 'CELERY_RDBSIG', sig: int = signal.SIGUSR2) -> bool:
    """Celery's "break-point signal": with `envvar` (or its FASTQ_ twin) set, `sig` opens a remote debugger
    session (`fastq.contrib.rdb`) where this process is when it arrives. True if the handler was installed.

    The worker calls this at startup, and so does each pool child: Celery's children inherit the handler
    across the fork, fastq's are forked from the fork server, which does not keep it (a session would stop
    it forking).
    """
    if not (os.environ.get(envvar) or os.environ.get(envvar.replace('CELERY_', 'FASTQ_', 1))):
        return False
    signal.signal(sig, _rdb_handler)
    return True


def _rdb_handler(signum: int, frame: FrameType | None) -> None:
    from fastq.contrib.rdb import set_trace  # (brings pdb: only once asked for)

    set_trace(frame or sys._getframe().f_back)
