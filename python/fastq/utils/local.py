"""`Proxy`: an object that stands for whatever a function returns at each use (Celery's `celery.local.Proxy`).

`from fastq import current_app` at the top of a module must mean the app current when the name is used,
not when the module was imported (before the app existed, or before a test made another one current), and
`current_task` the task running now in this thread or asyncio task. So both are proxies: every attribute
read, call, comparison, `repr` and `isinstance` check goes to the object of the moment.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

__all__ = ['Proxy']


class Proxy:
    __slots__ = ('__local', '__name__')

    def __init__(self, local: Callable[[], Any], name: str | None = None) -> None:
        object.__setattr__(self, '_Proxy__local', local)
        object.__setattr__(self, '__name__', name or getattr(local, '__name__', 'proxy'))

    def _get_current_object(self) -> Any:
        """The object this proxy stands for right now."""
        return object.__getattribute__(self, '_Proxy__local')()

    @property  # type: ignore[misc]
    def __class__(self) -> type:  # isinstance(current_app, Fastq) holds
        return type(self._get_current_object())

    @property
    def __dict__(self) -> dict[str, Any]:  # type: ignore[override]
        return self._get_current_object().__dict__  # type: ignore[no-any-return]

    def __getattr__(self, name: str) -> Any:
        return getattr(self._get_current_object(), name)

    def __setattr__(self, name: str, value: Any) -> None:
        setattr(self._get_current_object(), name, value)

    def __delattr__(self, name: str) -> None:
        delattr(self._get_current_object(), name)

    def __dir__(self) -> list[str]:
        return dir(self._get_current_object())

    def __repr__(self) -> str:
        return repr(self._get_current_object())

    def __str__(self) -> str:
        return str(self._get_current_object())

    def __bool__(self) -> bool:
        return bool(self._get_current_object())

    def __hash__(self) -> int:
        return hash(self._get_current_object())

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._get_current_object()(*args, **kwargs)

    def __eq__(self, other: object) -> bool:
        return self._get_current_object() == other  # type: ignore[no-any-return]

    def __ne__(self, other: object) -> bool:
        return self._get_current_object() != other  # type: ignore[no-any-return]

    def __len__(self) -> int:
        return len(self._get_current_object())

    def __iter__(self) -> Any:
        return iter(self._get_current_object())

    def __contains__(self, item: object) -> bool:
        return item in self._get_current_object()

    def __getitem__(self, key: Any) -> Any:
        return self._get_current_object()[key]

    def __setitem__(self, key: Any, value: Any) -> None:
        self._get_current_object()[key] = value

    def __enter__(self) -> Any:
        return self._get_current_object().__enter__()

    def __exit__(self, *exc: Any) -> Any:
        return self._get_current_object().__exit__(*exc)

    def __reduce__(self) -> Any:  # pickled as the object itself
        return self._get_current_object().__reduce__()
