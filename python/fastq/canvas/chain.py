"""`chain(a, b, c)` / `a | b | c`: each task runs with the previous one's result.

Only the first task is sent. It carries the rest of the chain in its body's `chain` embed, *reversed* (the
next task last), and the worker that runs it pops the next signature and sends it with the remainder. Every
task is frozen before anything is sent, so the chain's result (the last task's) exists at once and its
`.parent` links lead back to the first. A group followed by more steps becomes a chord, as in Celery.
"""

from __future__ import annotations

import operator
from collections import deque
from collections.abc import Iterable, Mapping
from functools import reduce
from typing import TYPE_CHECKING, Any

from fastq.canvas.chord import _chord, chord, strip_chord_header_links
from fastq.canvas.group import group
from fastq.canvas.signatures import Signature, keep_partial, maybe_signature, without_repeated_module
from fastq.result import GroupResult
from fastq.utils.functional import as_list

if TYPE_CHECKING:
    from fastq.app import Fastq

__all__ = ['chain']

#: Options a chain uses itself when it runs, rather than passing them to its first task.
_RUN_OPTIONS = frozenset({'chord', 'group_id', 'group_index', 'link', 'link_error', 'parent_id', 'root_id', 'task_id'})


def maybe_unroll_group(sig: Any) -> Any:
    """A group of one task is that task."""
    if isinstance(sig, group) and len(sig.tasks) == 1:
        return sig.tasks[0]
    return sig


def _is_empty_group(sig: Any) -> bool:
    return isinstance(sig, group) and not sig.tasks


def _is_chain_led_by_task(body: Any) -> bool:
    return isinstance(body, _chain) and bool(body.tasks) and not isinstance(body.tasks[0], group)


def first_task_options(chain_: Signature[Any]) -> dict[str, Any]:
    return {k: v for k, v in chain_.options.items() if k not in _RUN_OPTIONS}


def _is_sequence(value: Any) -> bool:
    return isinstance(value, Iterable) and not isinstance(value, Mapping | str)


