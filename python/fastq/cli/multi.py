"""`fastq multi`: start, stop and restart several detached workers with one command, as `celery multi` does.

    fastq multi start w1 w2 -A proj -l INFO --pidfile=/run/fastq/%n.pid --logfile=/var/log/fastq/%n%I.log
    fastq multi stopwait w1 w2 --pidfile=/run/fastq/%n.pid

Each node is a `fastq worker --detach` with a name of its own; everything multi knows about it afterwards is
its pidfile, so stop, restart and kill need the same `--pidfile` that start was given (nothing is stored
anywhere else, as in Celery). Nodes are named one by one (`w1 w2`, `foo@%h`) or counted (`3`: celery1,
celery2, celery3), and an option can be given to some nodes only: `-c:1-3 10`, `-c:w1 4`, `-Q:2,3 video`.

Celery's command line is kept as it is, quirks included, so service files written for it work unchanged. The
one difference: an option the worker knows takes a value (`--logfile /x`) takes it with or without `=`,
where Celery's parser takes a long option's value only after `=`.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from fastq import __version__
from fastq.cli.base import pid_alive
from fastq.utils.nodenames import gethostname, host_format, node_format, nodesplit

USAGE = """\
usage: {prog} start <node1 node2 nodeN|range> [worker options]
       {prog} stop <n1 n2 nN|range> [-SIG (default: -TERM)]
       {prog} stopwait <n1 n2 nN|range> [-SIG (default: -TERM)]
       {prog} restart <n1 n2 nN|range> [-SIG] [worker options]
       {prog} kill <n1 n2 nN|range>

       {prog} show <n1 n2 nN|range> [worker options]
       {prog} get hostname <n1 n2 nN|range> [-qv] [worker options]
       {prog} names <n1 n2 nN|range>
       {prog} expand template <n1 n2 nN|range>
       {prog} help

additional options (must appear after command name):

    * --nosplash:   Don't display program info.
    * --quiet:      Don't show as much output.
    * --verbose:    Show more output.
    * --no-color:   Don't display colors.
"""

EXAMPLES = """\
Examples:

    # Single worker with explicit name and events enabled
    $ fastq multi start Leslie -E

    # Pidfiles and logfiles go to /var/run/celery and /var/log/celery by default (as Celery's); use
    # --pidfile and --logfile to change this. %n is the node's name, %I the pool process index.
    $ fastq multi start Leslie -E --pidfile=/var/run/fastq/%n.pid --logfile=/var/log/fastq/%n%I.log

    # restart, stop and kill find the nodes by their pidfiles: give the same --pidfile
    $ fastq multi restart Leslie -E --pidfile=/var/run/fastq/%n.pid --logfile=/var/log/fastq/%n%I.log
    $ fastq multi stopwait Leslie --pidfile=/var/run/fastq/%n.pid

    # 3 workers (celery1@host, celery2@host, celery3@host) with 3 processes each; the first with 10
    $ fastq multi start 3 -c 3 -c:1 10

    # named workers, one of them with its own queue
    $ fastq multi start image video data -c 3 -Q:image images

    # see the commands without running them
    $ fastq multi show 10 -l INFO -Q:1-3 images,video -Q:4,5 data -Q default -l:4,5 DEBUG
