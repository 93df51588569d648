"""`fastq migrate SOURCE DESTINATION`: move task messages to another broker (Celery's command and words).

Differences from Celery 5.7, each where Celery's behaviour loses or duplicates messages or never ends:
without -t the run ends after 1 s without messages (`celery.contrib.migrate`'s default; Celery's command
passes None and waits forever, which leaves nothing for -F to do); the message that reaches -n is acked like
the others (Celery stops before acking it, so it stays in the source too); and -T matches protocol 2 messages
by their `task` header (Celery looks in the body, which fails for them).
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

from fastq.cli.base import CommandError, out

if TYPE_CHECKING:
    from fastq.app import Fastq
    from fastq.brokers.base import Delivery
    from fastq.migrate import State


def register(commands: Any) -> None:
    p = commands.add_parser(
        'migrate',
        help='migrate tasks from one broker to another',
        description='Migrate tasks from one broker to another.\n\nWarning: this command is experimental, make '
        'sure you have a backup of the tasks before you continue.',
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument('source', metavar='SOURCE', help='broker URL to take the tasks from')
    p.add_argument('destination', metavar='DESTINATION', help='broker URL to move them to')
    p.add_argument('-n', '--limit', type=int, help='Number of tasks to consume.')
    p.add_argument('-t', '--timeout', type=float, help='Timeout in seconds waiting for tasks (default 1).')
    p.add_argument('-a', '--ack-messages', action='store_true', help='Ack messages from source broker.')
    p.add_argument('-T', '--tasks', help='List of task names to filter on.')
    p.add_argument('-Q', '--queues', help='List of queues to migrate (queue or source:destination).')
    p.add_argument('-F', '--forever', action='store_true', help='Continually migrate tasks until killed.')
    p.set_defaults(handler=migrate)


def migrate(app: Fastq, args: argparse.Namespace) -> int:
    from fastq.brokers import create_broker
    from fastq.migrate import decoded_body, migrate_tasks
    from fastq.serialization import accept_set

    if args.limit is not None and args.limit < 0:
        raise CommandError('-n/--limit: must not be negative')
    accept = accept_set(app.conf.accept_content or ('json',))

    def on_migrate_task(state: State, delivery: Delivery) -> None:
        assert delivery.message is not None
        out(f'Migrating task {state.count}/{state.strtotal}: {decoded_body(delivery.message, accept)}')

    source = create_broker(args.source, app.conf)
    try:
        dest = create_broker(args.destination, app.conf)
        try:
            migrate_tasks(
                app,
                source,
                dest,
                limit=args.limit or None,
                timeout=1.0 if args.timeout is None else args.timeout,
                ack_messages=args.ack_messages,
                tasks=args.tasks,
                queues=args.queues,
                forever=args.forever,
                callback=on_migrate_task,
            )
        finally:
            dest.close()
    finally:
        source.close()
    return 0
