"""`fastq worker`: the options `celery worker` takes, so deployment manifests keep working."""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
from typing import TYPE_CHECKING, Any

from fastq.cli.base import CommandError, err

if TYPE_CHECKING:
    from fastq.app import Fastq

# Flags with no meaning in fastq: accepted, with one line saying why nothing happens.
NO_OPS = {
    'without_gossip': '--without-gossip: fastq workers do not gossip; ignored',
    'without_mingle': '--without-mingle: fastq workers do not mingle at startup; ignored',
    'without_heartbeat': '--without-heartbeat: worker heartbeats are events, not sent by this build; ignored',
    'heartbeat_interval': '--heartbeat-interval: worker heartbeats are not sent by this build; ignored',
    'autoscale': '--autoscale: autoscaling is not available yet; running with a fixed pool size',
    'beat': '-B/--beat: the embedded beat scheduler is not available yet; run without it',
    'task_events': '-E/--task-events: task events are not available yet; ignored',
    'statedb': '--statedb: fastq keeps revocations in the broker, no state file is needed; ignored',
    'scheduler': '--scheduler: beat is not available yet; ignored',
    'schedule_filename': '-s/--schedule-filename: beat is not available yet; ignored',
    'uid': '--uid: fastq does not drop privileges itself; use your service manager; ignored',
    'gid': '--gid: fastq does not drop privileges itself; use your service manager; ignored',
}


def register(commands: Any) -> None:
    p = commands.add_parser('worker', help='start a worker', description='Start a worker instance.')
    p.add_argument('-n', '--hostname', help='node name, e.g. worker1@%%h (default celery@%%h)')
    p.add_argument('-l', '--loglevel', default='WARNING', help='DEBUG, INFO, WARNING, ERROR, CRITICAL, FATAL')
    p.add_argument('-c', '--concurrency', type=int, help='number of child processes/threads (default: CPU count)')
    p.add_argument('-P', '--pool', help='prefork (default), threads or solo')
    p.add_argument('-Q', '--queues', help='comma-separated queues to consume from')
    p.add_argument('-X', '--exclude-queues', help='comma-separated queues not to consume from')
    p.add_argument('-I', '--include', help='comma-separated modules to import')
    p.add_argument('-O', dest='optimization', choices=('default', 'fair'), help='scheduling (fastq is always fair)')
    p.add_argument('--prefetch-multiplier', type=int, help='messages held per process (default 4)')
    p.add_argument('--max-tasks-per-child', type=int, help='replace a child after this many tasks')
    p.add_argument('--max-memory-per-child', type=int, help='replace a child above this resident memory (KiB)')
    p.add_argument('--time-limit', type=float, help='hard time limit in seconds')
    p.add_argument('--soft-time-limit', type=float, help='soft time limit in seconds')
    p.add_argument('-f', '--logfile', help='log to this file instead of stderr')
    p.add_argument('--pidfile', help='write the pid to this file (refuses to start if it is held)')
    p.add_argument('-D', '--detach', action='store_true', help='run in the background (needs --logfile)')
    p.add_argument('--purge', '--discard', dest='purge', action='store_true', help='purge queues before starting')
    p.add_argument('-E', '--task-events', action='store_true', help=argparse.SUPPRESS)
    p.add_argument('--without-gossip', action='store_true', help=argparse.SUPPRESS)
    p.add_argument('--without-mingle', action='store_true', help=argparse.SUPPRESS)
    p.add_argument('--without-heartbeat', action='store_true', help=argparse.SUPPRESS)
    p.add_argument('--heartbeat-interval', type=float, help=argparse.SUPPRESS)
    p.add_argument('--autoscale', help=argparse.SUPPRESS)
    p.add_argument('-B', '--beat', action='store_true', help=argparse.SUPPRESS)
    p.add_argument('-S', '--statedb', help=argparse.SUPPRESS)
    p.add_argument('-s', '--schedule-filename', help=argparse.SUPPRESS)
    p.add_argument('--scheduler', help=argparse.SUPPRESS)
    p.add_argument('--uid', help=argparse.SUPPRESS)
    p.add_argument('--gid', help=argparse.SUPPRESS)
    p.add_argument('--umask', help=argparse.SUPPRESS)
    p.add_argument('--executable', help=argparse.SUPPRESS)
    p.set_defaults(handler=run)