"""

#: Options given to `fastq` itself rather than to `fastq worker` (Celery moves the same ones), with a value.
GLOBAL_VALUES = frozenset({'-A', '--app', '-b', '--broker', '--result-backend', '--loader', '--config', '--workdir'})
GLOBAL_OPTIONS = GLOBAL_VALUES | {'-C'}
#: multi's own options that take a value (the rest of the command line is the workers').
OWN_VALUES = frozenset({'--cmd', '--append', '--hostname', '-n', '--prefix', '--suffix', '--range-prefix'})
#: Taken out of the command line before it is parsed, wherever they are.
RESERVED = {'--nosplash': 'nosplash', '--quiet': 'quiet', '-q': 'quiet', '--verbose': 'verbose',
            '--no-color': 'no_color'}  # fmt: skip
DEFAULT_PIDFILE = '/var/run/celery/%n.pid'
DEFAULT_LOGFILE = '/var/log/celery/%n%I.log'
EX_OK, EX_FAILURE = 0, 1
#: Seconds between two looks at the nodes `stopwait` and `restart` wait for.
POLL = 0.25


def register(commands: Any) -> None:
    p = commands.add_parser(
        'multi',
        help='start, stop or restart several detached workers',
        description='Start, stop or restart several detached workers (as celery multi).',
        add_help=False,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=USAGE.format(prog='fastq multi'),
    )
    p.add_argument('argv', nargs=argparse.REMAINDER, help='command, nodes and options (fastq multi help)')
    p.set_defaults(handler=run, needs_app=False)


def run(app: Any, args: argparse.Namespace) -> int:
    """(The app is not loaded: each worker loads it; the global options before `multi` go on to them.)"""
    forwarded = []
    for option, value in (('-A', args.app), ('-b', args.broker), ('--result-backend', args.result_backend),
                          ('--config', args.config), ('--loader', getattr(args, 'loader', None))):  # fmt: skip
        if value:
            forwarded += [option, value]
    argv = list(args.argv)
    at = argv.index('--') if '--' in argv else len(argv)  # (what follows `--` is the workers' alone)
    argv[at:at] = forwarded
    return MultiTool(quiet=args.quiet, no_color=args.no_color).execute(argv)


# --- the command line ------------------------------------------------------------------------------------


def _worker_options() -> dict[str, bool]:
    """The option strings of `fastq worker` and `fastq`'s own, and whether each takes a value."""
    from fastq.cli import worker

    commands = argparse.ArgumentParser(add_help=False).add_subparsers()
    worker.register(commands)
    # (argparse has no public way to list a parser's options)
    actions = commands.choices['worker']._option_string_actions
    takes = {option: action.nargs != 0 for option, action in actions.items()}
    takes.update(dict.fromkeys(GLOBAL_VALUES, True))
    takes['-C'] = False
    return takes


@dataclass
class ParsedArgs:
    """A multi command line: node names, options for all nodes, options per node (`-c:1-3 10`), after `--`."""

    values: list[str] = field(default_factory=list)
    options: dict[str, str | None] = field(default_factory=dict)
    namespaces: dict[str, dict[str, str | None]] = field(default_factory=dict)
    passthrough: list[str] = field(default_factory=list)
    flags: list[str] = field(default_factory=list)  # every option as written, in order (for `-SIG`)


def parse_args(argv: Sequence[str], takes_value: dict[str, bool] | None = None) -> ParsedArgs:
    """Celery's reading of a multi command line: a short option takes the next word as its value unless that
    starts with '-'; a long one takes `=value`. Options the worker declares as flags take no value, and those
    it declares with one take the next word as theirs, `=` or not."""
    takes = _worker_options() if takes_value is None else takes_value
    parsed = ParsedArgs()
    words = [w for w in argv if w]
    pos = 0
    while pos < len(words):
        word = words[pos]
        if word == '--':
            parsed.passthrough = words[pos + 1 :]
            break
        if not word.startswith('-') or word == '-':
            parsed.values.append(word)
            pos += 1
            continue
        parsed.flags.append(word)
        name, eq, value = word.partition('=') if word.startswith('--') else (word, '', '')
        base = name.split(':', 1)[0]
        wants = base in OWN_VALUES or takes.get(base, not word.startswith('--'))
        has_next = pos + 1 < len(words) and not words[pos + 1].startswith('-')
        if not eq and wants and has_next:
            value = words[pos + 1]
            pos += 1
        _add(parsed, name, value if (eq or value) else None)
        pos += 1
    return parsed


def _add(parsed: ParsedArgs, name: str, value: str | None) -> None:
    if ':' in name:
        name, namespace = name.split(':', 1)
        parsed.namespaces.setdefault(namespace, {})[name] = value
    else:
        parsed.options[name] = value


def format_opt(opt: str, value: str | None) -> list[str]:
    if value is None:
        return [opt]
    return [f'{opt}={value}'] if opt.startswith('--') else [opt, value]


# --- nodes -----------------------------------------------------------------------------------------------


