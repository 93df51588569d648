"""`@app.task(pydantic=True)`: Celery's argument validation with Pydantic (the Tasks guide, 5.5+).

A task's parameters annotated with a Pydantic model receive that model, validated from what the message
carried (a dict); a returned model of the annotated return class is stored as `model_dump()`'s value; and
a caller's model arguments are dumped before they are sent, when the task would rebuild an equal model from
the dump (anything else is left for the serializer, which then fails as for any other task).

The options, as Celery's: `pydantic_strict` (default False), `pydantic_context` (given to the validators,
with `celery_app` and `celery_task_name`), `pydantic_dump_kwargs` (for `model_dump`, `mode='json'` unless
they say otherwise).
"""

from __future__ import annotations

import functools
import importlib
import inspect
import types
import typing
from collections.abc import Callable, Mapping
from typing import Any

from fastq.exceptions import ImproperlyConfigured

__all__ = ['pydantic_wrapper']


def _optional_of(annotation: Any) -> Any:
    """`X` of an `Optional[X]` (`X | None`) annotation, else None."""
    if typing.get_origin(annotation) not in (typing.Union, types.UnionType):
        return None
    members = typing.get_args(annotation)
    if len(members) != 2 or type(None) not in members:
        return None
    return next(m for m in members if m is not type(None))


class _Models:
    """What a task function's annotations say about models: which arguments are validated as which model,
    how they are validated, and how a result and a caller's arguments are dumped."""

    def __init__(
        self, app: Any, fun: Callable[..., Any], task_name: str, strict: bool, context: Any, dump_kwargs: Any
    ) -> None:
        try:
            self.base: Any = importlib.import_module('pydantic').BaseModel
        except ModuleNotFoundError as exc:
            raise ImproperlyConfigured('You need to install pydantic to use pydantic model serialization.') from exc
        self.strict = strict
        self.context = {**(context or {}), 'celery_app': app, 'celery_task_name': task_name}
        self.dump_kwargs = {'mode': 'json', **(dump_kwargs or {})}
        self.sig = sig = inspect.signature(fun)
        try:  # (string annotations, from `from __future__ import annotations`, made types again when possible)
            self.hints: dict[str, Any] | None = typing.get_type_hints(fun)
        except (NameError, AttributeError, TypeError):
            self.hints = None
        kinds = sig.parameters.items()
        self.positional = [n for n, p in kinds if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
        self.keywords = {n for n, p in kinds if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}

    def annotation(self, name: str) -> Any:
        if self.hints and name in self.hints:
            return self.hints[name]
        return self.sig.return_annotation if name == 'return' else self.sig.parameters[name].annotation

    def model_of(self, name: str, value: Any) -> Any:
        """The model class the argument `name` is validated with (None: passed as it is)."""
        hint = self.annotation(name)
        inner = _optional_of(hint)
        if inner is not None and value is not None:
            hint = inner
        return hint if inspect.isclass(hint) and issubclass(hint, self.base) else None

    def validate(self, model: Any, value: Any) -> Any:
        return model.model_validate(value, strict=self.strict, context=dict(self.context))

    def result(self, returned: Any) -> Any:
        """A returned model of the annotated return class, dumped; anything else as it is."""
        hint = self.annotation('return')
        hint = _optional_of(hint) or hint
        if inspect.isclass(hint) and isinstance(returned, self.base) and isinstance(returned, hint):
            return typing.cast(Any, returned).model_dump(**self.dump_kwargs)
        return returned

    def dump_argument(self, name: str | None, value: Any) -> Any:
        # Dumped only when the task rebuilds an equal model from the dump (a subclass given for its base is
        # not: model equality includes the class); a model with kombu's __json__ hook is sent as it says.
        if name is None or not isinstance(value, self.base) or hasattr(type(value), '__json__'):
            return value
        model = self.model_of(name, value)
        if model is None:
            return value
        try:
            dumped = value.model_dump(**self.dump_kwargs)
            if self.validate(model, dumped) == value:
                return dumped
        except Exception:  # (validators that only work on a worker: the model is left as it is)
            pass
        return value

    def dump_arguments(self, args: Any, kwargs: Any, bound: bool = False) -> tuple[Any, Any]:
        """The caller's `args`, `kwargs` with the models the task rebuilds dumped (the same objects when none
        is); what cannot be bound is left for the send to refuse, as for any task."""
        call_args = () if args is None else args
        call_kwargs = {} if kwargs is None else kwargs
        if not isinstance(call_args, list | tuple) or not isinstance(call_kwargs, Mapping):
            return args, kwargs
        if not any(isinstance(v, self.base) for v in (*call_args, *call_kwargs.values())):
            return args, kwargs
        try:
            self.sig.bind(*([None] if bound else []), *call_args, **call_kwargs)
        except TypeError:
            return args, kwargs
        names = self.positional[1:] if bound else self.positional
        new_args = [self.dump_argument(names[i] if i < len(names) else None, v) for i, v in enumerate(call_args)]
        new_kwargs = {k: self.dump_argument(k if k in self.keywords else None, v) for k, v in call_kwargs.items()}
        if any(new is not old for new, old in zip(new_args, call_args, strict=True)):
            args = new_args if isinstance(call_args, list) else tuple(new_args)
        if any(new_kwargs[k] is not v for k, v in call_kwargs.items()):
            kwargs = new_kwargs
        return args, kwargs


def pydantic_wrapper(
    app: Any,
    fun: Callable[..., Any],
    task_name: str,
    strict: bool = False,
    context: dict[str, Any] | None = None,
    dump_kwargs: dict[str, Any] | None = None,
) -> Callable[..., Any]:
    """`fun` wrapped to validate its model arguments and dump its model result; the wrapper's
    `dump_arguments(args, kwargs, bound=False)` is what `apply_async` sends a caller's models as."""
    models = _Models(app, fun, task_name, strict, context, dump_kwargs)

    @functools.wraps(fun)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        bound = models.sig.bind(*args, **kwargs)
        for name, value in bound.arguments.items():
            model = models.model_of(name, value)
            if model is not None:
                bound.arguments[name] = models.validate(model, value)
        return models.result(fun(*bound.args, **bound.kwargs))

    wrapper.dump_arguments = models.dump_arguments  # type: ignore[attr-defined]
    return wrapper
