"""`chord(header, body)`: a group, then one task that receives the list of its results (in header order).

Sending a chord freezes the body first (its id is the chord's result), then sends the header as a group
whose every task carries the frozen body in its `chord` embed, so whichever worker finishes the last part
can send the body: the result backend counts the parts (`Backend.on_chord_part_return`), or, for a backend
that cannot, a `celery.chord_unlock` task polls the header until it is ready.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from types import GeneratorType
from typing import TYPE_CHECKING, Any

from fastq.canvas.group import group
from fastq.canvas.regen import regen
from fastq.canvas.signatures import Signature, maybe_signature, without_repeated_module
from fastq.utils.functional import as_list

if TYPE_CHECKING:
    from fastq.app import Fastq

__all__ = ['chord', 'chord_size']


def _as_tasks(tasks: Any, app: Fastq | None) -> Any:
    """A chord header as a list of signatures, from a group, a chain (its tasks), a signature or a list.

    As Celery's `_maybe_group`, in the shapes its repr shows: a group's or chain's own tuple or `regen`
    (shared), and a generator's signatures in a `regen`."""
    if isinstance(tasks, dict):
        tasks = maybe_signature(tasks, app=app)
    if isinstance(tasks, Signature) and tasks.subtask_type in ('group', 'chain'):
        members = tasks.kwargs['tasks']
        return members if isinstance(members, tuple | regen) else list(members)
    if isinstance(tasks, Signature):
        return [tasks]
    listed = [t if isinstance(t, Signature) else Signature.from_dict(t, app=app) for t in tasks]
    return regen(listed) if isinstance(tasks, GeneratorType) else listed