class Node:
    """One worker of the cluster: its name, the command that starts it, where its pidfile and log are."""

    def __init__(
        self,
        name: str,
        options: dict[str, str | None],
        executable: str,
        cmd: str,
        append: str = '',
        extra: Sequence[str] = (),
    ) -> None:
        self.name = name
        self.shortname, self.host = name.split('@', 1)
        options = dict(options)
        options['-n'] = name
        pidfile = _pop_any(options, '--pidfile', '-p') or DEFAULT_PIDFILE
        logfile = _pop_any(options, '--logfile', '-f') or DEFAULT_LOGFILE
        # Relative paths are the worker's, which starts in `--workdir` when one is given: multi reads the
        # pidfile there too.
        workdir = os.path.expanduser(self.expand(options.get('--workdir') or ''))
        options['--pidfile'] = os.path.join(workdir, os.path.expanduser(self.expand(pidfile)))
        options['--logfile'] = os.path.join(workdir, os.path.expanduser(self.expand(logfile)))
        self.options = options
        self.executable = executable
        words = self.expand(cmd).split()
        at = words.index('fastq') + 1 if 'fastq' in words else 0
        head: list[str] = []
        rest: list[str] = []
        for opt, value in options.items():
            if opt in GLOBAL_OPTIONS:
                head += format_opt(opt, None if value is None else self.expand(value))
            else:
                rest += format_opt(opt, None if value is None else self.expand(value))
        self.argv = [*words[:at], *head, *words[at:], *rest, *extra]
        if append:
            self.argv.append(self.expand(append))

    def expand(self, template: str) -> str:
        """`%n` the node's short name, `%h` its whole name, `%d` its host; `%i`/`%I` stay for the worker,
        which expands them per process."""
        return host_format(template, self.host, self.shortname, None, N=self.shortname, d=self.host, h=self.name,
                           p=self.name, i='%i', I='%I')  # fmt: skip

    @property
    def pidfile(self) -> str:
        # (`%i` is 0 there: the worker writes it from its main process)
        return os.path.abspath(node_format(self.options['--pidfile'] or '', self.name))

    @property
    def logfile(self) -> str:
        return self.options['--logfile'] or ''

    @property
    def argv_with_executable(self) -> list[str]:
        return [self.executable, *self.argv]

    @property
    def pid(self) -> int | None:
        """The pid in the node's pidfile; None without one (the node is down)."""
        try:
            with open(self.pidfile) as f:
                line = f.readline()
        except OSError:
            return None
        try:
            return int(line.strip()) if line.endswith('\n') else None
        except ValueError:
            return None

    def send(self, sig: int, pid: int) -> bool:
        """Signal the node's process `pid`; False if it is not running."""
        if not pid_alive(pid):
            return False
        try:
            os.kill(pid, sig)
        except (ProcessLookupError, PermissionError):
            return False
        return True

    def alive(self, pid: int) -> bool:
        """The worker `pid` still runs (as Celery's: until the process is gone, not only its pidfile, which the
        worker removes before it has finished exiting), unless its pidfile names another process now (the pid
        was reused by a node started since)."""
        current = self.pid
        return (current is None or current == pid) and pid_alive(pid)

    def __repr__(self) -> str:
        return f'<Node: {self.name}>'


def _pop_any(options: dict[str, str | None], *names: str) -> str | None:
    found = None
    for name in names:
        if name in options:
            value = options.pop(name)
            found = found or value
    return found


def nodes_from(parsed: ParsedArgs, executable: str | None = None) -> list[Node]:
    """The nodes a command line names, each with its options (Celery's `MultiParser`)."""
    options = dict(parsed.options)
    namespaces = {ns: dict(opts) for ns, opts in parsed.namespaces.items()}
    cmd = options.pop('--cmd', None) or '-m fastq worker --detach'
    append = options.pop('--append', None) or ''
    hostname = options.pop('--hostname', None) or options.pop('-n', None) or gethostname()
    options.pop('-n', None)
    prefix = options.pop('--prefix', None) or ''
    suffix = options.pop('--suffix', None) or hostname
    suffix = '' if suffix in ('""', "''") else suffix
    range_prefix = options.pop('--range-prefix', None) or 'celery'
    executable = options.pop('--executable', None) or executable or sys.executable
    names = list(parsed.values)
    counted = len(names) == 1 and names[0].isdigit()
    if counted:
        names, prefix = [str(n) for n in range(1, int(names[0]) + 1)], range_prefix
        _by_index(namespaces, names)
        _spread(namespaces, counted)
    else:
        _spread(namespaces, counted)
        _by_index(namespaces, names)
    nodes = []
    for name in names:
        if '@' in name:
            nodename = host_format(name)
            namespace = nodesplit(nodename)[0] or name
        else:
            nodename = host_format(f'{prefix}{name}@{suffix}')
            namespace = name
        if nodename in namespaces:
            namespace = nodename
        merged = {**options, **namespaces.get(namespace, {})}
        nodes.append(Node(nodename, merged, executable, cmd, append, parsed.passthrough))
    return nodes


def _by_index(namespaces: dict[str, dict[str, str | None]], names: list[str]) -> None:
    """`-c:2 10`: the second node, whatever its name."""
    for namespace, opts in list(namespaces.items()):
        if namespace.isdigit():
            index = int(namespace) - 1
            if index < 0:
                raise KeyError(f'Indexes start at 1 got: {namespace!r}')
            if index >= len(names):
                raise KeyError(f'No node at index {namespace!r}')
            namespaces.setdefault(names[index], {}).update(opts)


