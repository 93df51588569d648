"""`fastq beat`: the periodic task scheduler, with `celery beat`'s options, banner and log lines."""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
from datetime import datetime
from typing import TYPE_CHECKING, Any

from fastq import __version__
from fastq.cli.base import check_loglevel, check_pidfile, detach, err, touch, write_pidfile
from fastq.schedules import humanize_seconds
from fastq.utils.platforms import maybe_drop_privileges, set_umask
from fastq.utils.text import as_uri

if TYPE_CHECKING:
    from fastq.app import Fastq
    from fastq.beat.service import Service


def register(commands: Any) -> None:
    p = commands.add_parser(
        'beat', help='start the periodic task scheduler', description='Start the beat periodic task scheduler.'
    )
    p.add_argument(
        '--detach',
        action='store_true',
        help='run in the background as a daemon (give --logfile: the log has nowhere else to go)',
    )
    p.add_argument(
        '-s', '--schedule', help='path to the schedule file (default: beat_schedule_filename, celerybeat-schedule)'
    )
    p.add_argument(
        '-S',
        '--scheduler',
        help="scheduler class: fastq's (fastq.beat:Scheduler), or a Celery one such as django-celery-beat's",
    )
    p.add_argument('--max-interval', type=int, help='max seconds to sleep between schedule iterations')
    p.add_argument('-n', '--hostname', help="beat's node name for remote control (default celerybeat@%%h)")
    p.add_argument(
        '--enable-remote-control',
        dest='remote_control',
        action=argparse.BooleanOptionalAction,
        default=None,
        help='answer `inspect ping` on the pidbox while the scheduler ticks (beat_enable_remote_control)',
    )
    p.add_argument('-l', '--loglevel', default='WARNING', help='DEBUG, INFO, WARNING, ERROR, CRITICAL, FATAL')
    p.add_argument('-f', '--logfile', help='log to this file instead of stderr')
    p.add_argument('--pidfile', help='write the pid to this file (refuses to start if it is held)')
    p.add_argument('--uid', help='run as this user (name or id) once the log and pidfile are open')
    p.add_argument('--gid', help="run as this group (default with --uid: the user's)")
    p.add_argument('--umask', help='umask of the files beat creates (octal, e.g. 022)')
    p.add_argument('--executable', help=argparse.SUPPRESS)  # (Celery's daemon option; beat runs in place)
    p.set_defaults(handler=run)


def banner(app: Fastq, service: Service, loglevel: str, logfile: str | None) -> str:
    scheduler = service.scheduler
    max_interval = scheduler.max_interval
    lines = [
        '__    -    ... __   -        _',
        f'LocalTime -> {datetime.now().replace(microsecond=0)}',
        'Configuration ->',
        f'    . broker -> {as_uri(app.broker.url)}',  # (kombu's as_uri, as Celery prints it)
        f'    . scheduler -> {scheduler.label}',
        scheduler.info,
        f'    . logfile -> {logfile or "[stderr]"}@%{loglevel}',
        f'    . maxinterval -> {humanize_seconds(max_interval)} ({max_interval:g}s)',
        f'    . remote control -> {service.hostname}' if service.remote_control else '',
        f'    . leader lock -> {service.lock_name} ({humanize_seconds(service.lock_timeout)})',
    ]
    return '\n'.join(line for line in lines if line)


def run(app: Fastq, args: argparse.Namespace) -> int:
    from fastq.beat.service import Service
    from fastq.brokers import broker_class
    from fastq.utils.log import redirect_worker_stdouts, setup_logging
    from fastq.utils.text import mask_url

    loglevel = check_loglevel(args.loglevel)
    service = Service(
        app,
        max_interval=args.max_interval,
        schedule_filename=args.schedule,
        scheduler_cls=args.scheduler,
        remote_control=args.remote_control,
        hostname=args.hostname,
    )
    if not broker_class(app.broker_url).features.shared:
        err(f'warning: {mask_url(app.broker_url)} is private to this process: what beat sends reaches no worker')
    quiet = getattr(args, 'quiet', False)
    if not quiet:
        print(f'fastq beat v{__version__} is starting.', flush=True)
    set_umask(args.umask)  # (first: the log file checked below is made with it, as Celery's)
    if args.detach:
        # What would stop the detached process is said here, where someone reads it (as the worker does).
        if args.pidfile:
            check_pidfile(args.pidfile)
        if args.logfile:
            touch(args.logfile)
        detach(args.logfile)
    conf = app.conf
    setup_logging(
        loglevel,
        args.logfile,
        fmt=conf.worker_log_format,
        datefmt=conf.worker_log_datefmt,
        colorize=False if args.logfile else conf.worker_log_color,
        hijack_root=conf.worker_hijack_root_logger,
    )
    if args.pidfile:
        write_pidfile(args.pidfile)
    maybe_drop_privileges(uid=args.uid, gid=args.gid)
    try:
        app.init_worker()
        if not quiet and not args.detach:
            print(banner(app, service, loglevel, args.logfile), flush=True)
        # Then stdout and stderr into the log, as Celery's beat does once its banner is out (its setup_logging,
        # with the worker's `worker_redirect_stdouts` settings): what a `beat_init` receiver, a scheduler or a
        # custom schedule's `is_due` prints is a WARNING record in the log (in the log file of a detached beat
        # too), not stray text on a terminal that may not be there.
        redirect_worker_stdouts(conf)
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, lambda *_: service.stop())
        service.start()
        return 0
    finally:
        if args.pidfile:
            with contextlib.suppress(OSError):
                os.unlink(os.path.abspath(args.pidfile))
        app.close()
        sys.stdout.flush()
