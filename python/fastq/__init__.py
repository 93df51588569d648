"""fastq: a Celery-compatible distributed task queue with a compiled core.

`from fastq import Fastq` (or `Celery`) is the one import a Celery project changes; the modules Celery code
imports (`exceptions`, `result`, `states`, `signals`, `schedules`, `utils.log`) exist under the same names.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from fastq._core import __version__

# A library's warnings (a publish being retried, an `expires` already past) reach a program's own logging
# setup, and nowhere else: as kombu's `get_logger` does for every Celery logger, a NullHandler on the roots
# fastq logs under keeps Python's last-resort handler from printing them to a client's stderr.
for _name in ('fastq', 'celery'):
    if not logging.getLogger(_name).handlers:
        logging.getLogger(_name).addHandler(logging.NullHandler())
del _name

__all__ = [
    'AsyncResult',
    'Celery',
    'Exchange',
    'Fastq',
    'GroupResult',
    'Queue',
    'Signature',
    'Task',
    '__version__',
    'chain',
    'chord',
    'chunks',
    'current_app',
    'current_task',
    'group',
    'maybe_signature',
    'shared_task',
    'signature',
    'states',
    'subtask',
    'xmap',
    'xstarmap',
]

if TYPE_CHECKING:
    from fastq import states
    from fastq.app import Celery, Fastq
    from fastq.canvas import Signature, maybe_signature, xmap, xstarmap
    from fastq.canvas import signature as signature
    from fastq.canvas import signature as subtask
    from fastq.canvas.chain import chain
    from fastq.canvas.chord import chord
    from fastq.canvas.chunks import chunks
    from fastq.canvas.group import group
    from fastq.result import AsyncResult, GroupResult
    from fastq.routing import Exchange, Queue
    from fastq.shared import shared_task
    from fastq.task import Task

    current_app: Fastq
    current_task: Task[Any, Any] | None

_LAZY = {
    'Fastq': 'fastq.app:Fastq',
    'Celery': 'fastq.app:Celery',
    'Task': 'fastq.task:Task',
    'AsyncResult': 'fastq.result:AsyncResult',
    'GroupResult': 'fastq.result:GroupResult',
    'Signature': 'fastq.canvas:Signature',
    'chain': 'fastq.canvas:chain',
    'chord': 'fastq.canvas:chord',
    'chunks': 'fastq.canvas:chunks',
    'group': 'fastq.canvas:group',
    'xmap': 'fastq.canvas:xmap',
    'xstarmap': 'fastq.canvas:xstarmap',
    'signature': 'fastq.canvas:signature',
    'subtask': 'fastq.canvas:signature',  # Celery's old name, still exported by it
    'maybe_signature': 'fastq.canvas:maybe_signature',
    'shared_task': 'fastq.shared:shared_task',
    'Queue': 'fastq.routing:Queue',
    'Exchange': 'fastq.routing:Exchange',
}


def __getattr__(name: str) -> Any:
    # Lazy, so `import fastq` in a child process or a CLI stays cheap and import cycles stay impossible.
    if name in _LAZY:
        import importlib

        module, _, attr = _LAZY[name].partition(':')
        value = getattr(importlib.import_module(module), attr)
        globals()[name] = value
        return value
    if name == 'states':
        import importlib

        return importlib.import_module('fastq.states')
    if name in ('current_app', 'current_task'):  # proxies: the app or task of the moment, at each use
        from fastq import _state
        from fastq.utils.local import Proxy

        value = Proxy(_state.get_current_app if name == 'current_app' else _state.get_current_task, name=name)
        globals()[name] = value
        return value
    raise AttributeError(f'module {__name__!r} has no attribute {name!r}')
