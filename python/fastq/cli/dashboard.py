"""`fastq dashboard`: serve the live web dashboard (see `fastq.dashboard`)."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

from fastq.cli.base import CommandError, out

if TYPE_CHECKING:
    from fastq.app import Fastq


def register(commands: Any) -> None:
    p = commands.add_parser(
        'dashboard',
        help='serve a live web dashboard of workers, queues and tasks',
        description='Serve a live web page of the workers, queues and tasks (task events need workers run with -E).',
    )
    p.add_argument('--address', default='127.0.0.1', help='address to listen on (default: 127.0.0.1)')
    p.add_argument('--port', type=int, default=5555, help='port to listen on (default: 5555)')
    p.add_argument('-l', '--loglevel', default='warning', help='log level of the web server (default: warning)')
    p.set_defaults(handler=dashboard)


def dashboard(app: Fastq, args: argparse.Namespace) -> int:
    try:
        import starlette  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError as exc:
        raise CommandError(f'the dashboard needs the dashboard extra: pip install "fastq[dashboard]" ({exc})') from exc
    from fastq.dashboard import serve

    out(f'fastq dashboard on http://{args.address}:{args.port}/ (broker {app.broker.describe()})')
    serve(app, args.address, args.port, args.loglevel.lower())
    return 0
