"""`group`: signatures applied in parallel; its result is a `GroupResult` of theirs, in order.

Each task of a group is sent with the group's id in the `group` header and its position in `group_index`.
Nested groups are flattened. When the group is the header of a chord, every task also carries the chord's
body (the `chord` embed), and the chord's size is stored before the last task is sent, so the join always
knows how many parts to wait for.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

from fastq.canvas.signatures import Signature, keep_partial, maybe_signature
from fastq.result import GroupResult

if TYPE_CHECKING:
    from fastq.app import Fastq

__all__ = ['group']

Prepared = tuple[Signature[Any], Any, str]


@Signature.register_type('group')
class group(Signature[Any]):
    """`group(add.s(1, 1), add.s(2, 2))` or `group(add.s(i, i) for i in range(10))`."""

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], app: Fastq | None = None) -> group:
        tasks = [maybe_signature(task, app=app) for task in d['kwargs']['tasks']]
        return keep_partial(cls(tasks, app=app, **d['options']), d)

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
        listed = [t if isinstance(t, Signature) else Signature.from_dict(t, app=app) for t in members]
        super().__init__('celery.group', (), {'tasks': listed}, **options)
        self['subtask_type'] = 'group'

    @property
    def tasks(self) -> list[Signature[Any]]:
        return self.kwargs['tasks']  # type: ignore[no-any-return]

    @tasks.setter
    def tasks(self, value: list[Signature[Any]]) -> None:
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
        sig.tasks = [task.clone() for task in self.tasks]
        return sig

    def set_immutable(self, immutable: bool) -> None:
        for task in self.tasks:
            task.set_immutable(immutable)

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
        prepared = list(self._prepared(self.tasks, group_id, root_id))
        results = self._apply_tasks(prepared, app, args=partial, kwargs=kwargs, **options)
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
        self, tasks: list[Signature[Any]], group_id: str, root_id: str | None, freeze: bool = True
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

    def _apply_tasks(
        self,
        prepared: list[Prepared],
        app: Fastq,
        chord: Any = None,
        args: Any = None,
        kwargs: dict[str, Any] | None = None,
        group_index: int | None = None,
        **options: Any,
    ) -> list[Any]:
        from fastq.canvas.chord import chord_size

        size = 0
        results = []
        for position, (sig, result, group_id) in enumerate(prepared):
            body = chord if chord is not None else sig.options.get('chord')
            size += chord_size(sig)
            if body is not None and position == len(prepared) - 1:
                # Before the last task is sent: whichever part finishes last then sees the size.
                app.backend.set_chord_size(group_id, size)
            sig.apply_async(args, kwargs, add_to_parent=False, chord=body, **options)
            results.append(result)
        return results

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
        self.tasks = flat
        return gid, results

    def __repr__(self) -> str:
        return f'group({self.tasks!r})' if self.tasks else 'group(<empty>)'
