"""`fastq multi`'s reading of a command line, checked against Celery's own (`celery.apps.multi`) on the command
lines Celery's documentation gives, and what fastq reads differently on purpose."""

from __future__ import annotations

import io
import signal
from pathlib import Path
from typing import Any

import pytest

from fastq.cli.multi import MultiTool, find_signal, nodes_from, parse_args
from fastq.utils.nodenames import gethostname

DOCUMENTED = [
    'Leslie -E',
    '3 -c 3',
    '3 --range-prefix=worker -c 3',
    'image video data -c 3',
    '2 --hostname=worker.example.com -c 3',
    'foo@worker.example.com bar@worker.example.com -c 3',
    'foo@%h bar@%h',
    '10 -l INFO -Q:1-3 images,video -Q:4,5 data -Q default -l:4,5 DEBUG',
    '3 -c 3 -c:1 10',
    'image video data -c 3 -c:image 10',
    '5 -c 3 -c:1-3 10',
    'foo bar baz xuzzy -c 3 -c:foo,bar,baz 10',
    'foo bar baz -c 3 -c:2 7 -A proj --loglevel=DEBUG',
    '2 -c:celery2@%h 5',
]


def celerys(argv: list[str]) -> list[tuple[str, dict[str, Any]]]:
    """What Celery's multi makes of `argv`: each node's name and its options, expanded as its argv has them."""
    from celery.apps.multi import MultiParser, NamespacedOptionParser

    p = NamespacedOptionParser(argv)
    p.parse()
    out = []
    for node in MultiParser(cmd='celery worker').parse(p):
        options = {opt: node.expander(v) if v else v for opt, v in node.options.items() if opt != '--executable'}
        out.append((node.name, options))
    return out


@pytest.mark.parametrize('line', DOCUMENTED)
def test_nodes_and_options_as_celery_reads_them(line: str, tmp_path: Path) -> None:
    argv = [*line.split(), f'--pidfile={tmp_path}/%n.pid', f'--logfile={tmp_path}/%n%I.log']
    ours = [(node.name, node.options) for node in nodes_from(parse_args(argv))]
    assert ours == celerys(argv)


def test_the_worker_command_line(tmp_path: Path) -> None:
    argv = ['w1', 'w2', '-A', 'proj', '-c:w2', '4', '-E', '-l', 'info', f'--pidfile={tmp_path}/run/%n.pid']
    w1, w2 = nodes_from(parse_args(argv), executable='/usr/bin/python3')
    host = gethostname()
    assert w1.argv_with_executable == [
        '/usr/bin/python3', '-m', 'fastq', '-A', 'proj', 'worker', '--detach', '-E', '-l', 'info',
        '-n', f'w1@{host}', f'--pidfile={tmp_path}/run/w1.pid', '--logfile=/var/log/celery/w1%I.log',
    ]  # fmt: skip
    assert w2.argv[5:11] == ['--detach', '-E', '-l', 'info', '-c', '4']  # (after the options all nodes have)
    assert (w1.pidfile, w1.logfile) == (f'{tmp_path}/run/w1.pid', '/var/log/celery/w1%I.log')


def test_an_option_the_worker_declares_takes_its_value_with_or_without_equals() -> None:
    # Celery's parser reads `--logfile /x` as a flag followed by a node named /x; fastq knows --logfile takes a
    # value. A flag the worker declares (-E, -B) takes none, so a node name may follow it.
    (node,) = nodes_from(parse_args(['w1', '--logfile', '/x/%n.log', '--pidfile', '/y/%n.pid']))
    assert (node.logfile, node.pidfile) == ('/x/w1.log', '/y/w1.pid')
    parsed = parse_args(['-E', 'w1', '-B', 'w2', '--without-mingle', 'w3'])
    assert parsed.values == ['w1', 'w2', 'w3']
    assert parsed.options == {'-E': None, '-B': None, '--without-mingle': None}


def test_relative_paths_are_the_workdirs() -> None:
    (node,) = nodes_from(parse_args(['w1', '--workdir=/srv/app', '--pidfile=run/%n.pid', '--logfile=/var/log/%n.log']))
    assert (node.pidfile, node.logfile) == ('/srv/app/run/w1.pid', '/var/log/w1.log')
    assert node.argv[:4] == ['-m', 'fastq', '--workdir=/srv/app', 'worker']
    (node,) = nodes_from(parse_args(['w1', '--pidfile=%n.pid']))
    assert node.options['--pidfile'] == 'w1.pid'


def test_everything_after_a_double_dash_goes_to_each_worker_as_it_is() -> None:
    (node,) = nodes_from(parse_args(['w1', '-c', '2', '--', '--purge', '-X', 'slow']))
    assert node.argv[-3:] == ['--purge', '-X', 'slow']


@pytest.mark.parametrize(
    'flags, expected',
    [([], signal.SIGTERM), (['-9'], signal.SIGKILL), (['-KILL'], signal.SIGKILL), (['-c', '-SIGINT'], signal.SIGINT),
     (['-INT', '-HUP'], signal.SIGHUP), (['-E'], signal.SIGTERM)],
)  # fmt: skip
def test_the_signal_a_stop_names(flags: list[str], expected: int) -> None:
    assert find_signal(flags) == expected


def run(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = MultiTool(stdout=out, stderr=err).execute(list(argv))
    return code, out.getvalue(), err.getvalue()


def test_names_get_and_expand() -> None:
    host = gethostname()
    assert run('names', '3', '--range-prefix=web') == (0, f'web1@{host}\nweb2@{host}\nweb3@{host}\n', '')
    code, out, _ = run('get', f'b@{host}', 'a', 'b', '-c', '2', '--pidfile=/p/%n.pid')
    assert code == 0 and out.split()[:6] == ['-m', 'fastq', 'worker', '--detach', '-c', '2']
    assert run('get', 'nobody@nowhere', 'a', 'b')[0] == 1
    assert run('expand', '/var/run/%n.pid (%h, %d) %I', 'a', 'b')[1] == (
        f'/var/run/a.pid (a@{host}, {host}) %I\n/var/run/b.pid (b@{host}, {host}) %I\n'
    )


def test_stop_says_which_nodes_are_down(tmp_path: Path) -> None:
    (tmp_path / 'b.pid').write_text('999999999\n')  # stale: no such process
    code, out, _ = run('stop', 'a', 'b', f'--pidfile={tmp_path}/%n.pid')
    host = gethostname()
    assert code == 0
    assert f'> a@{host}: DOWN' in out
    assert f'\t> b@{host}: TERM -> 999999999' in out and 'Could not signal' in out


def test_usage_and_errors() -> None:
    code, out, _ = run()
    assert code == 1 and 'usage: fastq multi start <node1 node2 nodeN|range> [worker options]' in out
    code, out, err = run('frobnicate', 'w1')
    assert code == 1 and err == 'Invalid command: frobnicate\n' and 'usage:' in out
    code, _, err = run('show', 'a', 'b', '-c:3', '4')
    assert code == 1 and "No node at index '3'" in err
    assert run('help')[1].startswith('usage: fastq multi start')
    assert run('--help') == run('help')
    assert 'fastq multi v' not in run('start', '--nosplash', '0')[1]
