"""`fastq worker`: the options `celery worker` takes, so deployment manifests keep working."""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
from typing import TYPE_CHECKING, Any

from fastq.cli.base import CommandError, check_loglevel, check_pidfile, detach, err, touch, write_pidfile
from fastq.utils.imports import module_names
from fastq.utils.log import setup_worker_logging
from fastq.utils.nodenames import default_nodename, host_format, node_format
from fastq.utils.platforms import check_privileges, maybe_drop_privileges, set_umask

if TYPE_CHECKING:
    from fastq.app import Fastq

# Flags with no meaning in fastq: accepted, with one line saying why nothing happens.
NO_OPS = {
    'without_gossip': '--without-gossip: fastq workers do not gossip; ignored',
    'statedb': '--statedb: fastq keeps revocations in the broker, no state file is needed; ignored',
    'pool_start_method': '--pool-start-method: fastq forks its children from a fork server started before any '
    'connection or thread, which is what spawn guards against; ignored',
}


def register(commands: Any) -> None:
    p = commands.add_parser('worker', help='start a worker', description='Start a worker instance.')
    p.add_argument('-n', '--hostname', help='node name, e.g. worker1@%%h (default celery@%%h)')
    p.add_argument('-l', '--loglevel', default='WARNING', help='DEBUG, INFO, WARNING, ERROR, CRITICAL, FATAL')
    p.add_argument(
        '-c',
        '--concurrency',
        type=_concurrency_arg,
        help='child processes (prefork) or threads (default: CPU count); with -P asyncio, tasks each child '
        'runs at once (default 100)',
    )
    p.add_argument('-P', '--pool', help='prefork (default), asyncio, threads, gevent or solo')
    p.add_argument(
        '--processes',
        type=int,
        help='-P asyncio: child processes, each an event loop running -c tasks at once (default: CPU count)',
    )
    p.add_argument('-Q', '--queues', help='comma-separated queues to consume from')
    p.add_argument('-X', '--exclude-queues', help='comma-separated queues not to consume from')
    p.add_argument('-I', '--include', help='comma-separated modules to import')
    p.add_argument(
        '-O',
        '--optimization',
        dest='optimization',
        choices=('default', 'fair'),
        help='scheduling (fastq is always fair)',
    )
    p.add_argument('--prefetch-multiplier', type=int, help='messages held per process (default 4)')
    p.add_argument(
        '--disable-prefetch',
        action='store_true',
        help='fetch a task only when a process is free to run it (prefetch multiplier 1)',
    )
    p.add_argument('--pool-start-method', choices=('fork', 'spawn'), help=argparse.SUPPRESS)
    p.add_argument('--max-tasks-per-child', type=int, help='replace a child after this many tasks')
    p.add_argument('--max-memory-per-child', type=int, help='replace a child above this resident memory (KiB)')
    p.add_argument('--time-limit', type=float, help='hard time limit in seconds')
    p.add_argument('--soft-time-limit', type=float, help='soft time limit in seconds')
    p.add_argument('-f', '--logfile', help='log to this file instead of stderr')
    p.add_argument('--pidfile', help='write the pid to this file (refuses to start if it is held)')
    p.add_argument(
        '-D',
        '--detach',
        action='store_true',
        help='run in the background (give --logfile: the log has nowhere else to go)',
    )
    p.add_argument('--purge', '--discard', dest='purge', action='store_true', help='purge queues before starting')
    p.add_argument(
        '-E',
        '--task-events',
        '--events',
        dest='task_events',
        action='store_true',
        help='send task events (for monitors: Flower, fastq events)',
    )
    p.add_argument('--metrics-port', type=int, help='serve Prometheus metrics on this port (0: any free port)')
    p.add_argument('--without-gossip', action='store_true', help=argparse.SUPPRESS)
    p.add_argument(
        '--without-mingle', action='store_true', help="don't ask the other workers for their revoked ids at startup"
    )
    p.add_argument('--without-heartbeat', action='store_true', help='send no worker heartbeat events')
    p.add_argument('--heartbeat-interval', type=float, help='seconds between heartbeat events (default 2)')
    p.add_argument('--autoscale', help='MAX,MIN: grow the prefork pool up to MAX processes while tasks wait, '
                   'shrink it back to MIN when idle')  # fmt: skip
    p.add_argument(
        '-B', '--beat', action='store_true', help='also run beat, the periodic task scheduler, in this worker'
    )
    p.add_argument('-S', '--statedb', help=argparse.SUPPRESS)
    p.add_argument('-s', '--schedule-filename', '--schedule', dest='schedule_filename', help="-B: beat's schedule file")
    p.add_argument('--scheduler', help='-B: scheduler class (fastq has its own: fastq.beat:Scheduler)')
    p.add_argument('--uid', help='run as this user (name or id) once the log and pidfile are open')
    p.add_argument('--gid', help="run as this group (default with --uid: the user's)")
    p.add_argument('--umask', help='umask of the files the worker creates (octal, e.g. 022)')
    p.add_argument('--executable', help=argparse.SUPPRESS)  # (Celery's, for the detached re-exec: fastq forks)
    p.set_defaults(handler=run)


