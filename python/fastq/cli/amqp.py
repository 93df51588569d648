"""`fastq amqp`: Celery's AMQP administration shell, on fastq's own rabbitmq-c connection.

`fastq amqp queue.declare foo` runs one command; `fastq amqp` (or `fastq amqp repl`, Celery's spelling) reads
commands from the terminal, one a line, with the same arguments. Arguments are positional and booleans are
spelled as Celery's click reads them (1/0, true/false, yes/no, y/n, on/off). The words are Celery 5's:
`-> connecting to ...`, `-> connected.`, `OK`, and `ERROR: ...` on standard error, after which the shell
connects again (a channel error leaves the channel closed), as Celery's does. One difference: a command
that fails exits with status 1 (Celery's exits 0 whatever happened), so scripts can tell.

It needs an AMQP broker: Celery's shell also drives kombu's emulation of AMQP on other transports, which
fastq does not have (its Redis layout is kombu's, but declarations there are bindings, not objects).
"""

from __future__ import annotations

import argparse
import pprint
import shlex
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from fastq.cli.base import CommandError, err, out
from fastq.exceptions import AMQPChannelError, BrokerConnectionError

if TYPE_CHECKING:
    from fastq import _amqp
    from fastq.app import Fastq
    from fastq.brokers.amqp.link import Endpoint

CHANNEL = 1
_TRUE = ('1', 'true', 't', 'yes', 'y', 'on')
_FALSE = ('0', 'false', 'f', 'no', 'n', 'off')
_REQUIRED = object()


@dataclass(frozen=True)
class Param:
    name: str
    kind: type = str
    default: Any = _REQUIRED

    def convert(self, value: str) -> Any:
        if self.kind is bool:
            if value.strip().lower() in _TRUE:
                return True
            if value.strip().lower() in _FALSE:
                return False
            raise CommandError(f"Invalid value for '{self.metavar}': {value!r} is not a valid boolean.")
        if self.kind is int:
            try:
                return int(value)
            except ValueError:
                raise CommandError(f"Invalid value for '{self.metavar}': {value!r} is not a valid integer.") from None
        return value

    @property
    def metavar(self) -> str:
        return self.name.upper() if self.default is _REQUIRED else f'[{self.name.upper()}]'


@dataclass(frozen=True)
class Command:
    params: tuple[Param, ...]
    run: Callable[[Shell, list[Any]], None]
    help: str

    def parse(self, values: list[str]) -> list[Any]:
        if len(values) > len(self.params):
            extra = values[len(self.params) :]
            word = 'argument' if len(extra) == 1 else 'arguments'
            raise CommandError(f'Got unexpected extra {word} ({" ".join(extra)})')
        parsed = []
        for i, param in enumerate(self.params):
            if i < len(values):
                parsed.append(param.convert(values[i]))
            elif param.default is _REQUIRED:
                raise CommandError(f"Missing argument '{param.metavar}'.")
            else:
                parsed.append(param.default)
        return parsed

    def usage(self, name: str) -> str:
        return ' '.join([name, *(p.metavar for p in self.params)])


class Shell:
    """One connection and channel, opened again after an error (Celery's AMQPContext)."""

    def __init__(self, endpoint: Endpoint, uri: str) -> None:
        self.endpoint = endpoint
        self.uri = uri
        self.conn: _amqp.Connection | None = None
        self.reconnect(first=True)

    def reconnect(self, first: bool = False) -> None:
        """Connect again; the first time, a broker that cannot be reached is the command's error (Celery's words
        and exit status, from `fastq.cli.main`), later the shell reports it and goes on."""
        from fastq import _amqp

        if self.conn is not None:
            self.conn.close()
            self.conn = None
        out(f'-> connecting to {self.uri}.')
        ep = self.endpoint
        try:
            conn = _amqp.Connection(
                ep.host, ep.port, ep.vhost, ep.user, ep.password, 0, 131072, ep.connect_timeout,
                max(ep.connect_timeout, 30.0), ep.ssl,
            )  # fmt: skip
            conn.open_channel(CHANNEL)
        except BrokerConnectionError as exc:
            if first:
                raise
            self.echo_error(exc)
        else:
            self.conn = conn
            out('-> connected.')

    def echo_error(self, exc: BaseException) -> None:
        err(f'ERROR: {exc}')

    def call(self, name: str, values: list[str]) -> bool:
        """Run one command line's command; False when it failed."""
        command = COMMANDS[name]
        args = command.parse(values)
        if self.conn is None:
            self.echo_error(Exception('Not connected to broker. Please retry...'))
            self.reconnect()
            return False
        try:
            command.run(self, args)
        except AMQPChannelError as exc:  # (py-amqp's words: `Queue.declare: (404) NOT_FOUND - no queue ...`)
            method = '.'.join(part.capitalize() if i == 0 else part for i, part in enumerate(name.split('.')))
            self.echo_error(Exception(f'{method}: ({exc.reply_code}) {exc.reply_text}'))
            self.reconnect()
            return False
        except (BrokerConnectionError, TypeError, ValueError) as exc:
            self.echo_error(exc)
            self.reconnect()
            return False
        out('OK')
        return True

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None

    @property
    def connection(self) -> _amqp.Connection:
        assert self.conn is not None
        return self.conn


