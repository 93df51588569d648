"""`fastq inspect`, `fastq control`, `fastq status`: remote control from the command line, Celery's output."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pprint import pformat
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
    'memdump': 'Dump statistics of previous memsample requests.',
    'memsample': 'Sample current RSS memory usage.',
    'objgraph': 'Create graph of uncollected objects (memory-leak debugging).',
    'ping': 'Ping worker(s).',
    'query_task': 'Query for task information by id.',
    'registered': 'List of registered tasks.',
    'report': 'Information about Celery installation for bug reports.',
    'reserved': 'List of currently reserved tasks, not including scheduled/active.',
    'revoked': 'List of revoked task-ids.',
    'scheduled': 'List of currently scheduled ETA/countdown tasks.',
    'stats': 'Request worker statistics/information.',
}
CONTROL_COMMANDS = {  # (in name order, as Celery lists them)
    'add_consumer': 'Tell worker(s) to consume from task queue by name.',
    'autoscale': 'Modify autoscale settings.',
    'cancel_consumer': 'Tell worker(s) to stop consuming from task queue by name.',
    'disable_events': 'Tell worker(s) to stop sending task-related events.',
    'enable_events': 'Tell worker(s) to send task-related events.',
    'heartbeat': 'Tell worker(s) to send event heartbeat immediately.',
    'pool_grow': 'Grow pool by n processes/threads.',
    'pool_restart': 'Restart execution pool.',
    'pool_shrink': 'Shrink pool by n processes/threads.',
    'rate_limit': 'Tell worker(s) to modify the rate limit for a task by type.',
    'revoke': 'Revoke task by task id (or list of ids).',
    'revoke_by_stamped_headers': 'Revoke task by header (or list of headers).',
    'shutdown': 'Shutdown worker(s).',
    'terminate': 'Terminate task by task id (or list of ids).',
    'time_limit': 'Tell worker(s) to modify the time limit for task by type.',
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
    inspect.add_argument('remote', metavar='command', nargs='?', help='|'.join(INSPECT_COMMANDS))
    inspect.add_argument('--list', action='store_true', help='List available inspect commands and exit.')
    inspect.add_argument('args', nargs='*', help='arguments (task ids for query_task; attributes for registered)')
    _common(inspect)
    inspect.set_defaults(handler=run_inspect)

    control = commands.add_parser(
        'control',
        help='send commands to workers',
        description='Send the COMMAND control command to the workers.\n\nAvailable: ' + ', '.join(CONTROL_COMMANDS),
    )
    control.add_argument('remote', metavar='command', nargs='?', help='|'.join(CONTROL_COMMANDS))
    control.add_argument('--list', action='store_true', help='List available control commands and exit.')
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
    """Celery's `pretty`: lists as `* item`, dicts as sorted JSON, `ok`/`error` values indented 4 more."""
    if isinstance(reply, list):
        return 'OK', '\n'.join(f'* {item}' for item in reply) if reply else '- empty -'
    if isinstance(reply, dict):
        if 'ok' in reply or 'error' in reply:
            status = 'OK' if 'ok' in reply else 'ERROR'
            return status, _indent(_pretty(reply['ok'] if 'ok' in reply else reply['error'])[1])
        return 'OK', json.dumps(reply, sort_keys=True, indent=4)
    if isinstance(reply, str):
        return 'OK', reply
    return 'OK', pformat(reply)


def _indent(text: str, n: int = 4) -> str:
    """Celery's `text.indent`: every line indented, an empty one at either end too (`report`'s text starts and
    ends with a newline; Celery prints those as indented blank lines)."""
    return '\n'.join(' ' * n + line for line in text.split('\n'))


def _say(replies: dict[str, Any], show_reply: bool = True, quiet: bool = False) -> None:
    """`->  node: OK` and, for inspect and control, the reply indented (Celery's `_say_remote_command_reply`;
    with the global -q, without the arrow)."""
    for node, reply in replies.items():
        status, text = _pretty(reply)
        out(f' {node}: {status}' if quiet else f'->  {node}: {status}')
        if show_reply:  # (an empty reply too: Celery's indented text is never empty)
            out(_indent(text))


def _unavailable() -> CommandError:
    return _Unavailable('No nodes replied within time constraint')


def _finish(replies: dict[str, Any] | None, args: argparse.Namespace, show_reply: bool = True) -> int:
    if not replies:
        raise _unavailable()
    if args.json:
        out(json.dumps(replies))
        if show_reply:  # `celery status -j` still counts the nodes; `inspect -j` prints the JSON only
            return 0
    else:
        _say(replies, show_reply, quiet=getattr(args, 'quiet', False))
    # Celery's -q leaves the count out of `inspect`, not of `status` (which looks for -q where it never is)
    if not getattr(args, 'quiet', False) or not show_reply:
        out(f'\n{len(replies)} {pluralize(len(replies), "node").split(" ", 1)[1]} online.')
    return 0


