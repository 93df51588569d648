"""`fastq inspect`, `fastq control`, `fastq status`: remote control from the command line, Celery's output."""

from __future__ import annotations

import argparse
import json
from typing import TYPE_CHECKING, Any

from fastq.cli.base import CommandError, out
from fastq.utils.text import pluralize

if TYPE_CHECKING:
    from fastq.app import Fastq

# Celery's help texts (celery/worker/control.py)
INSPECT_COMMANDS = {
    'active': 'List of tasks currently being executed.',
    'active_queues': 'List the task queues a worker is currently consuming from.',
    'clock': 'Get current logical clock value.',
    'conf': 'List configuration.',
    'ping': 'Ping worker(s).',
    'query_task': 'Query for task information by id.',
    'registered': 'List of registered tasks.',
    'report': 'Information about Celery installation for bug reports.',
    'reserved': 'List of currently reserved tasks, not including scheduled/active.',
    'revoked': 'List of revoked task-ids.',
    'scheduled': 'List of currently scheduled ETA/countdown tasks.',
    'stats': 'Request worker statistics/information.',
}
CONTROL_COMMANDS = {
    'add_consumer': 'Tell worker(s) to consume from task queue by name.',
    'autoscale': 'Modify autoscale settings.',
    'cancel_consumer': 'Tell worker(s) to stop consuming from task queue by name.',
    'pool_grow': 'Grow pool by n processes/threads.',
    'pool_restart': 'Restart execution pool.',
    'pool_shrink': 'Shrink pool by n processes/threads.',
    'disable_events': 'Tell worker(s) to stop sending task-related events.',
    'enable_events': 'Tell worker(s) to send task-related events.',
    'heartbeat': 'Tell worker(s) to send event heartbeat immediately.',
    'rate_limit': 'Tell worker(s) to modify the rate limit for a task by type.',
    'revoke': 'Revoke task by task id (or list of ids).',
    'terminate': 'Terminate task by task id (or list of ids).',
    'time_limit': 'Tell worker(s) to modify the time limit for task by type.',
    'shutdown': 'Shutdown worker(s).',
}
EX_UNAVAILABLE = 69  # what `celery inspect` exits with when no node replies (liveness probes rely on it)


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument('-t', '--timeout', type=float, default=1.0, help='timeout in seconds waiting for replies')
    p.add_argument('-d', '--destination', help='comma-separated list of destination node names')
    p.add_argument('-j', '--json', action='store_true', help='use json as output format')


def register(commands: Any) -> None:
    inspect = commands.add_parser(
        'inspect',
        help='inspect the workers',
        description='Inspect the workers by sending them the COMMAND inspect command.\n\nAvailable: '
        + ', '.join(INSPECT_COMMANDS),
    )
    inspect.add_argument('command', help='|'.join(INSPECT_COMMANDS))
    inspect.add_argument('args', nargs='*', help='arguments (task ids for query_task; attributes for registered)')
    _common(inspect)
    inspect.set_defaults(handler=run_inspect)

    control = commands.add_parser(
        'control',
        help='send commands to workers',
        description='Send the COMMAND control command to the workers.\n\nAvailable: ' + ', '.join(CONTROL_COMMANDS),
    )
    control.add_argument('command', help='|'.join(CONTROL_COMMANDS))
    control.add_argument('args', nargs='*', help='arguments (task ids for revoke/terminate; a signal after them)')
    _common(control)
    control.set_defaults(handler=run_control)

    status = commands.add_parser('status', help='show the workers that are online')
    _common(status)
    status.set_defaults(handler=run_status)

    report = commands.add_parser('report', help='shows information useful to include in bug-reports')
    report.set_defaults(handler=run_report)


def _destination(args: argparse.Namespace) -> list[str] | None:
    if not args.destination:
        return None
    return [d.strip() for d in args.destination.split(',') if d.strip()]


def _pretty(reply: Any) -> tuple[str, str]:
    if isinstance(reply, dict) and ('ok' in reply or 'error' in reply):
        status = 'OK' if 'ok' in reply else 'ERROR'
        value = reply.get('ok', reply.get('error'))
        return status, str(value) if not isinstance(value, dict | list) else json.dumps(value, indent=4)
    if isinstance(reply, list):
        return 'OK', '\n'.join(f'* {item}' for item in reply) if reply else '- empty -'
    if isinstance(reply, dict):
        return 'OK', json.dumps(reply, sort_keys=True, indent=4)
    return 'OK', str(reply)


