"""Custom command-line options from `app.user_options`, as Celery's CLI takes them.

    from click import Option
    app.user_options['worker'].add(Option(('--enable-my-option',), is_flag=True, help='Enable custom option.'))
    app.user_options['preload'].add(Option(('-Z', '--template'), default='default'))

Celery 5's CLI is click and these are click `Option`s; fastq's is argparse, so each is read for what it says
(its flags, `is_flag`/`--x/--no-x`, `count`, `multiple`, `nargs`, `default`, `required`, `help`, `hidden`,
`metavar`) and added to the command's parser, its values converted by the option's own click type (so
`type=int` or `click.Choice` check them as in Celery). Nothing here imports click.

Where the values go, as in Celery: 'worker' options become keywords of the worker's bootsteps' `__init__`
(and appear in `celeryd_init`'s `options`); 'beat' and 'events' options are accepted; 'preload' options are
added to every command and sent, before the command runs, with `user_preload_options(sender=command
handler, app=app, options={name: value})`.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from fastq.cli.base import CommandError
from fastq.cli.usage import subcommands

if TYPE_CHECKING:
    from fastq.app import Fastq

__all__ = ['add_user_options', 'finish_user_options', 'send_preload_options']

#: Commands taking their own `app.user_options[...]` (besides 'preload', which every command takes).
COMMANDS = ('worker', 'beat', 'events')
_ADDED = '_fastq_user_options'  # parser attribute: dest -> option, for `finish_user_options`


def _unset(value: Any) -> bool:
    """click 8.3+ marks "no default given" with a sentinel (`UNSET`)."""
    return getattr(value, 'name', None) == 'UNSET' and type(value).__name__ == 'Sentinel'


def _converter(option: Any) -> Any:
    ptype = getattr(option, 'type', None)
    convert = getattr(ptype, 'convert', None)
    if convert is None:
        return None

    def convert_value(raw: str) -> Any:
        try:
            return convert(raw, option, None)
        except Exception as exc:  # click.BadParameter and friends: argparse's error, with click's message
            raise argparse.ArgumentTypeError(getattr(exc, 'message', None) or str(exc)) from None

    convert_value.__name__ = str(getattr(ptype, 'name', 'value'))  # (argparse names the type in its errors)
    return convert_value


def _add(parser: argparse.ArgumentParser, option: Any) -> None:
    opts = list(getattr(option, 'opts', None) or ())
    name = getattr(option, 'name', None)
    if not opts or not name:
        raise CommandError(f'app.user_options: {option!r} is not a click Option (with flags and a name)')
    default = getattr(option, 'default', None)
    default = None if _unset(default) else default
    if callable(default):
        default = default()
    common: dict[str, Any] = {
        'dest': name,
        'help': argparse.SUPPRESS if getattr(option, 'hidden', False) else getattr(option, 'help', None),
    }
    kwargs: dict[str, Any]
    if getattr(option, 'is_flag', False) and not getattr(option, 'count', False):
        flag_value = getattr(option, 'flag_value', True)
        if getattr(option, 'is_bool_flag', False) or _unset(flag_value):
            on = True if _unset(flag_value) else bool(flag_value)
            kwargs = {'action': 'store_const', 'const': on, 'default': bool(default) if default is not None else not on}
        else:
            kwargs = {'action': 'store_const', 'const': flag_value, 'default': default}
    elif getattr(option, 'count', False):
        kwargs = {'action': 'count', 'default': default or 0}
    else:
        kwargs = {'type': _converter(option), 'default': default, 'required': bool(getattr(option, 'required', False))}
        if getattr(option, 'multiple', False):
            kwargs['action'] = 'append'
            kwargs['default'] = None
        nargs = getattr(option, 'nargs', 1)
        if isinstance(nargs, int) and nargs > 1:
            kwargs['nargs'] = nargs
        if getattr(option, 'metavar', None):
            kwargs['metavar'] = option.metavar
    try:
        parser.add_argument(*opts, **common, **kwargs)
        secondary = list(getattr(option, 'secondary_opts', None) or ())
        if secondary:  # `--shout/--no-shout`
            parser.add_argument(
                *secondary, dest=name, action='store_const', const=not kwargs['const'], help=argparse.SUPPRESS
            )
    except argparse.ArgumentError as exc:
        raise CommandError(f'app.user_options: cannot add {"/".join(opts)}: {exc.message}') from None
    getattr(parser, _ADDED)[name] = option


def _commands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    action = subcommands(parser)
    return dict(action.choices) if action is not None else {}


def add_user_options(parser: argparse.ArgumentParser, app: Fastq) -> None:
    """Add `app.user_options` to the commands' parsers (once per parser)."""
    user_options = getattr(app, 'user_options', None) or {}
    preload = _sorted(user_options.get('preload', ()))
    for command, sub in _commands(parser).items():
        if getattr(sub, _ADDED, None) is not None:
            continue
        setattr(sub, _ADDED, {})
        own = _sorted(user_options.get(command, ())) if command in COMMANDS else []
        for option in [*own, *preload]:
            _add(sub, option)


def _sorted(options: Iterable[Any]) -> list[Any]:
    """A set's options in a stable order (for --help and for conflicts reported the same way each time)."""
    return sorted(options, key=lambda o: str(getattr(o, 'name', '')))


def finish_user_options(parser: argparse.ArgumentParser, args: argparse.Namespace) -> dict[str, Any]:
    """After parsing: values shaped as click gives them (`multiple` as a tuple, `nargs` as a tuple); returns
    the user options' values of the command that runs, by name."""
    sub = _commands(parser).get(getattr(args, 'command', None) or '')
    added: dict[str, Any] = getattr(sub, _ADDED, None) or {}
    values = {}
    for name, option in added.items():
        value = getattr(args, name, None)
        if getattr(option, 'multiple', False):
            value = tuple(tuple(v) if isinstance(v, list) else v for v in value or ())
        elif isinstance(value, list):
            value = tuple(value)
        setattr(args, name, value)
        values[name] = value
    return values


def send_preload_options(app: Fastq, args: argparse.Namespace, handler: Any) -> None:
    """`user_preload_options`, sent as Celery's CLI sends it: before the command, if the app has any."""
    from fastq import signals

    names = [str(o.name) for o in _sorted(getattr(app, 'user_options', {}).get('preload', ()))]
    if names:
        options = {name: getattr(args, name, None) for name in names}
        signals.user_preload_options.send(sender=handler, app=app, options=options)


def worker_options(parser: argparse.ArgumentParser, args: argparse.Namespace) -> dict[str, Any]:
    """The worker command's user options' values (for its bootsteps)."""
    return finish_user_options(parser, args) if getattr(args, 'command', None) == 'worker' else {}