def _concurrency_arg(value: str) -> int | str | None:
    """-c N, or 'auto' / 0: the CPU count (Celery's)."""
    if value.strip().lower() == 'auto':
        return 'auto'
    try:
        number = int(value)
    except ValueError:
        number = -1
    if number < 0:  # (Celery's words)
        raise argparse.ArgumentTypeError(f"must be a non-negative integer or 'auto', got {value!r}")
    return number or None


def _celery_options(app: Fastq, args: argparse.Namespace) -> dict[str, Any]:
    """The rest of `celery worker`'s options as its `celeryd_init` receivers find them in `options` (a
    receiver reading `options['without_mingle']` or `options['purge']` works on either); `pool` is the
    name given with -P (Celery's holds its pool class)."""
    return {
        'pool': args.pool,
        'include': args.include,
        'exclude_queues': args.exclude_queues,
        'optimization': args.optimization or 'default',
        'pool_start_method': args.pool_start_method,
        'purge': args.purge,
        'statedb': args.statedb,
        'schedule_filename': args.schedule_filename or app.conf.beat_schedule_filename,
        'scheduler': args.scheduler,
        'heartbeat_interval': args.heartbeat_interval,
        'without_gossip': args.without_gossip,
        'without_mingle': args.without_mingle,
        'without_heartbeat': args.without_heartbeat,
        'umask': args.umask,
        'executable': args.executable,
        'no_color': bool(getattr(args, 'no_color', False)),
    }


def _warn_no_ops(args: argparse.Namespace) -> None:
    for option, message in NO_OPS.items():
        value = getattr(args, option, None)
        if value and not (option == 'pool_start_method' and value == 'fork'):  # (fork: what fastq does)
            err(f'warning: {message}')


def _split(value: str | None) -> list[str]:
    return [part.strip() for part in (value or '').split(',') if part.strip()]


def _detach_if_asked(args: argparse.Namespace) -> tuple[str, str | None]:
    """This worker's node name and its pidfile's path, detached from the terminal first with `--detach`.

    `--logfile=/var/log/celery/%n%I.log --pidfile=/run/celery/%n.pid`, as `celery multi` and Celery's service
    files pass them, are expanded for this node (the log file once more in each child, for `%I`).
    """
    node = host_format(default_nodename(args.hostname))
    pidfile = node_format(args.pidfile, node) if args.pidfile else None
    if args.detach:
        # What would stop the detached process is said here, where someone reads it.
        if pidfile:
            check_pidfile(pidfile)
        if args.logfile:
            touch(node_format(args.logfile, node))
        detach(args.logfile)
    return node, pidfile


def _privileges_allowed(app: Fastq, pidfile: str | None = None) -> bool:
    """Celery's root check (a SecurityWarning; refused with pickle unless C_FORCE_ROOT), its refusal said
    on stderr in Celery's words, without an "Error:" prefix; a refused worker's pidfile is removed."""
    from fastq.utils.platforms import SecurityError

    try:
        check_privileges(app.conf.accept_content)
    except SecurityError as exc:
        err(str(exc))
        if pidfile:
            with contextlib.suppress(OSError):
                os.unlink(pidfile)
        return False
    return True


