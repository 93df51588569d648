"""`Signature`: a task call wrapped up to be passed around (as a callback, in a workflow, over the wire).

A Signature is a dict, as in Celery, because it travels inside messages (`link`, `chain`, `chord` in the
body's `embed`) as the JSON object `{"task", "args", "kwargs", "options", "subtask_type", "immutable"}`.
`subtask_type` names the workflow class (`chain`, `group`, `chord`, `xmap`, `xstarmap`, `chunks`) that
`Signature.from_dict` rebuilds, so a worker receiving a Celery-built workflow runs it with these classes.

Freezing gives a signature its task id (and group, chord and root ids) before anything is sent, which is
how a workflow's result handles exist before its tasks run; the options it writes are Celery's, key for key.
"""

from __future__ import annotations

import copy
import uuid
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, ClassVar, Generic, TypeVar

from fastq import _state
from fastq.exceptions import NotRegistered
from fastq.utils.functional import as_list

if TYPE_CHECKING:
    from fastq.app import Fastq
    from fastq.result import AsyncResult as Result
    from fastq.task import Task

__all__ = ['Signature', 'maybe_signature', 'signature']

R = TypeVar('R')
S = TypeVar('S', bound='Signature[Any]')


class Signature(dict[str, Any], Generic[R]):
    """A task name, arguments and options; call `.delay()`/`.apply_async()` to send it."""

    #: subtask_type -> class, filled by `register_type` (chain, group, chord, xmap, xstarmap, chunks).
    TYPES: ClassVar[dict[str, type[Signature[Any]]]] = {}
    #: Options a merge never replaces once set: changing them would leave a group or chord waiting forever.
    _IMMUTABLE_OPTIONS: ClassVar[frozenset[str]] = frozenset({'group_id', 'stamped_headers'})

    _app: Fastq | None = None
    _type: Task[Any, R] | None = None

    @classmethod
    def register_type(cls, name: str | None = None) -> Callable[[type[S]], type[S]]:
        def register(subclass: type[S]) -> type[S]:
            cls.TYPES[name or subclass.__name__] = subclass
            return subclass

        return register

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], app: Fastq | None = None) -> Signature[Any]:
        """The signature a dict describes, as the class its `subtask_type` names."""
        target = cls.TYPES.get(d.get('subtask_type') or '')
        if target is not None and target is not cls:
            return target.from_dict(d, app=app)
        return Signature(d, app=app)

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
        if task is not None and not isinstance(task, str):
            self._type = task
        super().__init__(
            task=task if isinstance(task, str) or task is None else task.name,
            args=tuple(args or ()),
            kwargs=dict(kwargs or {}),
            options=dict(options or {}, **ex),
            subtask_type=subtask_type,
            immutable=immutable,
        )

    @classmethod
    def of_task(cls, task: Task[Any, R], args: tuple[Any, ...], kwargs: dict[str, Any]) -> Signature[R]:
        """`cls(task, args, kwargs, app=task.app)` for arguments that are the caller's own (a tuple and a
        dict nobody else holds): nothing to convert or copy."""
        sig = cls.__new__(cls)
        sig['task'] = task.name
        sig['args'] = args
        sig['kwargs'] = kwargs
        sig['options'] = {}
        sig['subtask_type'] = None
        sig['immutable'] = False
        sig._app = task.app
        sig._type = task
        return sig

    # --- the dict's keys as attributes, Celery style --------------------------------------------------------

    @property
    def task(self) -> str:
        return self['task']  # type: ignore[no-any-return]

    @property
    def name(self) -> str:
        return self.task

    @property
    def args(self) -> tuple[Any, ...]:
        return tuple(self.get('args') or ())

    @args.setter
    def args(self, value: Any) -> None:
        self['args'] = tuple(value)

    @property
    def kwargs(self) -> dict[str, Any]:
        return self.setdefault('kwargs', {})  # type: ignore[no-any-return]

    @kwargs.setter
    def kwargs(self, value: dict[str, Any]) -> None:
        self['kwargs'] = value

    @property
    def options(self) -> dict[str, Any]:
        return self.setdefault('options', {})  # type: ignore[no-any-return]

    @options.setter
    def options(self, value: dict[str, Any]) -> None:
        self['options'] = value

    @property
    def subtask_type(self) -> str | None:
        return self.get('subtask_type')

    @property
    def immutable(self) -> bool:
        return bool(self.get('immutable', False))

    @property
    def id(self) -> str | None:
        """The task id, once frozen (`options['task_id']`)."""
        return self.options.get('task_id')

    @id.setter
    def id(self, value: str | None) -> None:
        self.options['task_id'] = value

    @property
    def parent_id(self) -> str | None:
        return self.options.get('parent_id')

    @property
    def root_id(self) -> str | None:
        return self.options.get('root_id')

    @property
    def app(self) -> Fastq:
        if self._app is not None:
            return self._app
        if self._type is not None:
            return self._type.app
        return _state.get_current_app()

    @property
    def type(self) -> Task[Any, R]:
        """The registered task (raises `NotRegistered` if this app does not know the name)."""
        if self._type is None:
            self._type = self.app.tasks[self.task]
        return self._type

    def AsyncResult(self, task_id: str) -> Result[R]:
        try:
            return self.type.AsyncResult(task_id)
        except NotRegistered:
            return self.app.AsyncResult(task_id, task_name=self.task)

    # --- copies and options ---------------------------------------------------------------------------------

    def _merge(
        self, args: Any = None, kwargs: dict[str, Any] | None = None, options: dict[str, Any] | None = None
    ) -> tuple[tuple[Any, ...], dict[str, Any], dict[str, Any]]:
        """Partial args prepended, kwargs merged (unless immutable), options merged except `_IMMUTABLE_OPTIONS`."""
        new_options = self.options
        if options is not None:
            fixed = self._IMMUTABLE_OPTIONS.union(self.options.get('stamped_headers') or ())
            new_options = {
                **self.options,
                **{k: v for k, v in options.items() if k not in fixed or k not in self.options},
            }
        if self.immutable:
            return self.args, self.kwargs, new_options
        return (
            tuple(args) + self.args if args else self.args,
            dict(self.kwargs, **kwargs) if kwargs else self.kwargs,
            new_options,
        )

    def clone(self, args: Any = None, kwargs: dict[str, Any] | None = None, **opts: Any) -> Signature[R]:
        """A copy with `args` prepended (unless immutable), `kwargs` merged and options updated."""
        if args or kwargs or opts:
            new_args, new_kwargs, new_opts = self._merge(args, kwargs, opts)
        else:
            new_args, new_kwargs, new_opts = self.args, self.kwargs, self.options
        sig: Signature[R] = Signature.from_dict(
            {
                'task': self.task,
                'args': tuple(new_args),
                'kwargs': dict(new_kwargs),
                'options': copy.deepcopy(new_opts),
                'subtask_type': self.subtask_type,
                'immutable': self.immutable,
            },
            app=self._app,
        )
        sig._type = self._type
        return sig

    partial = clone

    def replace(self, args: Any = None, kwargs: dict[str, Any] | None = None, options: Any = None) -> Signature[R]:
        sig = self.clone()
        if args is not None:
            sig.args = args
        if kwargs is not None:
            sig.kwargs = kwargs
        if options is not None:
            sig.options = options
        return sig

    def set(self, immutable: bool | None = None, **options: Any) -> Signature[R]:
        """Update the options (`countdown`, `queue`, ...) and return self, for chaining calls."""
        if immutable is not None:
            self.set_immutable(immutable)
        self.options.update(options)
        return self

    def set_immutable(self, immutable: bool) -> None:
        self['immutable'] = immutable

    def _list_option(self, key: str) -> list[Any]:
        items = self.options.setdefault(key, [])
        if not isinstance(items, list):
            items = self.options[key] = list(items) if isinstance(items, tuple) else [items]
        return items

    def append_to_list_option(self, key: str, value: Any) -> Any:
        items = self._list_option(key)
        if value not in items:
            items.append(value)
        return value

    def extend_list_option(self, key: str, value: Any) -> None:
        self._list_option(key).extend(value if isinstance(value, list | tuple) else [value])

    # --- stamping (Celery 5.3): see fastq.canvas.stamping ---------------------------------------------------

    def stamp(self, visitor: Any = None, append_stamps: bool = False, **headers: Any) -> Any:
        """Stamp this signature (and its callbacks and errbacks) with `headers`, or as `visitor` decides."""
        from fastq.canvas.stamping import stamp_headers

        self.stamp_links(visitor, append_stamps, **headers)
        visitor_headers = None if visitor is None else visitor.on_signature(self, **headers) or {}
        return self.set(**stamp_headers(self, visitor_headers, append_stamps, **headers))

    def stamp_links(self, visitor: Any, append_stamps: bool = False, **headers: Any) -> None:
        """Stamp this signature's callbacks and errbacks only."""
        from fastq.canvas.stamping import stamp_links

        stamp_links(self, visitor, append_stamps, **headers)

    def link(self, callback: Signature[Any]) -> Signature[Any]:
        """Apply `callback` with this task's return value when it succeeds; returns `callback`."""
        return self.append_to_list_option('link', callback)  # type: ignore[no-any-return]

    def link_error(self, errback: Signature[Any]) -> Signature[Any]:
        """Apply `errback` with this task's id when it fails; returns `errback`."""
        return self.append_to_list_option('link_error', errback)  # type: ignore[no-any-return]

    def flatten_links(self) -> list[Signature[Any]]:
        """This signature, then its callbacks and theirs, depth first (errbacks not included)."""
        flat: list[Signature[Any]] = [self]
        for callback in as_list(self.options.get('link')):
            flat.extend(maybe_signature(callback, app=self._app).flatten_links())
        return flat

    def on_error(self, errback: Signature[Any]) -> Signature[R]:
        """`link_error` that returns this signature, for chaining calls."""
        self.link_error(errback)
        return self

    def freeze(
        self,
        _id: str | None = None,
        group_id: str | None = None,
        chord: Any = None,
        root_id: str | None = None,
        parent_id: str | None = None,
        group_index: int | None = None,
    ) -> Any:
        """Give this signature its task id (and the other ids given) and return its result handle."""
        opts = self.options
        task_id = opts.get('task_id')
        if task_id is None:
            task_id = opts['task_id'] = _id or str(uuid.uuid4())
        if root_id:
            opts['root_id'] = root_id
        if parent_id:
            opts['parent_id'] = parent_id
        if 'reply_to' not in opts:
            opts['reply_to'] = self.app.thread_oid
        if group_id and 'group_id' not in opts:
            opts['group_id'] = group_id
        if chord:
            opts['chord'] = chord
        if group_index is not None:
            opts['group_index'] = group_index
        return self.AsyncResult(task_id)

    # --- calling --------------------------------------------------------------------------------------------

    def apply_async(self, args: Any = None, kwargs: dict[str, Any] | None = None, **options: Any) -> Result[R]:
        """Send the task; `args` are prepended to the signature's, options given here win (None ignored)."""
        options = {k: v for k, v in options.items() if v is not None}
        if args or kwargs or options:
            new_args, new_kwargs, new_opts = self._merge(args, kwargs, options)
        else:
            new_args, new_kwargs, new_opts = self.args, self.kwargs, self.options
        try:
            task = self.type
        except NotRegistered:  # not known here: send it by name, a worker elsewhere knows it
            return self.app.send_task(self.task, new_args, new_kwargs, **new_opts)
        return task.apply_async(new_args, new_kwargs, **new_opts)

    def delay(self, *args: Any, **kwargs: Any) -> Result[R]:
        return self.apply_async(args, kwargs)

    def apply(self, args: Any = None, kwargs: dict[str, Any] | None = None, **options: Any) -> Any:
        """Run in this process (as `Task.apply`); returns an EagerResult."""
        options = {k: v for k, v in options.items() if v is not None}
        new_args, new_kwargs, new_opts = self._merge(args, kwargs, options)
        return self.type.apply(new_args, new_kwargs, **new_opts)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        new_args, new_kwargs, _ = self._merge(args, kwargs, None)
        return self.type(*new_args, **new_kwargs)

    def __invert__(self) -> Any:
        return self.apply_async().get()

    def __or__(self, other: Any) -> Any:
        """`sig | sig` is a chain; `sig | group` too (the group runs with this task's result)."""
        from fastq.canvas.chain import _chain, maybe_unroll_group
        from fastq.canvas.group import group

        if isinstance(other, _chain):
            return _chain(self, *other.unchain_tasks(), app=self._app)
        if isinstance(other, group):
            return _chain(self, maybe_unroll_group(other), app=self._app)
        if isinstance(other, Signature):
            return _chain(self, other, app=self._app)
        return NotImplemented

    def __ior__(self, other: Any) -> Any:  # dict's |= merges; a signature chains, as in Celery
        return self.__or__(other)

    # --- copying and representation -------------------------------------------------------------------------

    def __deepcopy__(self, memo: dict[int, Any]) -> Signature[R]:
        sig: Signature[R] = Signature.from_dict(copy.deepcopy(dict(self), memo), app=self._app)
        sig._type = self._type
        return sig

    def __reduce__(self) -> tuple[Any, ...]:
        return signature, (dict(self),)

    def __json__(self) -> dict[str, Any]:
        return dict(self)

    def reprcall(self, *args: Any, **kwargs: Any) -> str:
        all_args = (*args, *self.args) if not self.immutable else self.args
        all_kwargs = {**self.kwargs, **kwargs} if not self.immutable else self.kwargs
        shown = ', '.join([*(repr(a) for a in all_args), *(f'{k}={v!r}' for k, v in all_kwargs.items())])
        return f'{self.task}({shown})'

    def __repr__(self) -> str:
        return self.reprcall()


