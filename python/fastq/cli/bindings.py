"""`fastq list bindings`: the bindings of the app's task exchanges, in Celery's table.

As Celery does, the app's queues are declared first (so a fresh broker shows what a worker would bind), then
every binding of their exchanges is listed, other apps' queues bound to them included. Redis keeps bindings in
kombu's `_kombu.binding.<exchange>` sets, which any client can read; AMQP 0-9-1 has no method to list them
(Celery's pyamqp transport cannot either), and fastq's SQLite and in-memory brokers keep none: those get
Celery's error.
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

from fastq.cli.base import CommandError, out

if TYPE_CHECKING:
    from fastq.app import Fastq


def register(commands: Any) -> None:
    p = commands.add_parser(
        'list',
        help='get info from broker',
        description='Get info from broker.',
    )
    what = p.add_subparsers(dest='what', metavar='COMMAND', required=True)
    b = what.add_parser('bindings', help='inspect queue bindings', description='Inspect queue bindings.')
    b.set_defaults(handler=list_bindings)


def _exchanges(app: Fastq, queues: list[str]) -> list[str]:
    """The exchanges declaring `queues` declares: each queue's own and those of its extra bindings."""
    from fastq.routing import as_exchange

    names: dict[str, None] = {}
    for name in queues:
        queue = app.router.queue(name)
        for exchange in (queue.exchange, *(getattr(b, 'exchange', '') for b in queue.bindings or ())):
            exchange_name = as_exchange(exchange).name
            if exchange_name:
                names[exchange_name] = None
    return list(names)


def list_bindings(app: Fastq, args: argparse.Namespace) -> int:
    broker = app.broker
    if broker.scheme != 'redis':
        raise CommandError('Your transport cannot list bindings.')
    from fastq.brokers.redis import RedisBroker

    assert isinstance(broker, RedisBroker)
    broker.connect()
    queues = app.router.worker_queues(None)
    broker.declare(queues)
    layout = broker.layout
    rows = []
    for exchange in _exchanges(app, queues):
        members = broker.client.smembers(layout.binding_key(exchange))
        for member in sorted(m.decode() if isinstance(m, bytes) else str(m) for m in members):
            routing_key, _, queue = layout.parse_binding(member)
            rows.append((queue, exchange, routing_key))

    def fmt(q: str, e: str, r: str) -> None:
        out(f'{q:<28} {e:<28} {r}')

    fmt('Queue', 'Exchange', 'Routing Key')
    fmt('-' * 16, '-' * 16, '-' * 16)
    for row in rows:
        fmt(*row)
    return 0
