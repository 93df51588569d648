"""`fastq events`: watch the event stream, as `celery events` does (`--dump` for one line per event)."""

from __future__ import annotations

import argparse
import time
from typing import TYPE_CHECKING, Any

from fastq.cli.base import CommandError, out

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
    p.add_argument('-F', '--freq', '--frequency', dest='freq', type=float, default=1.0, help='redraw interval (s)')
    p.add_argument('--max-time', type=float, help='stop after this many seconds (for scripts)')
    p.add_argument('-c', '--camera', help=argparse.SUPPRESS)
    p.set_defaults(handler=run)


def run(app: Fastq, args: argparse.Namespace) -> int:
    from fastq.events.dumper import Dumper, LiveView

    if args.camera:
        raise CommandError('--camera: snapshot cameras are not supported; use the live view or --dump')
    if not app.broker.features.fanout:
        raise CommandError(f'{app.broker.describe()} carries no events')
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
        while deadline is None or time.monotonic() < deadline:
            step = args.freq if deadline is None else min(args.freq, max(deadline - time.monotonic(), 0.0))
            receiver.capture(timeout=step)
            view.draw()
    out()
    return 0
