"""`fastq call` and `fastq result`."""

from __future__ import annotations

import argparse
import json
from typing import TYPE_CHECKING, Any

from fastq import states
from fastq.cli.base import CommandError, err, out

if TYPE_CHECKING:
    from fastq.app import Fastq


def register(commands: Any) -> None:
    p = commands.add_parser('call', help='call a task by name', description='Call a task by name.')
    p.add_argument('name', help='task name, e.g. tasks.add')
    p.add_argument('-a', '--args', default='[]', help='positional arguments (JSON list)')
    p.add_argument('-k', '--kwargs', default='{}', help='keyword arguments (JSON object)')
    p.add_argument('--eta', help='ISO-8601 time to run at')
    p.add_argument('--countdown', type=float, help='seconds to wait before running')
    p.add_argument('--expires', help='seconds or an ISO-8601 time after which the task is discarded')
    p.add_argument('--serializer', default='json', help='json (default) or msgpack')
    p.add_argument('--queue', help='queue to send to')
    p.add_argument('--exchange', help='exchange to send to')
    p.add_argument('--routing-key', help='routing key')
    p.set_defaults(handler=call)

    r = commands.add_parser(
        'result', help='print the result of a task', description='Print the return value of a task.'
    )
    r.add_argument('task_id', help='the task id')
    r.add_argument('-t', '--task', help='task name (to use its result backend settings)')
    r.add_argument('--traceback', action='store_true', help='show the traceback instead')
    r.set_defaults(handler=result)


def _json(value: str, option: str, kind: type) -> Any:
    try:
        parsed = json.loads(value)
    except ValueError as exc:
        raise CommandError(f'{option}: not valid JSON: {exc}') from None
    if not isinstance(parsed, kind):
        raise CommandError(f'{option}: expected a JSON {"list" if kind is list else "object"}, got {value!r}')
    return parsed


def call(app: Fastq, args: argparse.Namespace) -> int:
    task_args = _json(args.args, '--args', list)
    task_kwargs = _json(args.kwargs, '--kwargs', dict)
    expires: Any = args.expires
    if expires is not None:
        try:
            expires = float(expires)
        except ValueError:
            pass
    options = {
        k: v
        for k, v in {
            'queue': args.queue,
            'exchange': args.exchange,
            'routing_key': args.routing_key,
        }.items()
        if v
    }
    res = app.send_task(
        args.name,
        task_args,
        task_kwargs,
        eta=args.eta,
        countdown=args.countdown,
        expires=expires,
        serializer=args.serializer,
        **options,
    )
    out(res.id)
    return 0


def result(app: Fastq, args: argparse.Namespace) -> int:
    res = app.AsyncResult(args.task_id, task_name=args.task)
    if args.traceback:
        out(str(res.traceback))
    else:
        value = res.get(propagate=False, disable_sync_subtasks=False)  # (waits for it, as Celery's)
        if isinstance(value, BaseException) and res.state in states.PROPAGATE_STATES:
            # As Celery's: the task's error is raised here, so the command fails (its traceback on stderr)
            err(res.traceback or f'{type(value).__name__}: {value}')
            err(f'Error: the task {res.state.lower()}: {value!r}')
            return 1
        out(repr(value) if isinstance(value, BaseException) else str(value))
    return 0
