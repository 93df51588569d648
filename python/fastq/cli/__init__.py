"""The `fastq` command (also `python -m fastq`), with Celery's subcommands, options and output words.

fastq -A proj worker -l info        fastq -A proj call proj.add --args '[1, 2]'
fastq -A proj beat -l info          fastq -A proj worker -B (worker with beat inside)
fastq -A proj result <id>           fastq -A proj purge -f
fastq -A proj deadletter list       fastq -A proj inspect active / control revoke <id> / status
fastq -A proj events --dump         fastq -A proj dashboard --port 5555 (task events: workers with -E)
fastq -A proj multi start w1 w2 --pidfile=/run/fastq/%n.pid   (detached workers; stopwait, restart, kill)
fastq -A proj shell                 (a Python shell with the app and its tasks)
fastq -A proj migrate redis://old redis://new -a   (move waiting tasks to another broker)
fastq -A proj list bindings         fastq logtool stats worker.log
fastq -A proj amqp queue.declare foo   (RabbitMQ administration; a shell without arguments)
fastq --version
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING

from fastq import __version__
from fastq.cli.base import CommandError, find_app
from fastq.cli.usage import Parser, subcommands
from fastq.exceptions import BrokerConnectionError, ImproperlyConfigured, OperationalError

if TYPE_CHECKING:
    from fastq.app import Fastq

__all__ = ['main']


def build_parser() -> Parser:
    from fastq.cli import (
        amqp,
        beat,
        bindings,
        calling,
        control,
        dashboard,
        deadletter,
        events,
        logtool,
        migrate,
        multi,
        purge,
        shell,
        upgrade,
        worker,
    )

    parser = Parser(
        prog='fastq',
        description='fastq: a Celery-compatible distributed task queue.',
        epilog='Run "fastq COMMAND --help" for the options of a command.',
    )
    parser.add_argument('--version', action='version', version=f'{__version__} (fastq)')
    parser.add_argument('-A', '--app', help='the application: a module (tasks), module:attribute or package')
    parser.add_argument('-b', '--broker', help='broker URL (overrides broker_url)')
    parser.add_argument('--result-backend', help='result backend URL (overrides result_backend)')
    parser.add_argument('--config', help='configuration module (config_from_object)')
    parser.add_argument('--workdir', help='change to this directory before loading the app')
    parser.add_argument('-C', '--no-color', action='store_true', help='disable colored output')
    parser.add_argument('-q', '--quiet', action='store_true', help='less output')
    parser.add_argument('--loader', help=argparse.SUPPRESS)
    parser.add_argument('--skip-checks', action='store_true', help=argparse.SUPPRESS)  # (Celery's, for Django)
    commands = parser.add_subparsers(dest='command', metavar='COMMAND')
    worker.register(commands)
    multi.register(commands)
    beat.register(commands)
    calling.register(commands)
    purge.register(commands)
    deadletter.register(commands)
    control.register(commands)
    events.register(commands)
    dashboard.register(commands)
    shell.register(commands)
    upgrade.register(commands)
    migrate.register(commands)
    bindings.register(commands)
    logtool.register(commands)
    amqp.register(commands)
    return parser


#: Global options and the environment variables Celery's CLI reads them from (besides CELERY_<OPTION>).
_GLOBAL_ENV = {
    'app': ('APP',),
    'broker': ('BROKER_URL',),
    'result_backend': ('RESULT_BACKEND',),
    'config': ('CONFIG_MODULE',),
    'no_color': ('NO_COLOR',),
    'skip_checks': ('SKIP_CHECKS',),
}


def _options_from_environment(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Options not given on the command line, from the environment as Celery's CLI reads them: `APP` or
    `CELERY_APP` (or `FASTQ_APP`) for -A and the other global options, `CELERY_<COMMAND>_<OPTION>` for a
    command's (`CELERY_WORKER_CONCURRENCY=4`)."""
    import os

    def fill(action: argparse.Action, names: Sequence[str]) -> None:
        if action.dest in ('help', 'version') or getattr(args, action.dest, None) != action.default:
            return
        raw = next((os.environ[name] for name in names if os.environ.get(name) is not None), None)
        if raw is None:
            return
        if isinstance(action, argparse._StoreTrueAction):
            setattr(args, action.dest, raw.strip().lower() in ('1', 'true', 'yes', 'on'))
        else:
            setattr(args, action.dest, action.type(raw) if callable(action.type) else raw)

    for action in parser._actions:
        if action.option_strings:
            dest = action.dest.upper()
            fill(action, [f'FASTQ_{dest}', f'CELERY_{dest}', *_GLOBAL_ENV.get(action.dest, ())])
    subparsers = subcommands(parser)
    command = getattr(args, 'command', None)
    if subparsers is None or command not in subparsers.choices:
        return
    prefix = command.upper().replace('-', '_')
    for action in subparsers.choices[command]._actions:
        if action.option_strings:
            dest = action.dest.upper()
            fill(action, [f'CELERY_{prefix}_{dest}'])  # (not FASTQ_: those name settings, FASTQ_BEAT_SCHEDULE)


