"""`Signature`: a task call wrapped up to be passed around (as a callback, in a workflow, over the wire).

A Signature is a dict, as in Celery, because it travels inside messages (`link`, `chain`, `chord` in the
body's `embed`) as the JSON object `{"task", "args", "kwargs", "options", "subtask_type", "immutable"}`.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from fastq import _state

if TYPE_CHECKING:
    from fastq.app import Fastq
    from fastq.result import AsyncResult
    from fastq.task import Task

__all__ = ['Signature', 'maybe_signature', 'signature']

R = TypeVar('R')


class Signature(dict[str, Any], Generic[R]):
    """A task name, arguments and options; call `.delay()`/`.apply_async()` to send it."""

    def __init__(
        self,
        task: Task[Any, R] | str | Mapping[str, Any] | None = None,
        args: Any = None,
        kwargs: dict[str, Any] | None = None,
        options: dict[str, Any] | None = None,
        type: Any = None,
        subtask_type: str | None = None,
        immutable: bool = False,
        app: Fastq | None = None,
        **ex: Any,
    ) -> None:
        self._app = app
        if isinstance(task, Mapping):
            super().__init__(task)
            return
        self._type = type
        name = task if isinstance(task, str) or task is None else task.name
        if not isinstance(task, str) and task is not None:
            self._type = task
        super().__init__(
            task=name,
            args=tuple(args or ()),
            kwargs=dict(kwargs or {}),
            options=dict(options or {}, **ex),
            subtask_type=subtask_type,
            immutable=immutable,
        )

    # dict keys as attributes, Celery style
    @property
    def task(self) -> str:
        return self['task']  # type: ignore[no-any-return]

    @property
    def args(self) -> tuple[Any, ...]:
        return tuple(self.get('args') or ())

    @property
    def kwargs(self) -> dict[str, Any]:
        return self.setdefault('kwargs', {})  # type: ignore[no-any-return]

    @property
    def options(self) -> dict[str, Any]:
        return self.setdefault('options', {})  # type: ignore[no-any-return]

    @property
    def subtask_type(self) -> str | None:
        return self.get('subtask_type')

    @property
    def immutable(self) -> bool:
        return bool(self.get('immutable', False))

    @property
    def app(self) -> Fastq:
        return self._app or getattr(getattr(self, '_type', None), 'app', None) or _state.get_current_app()

    @property
    def type(self) -> Task[Any, R]:
        cached = getattr(self, '_type', None)
        if cached is None:
            cached = self._type = self.app.tasks[self['task']]
        return cached

    def clone(self, args: Any = None, kwargs: dict[str, Any] | None = None, **opts: Any) -> Signature[R]:
        """A copy with `args` prepended (unless immutable), `kwargs` merged and options updated."""
        new_args = self.args
        new_kwargs = dict(self.kwargs)
        if not self.immutable:
            new_args = tuple(args or ()) + new_args
            new_kwargs.update(kwargs or {})
        sig: Signature[R] = Signature(
            dict(self, args=new_args, kwargs=new_kwargs, options=dict(copy.deepcopy(self.options), **opts))
        )
        sig._app = self._app
        sig._type = getattr(self, '_type', None)
        return sig

    def set(self, immutable: bool | None = None, **options: Any) -> Signature[R]:
        if immutable is not None:
            self['immutable'] = immutable
        self.options.update(options)
        return self

    def set_immutable(self, immutable: bool) -> None:
        self['immutable'] = immutable

    def link(self, callback: Signature[Any]) -> Signature[Any]:
        self.options.setdefault('link', []).append(callback)
        return callback

    def link_error(self, errback: Signature[Any]) -> Signature[Any]:
        self.options.setdefault('link_error', []).append(errback)
        return errback

    def apply_async(self, args: Any = None, kwargs: dict[str, Any] | None = None, **options: Any) -> AsyncResult[R]:
        sig = self.clone(args, kwargs) if (args or kwargs) else self
        opts = dict(sig.options, **options)
        task = sig.type
        return task.apply_async(sig.args, sig.kwargs, **opts)

    def delay(self, *args: Any, **kwargs: Any) -> AsyncResult[R]:
        return self.apply_async(args, kwargs)

    def apply(self, args: Any = None, kwargs: dict[str, Any] | None = None, **options: Any) -> Any:
        sig = self.clone(args, kwargs) if (args or kwargs) else self
        return sig.type.apply(sig.args, sig.kwargs, **dict(sig.options, **options))

    def __call__(self, *args: Any, **kwargs: Any) -> R:
        sig = self.clone(args, kwargs) if (args or kwargs) else self
        return sig.type(*sig.args, **sig.kwargs)

    def __or__(self, other: Any) -> Any:
        raise NotImplementedError('chains (sig | sig) arrive with the canvas work; use link= for now')

    def __deepcopy__(self, memo: dict[int, Any]) -> Signature[R]:
        sig: Signature[R] = Signature(copy.deepcopy(dict(self), memo))
        sig._app = self._app
        sig._type = getattr(self, '_type', None)
        return sig

    def __reduce__(self) -> tuple[Any, ...]:
        return Signature, (dict(self),)

    def __json__(self) -> dict[str, Any]:
        return dict(self)

    def __repr__(self) -> str:
        args = ', '.join([*(repr(a) for a in self.args), *(f'{k}={v!r}' for k, v in self.kwargs.items())])
        return f'{self.task}({args}){"!" if self.immutable else ""}'


def signature(varies: Any, *args: Any, **kwargs: Any) -> Signature[Any]:
    """Celery's `signature()`: from a task name, a task or a dict."""
    if isinstance(varies, dict) and not args and not kwargs:
        return varies if isinstance(varies, Signature) else Signature(varies)
    return Signature(varies, *args, **kwargs)


def maybe_signature(d: Any, app: Fastq | None = None) -> Signature[Any] | None:
    if d is None:
        return None
    sig = d if isinstance(d, Signature) else Signature(d)
    if app is not None:
        sig._app = app
    return sig
