"""`fastq events`: watch the event stream, as `celery events` does (`--dump` for one line per event)."""

from __future__ import annotations

import argparse
import signal
import sys
import time
from typing import TYPE_CHECKING, Any

from fastq.cli.base import CommandError, check_loglevel, check_pidfile, detach, out, touch

if TYPE_CHECKING:
    from fastq.app import Fastq


def register(commands: Any) -> None:
    p = commands.add_parser(
        'events',
        help='watch the events of the workers',
        description='A live view of the workers and their tasks, from their events (start the workers with -E '
        'for task events). --dump prints every event instead, as `celery events --dump`.',
    )
    p.add_argument('-d', '--dump', action='store_true', help='print each event as it comes')
    p.add_argument('-c', '--camera', help='take snapshots with this camera class (a Polaroid subclass: module.Class)')
    p.add_argument(
        '-F', '--freq', '--frequency', dest='freq', type=float, default=1.0, help='redraw or snapshot interval (s)'
    )
    p.add_argument('-r', '--maxrate', help="at most this many snapshots ('100/m': Celery's rate strings)")
    p.add_argument('-l', '--loglevel', default='WARNING', help='the camera: DEBUG, INFO, WARNING, ERROR, CRITICAL')
    p.add_argument('-f', '--logfile', help='the camera: log to this file instead of stderr')
    p.add_argument('--pidfile', help='the camera: write the pid to this file (refuses to start if it is held)')
    p.add_argument('--detach', action='store_true', help='the camera: run in the background (give --logfile)')
    p.add_argument('--max-time', type=float, help='stop after this many seconds (for scripts)')
    p.add_argument('--uid', help='the camera: run as this user (name or id)')
    p.add_argument('--gid', help='the camera: run as this group')
    p.add_argument('--umask', help='the camera: umask of the files it creates (octal)')
    p.add_argument('--executable', help=argparse.SUPPRESS)
    p.set_defaults(handler=run)


def run(app: Fastq, args: argparse.Namespace) -> int:
    from fastq.events.dumper import Dumper, LiveView

    if not app.broker.features.fanout:
        raise CommandError(f'{app.broker.describe()} carries no events')
    if args.camera:
        return _camera(app, args)
    deadline = None if args.max_time is None else time.monotonic() + args.max_time
    receiver = app.events.Receiver()
    if args.dump:
        dumper = Dumper()
        dumper.say('-> evdump: starting capture...')
        receiver.handlers['*'] = dumper.on_event
        with receiver:
            receiver.capture(timeout=args.max_time)
        return 0
    state = app.events.State()
    view = LiveView(state, title=app.broker.describe())
    receiver.handlers['*'] = state.event
    with receiver:
        wakeup = True  # (once: the workers answer with a heartbeat, so the view lists them from the start)
        while deadline is None or time.monotonic() < deadline:
            step = args.freq if deadline is None else min(args.freq, max(deadline - time.monotonic(), 0.0))
            receiver.capture(timeout=step, wakeup=wakeup)
            wakeup = False
            view.draw()
    out()
    return 0


def _camera(app: Fastq, args: argparse.Namespace) -> int:
    """`celery events --camera`: snapshots with a Polaroid subclass, optionally as a daemon."""
    from fastq.events.snapshot import evcam
    from fastq.utils.imports import symbol_by_name

    loglevel = check_loglevel(args.loglevel)
    try:
        symbol_by_name(args.camera)
    except (ImportError, AttributeError, ValueError) as exc:
        raise CommandError(f'--camera: cannot import {args.camera!r}: {exc}') from None
    if args.pidfile:
        check_pidfile(args.pidfile)
    if args.logfile:
        touch(args.logfile)
    if args.detach:
        detach(args.logfile)
    from fastq.utils.platforms import maybe_drop_privileges, set_umask

    set_umask(args.umask)
    maybe_drop_privileges(uid=args.uid, gid=args.gid)  # (as Celery's: before the pidfile and log are made)
    # stopped by a service manager (or `kill`): still the last shot, and the pidfile removed
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    evcam(
        args.camera,
        freq=args.freq,
        maxrate=args.maxrate,
        loglevel=loglevel,
        logfile=args.logfile,
        pidfile=args.pidfile,
        app=app,
        max_time=args.max_time,
    )
    return 0
