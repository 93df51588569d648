"""Command lines as Celery's accepts them (from an audit of `celery --help` and the Workers guide): the
forms of -c and --autoscale, --optimization, --skip-checks, control commands missing their arguments, and an
unreachable broker reported in Celery's words with its exit status."""

from __future__ import annotations

import pytest

from fastq.cli import build_parser, main
from fastq.cli.base import CommandError
from fastq.cli.control import _control_call
from fastq.cli.worker import _concurrency_arg
from fastq.worker.autoscale import parse_autoscale


def test_concurrency_and_autoscale_forms() -> None:
    assert _concurrency_arg('auto') == 'auto' and _concurrency_arg('0') is None and _concurrency_arg('3') == 3
    assert parse_autoscale('10,3') == (10, 3) and parse_autoscale('1,4') == (4, 1) and parse_autoscale('5') == (5, 0)
    args = build_parser().parse_args(['--skip-checks', 'worker', '--optimization', 'fair', '-c', 'auto'])
    assert (args.optimization, args.concurrency) == ('fair', 'auto')


def test_control_commands_need_their_arguments() -> None:
    with pytest.raises(CommandError, match="'rate_limit' takes arguments"):
        _control_call('rate_limit', ['tasks.add'])  # (was: the limit removed)
    with pytest.raises(CommandError, match="'terminate' takes arguments"):
        _control_call('terminate', [])
    assert _control_call('rate_limit', ['tasks.add', '10/m']) == (
        'rate_limit',
        {'task_name': 'tasks.add', 'rate_limit': '10/m'},
    )


