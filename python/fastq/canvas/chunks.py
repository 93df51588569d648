"""`xmap`, `xstarmap` and `chunks`: one task applied to many arguments, in one message or a few.

`add.map([1, 2, 3])` is one `celery.map` task that calls `add` for each item in the worker, one after the
other; `add.starmap([(1, 2), (3, 4)])` does the same with argument tuples; `add.chunks(pairs, 10)` is a
group of `celery.starmap` tasks of ten calls each. The iterable is read when the signature is built.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from itertools import islice
from typing import TYPE_CHECKING, Any

from fastq.canvas.group import group
from fastq.canvas.regen import maybe_regen
from fastq.canvas.signatures import Signature, maybe_signature
from fastq.utils.text import truncate

if TYPE_CHECKING:
    from fastq.app import Fastq

__all__ = ['chunks', 'xmap', 'xstarmap']


class _basemap(Signature[Any]):
    _task_name = ''

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], app: Fastq | None = None) -> _basemap:
        return cls(d['kwargs']['task'], d['kwargs']['it'], app=app, **d['options'])

    def __init__(self, task: Any, it: Iterable[Any], **options: Any) -> None:
        # Immutable, with no subtask_type (as Celery sends it): on the wire, a call of the built-in task.
        super().__init__(self._task_name, (), {'task': task, 'it': maybe_regen(it)}, immutable=True, **options)

    def apply_async(self, args: Any = None, kwargs: dict[str, Any] | None = None, **options: Any) -> Any:
        # Routed as the task it maps (Celery's): `task_routes` for `add` send `add.map(...)` where `add` goes.
        inner = self.kwargs['task']
        name = inner.get('task') if isinstance(inner, Mapping) else getattr(inner, 'name', None)
        if name and not options.get('route_name'):
            options['route_name'] = name
        return super().apply_async(args, kwargs, **options)


@Signature.register_type()
class xmap(_basemap):
    """`[task(item) for item in it]`, run in one worker."""

    _task_name = 'celery.map'

    def __repr__(self) -> str:
        return f'[{self.kwargs["task"]["task"]}(x) for x in {truncate(repr(self.kwargs["it"]), 100)}]'


@Signature.register_type()
class xstarmap(_basemap):
    """`[task(*item) for item in it]`, run in one worker."""

    _task_name = 'celery.starmap'

    def __repr__(self) -> str:
        return f'[{self.kwargs["task"]["task"]}(*x) for x in {truncate(repr(self.kwargs["it"]), 100)}]'


@Signature.register_type()
class chunks(Signature[Any]):
    """`it` cut into parts of `n` argument tuples, each part a `celery.starmap` task of one group."""

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], app: Fastq | None = None) -> chunks:
        kw = d['kwargs']
        return cls(kw['task'], kw['it'], kw['n'], app=app, **d['options'])

    def __init__(self, task: Any, it: Iterable[Any], n: int, **options: Any) -> None:
        super().__init__('celery.chunks', (), {'task': task, 'it': maybe_regen(it), 'n': n}, immutable=True, **options)

    def __call__(self, **options: Any) -> Any:
        return self.apply_async(**options)

    def apply_async(self, args: Any = None, kwargs: dict[str, Any] | None = None, **options: Any) -> Any:
        options.pop('route_name', None)
        return self.group().apply_async(args, kwargs, **options)

    def group(self) -> group:
        task, it, n = self.kwargs['task'], iter(self.kwargs['it']), int(self.kwargs['n'])
        parts = iter(lambda: list(islice(it, n)), [])
        return group((xstarmap(task, part, app=self._app) for part in parts), app=self._app)

    @classmethod
    def apply_chunks(cls, task: Any, it: Iterable[Any], n: int, app: Fastq | None = None) -> Any:
        return cls(maybe_signature(task, app=app), it, n, app=app)()
