"""Small helpers for values Celery's options allow in more than one shape."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any


def as_list(value: Any) -> list[Any]:
    """`link=sig` or `link=[sig, ...]` (or None): always a list, as the options that take either are read."""
    if value is None:
        return []
    return list(value) if isinstance(value, list | tuple) else [value]


def fxrange(
    start: float = 1.0, stop: float | None = None, step: float = 1.0, repeatlast: bool = False
) -> Iterator[float]:
    """kombu's `fxrange`, which its `retry_over_time` sleeps by: `start`, `start + step`, ... up to and
    including `stop` (none: forever), then, with `repeatlast`, the last of them forever."""
    current = float(start)
    while True:
        if not stop or current <= stop:
            yield current
            current += step
        elif repeatlast:
            yield current - step
        else:
            return