@Signature.register_type('chord')
class _chord(Signature[Any]):
    """`chord([add.s(1, 1), add.s(2, 2)], xsum.s())`, or `chord(header)(body)`."""

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], app: Fastq | None = None) -> _chord:
        options = dict(d)
        kwargs = dict(options.pop('kwargs'))
        header, body = kwargs.pop('header', None), kwargs.pop('body', None)
        return cls(header, body, app=app, kwargs=kwargs, **options)

    def __init__(
        self,
        header: Any,
        body: Any = None,
        task: str = 'celery.chord',
        args: Any = None,
        kwargs: dict[str, Any] | None = None,
        app: Fastq | None = None,
        **options: Any,
    ) -> None:
        extra = kwargs or {'kwargs': {}}
        sig_kwargs = {**extra, 'header': _as_tasks(header, app), 'body': maybe_signature(body, app=app)}
        super().__init__(task, args, sig_kwargs, app=app, **options)
        self['subtask_type'] = 'chord'

    @property
    def tasks(self) -> Any:
        """The header: a list of signatures (a group once frozen)."""
        return self.kwargs['header']

    @tasks.setter
    def tasks(self, value: Any) -> None:
        self.kwargs['header'] = value

    def stamp(self, visitor: Any = None, append_stamps: bool = False, **headers: Any) -> None:
        """Stamp the chord, its header's tasks and (with a visitor) its body (see `Signature.stamp`)."""
        from fastq.canvas.group import group
        from fastq.canvas.stamping import stamp_headers

        visitor_headers = None if visitor is None else visitor.on_chord_header_start(self, **headers) or {}
        headers = stamp_headers(self, visitor_headers, append_stamps, **headers)
        self.stamp_links(visitor, append_stamps, **headers)
        tasks = self.tasks.tasks if isinstance(self.tasks, group) else self.tasks
        for task in tasks:
            task.stamp(visitor, append_stamps, **dict(headers))
        if visitor is not None:
            visitor.on_chord_header_end(self, **headers)
        if visitor is not None and self.body is not None:
            visitor_headers = visitor.on_chord_body(self, **headers) or {}
            headers = stamp_headers(self, visitor_headers, append_stamps, **headers)
            self.body.stamp(visitor, append_stamps, **headers)

    @property
    def body(self) -> Any:
        return self.kwargs.get('body')

    @body.setter
    def body(self, value: Any) -> None:
        self.kwargs['body'] = value

    @property
    def app(self) -> Fastq:
        if self._app is not None:
            return self._app
        members = self.tasks.tasks if isinstance(self.tasks, group) else self.tasks
        for sig in [*members[:1], self.body]:
            if isinstance(sig, Signature) and (sig._app is not None or sig._type is not None):
                return sig.app
        return super().app

    def __call__(self, body: Any = None, **options: Any) -> Any:
        return self.apply_async((), {'body': body} if body else {}, **options)

    def __or__(self, other: Any) -> Any:
        """`chord | sig` adds `sig` after the body; other combinations make a chain."""
        from fastq.canvas.chain import _chain, maybe_unroll_group

        if isinstance(other, group) and len(other.tasks) == 1:
            other = maybe_unroll_group(other)
        if isinstance(other, Signature) and not isinstance(other, group | _chain):
            sig = self.clone()
            sig.body = sig.body | other
            return sig
        return super().__or__(other)

    def clone(self, args: Any = None, kwargs: dict[str, Any] | None = None, **opts: Any) -> _chord:
        sig = super().clone(args, kwargs, **opts)
        assert isinstance(sig, _chord)
        header = self.tasks
        sig.tasks = header.clone() if isinstance(header, group) else [t.clone() for t in header]
        if self.body is not None:
            sig.body = maybe_signature(self.body, clone=True)
        return sig

    def set_immutable(self, immutable: bool) -> None:
        """The header's tasks only: the body always receives the header's results."""
        for task in self.tasks:
            task.set_immutable(immutable)

    def link(self, callback: Signature[Any]) -> Signature[Any]:
        """The body's callback: applied with the chord's result."""
        self.body.link(callback)
        return callback

    def link_error(self, errback: Signature[Any]) -> Signature[Any]:
        """On the body (which fails with a ChordError when the header does); also on each header task with
        `task_allow_error_cb_on_chord_header`."""
        errback = maybe_signature(errback)
        members = self.tasks.tasks if isinstance(self.tasks, group) else self.tasks
        if self.app.conf.task_allow_error_cb_on_chord_header:
            for task in members:
                task.link_error(errback.clone(immutable=True))
        for task in members:
            if isinstance(task, _chord):
                task.link_error(errback)
        self.body.link_error(errback)
        return errback

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
        """The body's result, whose parent is the header's GroupResult; the chord's id is the header's."""
        if not isinstance(self.tasks, group):
            self.tasks = group(self.tasks, app=self.app)
        header_result = self.tasks.freeze(parent_id=parent_id, root_id=root_id, chord=self.body)
        self.id = self.tasks.id
        if self.body is None:
            return None
        body_result = self.body.freeze(_id, root_id=root_id, chord=chord, group_id=group_id, group_index=group_index)
        node, seen = body_result, set()
        while node is not None:  # link the first result without a parent (the body may be a chain)
            if node.id in seen:
                raise RuntimeError('Recursive result parents')
            seen.add(node.id)
            if node.parent is None:
                node.parent = header_result
                break
            node = node.parent
        return body_result

    # --- sending --------------------------------------------------------------------------------------------

    def apply_async(
        self, args: Any = None, kwargs: dict[str, Any] | None = None, task_id: str | None = None, **options: Any
    ) -> Any:
        for unused in ('producer', 'publisher', 'connection', 'router', 'result_cls'):
            options.pop(unused, None)
        partial = tuple(args or ()) + self.args if args and not self.immutable else self.args
        kwargs = dict(kwargs or {})
        body = kwargs.pop('body', None)
        body = self.body if body is None else body
        kwargs = dict(self.kwargs.get('kwargs') or {}, **kwargs)
        # countdown/eta delay the header (in run(), `countdown` is the chord_unlock retry interval).
        header_delay = {key: options.pop(key) for key in ('countdown', 'eta') if options.get(key) is not None}
        callbacks = {key: options.pop(key) for key in ('link', 'link_error') if key in options}
        body = body.clone(**_body_options(options))
        app = self.app
        header = self.tasks
        if isinstance(header, group):
            header = header.clone()
        else:
            header = group(list(header), app=app, task_id=self.options.get('task_id') or str(uuid.uuid4()))
        if app.conf.task_always_eager:
            body = _add_body_callbacks(body, dict(self.options, **callbacks))
            return self.apply(partial, kwargs, body=body, task_id=task_id, **options)
        merged = dict(self.options, **options, **callbacks)
        for key in ('countdown', 'eta'):
            merged.pop(key, None)
        option_task_id = merged.pop('task_id', None)
        return self.run(
            header,
            body,
            partial,
            task_id=task_id or option_task_id,
            kwargs=kwargs,
            header_delay=header_delay,
            **merged,
        )

    def apply(
        self, args: Any = None, kwargs: dict[str, Any] | None = None, propagate: bool = True, **options: Any
    ) -> Any:
        body = options.pop('body', None)
        body = self.body if body is None else body
        header = self.tasks.clone() if isinstance(self.tasks, group) else group(self.tasks, app=self.app)
        return body.apply(args=(header.apply(args, kwargs).get(propagate=propagate),))

    def run(
        self,
        header: group,
        body: Signature[Any],
        partial_args: tuple[Any, ...],
        app: Fastq | None = None,
        interval: float | None = None,
        countdown: float = 1,
        max_retries: int | None = None,
        eager: bool = False,
        task_id: str | None = None,
        kwargs: dict[str, Any] | None = None,
        header_delay: dict[str, Any] | None = None,
        **options: Any,
    ) -> Any:
        """Freeze the body, then send the header with the body in every task's `chord` embed."""
        from fastq.canvas.chain import _chain

        app = app or self.app
        group_id = header.options.get('task_id') or str(uuid.uuid4())
        root_id = body.options.get('root_id')
        options = dict(self.options, **options)
        delay = dict(header_delay or {})
        for key in ('countdown', 'eta'):
            if key not in delay and options.get(key) is not None:
                delay[key] = options[key]
            options.pop(key, None)
        if options:
            options.pop('task_id', None)
            body = _add_body_callbacks(body, options)
            body.options.update(_body_options(options))
        if isinstance(body, _chain):
            body._unroll_chords(app)
        body_result = body.freeze(task_id or str(uuid.uuid4()), group_id=group_id, root_id=root_id)
        strip_chord_header_links(body)
        for key in ('chain', 'chord', 'task_id'):  # for the body only, not for the header tasks
            options.pop(key, None)
        header.options['task_id'] = group_id
        header_result_args = header._freeze_group_tasks(group_id=group_id, chord=body, root_id=root_id)
        if header.tasks:
            app.backend.apply_chord(
                header_result_args, body, interval=interval, countdown=countdown, max_retries=max_retries
            )
            header_result = header.apply_async(partial_args, kwargs, task_id=group_id, **options, **delay)
        else:  # no part will ever return: the body runs now, with no results
            body.delay([])
            header_result = app.GroupResult(*header_result_args)
        body_result.parent = header_result
        return body_result

    def _unroll_body(self) -> list[Signature[Any]]:
        """`chord(h, a | b | c)` -> `chord(h, a), b, c`: the chain's tail need not travel in every header task."""
        from fastq.canvas.chain import first_task_options

        sig = self.clone()
        steps = sig.body.unchain_tasks()
        sig.body = steps[0].clone(**first_task_options(sig.body))
        return [sig, *steps[1:]]

    def __repr__(self) -> str:
        if self.body is None:
            return f'<chord without body: {self.tasks!r}>'
        members = self.tasks  # (a group once frozen, printed as one: Celery's)
        body = self.body
        if body.subtask_type == 'chain' and body.kwargs.get('tasks'):
            from fastq.canvas.chain import chain

            first, *rest = body.kwargs['tasks']
            text = '%(' + ' | '.join([first.reprcall(members), repr(chain(rest, app=self._app))]) + ')'
            return without_repeated_module(first['task'], text)
        return '%' + without_repeated_module(body['task'], body.reprcall(members))


