"""Small helpers for values Celery's options allow in more than one shape."""

from __future__ import annotations

from typing import Any


def as_list(value: Any) -> list[Any]:
    """`link=sig` or `link=[sig, ...]` (or None): always a list, as the options that take either are read."""
    if value is None:
        return []
    return list(value) if isinstance(value, list | tuple) else [value]
