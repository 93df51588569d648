"""`fastq deadletter`: look at, requeue and purge messages the workers moved aside."""

from __future__ import annotations

import argparse
import json
from datetime import datetime
from typing import TYPE_CHECKING, Any

from fastq.cli.base import CommandError, out

if TYPE_CHECKING:
    from fastq.app import Fastq
    from fastq.brokers.base import DeadLetter


def register(commands: Any) -> None:
    p = commands.add_parser(
        'deadletter',
        help='list, show, requeue or purge dead-lettered messages',
        description='Messages a worker could not or would not run (malformed, unknown task, refused content '
        "type, redelivered too often) are kept in the broker's dead-letter store.",
    )
    sub = p.add_subparsers(dest='action', metavar='ACTION', required=True)
    ls = sub.add_parser('list', help='list dead letters, newest first')
    ls.add_argument('--limit', type=int, default=100)
    ls.add_argument('-j', '--json', action='store_true', help='print JSON')
    show = sub.add_parser('show', help='show one dead letter (by its id or its task id)')
    show.add_argument('id')
    show.add_argument('-j', '--json', action='store_true', help='print JSON')
    requeue = sub.add_parser('requeue', help='put a dead letter back in its queue')
    requeue.add_argument('id')
    purge = sub.add_parser('purge', help='delete all dead letters')
    purge.add_argument('-f', '--force', action='store_true', help="don't prompt for verification")
    p.set_defaults(handler=run)


def _when(ts: float) -> str:
    return datetime.fromtimestamp(ts).isoformat(timespec='seconds')


def _as_dict(letter: DeadLetter, with_payload: bool) -> dict[str, Any]:
    out_: dict[str, Any] = {
        'id': letter.id,
        'task': letter.task_name,
        'task_id': letter.task_id,
        'queue': letter.queue,
        'reason': letter.reason,
        'deliveries': letter.deliveries,
        'created': _when(letter.created),
    }
    if with_payload:
        try:
            out_['message'] = json.loads(letter.payload)
        except ValueError:
            out_['payload'] = letter.payload.decode('utf-8', 'replace')
    return out_


def _list(store: Any, args: argparse.Namespace) -> None:
    letters = store.list(args.limit)
    if args.json:
        out(json.dumps([_as_dict(d, False) for d in letters], indent=2))
    elif not letters:
        out('No dead letters.')
    else:
        out(f'{"ID":<32}  {"TASK":<24}  {"TASK ID":<36}  {"QUEUE":<10}  {"WHEN":<19}  REASON')
        for d in letters:
            out(
                f'{d.id:<32}  {(d.task_name or "?")[:24]:<24}  {(d.task_id or "?"):<36}  {d.queue[:10]:<10}  '
                f'{_when(d.created)}  {d.reason}'
            )


def _show(store: Any, args: argparse.Namespace) -> None:
    letter = store.get(args.id)
    if letter is None:
        raise CommandError(f'no dead letter {args.id!r}')
    data = _as_dict(letter, True)
    if args.json:
        out(json.dumps(data, indent=2))
        return
    for key, value in data.items():
        if key == 'message':
            out(f'{key}:\n{json.dumps(value, indent=2)}')
        else:
            out(f'{key}: {value}')


def _purge(store: Any, args: argparse.Namespace) -> None:
    if not args.force:
        answer = input(f'Delete all {store.count()} dead letters (yes/NO)? ')
        if answer.strip().lower() not in ('y', 'yes'):
            return
    out(f'Purged {store.purge()} dead letter(s).')


def run(app: Fastq, args: argparse.Namespace) -> int:
    broker = app.broker
    broker.connect()
    store = broker.dead_letters
    if args.action == 'list':
        _list(store, args)
    elif args.action == 'show':
        _show(store, args)
    elif args.action == 'requeue':
        requeued = broker.requeue_dead_letter(args.id)
        if requeued is None:
            raise CommandError(f'no dead letter {args.id!r}')
        out(f'Requeued {requeued.task_name or "message"}[{requeued.task_id or requeued.id}] to {requeued.queue}.')
    else:
        _purge(store, args)
    return 0