def _exchange_declare(shell: Shell, a: list[Any]) -> None:
    exchange, type_, passive, durable, auto_delete = a
    shell.connection.exchange_declare(CHANNEL, exchange, type_, passive, durable, auto_delete, {})


def _exchange_delete(shell: Shell, a: list[Any]) -> None:
    exchange, if_unused = a
    shell.connection.exchange_delete(CHANNEL, exchange, if_unused)


def _queue_bind(shell: Shell, a: list[Any]) -> None:
    queue, exchange, routing_key = a
    shell.connection.queue_bind(CHANNEL, queue, exchange, routing_key, {})


def _queue_declare(shell: Shell, a: list[Any]) -> None:
    queue, passive, durable, auto_delete = a
    name, messages, consumers = shell.connection.queue_declare(CHANNEL, queue, passive, durable, False, auto_delete, {})
    out(f'queue:{name} messages:{messages} consumers:{consumers}')


def _queue_delete(shell: Shell, a: list[Any]) -> None:
    queue, if_unused, if_empty = a
    out(f'{shell.connection.queue_delete(CHANNEL, queue, if_unused, if_empty)} messages deleted.')


def _queue_purge(shell: Shell, a: list[Any]) -> None:
    (queue,) = a
    out(f'{shell.connection.queue_purge(CHANNEL, queue)} messages deleted.')


def _basic_get(shell: Shell, a: list[Any]) -> None:
    queue, no_ack = a
    got = shell.connection.get(CHANNEL, queue, no_ack)
    if got is None:
        out('No messages in queue. basic.publish something.')
        return
    delivery_tag, redelivered, exchange, routing_key, left, properties, body = got
    encoding = properties.get('content_encoding')
    text: bytes | str = body
    if encoding and encoding != 'binary':  # (py-amqp hands a body with a content encoding over decoded)
        try:
            text = body.decode(encoding)
        except (LookupError, UnicodeDecodeError):
            pass
    message = {
        'body': text,
        'properties': properties,
        'delivery_info': {
            'delivery_tag': delivery_tag,
            'redelivered': redelivered,
            'exchange': exchange,
            'routing_key': routing_key,
            'message_count': left,
        },
    }
    out(pprint.pformat(message))


def _basic_publish(shell: Shell, a: list[Any]) -> None:
    msg, exchange, routing_key, mandatory, immediate = a
    if immediate:  # (RabbitMQ closes the connection on it: NOT_IMPLEMENTED)
        raise ValueError('immediate is not supported by RabbitMQ')
    properties = {'content_encoding': 'utf-8'}  # a text body, as py-amqp sends a str one
    shell.connection.publish(CHANNEL, exchange, routing_key, msg.encode('utf-8'), properties, mandatory)


def _basic_ack(shell: Shell, a: list[Any]) -> None:
    (delivery_tag,) = a
    shell.connection.ack(CHANNEL, delivery_tag, False)


