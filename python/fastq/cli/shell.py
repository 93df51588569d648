"""`fastq shell`: a Python shell with the app, the canvas and every task at hand, as `celery shell` gives."""

from __future__ import annotations

import argparse
import os
import sys
from typing import TYPE_CHECKING, Any

from fastq.cli.base import CommandError

if TYPE_CHECKING:
    from fastq.app import Fastq


def register(commands: Any) -> None:
    p = commands.add_parser(
        'shell',
        help='start a shell session with the app and its tasks',
        description='Start a shell session with convenient access to fastq symbols: app (also as celery), '
        'Task, chain, chord, group, chunks, xmap, xstarmap, signature, subtask, and every task by its '
        'function name.',
    )
    p.add_argument('-I', '--ipython', action='store_true', help='force IPython')
    p.add_argument('-B', '--bpython', action='store_true', help='force bpython')
    p.add_argument('--python', action='store_true', help='force the default Python shell')
    p.add_argument('-T', '--without-tasks', action='store_true', help="don't add the tasks to the namespace")
    p.add_argument('--eventlet', action='store_true', help=argparse.SUPPRESS)
    p.add_argument('--gevent', action='store_true', help=argparse.SUPPRESS)
    p.set_defaults(handler=run)


def namespace(app: Fastq, with_tasks: bool = True) -> dict[str, Any]:
    """What the shell starts with: Celery's names for the same things."""
    import fastq

    app.init_worker()  # the `include` and `imports` modules, so their tasks are there too
    names: dict[str, Any] = {'app': app, 'celery': app}
    for name in ('Task', 'chord', 'group', 'chain', 'chunks', 'xmap', 'xstarmap', 'subtask', 'signature'):
        names[name] = getattr(fastq, name)
    if with_tasks:
        names.update({type(task).__name__: task for task in app.tasks.values() if not task.name.startswith('celery.')})
    return names


def run(app: Fastq, args: argparse.Namespace) -> int:
    if args.eventlet:
        raise CommandError('--eventlet: fastq has no eventlet pool (see fastq worker -P)')
    if args.gevent:  # (as Celery's: the shell's calls then wait cooperatively)
        from gevent import monkey

        monkey.patch_all()
    sys.path.insert(0, os.getcwd())
    names = namespace(app, not args.without_tasks)
    if args.python:
        return _python(names)
    if args.ipython:
        return _ipython(names)
    if args.bpython:
        return _bpython(names)
    try:
        return _ipython(names)
    except CommandError:
        pass
    try:
        return _bpython(names)
    except CommandError:
        return _python(names)


def _python(names: dict[str, Any]) -> int:
    import code

    try:
        import readline
        import rlcompleter
    except ImportError:
        pass
    else:
        readline.set_completer(rlcompleter.Completer(names).complete)
        readline.parse_and_bind('tab:complete')
    code.interact(local=names)
    return 0


def _ipython(names: dict[str, Any]) -> int:
    try:
        from IPython import start_ipython  # type: ignore[import-not-found,unused-ignore]
    except ImportError:
        raise CommandError('IPython is not installed') from None
    start_ipython(argv=[], user_ns=names)
    return 0


def _bpython(names: dict[str, Any]) -> int:
    try:
        import bpython  # type: ignore[import-not-found,unused-ignore]
    except ImportError:
        raise CommandError('bpython is not installed') from None
    bpython.embed(names)
    return 0