def run(app: Fastq, args: argparse.Namespace) -> int:
    from fastq.config.validate import UNSUPPORTED_POOLS
    from fastq.worker.worker import WorkController

    loglevel = check_loglevel(args.loglevel)
    if args.pool and args.pool in UNSUPPORTED_POOLS and UNSUPPORTED_POOLS[args.pool]:
        raise CommandError(f'-P {args.pool}: {UNSUPPORTED_POOLS[args.pool]}')
    _warn_no_ops(args)
    if args.include:
        app.conf.include = [*module_names(app.conf.include), *_split(args.include)]
    set_umask(args.umask)  # (first: the log file a detached worker opens to check it is made with it, as Celery's)
    node, pidfile = _detach_if_asked(args)
    if pidfile:
        check_pidfile(pidfile)  # (said on the terminal, before logging takes stderr over)
    prefetch = 1 if args.disable_prefetch or app.conf.worker_disable_prefetch else args.prefetch_multiplier
    # Made before logging is set up, as Celery's: its `celeryd_init` receivers may configure logging too.
    worker = WorkController(
        app,
        hostname=args.hostname,
        concurrency=args.concurrency,
        pool=args.pool,
        processes=args.processes,
        queues=_split(args.queues) or None,
        prefetch_multiplier=prefetch,
        max_tasks_per_child=args.max_tasks_per_child,
        max_memory_per_child=args.max_memory_per_child,
        time_limit=args.time_limit,
        soft_time_limit=args.soft_time_limit,
        quiet=args.quiet if hasattr(args, 'quiet') else False,
        beat=args.beat,
        schedule_filename=args.schedule_filename,
        scheduler=args.scheduler,
        task_events=args.task_events,
        heartbeat=not args.without_heartbeat,
        heartbeat_interval=args.heartbeat_interval,
        metrics_port=args.metrics_port,
        autoscale=args.autoscale,
        options={
            'loglevel': logging.getLevelName(loglevel),  # (a number, as Celery's: 20 for INFO)
            'logfile': args.logfile,
            'pidfile': pidfile,
            'detach': args.detach,
            **_celery_options(app, args),
            'prefetch_multiplier': prefetch or app.conf.worker_prefetch_multiplier,  # (the one in force)
            **getattr(args, 'user_options', {}),  # (app.user_options['worker'] and ['preload']: fastq.cli.options)
        },
    )
    # Without --uid/--gid the user is known now: checked before logging takes stderr over, so the warning or
    # refusal reads as Celery's on the terminal (not as log records), and a refused worker leaves no log file.
    checked = not (args.uid or args.gid)
    if checked and not _privileges_allowed(app):
        return 1
    setup_worker_logging(app.conf, loglevel, args.logfile, node, redirect=False)
    worker.redirect_stdouts = True  # (once the banner is out: WorkController.start)
    if pidfile:
        write_pidfile(pidfile)
    maybe_drop_privileges(uid=args.uid, gid=args.gid)  # (the log file and pidfile open: root no more)
    if not checked and not _privileges_allowed(app, pidfile):
        return 1
    try:
        worker.restart_on_hup = True
        excluded = {app.router.queue_name(q) for q in _split(args.exclude_queues)}  # (an alias: its queue)
        if excluded:
            worker.queues = [q for q in worker.queues if q not in excluded]
            if not worker.queues:
                raise CommandError('-X/--exclude-queues excludes every queue this worker would consume')
        if args.purge:
            count = sum(app.broker.purge(q) for q in worker.queues)
            if count:  # (Celery's words, on the terminal)
                print(f'purge: Erased {count} {"message" if count == 1 else "messages"} from the queue.', flush=True)
        code = worker.start()
    finally:
        if pidfile:
            with contextlib.suppress(OSError):
                os.unlink(os.path.abspath(pidfile))
        sys.stdout.flush()
    if worker.restart_requested:
        _restart(args.detach)
    return code


def _restart(detached: bool) -> None:
    """SIGHUP: the same command again, in this process (Celery's execv)."""
    sys.stderr.flush()
    argv = sys.orig_argv[1:]
    if detached:
        # Detached already: detaching again would move the worker to a new pid after this one (and its
        # pidfile) had gone, which a service manager reads as the service having died. Celery's detached
        # worker runs without -D/--detach too, and its execv keeps the pid.
        argv = [word for word in argv if word not in ('--detach', '-D')]
    os.execv(sys.executable, [sys.executable, *argv])