class _Unavailable(CommandError):
    exit_code = EX_UNAVAILABLE


INSPECT_SIGNATURES = {
    'conf': '[include_defaults=False]',
    'memdump': '[n_samples=10]',
    'objgraph': '[object_type=Request] [num=200 [max_depth=10]]',
    'query_task': '[id1 [id2 [... [idN]]]]',
    'registered': '[attr1 [attr2 [... [attrN]]]]',
}


def _listing(kind: str, commands: dict[str, str], signatures: dict[str, str]) -> int:
    """`--list`: the commands with their signatures and help, as Celery's `inspect --list` prints them."""
    rows = [
        (f'{name} {signatures[name]}' if signatures.get(name) else name, text)
        for name, text in sorted(commands.items())
    ]
    import shutil
    import textwrap

    width = min(max(len(left) for left, _ in rows), 30)
    # click's HelpFormatter.write_dl, which Celery's --list prints with: the help wrapped to the terminal's
    # width (80 columns at most, less 2), continued under its column
    text_width = max(max(min(shutil.get_terminal_size().columns, 80) - 2, 50) - (width + 2) - 2, 10)
    out(f'{kind.capitalize()} Commands:')
    for left, text in rows:
        if not text:
            out(f'  {left}')
            continue
        first, *more = textwrap.wrap(text, text_width)
        if len(left) > width:
            out(f'  {left}')
            out(f'  {"":{width}}  {first}')
        else:
            out(f'  {left:{width}}  {first}')
        for line in more:
            out(f'  {"":{width}}  {line}')
    return 0


def _need_command(args: argparse.Namespace, kind: str, commands: dict[str, str]) -> None:
    if not args.remote:
        raise CommandError(f'Missing argument COMMAND. Available {kind} commands: {", ".join(commands)}')


def run_inspect(app: Fastq, args: argparse.Namespace) -> int:
    if getattr(args, 'list', False):
        return _listing('inspect', *_available('inspect'))
    _need_command(args, 'inspect', _available('inspect')[0])
    if args.remote in _app_commands('inspect'):
        return _run_app_command(app, args)
    if args.remote not in INSPECT_COMMANDS:
        raise CommandError(
            f'Command {args.remote} not recognized. Available inspect commands: ' + ', '.join(_available('inspect')[0])
        )
    inspect = app.control.inspect(destination=_destination(args), timeout=args.timeout)
    extra = list(getattr(args, 'args', None) or [])
    if args.remote == 'conf':
        replies = inspect.conf(with_defaults=bool(extra) and extra[0].lower() in ('1', 'true', 'yes'))
    elif args.remote in ('query_task', 'registered'):
        replies = getattr(inspect, args.remote)(*extra)
    elif args.remote == 'memdump':
        replies = inspect.memdump(int(extra[0]) if extra else 10)
    elif args.remote == 'objgraph':
        replies = inspect.objgraph(*extra[:1], *[int(v) for v in extra[1:3]])
    else:
        replies = getattr(inspect, args.remote)()
    return _finish(replies, args)


def run_report(app: Fastq, args: argparse.Namespace) -> int:
    from fastq.worker.inspect import bugreport

    app.import_default_modules()  # (as `celery report`)
    out(bugreport(app))
    return 0


def run_status(app: Fastq, args: argparse.Namespace) -> int:
    replies = app.control.inspect(destination=_destination(args), timeout=args.timeout).ping()
    return _finish(replies, args, show_reply=False)


#: Celery's argument lists of the control commands (`celery/worker/control.py`): (name, type) pairs taken in
#: order, then the variadic rest, and the signature shown when there are too many.
CONTROL_ARGUMENTS: dict[str, tuple[list[tuple[str, Callable[[str], Any]]], str | None, str]] = {
    'revoke': ([], 'task_id', '[id1 [id2 [... [idN]]]]'),
    'revoke_by_stamped_headers': ([], 'headers', '[key1=value1 [key2=value2 [... [keyN=valueN]]]]'),
    'terminate': ([('signal', str)], 'task_id', '<signal> [id1 [id2 [... [idN]]]]'),
    'rate_limit': ([('task_name', str), ('rate_limit', str)], None, '<task_name> <rate_limit (e.g., 5/s | 5/m | 5/h)>'),
    'time_limit': ([('task_name', str), ('soft', float), ('hard', float)], None, '<task_name> <soft_secs> [hard_secs]'),
    'add_consumer': (
        [('queue', str), ('exchange', str), ('exchange_type', str), ('routing_key', str)],
        None,
        '<queue> [exchange [type [routing_key]]]',
    ),
    'cancel_consumer': ([('queue', str)], None, '<queue>'),
    'pool_grow': ([('n', int)], None, '[N=1]'),
    'pool_shrink': ([('n', int)], None, '[N=1]'),
    'autoscale': ([('max', int), ('min', int)], None, '[max [min]]'),
}