chord = _chord


def chord_size(sig: Any) -> int:
    """How many parts `sig` returns to an enclosing chord: its tasks for a group, the last non-empty step
    of a chain, the body of a chord, one for a task."""
    if not isinstance(sig, Signature):
        sig = Signature.from_dict(sig)
    if isinstance(sig, group):
        return sum(chord_size(task) for task in sig.tasks)
    if sig.subtask_type == 'chain':
        for step in reversed(sig.kwargs['tasks']):
            size = chord_size(step)
            if size > 0:
                return size
        return 0
    if isinstance(sig, _chord):
        return chord_size(sig.body)
    return 1


def _body_options(options: dict[str, Any]) -> dict[str, Any]:
    """Options passed on to the body: its parent is the header task that completes the chord, not ours."""
    return {k: v for k, v in options.items() if k != 'parent_id'}


def _add_body_callbacks(body: Any, options: dict[str, Any]) -> Any:
    """Move `link`/`link_error` from the chord's options to (a copy of) its body: they apply to its result."""
    callbacks = as_list(options.pop('link', None))
    errbacks = as_list(options.pop('link_error', None))
    if not callbacks and not errbacks:
        return body
    body = body.clone()
    for callback in callbacks:
        body.link(maybe_signature(callback, app=body._app, clone=True))
    for errback in errbacks:
        errback = maybe_signature(errback, app=body._app)
        if isinstance(body, group):
            for task in body.tasks:
                task.link_error(errback.clone())
        else:
            body.append_to_list_option('link_error', errback)
    return body


def _clear_chord_option(sig: Any) -> None:
    if isinstance(sig, list):
        for task in sig:
            _clear_chord_option(task)
        return
    sig.options.pop('chord', None)
    if isinstance(sig, group):
        for task in sig.tasks:
            _clear_chord_option(task)
    elif sig.subtask_type == 'chain' and sig.kwargs.get('tasks'):
        _clear_chord_option(sig.kwargs['tasks'][-1])
    elif isinstance(sig, _chord) and sig.body is not None:
        _clear_chord_option(sig.body)


def strip_chord_header_links(sig: Any) -> None:
    """Drop the body that freezing put on every task of a not-yet-sent chord's header: the chord carries
    its body anyway and puts it back when it sends the header, so nested chords do not multiply it."""
    if isinstance(sig, list):
        for task in sig:
            strip_chord_header_links(task)
    elif isinstance(sig, _chord):
        _clear_chord_option(sig.tasks)
        strip_chord_header_links(sig.tasks)
        if sig.body is not None:
            strip_chord_header_links(sig.body)
    elif isinstance(sig, group) or sig.subtask_type == 'chain':
        for task in sig.kwargs['tasks']:
            strip_chord_header_links(task)