def _spread(namespaces: dict[str, dict[str, str | None]], counted: bool) -> None:
    """`-c:1,2 10`, and with counted nodes `-c:1-3 10`: the option for each node listed."""
    for namespace, opts in list(namespaces.items()):
        if ',' in namespace or (counted and '-' in namespace):
            del namespaces[namespace]
            for part in namespace.split(','):
                if counted and '-' in part:
                    start, stop = part.split('-', 1)
                    members = [str(n) for n in range(int(start), int(stop) + 1)]
                else:
                    members = [part]
                for member in members:
                    namespaces.setdefault(member, {}).update(opts)


def find_signal(flags: Iterable[str], default: int = signal.SIGTERM) -> int:
    """The signal a stop names (`-9`, `-KILL`, `-SIGKILL`), the last one given; else `default`."""
    for flag in reversed(list(flags)):
        word = flag[1:]
        if len(flag) == 2 and word.isdigit():
            return int(word)
        if word.isupper():
            with contextlib.suppress(AttributeError):
                return int(getattr(signal, word if word.startswith('SIG') else f'SIG{word}'))
    return default


def signal_name(sig: int) -> str:
    try:
        return signal.Signals(sig).name[3:]
    except ValueError:
        return str(sig)


# --- the commands ----------------------------------------------------------------------------------------


