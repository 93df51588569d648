"""`fastq logtool stats|traces|errors|incomplete|debug FILES`: read worker logs (Celery's command and report).

The lines are matched as Celery's logtool matches them, and the output is Celery's to the character (its
echo of a line that ends in a newline leaves an empty line after it; so does this). Two fixes: Celery's
logtool knows only Celery 3's `Received task: name[id]` (and fails on it unless something follows the
id), and takes the `Task name[id] received` that Celery 5 and fastq workers write for a task that finished
with the result "received", that is, for an error; here both count as received. With no FILES (or `-`),
standard input is read.
"""

from __future__ import annotations

import argparse
import re
from collections import Counter
from collections.abc import Callable, Iterable
from fileinput import FileInput
from typing import TYPE_CHECKING, Any

from fastq.cli.base import CommandError, out

if TYPE_CHECKING:
    from fastq.app import Fastq

# Celery's (celery/bin/logtool.py), and the received line of Celery >= 4 (`Task %(name)s[%(id)s] received`).
RE_LOG_START = re.compile(r'^\[\d\d\d\d\-\d\d-\d\d ')
RE_TASK_RECEIVED = re.compile(r'.+?\] Received')
RE_TASK_RECEIVED_NOW = re.compile(r'.+?\] Task [\w\.]+\[.+?\] received\s*$')
RE_TASK_READY = re.compile(r'.+?\] Task')
RE_TASK_INFO = re.compile(r'.+?([\w\.]+)\[(.+?)\]')  # (Celery's ends in `.+`: it fails on `Received task: x[id]`)
RE_TASK_RESULT = re.compile(r'.+?[\w\.]+\[.+?\] (.+)')

REPORT_FORMAT = """
Report
======
Task total: {total}
Task errors: {errors}
Task success: {succeeded}
Task completed: {completed}
Tasks
=====
{types}
"""

Line = Callable[[str], None]


class Audit:
    """One pass over log lines: tasks received and finished, with hooks for errors, traces and the rest."""

    def __init__(
        self,
        on_task_error: Callable[[str, str, str, str | None], None] | None = None,
        on_trace: Line | None = None,
        on_debug: Line | None = None,
    ) -> None:
        self.ids: dict[str, None] = {}  # (ordered sets: `incomplete` lists in the order the log names them)
        self.names: dict[str, str] = {}
        self.results: dict[str, str | None] = {}
        self.ready: dict[str, None] = {}
        self.task_types: Counter[str] = Counter()
        self.task_errors = 0
        self.on_task_error = on_task_error
        self.on_trace = on_trace
        self.on_debug = on_debug
        self.prev_line: str | None = None

    def run(self, files: Iterable[str]) -> Audit:
        with FileInput(list(files) or ['-'], encoding='utf-8', errors='replace') as lines:
            for line in lines:
                self.feed(line)
        return self

    def task_received(self, line: str, task_name: str, task_id: str) -> None:
        self.names[task_id] = task_name
        self.ids[task_id] = None
        self.task_types[task_name] += 1

    def task_ready(self, line: str, task_name: str, task_id: str, result: str | None) -> None:
        self.ready[task_id] = None
        self.results[task_id] = result
        if 'succeeded' not in (result or ''):
            self.task_errors += 1
            if self.on_task_error:
                self.on_task_error(line, task_name, task_id, result)

    def feed(self, line: str) -> None:
        if RE_LOG_START.match(line):
            if RE_TASK_RECEIVED.match(line) or RE_TASK_RECEIVED_NOW.match(line):
                self.task_received(line, *_task_info(line))
            elif RE_TASK_READY.match(line):
                result = RE_TASK_RESULT.match(line)
                self.task_ready(line, *_task_info(line), result.group(1) if result else None)
            elif self.on_debug:
                self.on_debug(line)
            self.prev_line = line
        else:
            if self.on_trace:
                self.on_trace('\n'.join(part for part in (self.prev_line, line) if part))
            self.prev_line = None

    def incomplete_tasks(self) -> list[str]:
        """Received and not finished, or finished and not received (the log began after): Celery's `ids ^ ready`."""
        return [i for i in self.ids if i not in self.ready] + [i for i in self.ready if i not in self.ids]

    def report(self) -> dict[str, Any]:
        completed = len(self.ready)
        return {
            'types': '\n'.join(f'{name}: {count}' for name, count in self.task_types.most_common()),
            'total': len(self.ids),
            'errors': self.task_errors,
            'completed': completed,
            'succeeded': completed - self.task_errors,
        }


def _task_info(line: str) -> tuple[str, str]:
    match = RE_TASK_INFO.match(line)
    if match is None:
        return '', ''
    return match.group(1), match.group(2)


def register(commands: Any) -> None:
    p = commands.add_parser(
        'logtool', help='the logtool command: read worker logs', description='Read worker log files.'
    )
    actions = p.add_subparsers(dest='action', metavar='ACTION', required=True)
    for name, text in (
        ('stats', 'tasks received, completed and failed, by task name'),
        ('traces', 'the tracebacks (lines that are not log records), each after the record it follows'),
        ('errors', 'the records of tasks that did not succeed'),
        ('incomplete', 'the ids of tasks received and not completed'),
        ('debug', 'the records that are neither a task received nor a task completed'),
    ):
        a = actions.add_parser(name, help=text)
        a.add_argument('files', nargs='*', metavar='FILES', help='log files (standard input when none)')
    p.set_defaults(handler=run, needs_app=False)


def run(app: Fastq | None, args: argparse.Namespace) -> int:
    try:
        if args.action == 'stats':
            out(REPORT_FORMAT.format(**Audit().run(args.files).report()))
        elif args.action == 'traces':
            Audit(on_trace=out).run(args.files)
        elif args.action == 'errors':
            Audit(on_task_error=lambda line, *_: out(line)).run(args.files)
        elif args.action == 'incomplete':
            for task_id in Audit().run(args.files).incomplete_tasks():
                out(f'Did not complete: {task_id}')
        else:
            Audit(on_debug=out).run(args.files)
    except OSError as exc:
        raise CommandError(f'{exc.filename}: {exc.strerror}') from None
    return 0
