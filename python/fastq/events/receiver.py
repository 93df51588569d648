"""`EventReceiver`: subscribe to the `celeryev` exchange and hand each event to a handler by its type.

`app.events.Receiver(connection, handlers={'task-failed': on_failure, '*': state.event}).capture(limit=10)`
as with Celery. Events sent as a batch (`task.multi`) are handed over one by one, in order.
"""

from __future__ import annotations

import fnmatch
import logging
import time
from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

from fastq.events.event import EVENT_EXCHANGE, decode_events, utcoffset
from fastq.exceptions import ImproperlyConfigured
from fastq.serialization import accept_set

if TYPE_CHECKING:
    from fastq.app import Fastq
    from fastq.brokers.base import Subscription

__all__ = ['EventReceiver']

logger = logging.getLogger('celery.events')

Handler = Callable[[dict[str, Any]], Any]


def _key_matcher(routing_key: str) -> Callable[[str], bool]:
    """AMQP topic matching reduced to what receivers use: `#` everything, `task.#`, `worker.heartbeat`."""
    if routing_key in ('#', '*', ''):
        return lambda key: True
    pattern = routing_key.replace('#', '*')
    return lambda key: fnmatch.fnmatchcase(key, pattern)


class EventReceiver:
    """Receives events from the workers (and clients that send `task-sent`) of an app's broker."""

    def __init__(
        self,
        app: Fastq,
        handlers: Mapping[str, Handler] | None = None,
        routing_key: str = '#',
        node_id: str | None = None,
        connection: Any = None,
        accept: Any = None,
        **kwargs: Any,
    ) -> None:
        if app.conf.event_queue_exclusive and app.conf.event_queue_durable:
            raise ImproperlyConfigured('Queue cannot be both exclusive and durable, choose one or the other.')
        self.app = app
        self.handlers: dict[str, Handler] = dict(handlers or {})
        self.routing_key = routing_key
        self.node_id = node_id
        self.exchange = str(app.conf.event_exchange or EVENT_EXCHANGE)
        self._match = _key_matcher(routing_key)
        #: What events may be (Celery's default: the event serializer, signed `auth` in the Security guide,
        #: and json, which workers that do not sign send).
        self.accept = accept_set(accept if accept is not None else {app.conf.event_serializer, 'json'})
        self._subscription: Subscription | None = None
        self.should_stop = False

    def consume(self) -> None:
        """Subscribe now (events sent from here on are received); `capture` does this itself."""
        if self._subscription is None:
            self._subscription = self.app.broker.subscribe(self.exchange)

    def process(self, type: str, event: dict[str, Any]) -> None:
        handler = self.handlers.get(type) or self.handlers.get('*')
        if handler is not None:
            handler(event)

    def wakeup_workers(self) -> None:
        """Ask every worker for a heartbeat now (Celery's), so a monitor that just started lists them at once
        instead of after their next one."""
        if self.app.broker.features.fanout:
            self.app.control.broadcast('heartbeat')

    def event_from_message(self, event: dict[str, Any]) -> dict[str, Any]:
        """Celery's: `local_received` (this host's clock when it arrived: State's liveness and `events --dump`
        show it) and the sender's `timestamp` moved into this host's time zone (`utcoffset`, hours west of UTC)."""
        offset, timestamp = event.get('utcoffset'), event.get('timestamp')
        if isinstance(offset, int | float) and isinstance(timestamp, int | float):
            event['timestamp'] = timestamp - (offset - utcoffset()) * 3600
        event['local_received'] = time.time()
        return event

    def itercapture(
        self, limit: int | None = None, timeout: float | None = None, wakeup: bool = True
    ) -> Iterator[dict[str, Any]]:
        """Yield events as they come, until `limit` were yielded or `timeout` seconds passed (None: forever);
        with `wakeup` (Celery's default), the workers are first asked for a heartbeat."""
        self.consume()
        assert self._subscription is not None
        if wakeup:
            self.wakeup_workers()
        deadline = None if timeout is None else time.monotonic() + timeout
        count = 0
        while not self.should_stop:
            wait = 1.0 if deadline is None else min(1.0, deadline - time.monotonic())
            if wait <= 0:
                return
            for routing_key, raw in self._subscription.get(wait):
                if not self._match(routing_key):
                    continue
                for event in decode_events(raw, self.accept):
                    yield self.event_from_message(event)
                    count += 1
                    if limit is not None and count >= limit:
                        return

    def capture(self, limit: int | None = None, timeout: float | None = None, wakeup: bool = True) -> None:
        """Handle events until `limit` were handled or `timeout` seconds passed (None: until `should_stop`).

        Unlike Celery's, a `timeout` ends the capture quietly instead of raising `socket.timeout`.
        """
        for event in self.itercapture(limit=limit, timeout=timeout, wakeup=wakeup):
            self.process(event['type'], event)

    def close(self) -> None:
        if self._subscription is not None:
            self._subscription.close()
            self._subscription = None

    def __enter__(self) -> EventReceiver:
        self.consume()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
