"""Finding objects by dotted name (`module:attr` or `module.attr`), as Celery's `-A` and settings do."""

from __future__ import annotations

import importlib
import os
import sys
from typing import Any


def symbol_by_name(name: str | Any, default: Any = None) -> Any:
    """`'pkg.mod:obj'` or `'pkg.mod.obj'` -> the object; non-strings are returned as they are."""
    if not isinstance(name, str):
        return name
    module_name, sep, attr = name.partition(':')
    if not sep:
        module_name, _, attr = name.rpartition('.')
        if not module_name:
            return importlib.import_module(name)
    module = importlib.import_module(module_name)
    obj: Any = module
    for part in attr.split('.') if attr else ():
        obj = getattr(obj, part)
    return obj


def module_names(value: Any) -> list[str]:
    """`imports`/`include`: a list of module names, or one name (Celery takes either)."""
    if not value:
        return []
    return [value] if isinstance(value, str) else list(value)


def module_or_symbol(path: str) -> Any:
    """`path` imported as a module if it is one (`'proj.config.celery'`), else as `symbol_by_name` reads it
    (`'proj.config:Config'`, `'proj.config.Config'`): Celery's loader tries the module first."""
    if ':' not in path:
        try:
            return importlib.import_module(path)
        except ModuleNotFoundError as exc:
            if exc.name != path:  # a module it imports is missing: that error is the one to see
                raise
    return symbol_by_name(path)


def resolve_scheme(setting: str, what: str, scheme: str, known: dict[str, str], planned: dict[str, str]) -> Any:
    """The class registered for a URL scheme, imported on first use; an unknown scheme fails naming the setting
    and the closest known scheme, a scheme fastq will serve later says so instead of guessing."""
    import difflib

    from fastq.exceptions import ImproperlyConfigured

    path = known.get(scheme)
    if path is not None:
        return symbol_by_name(path)
    if scheme in planned:
        raise ImproperlyConfigured(
            f'{setting}: the {scheme}:// scheme needs {planned[scheme]}, which this fastq build does not include '
            'yet; use sqlite:// (the embedded default) or memory://'
        )
    names = sorted({*known, *planned})
    close = difflib.get_close_matches(scheme, names, n=1, cutoff=0.5)
    hint = f'; did you mean {close[0]}://?' if close else f' (known: {", ".join(names)})'
    raise ImproperlyConfigured(f'{setting}: unknown {what} scheme {scheme!r}{hint}')


def cwd_in_path() -> None:
    """Make the working directory importable, as `celery -A tasks` does for a `tasks.py` next to you."""
    cwd = os.getcwd()
    if cwd not in sys.path and '' not in sys.path:
        sys.path.insert(0, cwd)


def qualname(obj: Any) -> str:
    cls = obj if isinstance(obj, type) else type(obj)
    return f'{cls.__module__}.{cls.__qualname__}'