def _command_parser(parser: Parser, args: argparse.Namespace) -> Parser:
    """The parser of the (sub)command `args` were parsed for: `fastq deadletter list`'s, say."""
    while True:
        commands = subcommands(parser)
        chosen = commands.choices.get(getattr(args, commands.dest, None) or '') if commands is not None else None
        if not isinstance(chosen, Parser):
            return parser
        parser = chosen


def _load_app(spec: str | None) -> Fastq:
    """`find_app`, with an app module that fails to import reported as Celery's CLI reports it (exit 2)."""
    try:
        return find_app(spec)
    except (CommandError, ImproperlyConfigured, KeyboardInterrupt):
        raise
    except Exception:
        import traceback

        raise CommandError(
            f'Unable to load celery application.\nWhile trying to load the module {spec} the following error '
            f'occurred:\n{traceback.format_exc()}'
        ) from None


def _unreachable(exc: BaseException) -> bool:
    """Whether `exc` says the broker cannot be reached (fastq's errors, or a client library's)."""
    if isinstance(exc, BrokerConnectionError | OperationalError | ConnectionError):
        return True
    return type(exc).__name__ in ('ConnectionError', 'TimeoutError') and type(exc).__module__.startswith('redis')


def _stdout_closed() -> bool:
    """Whether stdout's reader has gone (a pipe into `head`): then a BrokenPipeError is no broker's. stdout is
    pointed at /dev/null so the interpreter's last flush does not fail again."""
    import select

    try:
        fd = sys.stdout.fileno()
        poller = select.poll()
        poller.register(fd, select.POLLOUT)
        if not any(events & select.POLLERR for _, events in poller.poll(0)):
            return False
        os.dup2(os.open(os.devnull, os.O_WRONLY), fd)
    except (OSError, ValueError):
        return False
    return True


def _split_settings(parser: argparse.ArgumentParser, argv: list[str]) -> tuple[list[str], list[str]]:
    """worker/beat: `-- worker.concurrency=4 .prefetch_multiplier=1` are settings (Celery's), not arguments
    (for multi, what follows `--` goes to the workers it starts: left in place)."""
    if '--' not in argv:
        return argv, []
    cut = argv.index('--')
    head = parser.parse_known_args(argv[:cut])[0]
    if getattr(head, 'command', None) in ('worker', 'beat'):
        return argv[:cut], argv[cut + 1 :]
    return argv, []


def _configure(app: Fastq, args: argparse.Namespace, settings: list[str]) -> None:
    """The global options' and the command line's settings, over the app's own."""
    if args.broker:
        app.conf.broker_url = args.broker
    if args.result_backend:
        app.conf.result_backend = args.result_backend
    if args.config:
        app.config_from_object(args.config)
    if settings:
        app.config_from_cmdline(settings, namespace='worker' if args.command == 'worker' else 'celery')


_GLOBAL_VALUED = {'-A', '--app', '-b', '--broker', '--result-backend', '--config', '--workdir', '--loader'}


def _early_app(parser: argparse.ArgumentParser, arguments: list[str], app: Fastq | None) -> tuple[Fastq | None, bool]:
    """The app, loaded before the command line is parsed when `-A` (or APP/CELERY_APP/FASTQ_APP) names it,
    so that its `app.user_options` join the commands' options (fastq.cli.options), as in Celery, whose CLI
    loads the app first too. Returns the app (None: loaded later, as before) and whether --workdir was
    entered."""

    from fastq.cli.options import _commands, add_user_options

    commands = _commands(parser)
    i = 0
    while i < len(arguments) and arguments[i] not in commands:
        i += 2 if arguments[i] in _GLOBAL_VALUED else 1
    command = commands.get(arguments[i]) if i < len(arguments) else None
    if command is None or command.get_default('needs_app') is False:
        return app, False
    entered = False
    if app is None:
        known = _global_options(arguments[:i])
        spec = _app_spec(known)
        if not spec:
            return None, False
        if known.workdir:
            os.chdir(known.workdir)
            entered = True
        app = _load_app(spec)
    add_user_options(parser, app)
    return app, entered


