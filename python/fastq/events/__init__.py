"""Monitoring events, on Celery's wire: `app.events.Dispatcher`, `app.events.Receiver`, `app.events.State`.

Workers send `worker-online/heartbeat/offline` always, and `task-received/started/succeeded/failed/retried/
rejected/revoked` with `-E` (`worker_send_task_events`, or the `enable_events` control command); clients
send `task-sent` with `task_send_sent_event`. Celery's receivers (`celery events`, Flower) read fastq's
events and the reverse.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from fastq.events.dispatcher import EventDispatcher
from fastq.events.event import EVENT_EXCHANGE, Event, group_from
from fastq.events.receiver import EventReceiver
from fastq.events.state import State

if TYPE_CHECKING:
    from fastq.app import Fastq

__all__ = ['EVENT_EXCHANGE', 'Event', 'EventDispatcher', 'EventReceiver', 'Events', 'State', 'group_from']


class Events:
    """`app.events`: the classes bound to an app, as Celery's `app.events` offers them."""

    def __init__(self, app: Fastq) -> None:
        self.app = app

    def Dispatcher(self, connection: Any = None, hostname: str | None = None, **kwargs: Any) -> EventDispatcher:
        return EventDispatcher(self.app, hostname=hostname, connection=connection, **kwargs)

    def Receiver(self, connection: Any = None, handlers: Any = None, **kwargs: Any) -> EventReceiver:
        return EventReceiver(self.app, handlers=handlers, connection=connection, **kwargs)

    def State(self, **kwargs: Any) -> State:
        return State(**kwargs)

    def default_dispatcher(self, hostname: str | None = None, enabled: bool = True) -> EventDispatcher:
        return self.Dispatcher(hostname=hostname, enabled=enabled)
