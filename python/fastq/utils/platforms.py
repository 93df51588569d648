"""Daemon options as Celery's `celery.platforms` applies them: `--uid`/`--gid` (drop root), `--umask`.

A service started as root (an init script, `multi` from a root shell) should not run tasks as root: with
`--uid`/`--gid` the process switches user and group once it has done what needs root (opened its log
file, written its pidfile), and cannot switch back.
"""

from __future__ import annotations

import os

from fastq.exceptions import ImproperlyConfigured

__all__ = ['SecurityError', 'maybe_drop_privileges', 'parse_gid', 'parse_uid', 'set_umask']


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