def _global_options(arguments: list[str]) -> argparse.Namespace:
    """The global options among `arguments` (those before the command), read before the whole command line
    can be (the app they name may add options to it)."""
    pre = argparse.ArgumentParser(add_help=False)
    for flag in ('-A', '--app'), ('-b', '--broker'), ('--result-backend',), ('--config',), ('--workdir',):
        pre.add_argument(*flag)
    pre.set_defaults(command=None)
    return pre.parse_known_args(arguments)[0]


def _app_spec(known: argparse.Namespace) -> str | None:
    """`-A`, else the environment's APP (fastq's name first, then Celery's)."""
    return known.app or next((os.environ[n] for n in ('FASTQ_APP', 'CELERY_APP', 'APP') if os.environ.get(n)), None)


def _plugin(parser: argparse.ArgumentParser, arguments: list[str], app: Fastq | None) -> int | None:
    """A command no fastq command answers to but a Celery CLI plugin does (`fastq -A proj flower`): run it
    (fastq.cli.plugins) and return its exit status; None for everything else."""
    from fastq.cli import plugins
    from fastq.cli.options import _commands

    commands = _commands(parser)
    i = 0
    while i < len(arguments) and arguments[i].startswith('-'):
        i += 2 if arguments[i] in _GLOBAL_VALUED else 1
    if i >= len(arguments) or arguments[i] in commands or plugins.find(arguments[i]) is None:
        return None
    known = _global_options(arguments[:i])
    if known.workdir:
        os.chdir(known.workdir)
    if app is None:
        spec = _app_spec(known)
        if not spec:
            raise CommandError(f'{arguments[i]}: which app? (fastq -A proj {arguments[i]} ...)')
        app = _load_app(spec)
    _configure(app, known, [])
    return plugins.run(app, arguments[i], arguments[i + 1 :])


def main(argv: Sequence[str] | None = None, app: Fastq | None = None) -> None:
    """Entry point of `fastq`; exits with the command's status."""
    from fastq.utils.green import maybe_patch_concurrency

    maybe_patch_concurrency(sys.argv[1:] if argv is None else argv)  # (`-P gevent`: before anything else)
    from fastq.cli.options import finish_user_options, send_preload_options

    parser = build_parser()
    arguments, settings = _split_settings(parser, list(sys.argv[1:] if argv is None else argv))
    try:
        code = _plugin(parser, arguments, app)
        if code is not None:
            sys.exit(code)
        app, entered = _early_app(parser, arguments, app)
    except (CommandError, ImproperlyConfigured) as exc:
        print(f'Error: {exc}', file=sys.stderr)
        sys.exit(getattr(exc, 'exit_code', 2) if isinstance(exc, CommandError) else 1)
    args, extra = parser.parse_known_args(arguments)
    if extra:  # (said by the command they were given to, as Celery's CLI says it)
        _command_parser(parser, args).unrecognized(extra)
    args.user_options = finish_user_options(parser, args)
    _options_from_environment(parser, args)
    if not args.command:
        parser.print_help()
        sys.exit(0)
    try:
        if args.workdir and not entered:
            import os

            os.chdir(args.workdir)
        if not getattr(args, 'needs_app', True):  # (multi: each worker it starts loads the app)
            sys.exit(args.handler(None, args) or 0)
        if app is None:
            app = _load_app(args.app)
        _configure(app, args, settings)
        send_preload_options(app, args, args.handler)
        code = args.handler(app, args)
    except (CommandError, ImproperlyConfigured) as exc:
        print(f'Error: {exc}', file=sys.stderr)
        code = getattr(exc, 'exit_code', 2) if isinstance(exc, CommandError) else 1
    except Exception as exc:
        if isinstance(exc, BrokenPipeError) and _stdout_closed():
            sys.exit(1)  # `fastq inspect stats | head`: the reader left, the broker is fine
        if not _unreachable(exc):
            raise
        print(  # Celery's words and exit status (EX_UNAVAILABLE)
            'Error: Could not connect to the message broker. Please make sure your broker (e.g., RabbitMQ or '
            f'Redis) is running and the connection settings are correct. Reason: {exc}',
            file=sys.stderr,
        )
        code = 69
    except KeyboardInterrupt:
        code = 130
    sys.exit(code or 0)