@Signature.register_type('chain')
class _chain(Signature[Any]):
    """The chain signature; build one with `chain(...)` or `|`."""

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], app: Fastq | None = None) -> _chain:
        tasks = [maybe_signature(task, app=app) for task in d['kwargs']['tasks']]
        return keep_partial(cls(tasks, app=app, **d['options']), d)

    def __init__(self, *tasks: Any, **options: Any) -> None:
        steps = list(tasks[0]) if len(tasks) == 1 and _is_sequence(tasks[0]) else list(tasks)
        super().__init__('celery.chain', (), {'tasks': steps}, **options)
        self['subtask_type'] = 'chain'

    @property
    def tasks(self) -> list[Any]:
        return self.kwargs['tasks']  # type: ignore[no-any-return]

    @tasks.setter
    def tasks(self, value: list[Any]) -> None:
        self.kwargs['tasks'] = value

    def stamp(self, visitor: Any = None, append_stamps: bool = False, **headers: Any) -> None:
        """Stamp the chain and every step (see `Signature.stamp`)."""
        from fastq.canvas.stamping import stamp_headers

        visitor_headers = None if visitor is None else visitor.on_chain_start(self, **headers) or {}
        headers = stamp_headers(self, visitor_headers, append_stamps, **headers)
        self.stamp_links(visitor, **headers)
        for task in self.tasks:
            task.stamp(visitor, append_stamps, **headers)
        if visitor is not None:
            visitor.on_chain_end(self, **headers)

    @property
    def app(self) -> Fastq:
        if self._app is None and self.tasks and isinstance(self.tasks[0], Signature):
            return self.tasks[0].app
        return super().app

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.apply_async(args, kwargs) if self.tasks else None

    def __or__(self, other: Any) -> Any:
        if _is_empty_group(other):
            return self
        other = maybe_unroll_group(other)
        if isinstance(other, group):
            tasks = self.unchain_tasks()
            if not tasks:
                return other
            if isinstance(tasks[-1], _chord):  # the group runs after the chord's body
                tasks[-1].body = tasks[-1].body | other
                return type(self)(tasks, app=self.app)
            return type(self)([*tasks, other], app=self._app)
        if isinstance(other, _chain):
            return reduce(operator.or_, other.unchain_tasks(), self)
        if not isinstance(other, Signature):
            return NotImplemented
        if self.tasks and isinstance(self.tasks[-1], group):  # group followed by a task: a chord
            sig = self.clone()
            sig.tasks[-1] = chord(sig.tasks[-1], other, app=self._app)
            if len(sig.tasks) > 1 and isinstance(sig.tasks[-2], _chord):  # two chords in a row: nest them
                sig.tasks[-2].body = sig.tasks[-2].body | sig.tasks[-1]
                sig.tasks = sig.tasks[:-1]
            return sig
        if self.tasks and isinstance(self.tasks[-1], _chord) and not isinstance(other, _chord):
            sig = self.clone()
            sig.tasks[-1].body = sig.tasks[-1].body | other
            return sig
        return type(self)([*self.unchain_tasks(), other], app=self._app)

    def clone(self, args: Any = None, kwargs: dict[str, Any] | None = None, **opts: Any) -> _chain:
        sig = super().clone(args, kwargs, **opts)
        assert isinstance(sig, _chain)
        sig.tasks = [maybe_signature(task, app=self._app, clone=True) for task in self.tasks]
        return sig

    def unchain_tasks(self) -> list[Any]:
        """Copies of the tasks, with the chain's callbacks on the last and its errbacks on every one."""
        tasks = [task.clone() for task in self.tasks]
        for callback in as_list(self.options.get('link')):
            tasks[-1].link(callback)
        for errback in as_list(self.options.get('link_error')):
            for task in tasks:
                task.link_error(errback)
        return tasks

    def _unroll_chords(self, app: Fastq) -> None:
        """Split chords whose body is a task-led chain into the chord and the rest (on an execution copy)."""
        pending = deque(self.tasks)
        tasks = []
        while pending:
            task = pending.popleft()
            if isinstance(task, _chain):
                task = task.clone()
                task._unroll_chords(app)
            if isinstance(task, _chord) and _is_chain_led_by_task(task.body):
                pending.extendleft(reversed(task._unroll_body()))
            else:
                tasks.append(task)
        self.tasks = tasks

    # --- sending --------------------------------------------------------------------------------------------

    def apply_async(self, args: Any = None, kwargs: dict[str, Any] | None = None, **options: Any) -> Any:
        """Send the first task; returns the last task's result (its `.parent` is the one before, ...)."""
        app = self.app
        if app.conf.task_always_eager:
            return self.apply(args, kwargs, **options)
        return self.run(args, kwargs, app=app, **(dict(self.options, **options) if options else self.options))

    def run(
        self,
        args: Any = None,
        kwargs: dict[str, Any] | None = None,
        group_id: str | None = None,
        chord: Any = None,
        task_id: str | None = None,
        link: Any = None,
        link_error: Any = None,
        publisher: Any = None,
        producer: Any = None,
        root_id: str | None = None,
        parent_id: str | None = None,
        app: Fastq | None = None,
        group_index: int | None = None,
        **options: Any,
    ) -> Any:
        app = app or self.app
        args = tuple(args) + self.args if args and not self.immutable else self.args
        tasks, results = self.prepare_steps(
            args,
            kwargs,
            self.tasks,
            root_id,
            parent_id,
            link_error,
            app,
            task_id,
            group_id,
            chord,
            group_index=group_index,
        )
        if not results:
            return None
        if link:
            tasks[0].extend_list_option('link', link)
        first = tasks.pop()
        # The rest, reversed, after any steps that were already to follow (a chain sent as a chord body).
        options['chain'] = (options.get('chain') or []) + tasks
        result = first.apply_async(**options)
        return result if not tasks else results[0]

    def freeze(
        self,
        _id: str | None = None,
        group_id: str | None = None,
        chord: Any = None,
        root_id: str | None = None,
        parent_id: str | None = None,
        group_index: int | None = None,
    ) -> Any:
        _, results = self.prepare_steps(
            self.args,
            self.kwargs,
            self.tasks,
            root_id,
            parent_id,
            None,
            self.app,
            _id,
            group_id,
            chord,
            clone=False,
            group_index=group_index,
        )
        return results[0]

    def _head(self, tasks: list[Any], app: Fastq, clone: bool) -> deque[Any]:
        """The steps, with nested chains at the front spliced in and leading empty groups dropped, so the
        last step popped is the first real task (the one that gets the partial arguments)."""
        steps = deque(tasks)
        stripped = None
        while steps:
            head = steps[0]
            if not isinstance(head, Signature):
                head = steps[0] = Signature.from_dict(head, app=app)
            if isinstance(head, _chain):
                steps.popleft()
                steps.extendleft(reversed((head.clone() if clone else head).tasks))
                continue
            if isinstance(head, group):
                head = steps[0] = maybe_unroll_group(head)
                if len(steps) > 1 and _is_empty_group(head):
                    stripped = steps.popleft()
                    continue
            break
        if stripped is not None and not steps:
            steps.append(stripped)
        return steps

    def prepare_steps(  # noqa: C901 - one walk, kept together so its order of freezing stays visible
        self,
        args: tuple[Any, ...],
        kwargs: dict[str, Any] | None,
        tasks: list[Any],
        root_id: str | None = None,
        parent_id: str | None = None,
        link_error: Any = None,
        app: Fastq | None = None,
        last_task_id: str | None = None,
        group_id: str | None = None,
        chord_body: Any = None,
        clone: bool = True,
        group_index: int | None = None,
    ) -> tuple[list[Any], list[Any]]:
        """Freeze every step, last first; returns the steps and their results, both in reverse order.

        The last step gets `last_task_id`, `group_id`, `group_index` and the enclosing chord's body, since
        that step completes the chain for whatever waits on it; the first gets the partial arguments.
        """
        app = app or self.app
        steps = self._head(tasks, app, clone)
        prev_task: Any = None
        prev_res: Any = None
        out: list[Any] = []
        results: list[Any] = []
        while steps:
            task = steps.pop()
            is_first, is_last = not steps, not out
            if not isinstance(task, Signature):
                task = Signature.from_dict(task, app=app)
            if isinstance(task, group):
                task = maybe_unroll_group(task)
                if _is_empty_group(task) and (steps or prev_task is not None):
                    continue
            if clone and isinstance(task, _chord) and _is_chain_led_by_task(task.body):
                steps.extend(task._unroll_body())
                continue
            if clone:
                task = task.clone(args, kwargs) if is_first else task.clone()
            elif is_first:
                task.args = tuple(args) + tuple(task.args)
            if isinstance(task, _chain):
                steps.extend(task.tasks)
                continue
            if isinstance(task, group) and prev_task is not None:
                # group | task: a chord whose body is the task after it (frozen already, so keep its id).
                out.pop()
                body_res = results.pop()
                body_id = None if isinstance(prev_res, GroupResult) else prev_res.id
                task = chord(task, body=prev_task, task_id=body_id, root_id=root_id, app=app)
                prev_task = out[-1] if out else None
                node = results[-1] if results else None
                while node is not None and node.parent is not body_res:
                    node = node.parent
                if node is not None:  # link the rest to the chord's result instead of the body's
                    node.parent = None
                    prev_res = node
            if is_last:
                res = task.freeze(
                    last_task_id, root_id=root_id, group_id=group_id, chord=chord_body, group_index=group_index
                )
            else:
                res = task.freeze(root_id=root_id)
            if prev_task is not None and prev_res is not None and prev_res.parent is None:
                prev_res.parent = res
            for errback in as_list(link_error):
                task.link_error(errback)
                if isinstance(task, _chord) and task.body is not None:
                    task.body.link_error(errback)
            out.append(task)
            results.append(res)
            prev_task, prev_res = task, res
            if isinstance(task, _chord):
                app.backend.ensure_chords_allowed()
                node = res
                while node.parent is not None:  # what follows waits on the chord's whole result
                    node = node.parent
                prev_res = node
        self.id = results[0].id if results else last_task_id
        if clone:
            for task in out:
                strip_chord_header_links(task)
        return out, results

    def apply(self, args: Any = None, kwargs: dict[str, Any] | None = None, **options: Any) -> Any:
        """Run every step in this process, each with the previous result; returns the last EagerResult."""
        from fastq import states

        tasks = list(self.tasks)
        options = dict(self.options, **options)
        link = options.pop('link', None)
        last_index = max((i for i, task in enumerate(tasks) if not _is_empty_group(task)), default=len(tasks) - 1)
        last: Any = None
        call_args, call_kwargs = args, kwargs
        for index, task in enumerate(tasks):
            if _is_empty_group(task) and (index < len(tasks) - 1 or last is not None):
                continue
            step = task.clone()
            if link and index == last_index:
                (step.body if isinstance(step, _chord) else step).extend_list_option('link', link)
            res = step.apply((last.get(),) if last is not None else call_args, call_kwargs, **options)
            res.parent, last, call_args, call_kwargs = last, res, None, None
            if getattr(res, 'state', None) in (states.IGNORED, states.REJECTED):
                break
        return last

    def __repr__(self) -> str:
        if not self.tasks:
            return f'<{type(self).__name__}@{id(self):#x}: empty>'
        return without_repeated_module(self.tasks[0]['task'], ' | '.join(repr(task) for task in self.tasks))


class chain(_chain):
    """`chain(add.s(2, 2), add.s(4))` is `add.s(2, 2) | add.s(4)`; `chain(gen)` takes an iterable.

    As in Celery, calling `chain(...)` with tasks returns what `|` makes of them: a `_chain` (or a group or
    chord, when that is all there is), so `isinstance(x, chain)` is only true of `chain()` built empty.
    """

    def __new__(cls, *tasks: Any, **kwargs: Any) -> Any:
        if not kwargs and tasks and (len(tasks) != 1 or _is_sequence(tasks[0])):
            steps = tasks[0] if len(tasks) == 1 else tasks
            return reduce(operator.or_, steps, _chain())
        return super().__new__(cls)
