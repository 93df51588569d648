"""`Proxy`: an object that stands for whatever a function returns at each use (Celery's `celery.local.Proxy`).

`from fastq import current_app` at the top of a module must mean the app current when the name is used,
not when the module was imported (before the app existed, or before a test made another one current), and
`current_task` the task running now in this thread or asyncio task. So both are proxies: every attribute
read, call, comparison, `repr` and `isinstance` check goes to the object of the moment.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

__all__ = ['PromiseProxy', 'Proxy', 'maybe_evaluate']


class _ClassOrObjectDoc:
    """`Proxy.__doc__`: the class's docstring on the class (help(), Sphinx); on a proxy, the `__doc__=` it was
    given, else its object's (`current_app.__doc__` is the app class's), as Celery's Proxy answers."""

    def __init__(self, doc: str | None) -> None:
        self.doc = doc

    def __get__(self, proxy: Any, owner: type | None = None) -> str | None:
        if proxy is None:
            return self.doc
        custom = object.__getattribute__(proxy, '_Proxy__doc')
        if custom is not None:
            return custom  # type: ignore[no-any-return]
        return getattr(proxy._get_current_object(), '__doc__', None)


class _ClassOrObjectModule(str):
    """`Proxy.__module__`: on the class, its module (a string, as a class's must be, for pickle and help()); on
    a proxy, its object's (`shared_task`'s `add.__module__` is the task's module), as Celery's Proxy answers."""

    def __get__(self, proxy: Any, owner: type | None = None) -> Any:
        if proxy is None:
            return self
        try:
            return getattr(proxy._get_current_object(), '__module__', None)
        except RuntimeError:  # (nothing to stand for yet, a task before its app is finalized: the class's)
            return str(self)

    def __reduce__(self) -> tuple[Any, ...]:
        return str, (str(self),)  # (a plain string in a pickle: pickle names the class by it)


class Proxy:
    """An object that stands for what `local(*args, **kwargs)` returns at each use: Celery's signature
    (`Proxy(local, args=None, kwargs=None, name=None, __doc__=None)`), and its operators, so a proxied
    number, mapping or context manager works as the object would."""

    __slots__ = ('__local', '__args', '__kwargs', '__name__', '__doc')

    def __init__(
        self,
        local: Callable[..., Any],
        args: tuple[Any, ...] | None = None,
        kwargs: dict[str, Any] | None = None,
        name: str | None = None,
        __doc__: str | None = None,
    ) -> None:
        object.__setattr__(self, '_Proxy__local', local)
        object.__setattr__(self, '_Proxy__args', tuple(args or ()))
        object.__setattr__(self, '_Proxy__kwargs', dict(kwargs or {}))
        object.__setattr__(self, '__name__', name or getattr(local, '__name__', 'proxy'))
        object.__setattr__(self, '_Proxy__doc', __doc__)

    def __init_subclass__(cls, **kwargs: Any) -> None:
        """A subclass's docstring and module answer as Proxy's do (see `_ClassOrObjectDoc`, `_ClassOrObjectModule`)."""
        super().__init_subclass__(**kwargs)
        cls.__doc__ = _ClassOrObjectDoc(vars(cls).get('__doc__'))  # type: ignore[assignment]
        cls.__module__ = _ClassOrObjectModule(vars(cls)['__module__'])

    def _get_current_object(self) -> Any:
        """The object this proxy stands for right now."""
        local = object.__getattribute__(self, '_Proxy__local')
        return local(*object.__getattribute__(self, '_Proxy__args'), **object.__getattribute__(self, '_Proxy__kwargs'))

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

    def __delitem__(self, key: Any) -> None:
        del self._get_current_object()[key]

    def __lt__(self, other: Any) -> Any:
        return self._get_current_object() < other

    def __le__(self, other: Any) -> Any:
        return self._get_current_object() <= other

    def __gt__(self, other: Any) -> Any:
        return self._get_current_object() > other

    def __ge__(self, other: Any) -> Any:
        return self._get_current_object() >= other

    def __add__(self, other: Any) -> Any:
        return self._get_current_object() + other

    def __sub__(self, other: Any) -> Any:
        return self._get_current_object() - other

    def __mul__(self, other: Any) -> Any:
        return self._get_current_object() * other

    def __truediv__(self, other: Any) -> Any:
        return self._get_current_object() / other

    def __floordiv__(self, other: Any) -> Any:
        return self._get_current_object() // other

    def __mod__(self, other: Any) -> Any:
        return self._get_current_object() % other

    def __divmod__(self, other: Any) -> Any:
        return divmod(self._get_current_object(), other)

    def __pow__(self, other: Any) -> Any:
        return self._get_current_object() ** other

    def __lshift__(self, other: Any) -> Any:
        return self._get_current_object() << other

    def __rshift__(self, other: Any) -> Any:
        return self._get_current_object() >> other

    def __and__(self, other: Any) -> Any:
        return self._get_current_object() & other

    def __xor__(self, other: Any) -> Any:
        return self._get_current_object() ^ other

    def __or__(self, other: Any) -> Any:
        return self._get_current_object() | other

    def __neg__(self) -> Any:
        return -self._get_current_object()

    def __pos__(self) -> Any:
        return +self._get_current_object()

    def __abs__(self) -> Any:
        return abs(self._get_current_object())

    def __invert__(self) -> Any:
        return ~self._get_current_object()

    def __complex__(self) -> complex:
        return complex(self._get_current_object())

    def __int__(self) -> int:
        return int(self._get_current_object())

    def __float__(self) -> float:
        return float(self._get_current_object())

    def __index__(self) -> int:
        return self._get_current_object().__index__()  # type: ignore[no-any-return]

    def __enter__(self) -> Any:
        return self._get_current_object().__enter__()

    def __exit__(self, *exc: Any) -> Any:
        return self._get_current_object().__exit__(*exc)

    def __reduce__(self) -> Any:  # pickled as the object itself
        return self._get_current_object().__reduce__()