def test_an_unreachable_broker_exits_69(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(['-b', 'redis://127.0.0.1:1/0', 'control', 'revoke', 'some-id'])
    assert exited.value.code == 69
    err = capsys.readouterr().err
    assert (
        err.startswith(  # Celery's handle_remote_command_error, on one line
            'Error: Could not connect to the message broker. Please make sure your broker (e.g., RabbitMQ or Redis) is '
            'running and the connection settings are correct. Reason: '
        )
        and err.count('\n') == 1
    )


def test_options_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    # Celery's CLI reads APP / CELERY_APP, BROKER_URL, CONFIG_MODULE ... and CELERY_<COMMAND>_<OPTION>
    from fastq.cli import _options_from_environment

    monkeypatch.setenv('CELERY_APP', 'proj')
    monkeypatch.setenv('CONFIG_MODULE', 'proj.settings')
    monkeypatch.setenv('CELERY_WORKER_CONCURRENCY', '3')
    monkeypatch.setenv('CELERY_WORKER_HOSTNAME', 'envc@%h')
    monkeypatch.setenv('CELERY_STATUS_JSON', '1')
    parser = build_parser()
    args = parser.parse_args(['worker', '-n', 'given@%h'])
    _options_from_environment(parser, args)
    assert (args.app, args.config, args.concurrency, args.hostname) == ('proj', 'proj.settings', 3, 'given@%h')
    status = parser.parse_args(['status'])
    _options_from_environment(parser, status)
    assert status.json is True


def test_settings_after_the_double_dash() -> None:
    # `fastq worker -- worker.concurrency=3 .prefetch_multiplier=1` (Celery's config_from_cmdline)
    from fastq import Fastq

    app = Fastq('cmdline', broker='memory://', set_as_current=False)
    app.config_from_cmdline(
        ['worker.concurrency=3', '.prefetch_multiplier=1', 'task_default_queue=q', 'task_routes=(json){"a": "b"}'],
        namespace='worker',
    )
    conf = app.conf
    assert (conf.worker_concurrency, conf.worker_prefetch_multiplier) == (3, 1)
    assert conf.task_default_queue == 'q' and conf.task_routes == {'a': 'b'}
    app.close()


def test_the_double_dash_is_read_by_worker_and_beat(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(['-A', 'no_such_app_module_here', 'worker', '--', 'worker.concurrency=3'])
    err = capsys.readouterr().err
    assert 'unrecognized arguments' not in err and 'Unable to load celery application' in err


def test_quiet_inspect_output(capsys: pytest.CaptureFixture[str]) -> None:
    import argparse

    from fastq.cli.control import _finish

    _finish({'w1@h': {'ok': 'pong'}}, argparse.Namespace(json=False, quiet=False))
    assert capsys.readouterr().out == '->  w1@h: OK\n        pong\n\n1 node online.\n'
    _finish({'w1@h': {'ok': 'pong'}}, argparse.Namespace(json=False, quiet=True))
    assert capsys.readouterr().out == ' w1@h: OK\n        pong\n'  # (Celery's -q: no arrow, no count)


def test_command_listings_are_laid_out_as_celerys(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # click's write_dl, as Celery's --list prints: help wrapped to the terminal's width less 2 (78 at most, and
    # on a pipe), continued under its column; objgraph's signature in Celery's brackets
    monkeypatch.setenv('COLUMNS', '80')
    from fastq.cli.control import INSPECT_COMMANDS, INSPECT_SIGNATURES, _listing

    _listing('inspect', INSPECT_COMMANDS, INSPECT_SIGNATURES)
    lines = capsys.readouterr().out.splitlines()
    assert lines[:3] == [
        'Inspect Commands:',
        '  active                          List of tasks currently being executed.',
        '  active_queues                   List the task queues a worker is currently',
    ]
    assert lines[3] == ' ' * 34 + 'consuming from.' and max(map(len, lines)) <= 78
    assert lines[lines.index('  objgraph [object_type=Request] [num=200 [max_depth=10]]') + 1 :][:2] == [
        ' ' * 34 + 'Create graph of uncollected objects (memory-',
        ' ' * 34 + 'leak debugging).',
    ]
    monkeypatch.setenv('COLUMNS', '60')  # narrower: 58 columns
    _listing('inspect', INSPECT_COMMANDS, INSPECT_SIGNATURES)
    lines = capsys.readouterr().out.splitlines()
    assert lines[3:5] == ['  active_queues                   List the task queues a', ' ' * 34 + 'worker is currently']
    assert max(len(line) for line in lines if line.startswith(' ' * 34)) <= 58


def test_replies_are_printed_as_celerys(capsys: pytest.CaptureFixture[str]) -> None:
    import argparse

    from fastq.cli.control import _finish

    # Celery's text.indent splits on newlines: the newlines `report` and `memdump` texts start or end with
    # print as indented blank lines
    replies = {'a@h': {'ok': '\nsoftware -> x\n'}, 'b@h': '- rss (end): 1MB.\n', 'c@h': ''}
    _finish(replies, argparse.Namespace(json=False, quiet=False))
    assert capsys.readouterr().out.split('\n') == [
        '->  a@h: OK', ' ' * 8, ' ' * 8 + 'software -> x', ' ' * 8,
        '->  b@h: OK', '    - rss (end): 1MB.', '    ',
        '->  c@h: OK', '    ',
        '', '3 nodes online.', '',
    ]  # fmt: skip
    # -q: `inspect` leaves out the arrows and the count, `status` only the arrows (Celery's status reads -q
    # from its own options, where it never is)
    _finish({'a@h': {'ok': 'pong'}}, argparse.Namespace(json=False, quiet=True))
    assert capsys.readouterr().out == ' a@h: OK\n        pong\n'
    _finish({'a@h': {'ok': 'pong'}}, argparse.Namespace(json=False, quiet=True), show_reply=False)
    assert capsys.readouterr().out == ' a@h: OK\n\n1 node online.\n'


@pytest.mark.parametrize(
    ('argv', 'usage', 'error'),
    [
        (['worker', '--zzzzz'], 'fastq worker [OPTIONS]', "No such option '--zzzzz'."),
        (['worker', '--concurency', '4'], 'fastq worker [OPTIONS]', "No such option '--concurency'. Did you mean '--concurrency'?"),
        (['worker', '-c', 'x'], 'fastq worker [OPTIONS]', "Invalid value for '-c' / '--concurrency': must be a non-negative integer or 'auto', got 'x'"),
        (['worker', '--prefetch-multiplier', 'x'], 'fastq worker [OPTIONS]', "Invalid value for '--prefetch-multiplier': 'x' is not a valid integer."),
        (['worker', '-c'], 'fastq worker [OPTIONS]', "Option '-c' requires an argument."),
        (['worker', 'extra'], 'fastq worker [OPTIONS]', 'Got unexpected extra argument (extra)'),
        (['frob'], 'fastq [OPTIONS] [COMMAND] [ARGS]...', "No such command 'frob'."),
        (['--zz'], 'fastq [OPTIONS] [COMMAND] [ARGS]...', "No such option '--zz'."),
        (['deadletter', 'list', '--foo'], 'fastq deadletter list [OPTIONS]', "No such option '--foo'."),
    ],
)  # fmt: skip
def test_usage_errors_in_celery_words(
    argv: list[str], usage: str, error: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """A mistyped command line gets click's three lines, as `celery worker --zzzzz` prints them, and status 2."""
    with pytest.raises(SystemExit) as exited:
        main(argv)
    assert exited.value.code == 2
    prog = usage.split(' [')[0]
    assert capsys.readouterr().err == f"Usage: {usage}\nTry '{prog} --help' for help.\n\nError: {error}\n"
