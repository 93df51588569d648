"""Sphinx extension that documents tasks, as `celery.contrib.sphinx` does (Celery's "Documenting Tasks with
Sphinx" guide).

Add it to a project's `docs/conf.py`::

    extensions = [..., 'fastq.contrib.sphinx']
    celery_task_prefix = '(task)'  # the default

`automodule` then lists a module's tasks with the `(task)` prefix and the signature of the function the
task wraps (a bound task's `self` left out), `.. autotask:: proj.tasks.add` documents one task, and
``:task:`proj.tasks.add``` links to it. The setting keeps Celery's name so a ported `conf.py` works unchanged.

Why it is needed at all: a task is an instance of a class made for it, not a function, so autodoc would
skip it or document it as data; and its docstring is also its class's, which autodoc takes for a repeat of
the class's documentation and leaves out.

Sphinx 9 rewrote autodoc; documenters like this one need its legacy class-based mode, which `setup`
turns on (with a warning, as Celery's does) unless `conf.py` sets `autodoc_use_legacy_class_based` itself.
"""

from __future__ import annotations

import warnings
from inspect import signature
from typing import Any

from docutils import nodes
from sphinx.domains.python import PyFunction, PyXRefRole
from sphinx.ext.autodoc import FunctionDocumenter

from fastq.task import Task

__all__ = ['TaskDirective', 'TaskDocumenter', 'autodoc_skip_member_handler', 'setup']


def _is_task(member: Any) -> bool:
    return isinstance(member, Task) and getattr(member, '__wrapped__', None) is not None


class TaskDocumenter(FunctionDocumenter):
    """Documents a task as the function it wraps, under the `task` directive."""

    objtype = 'task'
    member_order = 11

    @classmethod
    def can_document_member(cls, member: Any, membername: str, isattr: bool, parent: Any) -> bool:
        return _is_task(member)

    def format_args(self, **kwargs: Any) -> str:
        wrapped = getattr(self.object, '__wrapped__', None)
        if wrapped is None:
            return ''
        sig = signature(wrapped)
        if 'self' in sig.parameters or 'cls' in sig.parameters:  # a bound task: callers never pass it
            sig = sig.replace(parameters=list(sig.parameters.values())[1:])
        return str(sig)

    def document_members(self, all_members: bool = False) -> None:
        pass

    def check_module(self) -> bool:
        # autodoc keeps only objects defined in the module it documents; a task's class is made by the app,
        # so ask the function it wraps where it was defined.
        wrapped = getattr(self.object, '__wrapped__', None)
        if wrapped is not None and getattr(wrapped, '__module__', None) == self.modname:
            return True
        return bool(super().check_module())


class TaskDirective(PyFunction):
    """`.. task::`: a function entry whose prefix is `celery_task_prefix`."""

    def get_signature_prefix(self, sig: str) -> list[nodes.Node]:
        return [nodes.Text(self.env.config.celery_task_prefix)]


def autodoc_skip_member_handler(app: Any, what: str, name: str, obj: Any, skip: bool, options: Any) -> bool | None:
    """Keep tasks autodoc would skip: a task's docstring is its class's too, which autodoc reads as a
    repeat of the class's documentation."""
    if skip and _is_task(obj):
        return False
    return None


def setup(app: Any) -> dict[str, Any]:
    import sphinx

    app.setup_extension('sphinx.ext.autodoc')
    version = tuple(int(part) for part in sphinx.__version__.split('.')[:2] if part.isdigit())
    if version >= (9, 0) and not getattr(app.config, 'autodoc_use_legacy_class_based', False):
        warnings.warn(
            "Sphinx 9.0+ detected. fastq.contrib.sphinx requires 'autodoc_use_legacy_class_based = True' in "
            'conf.py. Enabling it automatically.',
            UserWarning,
            stacklevel=2,
        )
        app.config.autodoc_use_legacy_class_based = True
    app.add_autodocumenter(TaskDocumenter)
    app.add_directive_to_domain('py', 'task', TaskDirective)
    app.add_role_to_domain('py', 'task', PyXRefRole(fix_parens=True))
    app.add_config_value('celery_task_prefix', '(task)', True)
    app.connect('autodoc-skip-member', autodoc_skip_member_handler)
    return {'parallel_read_safe': True}