COMMANDS: dict[str, Command] = {
    'exchange.declare': Command(
        (
            Param('exchange'),
            Param('type'),
            Param('passive', bool, False),
            Param('durable', bool, False),
            Param('auto_delete', bool, False),
        ),
        _exchange_declare,
        'declare an exchange (type: direct, topic, fanout, headers)',
    ),
    'exchange.delete': Command((Param('exchange'), Param('if_unused', bool)), _exchange_delete, 'delete an exchange'),
    'queue.bind': Command(
        (Param('queue'), Param('exchange'), Param('routing_key')), _queue_bind, 'bind a queue to an exchange'
    ),
    'queue.declare': Command(
        (
            Param('queue'),
            Param('passive', bool, False),
            Param('durable', bool, False),
            Param('auto_delete', bool, False),
        ),
        _queue_declare,
        'declare a queue',
    ),
    'queue.delete': Command(
        (Param('queue'), Param('if_unused', bool, False), Param('if_empty', bool, False)),
        _queue_delete,
        'delete a queue',
    ),
    'queue.purge': Command((Param('queue'),), _queue_purge, 'remove the ready messages of a queue'),
    'basic.get': Command((Param('queue'), Param('no_ack', bool, False)), _basic_get, 'take one message from a queue'),
    'basic.publish': Command(
        (
            Param('msg'),
            Param('exchange'),
            Param('routing_key'),
            Param('mandatory', bool, False),
            Param('immediate', bool, False),
        ),
        _basic_publish,
        'publish a text message',
    ),
    'basic.ack': Command((Param('delivery_tag', int),), _basic_ack, 'acknowledge a message basic.get took'),
}


def register(commands: Any) -> None:
    lines = '\n'.join(f'  {command.usage(name)}' for name, command in COMMANDS.items())
    p = commands.add_parser(
        'amqp',
        help='AMQP administration shell',
        description=f'AMQP Administration Shell.\n\nCommands:\n{lines}\n\nWithout a command (or with "repl"), '
        'commands are read from the terminal.',
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument('words', nargs=argparse.REMAINDER, metavar='COMMAND [ARGS...]', help='a command to run')
    p.set_defaults(handler=run)


def _endpoint(app: Fastq) -> tuple[Endpoint, str]:
    """The first endpoint of the app's broker URL, and the URL as Celery prints it (password masked)."""
    from fastq.brokers import scheme_of
    from fastq.brokers.amqp import SCHEMES, parse_urls

    url = app.broker_url
    if scheme_of(url) not in SCHEMES:
        from fastq.utils.text import mask_url

        raise CommandError(
            f'fastq amqp needs an AMQP broker (amqp:// or amqps://), not {mask_url(url)}: fastq has no AMQP '
            'emulation for other transports.'
        )
    ep = parse_urls(url, app.conf)[0]
    scheme = 'amqps' if ep.ssl is not None else 'amqp'
    return ep, f'{scheme}://{ep.user}:**@{ep.host}:{ep.port}/{ep.vhost}'


def run(app: Fastq, args: argparse.Namespace) -> int:
    endpoint, uri = _endpoint(app)
    words = list(args.words)
    if words and words[0] not in ('repl', *COMMANDS):
        raise CommandError(f"No such command '{words[0]}'.")
    shell = Shell(endpoint, uri)
    try:
        if words and words[0] != 'repl':
            return 0 if shell.call(words[0], words[1:]) else 1
        return _repl(shell)
    finally:
        shell.close()


def _repl(shell: Shell) -> int:
    """Read commands until end of input (or :q, exit, quit); a bad line is reported and the shell goes on."""
    interactive = sys.stdin.isatty()
    while True:
        try:
            line = input('> ' if interactive else '')
        except EOFError:
            return 0
        try:
            words = shlex.split(line)
        except ValueError as exc:
            err(f'Error: {exc}')
            continue
        if not words:
            continue
        if words[0] in (':q', ':quit', ':exit', 'exit', 'quit'):
            return 0
        if words[0] in (':help', 'help', '?'):
            for name, command in COMMANDS.items():
                out(f'{command.usage(name):<60} {command.help}')
            continue
        if words[0] not in COMMANDS:
            err(f"Error: No such command '{words[0]}'.")
            continue
        try:
            shell.call(words[0], words[1:])
        except CommandError as exc:
            err(f'Error: {exc}')