def _say(replies: dict[str, Any]) -> None:
    for node, reply in replies.items():
        status, text = _pretty(reply)
        out(f'->  {node}: {status}')
        out('\n'.join(f'        {line}' for line in text.splitlines()))


def _finish(replies: dict[str, Any] | None, args: argparse.Namespace) -> int:
    if not replies:
        raise _Unavailable('No nodes replied within time constraint')
    if args.json:
        out(json.dumps(replies))
        return 0
    _say(replies)
    out(f'\n{len(replies)} {pluralize(len(replies), "node").split(" ", 1)[1]} online.')
    return 0


class _Unavailable(CommandError):
    exit_code = EX_UNAVAILABLE


def run_inspect(app: Fastq, args: argparse.Namespace) -> int:
    if args.command not in INSPECT_COMMANDS:
        raise CommandError(
            f'Command {args.command} not recognized. Available inspect commands: {", ".join(INSPECT_COMMANDS)}'
        )
    inspect = app.control.inspect(destination=_destination(args), timeout=args.timeout)
    extra = list(getattr(args, 'args', None) or [])
    if args.command == 'conf':
        replies = inspect.conf(with_defaults=bool(extra) and extra[0].lower() in ('1', 'true', 'yes'))
    elif args.command in ('query_task', 'registered'):
        replies = getattr(inspect, args.command)(*extra)
    else:
        replies = getattr(inspect, args.command)()
    return _finish(replies, args)


def run_report(app: Fastq, args: argparse.Namespace) -> int:
    from fastq.worker.inspect import bugreport

    out(bugreport(app))
    return 0


def run_status(app: Fastq, args: argparse.Namespace) -> int:
    return run_inspect(app, argparse.Namespace(**{**vars(args), 'command': 'ping'}))


def _usage(command: str, usage: str) -> CommandError:
    return CommandError(f'{command}: usage: fastq control {command} {usage}')


def _revoke_arguments(command: str, values: list[str]) -> dict[str, Any]:
    if not values:
        raise CommandError(f'{command}: which task ids?')
    signal = 'SIGTERM'
    if command == 'terminate' and len(values) > 1 and values[-1].upper().lstrip('SIG').isalpha():
        signal = values.pop()
    return {'task_id': values, 'terminate': command == 'terminate', 'signal': signal}


def _control_call(command: str, values: list[str]) -> tuple[str, dict[str, Any]]:
    """The pidbox method and arguments of `fastq control COMMAND VALUES...` (Celery's argument order)."""
    if command in ('revoke', 'terminate'):
        return 'revoke', _revoke_arguments(command, values)
    if command == 'rate_limit':
        if len(values) != 2:
            raise _usage(command, '<task_name> <rate_limit (e.g. 5/s | 5/m | 5/h)>')
        return command, {'task_name': values[0], 'rate_limit': values[1]}
    if command == 'time_limit':
        if len(values) not in (2, 3):
            raise _usage(command, '<task_name> <soft_secs> [hard_secs]')
        hard = float(values[2]) if len(values) == 3 else None
        return command, {'task_name': values[0], 'soft': float(values[1]), 'hard': hard}
    if command in ('add_consumer', 'cancel_consumer'):
        if not values:
            raise _usage(command, '<queue>')
        return command, {'queue': values[0]}
    if command in ('pool_grow', 'pool_shrink'):
        return command, {'n': int(values[0]) if values else 1}
    if command == 'autoscale':
        if len(values) != 2:
            raise _usage(command, '<max> <min>')
        return command, {'max': int(values[0]), 'min': int(values[1])}
    if command in ('heartbeat', 'enable_events', 'disable_events', 'pool_restart', 'shutdown'):
        return command, {}
    raise CommandError(f'Command {command} not recognized. Available control commands: {", ".join(CONTROL_COMMANDS)}')


def run_control(app: Fastq, args: argparse.Namespace) -> int:
    method, arguments = _control_call(args.command, list(args.args))
    destination = _destination(args)
    if method == 'shutdown':  # no reply: the worker is going away
        app.control.shutdown(destination=destination)
        return 0
    replies = app.control.broadcast(
        method, arguments=arguments, destination=destination, reply=True, timeout=args.timeout
    )
    merged: dict[str, Any] = {}
    for reply in replies or ():
        merged.update(reply)
    return _finish(merged, args)