Proxy.__doc__ = _ClassOrObjectDoc(Proxy.__doc__)  # type: ignore[assignment]
Proxy.__module__ = _ClassOrObjectModule(Proxy.__module__)


class PromiseProxy(Proxy):
    """A proxy that evaluates its object once, on first use, and stands for that object from then on (Celery's
    `celery.local.PromiseProxy`, what its `@app.task` returns before the app is finalized; fastq's, on an app
    made with `autofinalize=False`). An evaluation that raises is tried again on the next use."""

    __slots__ = ('_PromiseProxy__thing', '__pending__')

    def _get_current_object(self) -> Any:
        try:
            return object.__getattribute__(self, '_PromiseProxy__thing')
        except AttributeError:
            return self.__evaluate__()

    def __evaluated__(self) -> bool:
        """Whether the object was made yet (the Application guide's `add.__evaluated__()`)."""
        try:
            object.__getattribute__(self, '_PromiseProxy__thing')
        except AttributeError:
            return False
        return True

    def __maybe_evaluate__(self) -> Any:
        return self._get_current_object()

    def __then__(self, fun: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
        """Call `fun(*args, **kwargs)` once the object is made (now, if it is)."""
        if self.__evaluated__():
            fun(*args, **kwargs)
            return
        try:
            pending = object.__getattribute__(self, '__pending__')
        except AttributeError:
            pending = []
            object.__setattr__(self, '__pending__', pending)
        pending.append((fun, args, kwargs))

    def __evaluate__(self) -> Any:
        thing = Proxy._get_current_object(self)
        object.__setattr__(self, '_PromiseProxy__thing', thing)
        try:
            pending = object.__getattribute__(self, '__pending__')
        except AttributeError:
            return thing
        object.__delattr__(self, '__pending__')
        for fun, args, kwargs in pending:
            fun(*args, **kwargs)
        return thing


def maybe_evaluate(obj: Any) -> Any:
    """The object a `PromiseProxy` stands for (made now if need be); anything else as it is (Celery's)."""
    try:
        return obj.__maybe_evaluate__()
    except AttributeError:
        return obj