def _split(value: str | None) -> list[str]:
    return [part.strip() for part in (value or '').split(',') if part.strip()]


def _check_loglevel(value: str) -> str:
    level = value.upper()
    if level == 'FATAL':
        level = 'CRITICAL'
    if level not in ('DEBUG', 'INFO', 'WARNING', 'WARN', 'ERROR', 'CRITICAL'):
        raise CommandError(f'-l/--loglevel: unknown level {value!r} (DEBUG, INFO, WARNING, ERROR, CRITICAL)')
    return level


def _write_pidfile(path: str) -> None:
    path = os.path.abspath(path)
    if os.path.exists(path):
        try:
            pid = int(open(path).read().strip() or 0)
        except (OSError, ValueError):
            pid = 0
        alive = False
        if pid:
            try:
                os.kill(pid, 0)
                alive = True
            except ProcessLookupError:
                alive = False
            except PermissionError:
                alive = True
        if alive:
            raise CommandError(f'Pidfile ({path}) already exists.\nSeems we are already running? (pid: {pid})')
        os.unlink(path)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    with os.fdopen(fd, 'w') as f:
        f.write(f'{os.getpid()}\n')


def _detach(logfile: str | None) -> None:
    if not logfile:
        raise CommandError('--detach needs --logfile (a detached worker has no terminal to log to)')
    if os.fork():
        os._exit(0)
    os.setsid()
    if os.fork():
        os._exit(0)
    devnull = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(devnull, fd)
    os.close(devnull)


def run(app: Fastq, args: argparse.Namespace) -> int:
    from fastq.config.validate import UNSUPPORTED_POOLS
    from fastq.utils.log import setup_logging
    from fastq.worker.worker import WorkController

    loglevel = _check_loglevel(args.loglevel)
    if args.pool and args.pool in UNSUPPORTED_POOLS and UNSUPPORTED_POOLS[args.pool]:
        raise CommandError(f'-P {args.pool}: {UNSUPPORTED_POOLS[args.pool]}')
    for option, message in NO_OPS.items():
        if getattr(args, option, None):
            err(f'warning: {message}')
    if args.include:
        app.conf.include = [*(app.conf.include or []), *_split(args.include)]
    if args.detach:
        _detach(args.logfile)
    conf = app.conf
    setup_logging(
        loglevel,
        args.logfile,
        fmt=conf.worker_log_format,
        task_fmt=conf.worker_task_log_format,
        datefmt=conf.worker_log_datefmt,
        colorize=False if args.logfile else conf.worker_log_color,
        hijack_root=conf.worker_hijack_root_logger,
    )
    if args.pidfile:
        _write_pidfile(args.pidfile)
    try:
        queues = _split(args.queues) or None
        worker = WorkController(
            app,
            hostname=args.hostname,
            concurrency=args.concurrency,
            pool=args.pool,
            queues=queues,
            prefetch_multiplier=args.prefetch_multiplier,
            max_tasks_per_child=args.max_tasks_per_child,
            max_memory_per_child=args.max_memory_per_child,
            time_limit=args.time_limit,
            soft_time_limit=args.soft_time_limit,
            quiet=args.quiet if hasattr(args, 'quiet') else False,
        )
        excluded = set(_split(args.exclude_queues))
        if excluded:
            worker.queues = [q for q in worker.queues if q not in excluded]
            if not worker.queues:
                raise CommandError('-X/--exclude-queues excludes every queue this worker would consume')
        if args.purge:
            count = sum(app.broker.purge(q) for q in worker.queues)
            logging.getLogger('celery.worker').warning(
                'Purged %d message(s) from %d queue(s)', count, len(worker.queues)
            )
        return worker.start()
    finally:
        if args.pidfile:
            with contextlib.suppress(OSError):
                os.unlink(os.path.abspath(args.pidfile))
        sys.stdout.flush()