def without_repeated_module(task_name: str, text: str) -> str:
    """`text` with the module of `task_name` written only where it first appears: Celery's workflow reprs
    (`group((tasks.add(2, 2), add(4, 4)))`, `tasks.add(2, 2) | add(4)`)."""
    module = str(task_name).rpartition('.')[0] + '.'
    index = text.find(module)
    if index < 0:
        return text
    end = index + len(module)
    return text[:end] + text[end:].replace(module, '')


def signature(varies: Any, *args: Any, **kwargs: Any) -> Signature[Any]:
    """Celery's `signature()`: a copy of a signature, the signature a dict describes, or a new one."""
    if isinstance(varies, dict):
        if isinstance(varies, Signature):
            return varies.clone()
        return Signature.from_dict(varies, app=kwargs.get('app'))
    return Signature(varies, *args, **kwargs)


subtask = signature


def maybe_signature(d: Any, app: Fastq | None = None, clone: bool = False) -> Any:
    """`d` as a signature (of its workflow class), or None; bound to `app` when given."""
    if d is None:
        return None
    if isinstance(d, Signature):
        if clone:
            d = d.clone()
    elif isinstance(d, dict):
        d = Signature.from_dict(d, app=app)
    if app is not None:
        d._app = app
    return d


def keep_partial(sig: S, d: Mapping[str, Any]) -> S:
    """Carry `args` and `immutable` over from `d` to a workflow signature rebuilt from it (Celery's own
    `from_dict`s drop them, which loses a parent's result when a workflow is a callback)."""
    if d.get('args'):
        sig['args'] = tuple(d['args'])
    if d.get('immutable'):
        sig['immutable'] = True
    return sig