#: Arguments a command cannot do without (Celery's CLI refuses the call; fastq's took `rate_limit add` as
#: "no limit").
_REQUIRED = {'rate_limit': 2, 'time_limit': 2, 'terminate': 1, 'add_consumer': 1, 'cancel_consumer': 1}


def _app_commands(kind: str) -> dict[str, dict[str, Any]]:
    """The app's own commands of this kind (defined with control_command / inspect_command when the app's
    modules were imported)."""
    from fastq.worker.control import APP_COMMANDS

    return {name: spec for name, spec in APP_COMMANDS.items() if spec['type'] == kind}


def _available(kind: str) -> tuple[dict[str, str], dict[str, str]]:
    """The commands of this kind by name, with their help, and their signatures: the built-in ones and those
    the app defined, as Celery's --list and its 'Available ... commands' show them."""
    if kind == 'inspect':
        commands, signatures = dict(INSPECT_COMMANDS), dict(INSPECT_SIGNATURES)
    else:
        commands = dict(CONTROL_COMMANDS)
        signatures = {name: spec[2] for name, spec in CONTROL_ARGUMENTS.items()}
    for name, spec in _app_commands(kind).items():
        if spec.get('listed', True):
            commands[name], signatures[name] = spec.get('help', ''), spec['signature']
    return dict(sorted(commands.items())), signatures


def _run_app_command(app: Fastq, args: argparse.Namespace) -> int:
    from fastq.worker.control import APP_COMMANDS

    spec = APP_COMMANDS[args.remote]
    values = list(getattr(args, 'args', None) or [])
    arguments = _arguments(args.remote, values, spec['args'], spec['variadic'], spec['signature'])
    replies = app.control.broadcast(
        args.remote, arguments=arguments, destination=_destination(args), reply=True, timeout=args.timeout
    )
    if not replies:
        raise _unavailable()
    if args.json:  # (inspect's as one object by node, control's as the list of replies: Celery's)
        merged = {node: value for reply in replies for node, value in reply.items()}
        out(json.dumps(merged if spec['type'] == 'inspect' else replies))
        return 0
    quiet = getattr(args, 'quiet', False)
    for reply in replies:
        _say(reply, quiet=quiet)
    if spec['type'] == 'inspect' and not quiet:  # (Celery's `inspect` counts the nodes for any command)
        out(f'\n{len(replies)} {pluralize(len(replies), "node").split(" ", 1)[1]} online.')
    return 0


def _control_call(command: str, values: list[str]) -> tuple[str, dict[str, Any]]:
    """The pidbox method and arguments of `fastq control COMMAND VALUES...`, compiled as Celery's CLI does."""
    if command not in CONTROL_COMMANDS:
        raise CommandError(
            f'Command {command} not recognized. Available control commands: ' + ', '.join(_available('control')[0])
        )
    spec, variadic, signature = CONTROL_ARGUMENTS.get(command, ([], None, ''))
    if len(values) < _REQUIRED.get(command, 0):
        raise CommandError(f'Command {command!r} takes arguments: {signature}')
    return command, _arguments(command, values, spec, variadic, signature)


def _arguments(
    command: str, values: list[str], spec: list[tuple[str, Any]], variadic: str | None, signature: str
) -> dict[str, Any]:
    """A command's arguments from the command line's values: (name, type) pairs in order, then the rest as
    the variadic argument (Celery's CLI)."""
    arguments: dict[str, Any] = {}
    rest = list(values)
    for index, value in enumerate(values):
        if index >= len(spec):
            if variadic:
                break
            raise CommandError(f'Command {command!r} takes arguments: {signature or "none"}')
        name, typ = spec[index]
        try:
            arguments[name] = typ(value)
        except ValueError as exc:
            raise CommandError(f'Command {command!r} takes arguments: {signature}: {exc}') from None
        rest = values[index + 1 :]
    if variadic:
        arguments[variadic] = rest
    return arguments


def run_control(app: Fastq, args: argparse.Namespace) -> int:
    if getattr(args, 'list', False):
        return _listing('control', *_available('control'))
    _need_command(args, 'control', _available('control')[0])
    if args.remote in _app_commands('control'):
        return _run_app_command(app, args)
    method, arguments = _control_call(args.remote, list(args.args))
    if method in ('revoke', 'terminate'):  # also kept in the broker, as app.control.revoke keeps them (restarts)
        app.broker.revoke(list(arguments.get('task_id') or []), float(app.conf.worker_revoke_expires))
    replies = app.control.broadcast(
        method, arguments=arguments, destination=_destination(args), reply=True, timeout=args.timeout
    )
    if not replies:  # as Celery's: `shutdown` gets none, the worker leaving before it answers
        raise _unavailable()
    if args.json:
        out(json.dumps(replies))
        return 0
    for reply in replies:
        _say(reply, quiet=getattr(args, 'quiet', False))
    return 0
