"""Shared by the subcommands: finding the app (`-A`), errors, output helpers."""

from __future__ import annotations

import importlib
import os
import sys
from typing import TYPE_CHECKING, Any

from fastq.utils.imports import cwd_in_path

if TYPE_CHECKING:
    from fastq.app import Fastq


class CommandError(Exception):
    """A usage error: printed as `Error: ...`, exit status 2."""


def _is_app(obj: Any) -> bool:
    from fastq.app import Fastq

    return isinstance(obj, Fastq)


def _app_in(module: Any) -> Fastq | None:
    for name in ('app', 'celery'):
        obj = getattr(module, name, None)
        if _is_app(obj):
            return obj
    return None


def _from_attribute(module_name: str, attr: str, spec: str) -> Fastq:
    obj: Any = _import(module_name, spec)
    for part in attr.split('.'):
        obj = getattr(obj, part, None)
        if obj is None:
            raise CommandError(f'Unable to load celery application: module {module_name!r} has no {attr!r}')
    if callable(obj) and not _is_app(obj):
        obj = obj()
    if not _is_app(obj):
        raise CommandError(f'{spec!r} is not a fastq application')
    return obj  # type: ignore[no-any-return]


def find_app(spec: str | None) -> Fastq:
    """Celery's `-A` lookup: `module:attr`, `module.attr`, or a module/package holding `app` or `celery`
    (also in its `.celery` submodule), or the only app defined in the module."""
    from fastq._state import get_current_app

    if not spec:
        return get_current_app()
    cwd_in_path()
    module_name, sep, attr = spec.partition(':')
    if sep:
        return _from_attribute(module_name, attr, spec)
    try:
        module = importlib.import_module(spec)
    except ModuleNotFoundError as exc:
        if exc.name != spec and not spec.startswith(f'{exc.name}.'):
            raise
        head, _, tail = spec.rpartition('.')
        if head:
            return _from_attribute(head, tail, spec)
        raise CommandError(f'Unable to load celery application.\nThe module {spec} was not found.') from None
    found = _app_in(module)
    if found is None:
        try:
            found = _app_in(importlib.import_module(f'{spec}.celery'))
        except ModuleNotFoundError:
            found = None
    if found is not None:
        return found
    apps = [v for v in vars(module).values() if _is_app(v)]
    if len(apps) == 1:
        return apps[0]  # type: ignore[no-any-return]
    raise CommandError(f'Unable to load celery application.\nModule {spec!r} has no attribute "app" or "celery"')


def _import(name: str, spec: str) -> Any:
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as exc:
        if exc.name == name:
            raise CommandError(f'Unable to load celery application.\nThe module {name} was not found.') from None
        raise


def out(text: str = '') -> None:
    print(text, file=sys.stdout, flush=True)


def err(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def confirm(question: str) -> bool:
    """Ask a yes/no question as click's `confirm` does for Celery (` [y/N]: `, asked again on other answers; no
    answer or end of input is a no), so scripts that pipe `y` or `yes` into Celery's prompts work here too."""
    while True:
        try:
            answer = input(f'{question} [y/N]: ').strip().lower()
        except EOFError:
            return False
        if answer in ('y', 'yes'):
            return True
        if answer in ('', 'n', 'no'):
            return False
        err('Error: invalid input')


def check_loglevel(value: str) -> str:
    level = value.upper()
    if level == 'FATAL':
        level = 'CRITICAL'
    if level not in ('DEBUG', 'INFO', 'WARNING', 'WARN', 'ERROR', 'CRITICAL'):
        raise CommandError(f'-l/--loglevel: unknown level {value!r} (DEBUG, INFO, WARNING, ERROR, CRITICAL)')
    return level


def pid_alive(pid: int) -> bool:
    """Process `pid` runs: it exists and is not a zombie (a detached worker that exited is one until PID 1
    reaps it, and some containers' PID 1 never does)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f'/proc/{pid}/stat') as f:
            return f.read().rpartition(')')[2].split()[0] != 'Z'
    except (OSError, IndexError):
        return True  # no /proc: the signal said enough


def check_pidfile(path: str) -> None:
    """Refuse a pidfile a live process holds (Celery's words); remove a stale one; and check that it can be
    created (as Celery's `detached` does, creating and removing it): said here, on the terminal, rather than
    after detaching, where no one would hear it."""
    path = os.path.abspath(path)
    if os.path.exists(path):
        try:
            with open(path) as f:
                pid = int(f.read().strip() or 0)
        except (OSError, ValueError):
            pid = 0
        if pid and pid_alive(pid):
            error = CommandError(f"Pidfile ({path}) already exists.\nSeems we're already running? (pid: {pid})")
            error.exit_code = 73  # type: ignore[attr-defined]  # (Celery's: EX_CANTCREAT)
            raise error
        print('Stale pidfile exists - Removing it.', file=sys.stderr)  # (Celery's words)
        os.unlink(path)
    probe = f'{path}.{os.getpid()}.probe'  # (a name of its own: whoever watches `path` never sees it empty)
    try:
        os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644))
    except OSError as exc:
        error = CommandError(f'Cannot create the pidfile {path}: {exc.strerror}')
        error.exit_code = 73  # type: ignore[attr-defined]
        raise error from None
    os.unlink(probe)


def write_pidfile(path: str) -> None:
    """Write our pid to `path`, which must not exist. The file appears with its content (written under another
    name, then linked): a supervisor or script that polls for it never reads it empty."""
    path = os.path.abspath(path)
    check_pidfile(path)
    content = f'{os.getpid()}\n'
    temp = f'{path}.{os.getpid()}.tmp'
    with os.fdopen(os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644), 'w') as f:
        f.write(content)
    try:
        os.link(temp, path)  # fails if `path` exists, as O_EXCL would
    except FileExistsError:
        raise
    except OSError:  # a file system without hard links: written in place
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        with os.fdopen(fd, 'w') as f:
            f.write(content)
    finally:
        os.unlink(temp)


def touch(path: str) -> None:
    """Open `path` for appending, or say why it cannot be (before detaching: afterwards no one would hear)."""
    try:
        with open(path, 'a'):
            pass
    except OSError as exc:
        raise CommandError(f'Cannot open the log file {path}: {exc.strerror}') from None


def detach(logfile: str | None) -> None:
    if not logfile:  # (allowed, as by Celery)
        err('warning: --detach without --logfile: the log goes nowhere once detached')
    if os.fork():
        os._exit(0)
    os.setsid()
    if os.fork():
        os._exit(0)
    devnull = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(devnull, fd)
    os.close(devnull)
