"""`fastq purge`: erase waiting messages (with Celery's prompt and wording)."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

from fastq.cli.base import confirm, err, out
from fastq.utils.text import pluralize

if TYPE_CHECKING:
    from fastq.app import Fastq


def register(commands: Any) -> None:
    p = commands.add_parser(
        'purge', help='erase all messages from queues', description='Erase all messages from all known task queues.'
    )
    p.add_argument('-f', '--force', action='store_true', help="don't prompt for verification")
    p.add_argument('-Q', '--queues', help='comma-separated queues to purge')
    p.add_argument('-X', '--exclude-queues', help='comma-separated queues not to purge')
    p.set_defaults(handler=purge)


def purge(app: Fastq, args: argparse.Namespace) -> int:
    broker = app.broker
    broker.connect()
    if args.queues:
        queues = [q.strip() for q in args.queues.split(',') if q.strip()]
    else:  # the app's own queues, as Celery's purge: not every queue the broker knows (other apps' too)
        queues = app.router.worker_queues(None)
    excluded = {q.strip() for q in (args.exclude_queues or '').split(',') if q.strip()}
    queues = [q for q in queues if q not in excluded]
    if not queues:  # (everything named was excluded: Celery's purge says nothing, asks nothing)
        return 0
    if not args.force:
        names = ', '.join(sorted(queues))
        question = (  # Celery's words, its missing space after the colon included
            f'WARNING:This will remove all tasks from {"queue" if len(queues) == 1 else "queues"}: {names}.\n'
            '         There is no undo for this operation!\n\n'
            '(to skip this prompt use the -f option)\n'
            'Are you sure you want to delete all tasks?'
        )
        if not confirm(question):
            err('Aborted!')
            return 1
    messages = sum(broker.purge(q) for q in queues)
    if messages:
        out(f'Purged {pluralize(messages, "message")} from {pluralize(len(queues), "known task queue")}.')
    else:
        out(f'No messages purged from {pluralize(len(queues), "queue")}.')
    return 0
