"""`regen`: the signatures of `group(add.s(i, i) for i in range(10))`, printed as Celery prints them.

Celery keeps such a generator lazy (its `_regen`) and prints only what it has read so far, so a group shows
`group(<_regen: [add(0, 0), add(1, 1)...]>)` until something reads it all (`len`, a loop, sending it), and
the same generator in a chord, `%xsum(<_regen: [...]>)`. fastq reads it at once (a group must know its size
to send, and one pass with the collector paused is cheapest), so a `regen` is a plain list that counts the
reads Celery's would have made, for its repr only. Lists and tuples are not wrapped, as in Celery.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any, SupportsIndex, TypeVar, overload

__all__ = ['maybe_regen', 'regen']

T = TypeVar('T')


class regen(list[T]):
    """A list read from an iterator. `_read` counts what Celery's lazy `_regen` would have read by now: it
    reads one ahead of what was asked, and past the end once it knows where that is."""

    def __init__(self, items: Iterable[T] = (), read: int = 0) -> None:
        super().__init__(items)
        self._read = read

    def _read_up_to(self, reads: int) -> None:
        self._read = max(self._read, reads)

    def _read_all(self) -> None:
        self._read = list.__len__(self) + 1

    def __bool__(self) -> bool:
        size = list.__len__(self)
        if self._read == 0:  # Celery's `next(iter(self))`: the first item and the one after it
            self._read_up_to(2)
        return size > 0

    @overload
    def __getitem__(self, index: SupportsIndex) -> T: ...
    @overload
    def __getitem__(self, index: slice) -> list[T]: ...
    def __getitem__(self, index: Any) -> Any:
        if isinstance(index, slice) or index < 0:
            self._read_all()
        elif index >= min(self._read, list.__len__(self)):
            self._read_up_to(index + 2)
        return list.__getitem__(self, index)

    def __iter__(self) -> Iterator[T]:
        self._read_all()
        return list.__iter__(self)

    def __len__(self) -> int:
        self._read_all()
        return list.__len__(self)

    def __reversed__(self) -> Iterator[T]:
        self._read_all()
        return list.__reversed__(self)

    def __reduce__(self) -> Any:
        return list, (list(list.__iter__(self)),)

    def __repr__(self) -> str:
        size = list.__len__(self)
        shown = ', '.join(repr(item) for item in list.__getitem__(self, slice(0, min(self._read, size))))
        return f'<_regen: [{shown}{"" if self._read > size else "..."}]>'


def maybe_regen(items: Iterable[T]) -> list[T] | tuple[T, ...]:
    """Celery's `regen()`: a list or tuple as it is, anything else read into a `regen`."""
    if isinstance(items, list | tuple):
        return items
    return regen(items)