class MultiTool:
    """The `fastq multi` program; its output keeps `celery multi`'s words."""

    def __init__(self, quiet: bool = False, no_color: bool = False, stdout: Any = None, stderr: Any = None) -> None:
        self.stdout = stdout or sys.stdout
        self.stderr = stderr or sys.stderr
        self.quiet = quiet
        self.no_color = no_color
        self.nosplash = False
        self.verbose = False
        self.commands: dict[str, Callable[[list[str]], int]] = {
            'start': self.start,
            'show': self.show,
            'stop': self.stop,
            'stopwait': self.stopwait,
            'stop_verify': self.stopwait,
            'restart': self.restart,
            'kill': self.kill,
            'names': self.names,
            'expand': self.expand,
            'get': self.get,
            'help': self.help,
        }

    def execute(self, argv: list[str]) -> int:
        argv = list(argv)
        for word, attr in RESERVED.items():
            while word in argv:
                argv.remove(word)
                setattr(self, attr, True)
        if argv and argv[0] in ('-h', '--help'):
            return self.help(argv[1:])
        if not argv or argv[0].startswith('-'):
            return self.error()
        command = self.commands.get(argv[0])
        if command is None:
            return self.error(f'Invalid command: {argv[0]}')
        try:
            return command(argv[1:]) or EX_OK
        except KeyError as exc:  # a per-node option names a node that is not there
            self.carp(f'Error: {exc.args[0]}')
            return EX_FAILURE

    # output

    def say(self, text: str, newline: bool = True, file: Any = None) -> None:
        print(text, file=file or self.stdout, end='\n' if newline else '', flush=True)

    def carp(self, text: str) -> None:
        self.say(text, file=self.stderr)

    def note(self, text: str, newline: bool = True) -> None:
        if not self.quiet:
            self.say(text, newline)

    def info(self, text: str) -> None:
        if self.verbose:
            self.note(text)

    def colored(self, text: str, code: str) -> str:
        if self.no_color or not getattr(self.stdout, 'isatty', lambda: False)():
            return text
        return f'\033[{code}m{text}\033[0m'

    def splash(self) -> None:
        if not self.nosplash:
            self.note(self.colored(f'fastq multi v{__version__}', '36'))

    def error(self, message: str | None = None) -> int:
        if message:
            self.carp(message)
        self.splash()
        self.say(USAGE.format(prog='fastq multi'))
        return EX_FAILURE

    @property
    def ok(self) -> str:
        return self.colored('OK', '32')

    def _nodes(self, argv: list[str]) -> tuple[ParsedArgs, list[Node]]:
        parsed = parse_args(argv)
        return parsed, nodes_from(parsed)

    # commands

    def start(self, argv: list[str]) -> int:
        self.splash()
        _, nodes = self._nodes(argv)
        self.note('> Starting nodes...')
        return int(any([self._start(node, f'\t> {node.name}: ') for node in nodes]))

    def _start(self, node: Node, preamble: str) -> int:
        self.note(preamble, newline=False)
        for path in (node.pidfile, node.logfile):
            directory = os.path.dirname(path)
            if directory and '%' not in directory:
                os.makedirs(directory, exist_ok=True)
        self.info(f'  {" ".join(node.argv_with_executable)}')
        code = subprocess.call(node.argv_with_executable)
        if code < 0:
            self.note(f'* Child was terminated by signal {-code}')
        elif code > 0:
            self.note(f'* Child terminated with exit code {code}')
        self.note(self.colored('FAILED', '31') if code else self.ok)
        return abs(code)

    def stop(self, argv: list[str], wait: bool = False) -> int:
        self.splash()
        parsed, nodes = self._nodes(argv)
        self._stop(nodes, find_signal(parsed.flags), wait, self._down)
        return EX_OK

    def stopwait(self, argv: list[str]) -> int:
        return self.stop(argv, wait=True)

    def restart(self, argv: list[str]) -> int:
        self.splash()
        parsed, nodes = self._nodes(argv)
        codes: list[int] = []
        self._stop(nodes, find_signal(parsed.flags), True, lambda node: codes.append(self._restart(node)))
        return int(any(codes))

    def _restart(self, node: Node) -> int:
        return self._start(node, self.colored(f'> Restarting node {node.name}: ', '34'))

    def _down(self, node: Node) -> None:
        self.note(f'> {node.name}: {self.colored("DOWN", "35")}')

    def _stop(self, nodes: list[Node], sig: int, wait: bool, on_down: Callable[[Node], None]) -> None:
        """Signal every running node; with `wait`, until each has exited (`on_down` for each, and for each
        that was not running)."""
        running: dict[Node, int] = {}
        for node in nodes:
            pid = node.pid
            if pid:
                running[node] = pid
            else:
                on_down(node)
        if not running:
            return
        self.note(self.colored('> Stopping nodes...', '34'))
        for node, pid in list(running.items()):
            self.note(f'\t> {node.name}: {signal_name(sig)} -> {pid}')
            if not node.send(sig, pid):
                self.note(f'Could not signal {node.name} ({pid}): No such process')
                del running[node]
                on_down(node)
        if not wait:
            return
        self._waiting(running)
        dots = time.monotonic()
        while running:
            gone = [node for node, pid in running.items() if not node.alive(pid)]
            for node in gone:
                del running[node]
                self.note(f'\n\t> {node.name}: {self.ok}')
                on_down(node)
                self._waiting(running)
            if running:
                time.sleep(POLL)
                if time.monotonic() - dots >= 1.0:
                    dots = time.monotonic()
                    self.note('.', newline=False)
        self.note('')

    def _waiting(self, running: dict[Node, int]) -> None:
        if running:
            count = len(running)
            pids = ', '.join(str(pid) for pid in running.values())
            self.note(self.colored(f'> Waiting for {count} {"node" if count == 1 else "nodes"} -> {pids}...', '34'),
                      newline=False)  # fmt: skip

    def kill(self, argv: list[str]) -> int:
        self.splash()
        _, nodes = self._nodes(argv)
        for node in nodes:
            pid = node.pid
            if not pid:
                self._down(node)
                continue
            self.note(f'Sending KILL to node {node.name} ({pid})')
            if not node.send(signal.SIGKILL, pid):
                self.note(f'Could not signal {node.name} ({pid}): No such process')
        return EX_OK

    def names(self, argv: list[str]) -> int:
        _, nodes = self._nodes(argv)
        self.say('\n'.join(node.name for node in nodes))
        return EX_OK

    def show(self, argv: list[str]) -> int:
        _, nodes = self._nodes(argv)
        self.say('\n'.join(' '.join(node.argv_with_executable) for node in nodes))
        return EX_OK

    def get(self, argv: list[str]) -> int:
        if not argv:
            return self.error('get: which node? (fastq multi get <nodename> <nodes> [options])')
        wanted, rest = argv[0], argv[1:]
        for node in self._nodes(rest)[1]:
            if node.name == wanted:
                self.say(' '.join(node.argv))
                return EX_OK
        return EX_FAILURE

    def expand(self, argv: list[str]) -> int:
        if not argv:
            return self.error('expand: which template? (fastq multi expand <template> <nodes>)')
        template, rest = argv[0], argv[1:]
        self.say('\n'.join(node.expand(template) for node in self._nodes(rest)[1]))
        return EX_OK

    def help(self, argv: list[str]) -> int:
        self.say(USAGE.format(prog='fastq multi'))
        self.say(EXAMPLES)
        return EX_OK
