"""`group`: signatures applied in parallel; its result is a `GroupResult` of theirs, in order.

Each task of a group is sent with the group's id in the `group` header and its position in `group_index`.
Nested groups are flattened. When the group is the header of a chord, every task also carries the chord's
body (the `chord` embed), and the chord's size is stored before the last task is sent, so the join always
knows how many parts to wait for.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from fastq.canvas.regen import regen
from fastq.canvas.signatures import Signature, keep_partial, maybe_signature
from fastq.exceptions import NotRegistered
from fastq.result import GroupResult
from fastq.sending import GC_PAUSE_BATCH, SEND_KEYWORDS, gc_paused

if TYPE_CHECKING:
    from fastq.app import Fastq
    from fastq.sending import BatchCall

__all__ = ['group']

_SEND_KEYWORDS = frozenset(SEND_KEYWORDS)

Prepared = tuple[Signature[Any], Any, str]


@Signature.register_type('group')
class group(Signature[Any]):
    """`group(add.s(1, 1), add.s(2, 2))` or `group(add.s(i, i) for i in range(10))`."""

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], app: Fastq | None = None) -> group:
        tasks = d['kwargs']['tasks']
        rebuilt = _like(tasks, [maybe_signature(task, app=app) for task in _unread(tasks)], keep_reads=False)
        return keep_partial(cls(rebuilt, app=app, **d['options']), d)

    def __init__(self, *tasks: Any, **options: Any) -> None:
        members: Iterable[Any] = tasks
        if len(tasks) == 1:
            only = tasks[0]
            if isinstance(only, group):
                members = only.tasks
            elif isinstance(only, Mapping):
                members = [only.clone() if isinstance(only, Signature) else only]
            else:
                members = only  # a list, tuple or generator of signatures: read once, here
        app = options.get('app')
        # A generator (`group(add.s(i, i) for i in range(n))`) makes its signatures as it is read: with the
        # garbage collector paused meanwhile, as when the group is sent (`gc_paused`), since its repeated
        # full collections walking the signatures made so far cost more than making them.
        with gc_paused(GC_PAUSE_BATCH if isinstance(members, Iterator) else 0):
            listed = [t if isinstance(t, Signature) else Signature.from_dict(t, app=app) for t in _unread(members)]
        # Kept in the shape given (a tuple, a list, or a generator's `regen`): Celery's repr shows it.
        super().__init__('celery.group', (), {'tasks': _like(members, listed)}, **options)
        self['subtask_type'] = 'group'

    @property
    def tasks(self) -> Sequence[Signature[Any]]:
        """The signatures: a list, a tuple (`group(a, b)`), or a `regen` (a generator's)."""
        return self.kwargs['tasks']  # type: ignore[no-any-return]

    @tasks.setter
    def tasks(self, value: Sequence[Signature[Any]]) -> None:
        self.kwargs['tasks'] = value

    @property
    def app(self) -> Fastq:
        if self._app is None and self.tasks:
            return self.tasks[0].app
        return super().app

    def __len__(self) -> int:
        return len(self.tasks)

    def __call__(self, *partial_args: Any, **options: Any) -> Any:
        return self.apply_async(partial_args, **options)

    def __or__(self, other: Any) -> Any:
        """`group | sig` is a chord: `sig` runs with the list of the group's results."""
        from fastq.canvas.chord import chord

        if isinstance(other, group) and not other.tasks:
            return self
        return chord(self, body=other, app=self._app)

    def clone(self, args: Any = None, kwargs: dict[str, Any] | None = None, **opts: Any) -> group:
        sig = super().clone(args, kwargs, **opts)
        assert isinstance(sig, group)
        sig.tasks = _like(self.tasks, [task.clone() for task in _unread(self.tasks)], keep_reads=False)
        return sig

    def set_immutable(self, immutable: bool) -> None:
        for task in self.tasks:
            task.set_immutable(immutable)

    def stamp(self, visitor: Any = None, append_stamps: bool = False, **headers: Any) -> None:
        """Stamp the group and every task in it (see `Signature.stamp`)."""
        from fastq.canvas.signatures import maybe_signature
        from fastq.canvas.stamping import stamp_headers

        visitor_headers = None if visitor is None else visitor.on_group_start(self, **headers) or {}
        headers = stamp_headers(self, visitor_headers, append_stamps, **headers)
        self.stamp_links(visitor, append_stamps, **headers)
        stamped = []
        for task in _unread(self.tasks):
            sig = maybe_signature(task, app=self._app)
            sig.stamp(visitor, append_stamps, **headers)
            stamped.append(sig)
        self.tasks = regen(stamped, self.tasks._read) if isinstance(self.tasks, regen) else stamped
        if visitor is not None:
            visitor.on_group_end(self, **headers)

    def skew(self, start: float = 1.0, stop: float | None = None, step: float = 1.0) -> group:
        """Spread the tasks out in time: countdowns `start`, `start + step`, ... (the last repeated once
        `stop` is reached), as Celery's `group.skew` (the Canvas guide's chunks example)."""
        countdown = float(start)
        for task in self.tasks:
            if stop and countdown > stop:  # (kombu's fxrange: up to `stop` included, then the last again)
                countdown -= step
            task.set(countdown=countdown)
            countdown += step
        return self

    def link(self, callback: Signature[Any]) -> Signature[Any]:
        """Linked to the first task only, made immutable: use a chord to act on all the results."""
        return self.tasks[0].link(callback.clone().set(immutable=True))

    def link_error(self, errback: Signature[Any]) -> Any:
        """Linked to every task: any of them may fail (so it may run more than once)."""
        errback = maybe_signature(errback)
        return tuple(task.link_error(errback.clone()) for task in self.tasks)

    # --- sending --------------------------------------------------------------------------------------------

    def apply_async(
        self,
        args: Any = None,
        kwargs: dict[str, Any] | None = None,
        add_to_parent: bool = True,
        producer: Any = None,
        link: Any = None,
        link_error: Any = None,
        **options: Any,
    ) -> Any:  # a GroupResult
        if link is not None:
            raise TypeError('Cannot add link to group: use a chord')
        if link_error is not None:
            raise TypeError('Cannot add link to group: do that on individual tasks')
        app = self.app
        partial = tuple(args or ()) + self.args
        if app.conf.task_always_eager:
            return self.apply(partial, kwargs, **options)
        if not self.tasks:
            return self.freeze()
        options, group_id, root_id = self._freeze_gid(options)
        results = self._send(app, group_id, root_id, partial, kwargs, options)
        result: Any = app.GroupResult(group_id, results)
        if len(results) == 1 and isinstance(results[0], GroupResult):  # group(a | group(b, c)): that group's
            result = results[0]
        parent = app.current_worker_task
        if add_to_parent and parent is not None and parent.trail:
            parent.request.children.append(result)
        return result

    def apply(self, args: Any = None, kwargs: dict[str, Any] | None = None, **options: Any) -> GroupResult:
        """Run every task in this process; a GroupResult of EagerResults."""
        app = self.app
        if not self.tasks:
            return self.freeze()  # type: ignore[no-any-return]
        options, group_id, root_id = self._freeze_gid(options)
        partial = tuple(args or ()) + self.args
        prepared = self._prepared(self.tasks, group_id, root_id, freeze=False)
        return app.GroupResult(group_id, [sig.apply(partial, kwargs, **options) for sig, _, _ in prepared])

    def _freeze_gid(self, options: dict[str, Any]) -> tuple[dict[str, Any], str, str | None]:
        """The group's options merged with `options`; its `task_id` becomes the `group_id` of its tasks."""
        options = {
            **self.options,
            **{k: v for k, v in options.items() if k not in self._IMMUTABLE_OPTIONS or k not in self.options},
        }
        group_id = options.pop('task_id', None) or str(uuid.uuid4())
        options['group_id'] = group_id
        return options, group_id, options.get('root_id')

    def _prepared(
        self, tasks: Sequence[Signature[Any]], group_id: str, root_id: str | None, freeze: bool = True
    ) -> Iterator[Prepared]:
        """Copies of the tasks (nested groups flattened), each frozen with the group id and its index."""
        for index, task in enumerate(tasks):
            task = task.clone() if isinstance(task, Signature) else Signature.from_dict(task, app=self._app)
            if isinstance(task, group):
                yield from task._prepared(task.tasks, group_id, root_id, freeze)
                continue
            if task.subtask_type == 'chain' and not task.kwargs.get('tasks'):
                continue  # an empty chain runs nothing and has no result
            result = task.freeze(group_id=group_id, root_id=root_id, group_index=index) if freeze else None
            yield task, result, group_id

    def _send(
        self,
        app: Fastq,
        group_id: str,
        root_id: str | None,
        args: tuple[Any, ...],
        kwargs: dict[str, Any] | None,
        options: dict[str, Any],
    ) -> list[Any]:
        """Send every task of the group: the single tasks in one batch (one publish, options resolved once
        per distinct set, envelopes built by Rust together), workflows among them (chains, chords) each
        through its own `apply_async`. Results come back in the group's order.

        A chord's size is stored before anything is sent, so whichever part finishes last sees it.
        """
        with gc_paused(len(self.tasks)):
            leaves = list(self._leaves(self.tasks))
            with gc_paused(len(leaves)):  # nested groups: their leaves may be many more than their tasks
                return self._send_leaves(app, leaves, group_id, root_id, args, kwargs, options) if leaves else []

    def _send_leaves(
        self,
        app: Fastq,
        leaves: list[tuple[Signature[Any], int]],
        group_id: str,
        root_id: str | None,
        args: tuple[Any, ...],
        kwargs: dict[str, Any] | None,
        options: dict[str, Any],
    ) -> list[Any]:
        from fastq.canvas.chord import chord_size
        from fastq.sending import send_batch

        # What `apply_async` passes each task: the group's options (a nested group's own index is not its
        # tasks'), its chord body, add_to_parent=False; split as send_batch takes them.
        workflow_options = {k: v for k, v in options.items() if k not in ('group_index', 'chord', 'add_to_parent')}
        call = {k: v for k, v in workflow_options.items() if v is not None and k != 'route_name'}
        if options.get('chord') is not None:
            call['chord'] = options['chord']
        call_kw = {k: call.pop(k) for k in SEND_KEYWORDS if k in call and k != 'group_id'}
        call['add_to_parent'] = False
        if (call_kw.get('chord') or leaves[-1][0].options.get('chord')) is not None:
            app.backend.set_chord_size(group_id, sum(chord_size(sig) for sig, _ in leaves))
        reply_to = app.thread_oid
        results: list[Any] = [None] * len(leaves)
        calls = []
        positions = []
        checked: dict[int, Any] = {}  # per task type: how to check arguments (its time limits checked once)
        for position, (sig, index) in enumerate(leaves):
            batch_call = _batch_call(sig, index, group_id, root_id, reply_to, args, kwargs, call_kw, call, checked)
            if batch_call is None:
                sig = sig.clone()
                results[position] = sig.freeze(group_id=group_id, root_id=root_id, group_index=index)
                body = options.get('chord')
                body = sig.options.get('chord') if body is None else body
                sig.apply_async(args, kwargs, **{**workflow_options, 'add_to_parent': False, 'chord': body})
            else:
                calls.append(batch_call)
                positions.append(position)
        for position, result in zip(positions, send_batch(app, calls), strict=True):
            results[position] = result
        return results

    def _leaves(self, tasks: Sequence[Any]) -> Iterator[tuple[Signature[Any], int]]:
        """The tasks with nested groups flattened, each with its index in its own group (as `_prepared`)."""
        for index, task in enumerate(tasks):
            if not isinstance(task, Signature):
                task = Signature.from_dict(task, app=self._app)
            if isinstance(task, group):
                yield from task._leaves(task.tasks)
            elif not (task.subtask_type == 'chain' and not task.kwargs.get('tasks')):
                yield task, index

    # --- freezing -------------------------------------------------------------------------------------------

    def freeze(
        self,
        _id: str | None = None,
        group_id: str | None = None,
        chord: Any = None,
        root_id: str | None = None,
        parent_id: str | None = None,
        group_index: int | None = None,
    ) -> Any:
        return self.app.GroupResult(*self._freeze_group_tasks(group_id, chord, root_id, parent_id, group_index))

    def _freeze_group_tasks(
        self,
        group_id: str | None = None,
        chord: Any = None,
        root_id: str | None = None,
        parent_id: str | None = None,
        group_index: int | None = None,
    ) -> tuple[str, list[Any]]:
        opts = self.options
        gid = opts.get('task_id') or str(uuid.uuid4())
        opts['task_id'] = gid
        if group_id:
            opts['group_id'] = group_id
        if chord:
            opts['chord'] = chord
        if group_index is not None:
            opts['group_index'] = group_index
        root_id = opts.setdefault('root_id', root_id)
        parent_id = opts.setdefault('parent_id', parent_id)
        flat: list[Signature[Any]] = []
        pending = list(reversed(self.tasks))
        while pending:
            task = maybe_signature(pending.pop(), app=self._app).clone()
            if isinstance(task, group):
                pending.extend(reversed(task.tasks))
            elif not (task.subtask_type == 'chain' and not task.kwargs.get('tasks')):
                flat.append(task)
        results = [
            task.freeze(group_id=group_id, chord=chord, root_id=root_id, parent_id=parent_id, group_index=index)
            for index, task in enumerate(flat)
        ]
        self.tasks = regen(flat) if isinstance(self.tasks, regen) else flat  # (Celery's: a new one, unread)
        return gid, results

    def __repr__(self) -> str:
        if not self.tasks:
            return 'group(<empty>)'
        from fastq.canvas.signatures import without_repeated_module

        return without_repeated_module(self.tasks[0]['task'], f'group({self.tasks!r})')


def _unread(items: Iterable[Any]) -> Iterator[Any]:
    """Iterate without counting as a read (a `regen`'s repr is Celery's, whose lazy list these reads are not)."""
    return list.__iter__(items) if isinstance(items, list) else iter(items)


def _like(given: Any, signatures: list[Signature[Any]], keep_reads: bool = True) -> Any:
    """`signatures` in the shape `given` had: a tuple, a list, or a `regen` for anything else (with as many
    reads as `given` had when `keep_reads`)."""
    if isinstance(given, regen):
        return regen(signatures, given._read if keep_reads else 0)
    if isinstance(given, tuple):
        return tuple(signatures)
    return signatures if isinstance(given, list) else regen(signatures)


def _batch_call(
    sig: Signature[Any],
    index: int,
    group_id: str,
    root_id: str | None,
    reply_to: str,
    partial: tuple[Any, ...],
    kwargs: dict[str, Any] | None,
    call_kw: dict[str, Any],
    call: dict[str, Any],
    checked: dict[int, Any],
) -> BatchCall | None:
    """What `sig.clone().freeze(...)` then `.apply_async(partial, kwargs, **call_kw, **call)` would send, as a
    `send_batch` call, without copying the signature; None for a workflow, which sends itself.

    The options merge as `freeze` and `Signature._merge` merge them: the signature's own, its frozen ids,
    then the group's except those that never change once set (`group_id`, stamps). A signature without
    options of its own beyond ids and links shares the group's `call` dict, and so its send plan. This runs
    once per task of a group (100,000 times for a big one), hence the dict access instead of properties.
    """
    if sig.get('subtask_type') or type(sig).apply_async is not _APPLY_ASYNC:
        return None
    task: Any = sig._type
    if task is None:
        try:
            task = sig.type
        except NotRegistered:
            task = None
    own = sig.get('options')
    if own:
        kw = {k: v for k, v in own.items() if k in _SEND_KEYWORDS}
        kw.setdefault('reply_to', reply_to)
        kw.setdefault('group_id', group_id)
    else:
        kw = {'reply_to': reply_to, 'group_id': group_id}
    kw['group_index'] = index
    if root_id:
        kw['root_id'] = root_id
    if call_kw:
        kw.update(call_kw)
    options = _merged_options(own, call) if own and not _SEND_KEYWORDS.issuperset(own) else call
    args, kw_args = _call_arguments(sig, partial, kwargs)
    if task is None:
        return sig['task'], None, args, kw_args, kw, options
    check: Any = checked.get(id(task))
    if check is None:
        if task.soft_time_limit and task.time_limit and task.soft_time_limit > task.time_limit:
            raise ValueError('soft_time_limit must be less than or equal to time_limit')
        check = checked[id(task)] = task.check_arguments if task.typing else False
    if check:
        check(args, kw_args)
    if task._dump_pydantic_arguments is not None and task.serializer != 'pickle':  # (as its apply_async does)
        dumped, kw_args = task._dump_pydantic_arguments(args, kw_args)
        args = tuple(dumped)
    if task.shadow and not kw.get('shadow'):
        kw['shadow'] = task.shadow
    return task.name, task, args, kw_args, kw, options


def _merged_options(own: dict[str, Any], call: dict[str, Any]) -> dict[str, Any]:
    """A signature's own options (queue, priority, stamps, ...) under the group's, except the fixed ones."""
    fixed = Signature._IMMUTABLE_OPTIONS.union(own.get('stamped_headers') or ())
    options = {k: v for k, v in own.items() if k not in _SEND_KEYWORDS}
    options.update((k, v) for k, v in call.items() if k not in fixed or k not in options)
    return options


def _call_arguments(
    sig: Signature[Any], partial: tuple[Any, ...], kwargs: dict[str, Any] | None
) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """The group's partial arguments before the signature's (unless it is immutable), keywords merged."""
    args = sig.get('args') or ()
    if type(args) is not tuple:
        args = tuple(args)
    kw_args: dict[str, Any] = sig.get('kwargs') or {}
    if not sig.get('immutable'):
        if partial:
            args = partial + args
        if kwargs:
            kw_args = dict(kw_args, **kwargs)
    return args, kw_args


_APPLY_ASYNC = Signature.apply_async
