"""Celery's CLI plugins (`celery.commands` entry points: Flower's `celery flower`) run by `fastq`.

A Celery user runs `celery -A proj flower`; with fastq it is `fastq -A proj flower`. A plugin is a click command
written against a Celery app, so it is run by Celery's own CLI (the `celery` package must be installed: the
plugin requires it anyway) on a Celery app made to mirror the fastq app's connection settings: the broker, the
result backend and what names the pidbox and the event stream. fastq speaks Celery's wire format on both, so
the plugin sees fastq's workers as it would see Celery's (Flower's worker list, task events and control
buttons all work). fastq's own commands always win over a plugin of the same name.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from importlib.metadata import EntryPoint, entry_points
from typing import TYPE_CHECKING, Any

from fastq.cli.base import CommandError

if TYPE_CHECKING:
    from fastq.app import Fastq

__all__ = ['celery_mirror', 'find', 'run']

GROUP = 'celery.commands'
#: The settings a mirror takes from the fastq app: where the broker and results are, and how the pidbox and
#: the event stream are named and encoded (what a monitoring plugin talks through).
MIRRORED = (
    'broker_url',
    'broker_transport_options',
    'broker_use_ssl',
    'broker_connection_timeout',
    'broker_connection_retry',
    'broker_connection_max_retries',
    'broker_heartbeat',
    'result_backend',
    'result_backend_transport_options',
    'result_serializer',
    'redis_backend_use_ssl',
    'accept_content',
    'result_accept_content',
    'task_serializer',
    'event_serializer',
    'event_exchange',
    'event_queue_prefix',
    'event_queue_ttl',
    'event_queue_expires',
    'control_exchange',
    'control_queue_ttl',
    'control_queue_expires',
    'timezone',
    'enable_utc',
)

#: Where the mirror is found by Celery's `-A` (`fastq.cli.plugins:mirror`), set just before the plugin runs.
mirror: Any = None


def find(name: str) -> EntryPoint | None:
    """The `celery.commands` entry point called `name`, if a package installed one."""
    return next((ep for ep in entry_points(group=GROUP) if ep.name == name), None)


def celery_mirror(app: Fastq) -> Any:
    """A Celery app with the fastq app's connection settings (those it has and Celery knows)."""
    try:
        from celery import Celery
    except ImportError:
        raise CommandError(
            'this command is a Celery plugin: it needs the celery package (pip install celery)'
        ) from None
    conf = app.conf
    settings = {key: conf[key] for key in MIRRORED if conf.get(key) is not None}
    settings.setdefault('broker_url', app.broker_url)
    mirrored = Celery(app.main or 'fastq', set_as_current=False)
    mirrored.conf.update(settings)
    for task in list(app.tasks.values()):  # by name, for what lists or sends them (Flower's task API)
        if not task.name.startswith('celery.'):
            options = {'queue': task.queue} if getattr(task, 'queue', None) else {}
            mirrored.task(name=task.name, shared=False, **options)(_runs_elsewhere)
    return mirrored


def _runs_elsewhere(*args: Any, **kwargs: Any) -> None:
    raise RuntimeError('a mirror of a fastq task: it runs on fastq workers, not in this process')


def run(app: Fastq, name: str, arguments: Sequence[str]) -> int:
    """Run the plugin `name` with `arguments` (what followed its name) on a mirror of `app`."""
    global mirror
    mirror = celery_mirror(app)
    from celery.bin.celery import celery as celery_group  # (importing it loads the plugins into the group)

    try:
        celery_group.main(
            args=['-A', f'{__name__}:mirror', name, *arguments], prog_name='fastq', auto_envvar_prefix='CELERY'
        )
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    finally:
        sys.stdout.flush()
    return 0
