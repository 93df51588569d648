"""`--uid`/`--gid`/`--umask` (Celery's daemon options): a process started as root gives root up for good.

Checked in a forked child (the test process keeps its privileges): a worker does the same after opening its
log file and pidfile. (A whole worker run as `nobody` cannot be tested on this machine: its Python lives
under /root, which `nobody` cannot read, and the worker imports lazily.)"""

from __future__ import annotations

import os
import pwd

import pytest

from fastq.exceptions import ImproperlyConfigured, SecurityWarning
from fastq.utils.platforms import (
    SecurityError,
    check_privileges,
    maybe_drop_privileges,
    parse_gid,
    parse_uid,
    set_umask,
)


def _in_child(fn: object) -> int:
    pid = os.fork()
    if pid == 0:  # pragma: no cover (the child)
        try:
            code = fn()  # type: ignore[operator]
        except BaseException:
            code = 99
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


@pytest.mark.skipif(os.getuid() != 0, reason='dropping privileges needs root')
def test_dropping_root_for_good() -> None:
    nobody = pwd.getpwnam('nobody')

    def drop() -> int:
        maybe_drop_privileges(uid='nobody')
        if (os.getuid(), os.geteuid(), os.getgid()) != (nobody.pw_uid, nobody.pw_uid, nobody.pw_gid):
            return 1
        try:
            os.setuid(0)
        except PermissionError:
            return 0  # cannot regain root
        return 2

    assert _in_child(drop) == 0

    def group_only() -> int:
        maybe_drop_privileges(gid=nobody.pw_gid)
        return 0 if os.getgid() == nobody.pw_gid and os.getuid() == 0 else 1

    assert _in_child(group_only) == 0


def test_names_numbers_and_errors() -> None:
    assert parse_uid('0') == 0 and parse_uid('root') == 0 and parse_gid('0') == 0
    with pytest.raises(ImproperlyConfigured, match="--uid: user 'no-such-user-here' does not exist"):
        parse_uid('no-such-user-here')
    with pytest.raises(ImproperlyConfigured, match="--gid: group 'no-such-group-here' does not exist"):
        parse_gid('no-such-group-here')
    maybe_drop_privileges()  # nothing asked: nothing done

    def umask() -> int:
        set_umask('027')
        return os.umask(0o022)

    assert _in_child(umask) == 0o027
    with pytest.raises(ImproperlyConfigured, match='--umask: expected an octal number'):
        set_umask('rwx')


@pytest.mark.skipif(os.getuid() != 0, reason='needs root')
def test_root_worker_is_warned_and_refused_with_pickle(monkeypatch: pytest.MonkeyPatch) -> None:
    """Celery's `check_privileges`: root is warned; root accepting pickle is refused unless C_FORCE_ROOT; a
    user that is neither root nor in sudo/wheel hears nothing."""
    monkeypatch.delenv('C_FORCE_ROOT', raising=False)
    with pytest.warns(SecurityWarning, match="You're running the worker with superuser privileges"):
        check_privileges(['json'])
    with pytest.raises(SecurityError, match='accepts messages serialized with pickle'):
        check_privileges(['json', 'pickle'])
    with pytest.raises(SecurityError, match='C_FORCE_ROOT'):
        check_privileges(['application/x-python-serialize'])
    monkeypatch.setenv('C_FORCE_ROOT', '1')
    with pytest.warns(SecurityWarning, match='uid=0 euid=0'):
        check_privileges(['pickle'])
    nobody = pwd.getpwnam('nobody')

    def as_nobody() -> int:
        os.setgid(nobody.pw_gid)
        os.setuid(nobody.pw_uid)
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter('error')
            check_privileges(['pickle'])
        return 0

    assert _in_child(as_nobody) == 0
