"""`EventDispatcher`: sends events to the `celeryev` exchange, as Celery's does, for workers and clients.

Events of a *buffered* group (the worker buffers `task`) are only appended to a buffer by `send`, which is
all the worker's loop pays per event; a sender thread (`start()`) publishes the buffer every
`flush_interval` seconds, or sooner once `buffer_limit` events wait, as lists under the routing key
`<group>.multi` (Celery's `task.multi`). Other events are published at once. An event that cannot be
published is kept (`buffer_while_offline`, up to `MAX_OFFLINE` of them) and sent with the next flush.

A sender with an event per task (the worker with `-E`) writes to the group's `encoded(group)` buffer instead
(`fastq._core.EventBuffer`), which turns each event into JSON as it is pushed: the flush then publishes
ready-made bodies, and holds the GIL only to copy them out.
"""

from __future__ import annotations

import logging
import os
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any

from fastq import _core
from fastq.events.event import EVENT_EXCHANGE, Event, encode_events, group_from, routing_key_of, stamp, utcoffset
from fastq.serialization import json_default

if TYPE_CHECKING:
    from fastq.app import Fastq
    from fastq.brokers.base import Broker

__all__ = ['EventDispatcher']

logger = logging.getLogger('celery.events')

#: Events published per `<group>.multi` message at most.
BATCH = 256
#: `<group>.multi` messages published in one round trip at most.
PIPELINE = 16
#: Events kept while the broker cannot be reached; older ones are dropped beyond this.
MAX_OFFLINE = 100_000


class EventDispatcher:
    """Send events: `dispatcher.send('task-succeeded', uuid=..., result=..., runtime=...)`.

    Arguments follow Celery's: `groups` limits the groups sent (None: all), `buffer_group` names the groups
    that are buffered and sent in batches, `enabled=False` makes `send` a no-op.
    """

    def __init__(
        self,
        app: Fastq,
        hostname: str | None = None,
        enabled: bool = True,
        groups: Iterable[str] | None = None,
        buffer_while_offline: bool = True,
        buffer_group: Iterable[str] | None = None,
        buffer_limit: int = 1000,
        flush_interval: float = 0.1,
        broker: Broker | None = None,
        connection: Any = None,
        **kwargs: Any,
    ) -> None:
        from fastq.utils.nodenames import anon_nodename

        self.app = app
        self.broker = broker if broker is not None else app.broker
        self.hostname = hostname or anon_nodename()
        self.exchange = str(app.conf.event_exchange or EVENT_EXCHANGE)
        self.enabled = enabled
        self.groups: set[str] | None = set(groups) if groups is not None else None
        self.buffer_group = frozenset(buffer_group or ())
        self.buffer_while_offline = buffer_while_offline
        self.buffer_limit = buffer_limit
        self.flush_interval = flush_interval
        self.pid = os.getpid()
        self.utcoffset = utcoffset()
        self.on_enabled: set[Callable[[], Any]] = set()
        self.on_disabled: set[Callable[[], Any]] = set()
        self._buffers: dict[str, deque[dict[str, Any]]] = {group: deque() for group in self.buffer_group}
        self._encoded: dict[str, _core.EventBuffer] = {}
        self._outbound: deque[tuple[Any, str]] = deque(maxlen=MAX_OFFLINE)
        self._mutex = threading.Lock()
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._periodic: list[tuple[float, Callable[[], Any], list[float]]] = []
        self._warned_offline = False

    # --- sending ------------------------------------------------------------------------------------------

    def enable(self) -> None:
        self.enabled = True
        for callback in self.on_enabled:
            callback()

    def disable(self) -> None:
        self.enabled = False
        for callback in self.on_disabled:
            callback()

    def send(self, type: str, blind: bool = False, **fields: Any) -> None:
        """Send (or buffer) one event of `type` with `fields`, unless disabled or its group is not sent."""
        if not self.enabled:
            return
        group = group_from(type)
        groups = self.groups
        if groups is not None and group not in groups:
            return
        event = stamp(Event(type, **fields), self.hostname, self.utcoffset, self.pid)
        if blind:
            event['clock'] = None
        buffer = self._buffers.get(group)
        if buffer is not None:
            buffer.append(event)
            if len(buffer) == self.buffer_limit:
                self._wake.set()
            if self._thread is None and len(buffer) >= self.buffer_limit:
                self.flush()
            return
        self.publish(event, routing_key_of(type))

    def buffer(self, group: str) -> deque[dict[str, Any]]:
        """The buffer of a buffered group, for senders that build complete events themselves (the worker)."""
        return self._buffers[group]

    def encoded(self, group: str) -> _core.EventBuffer:
        """The JSON buffer of a buffered group (its events are published after those of `buffer(group)`)."""
        if group not in self._buffers:
            raise KeyError(f'{group!r} is not a buffered group of this dispatcher')
        buffer = self._encoded.get(group)
        if buffer is None:
            buffer = self._encoded[group] = _core.EventBuffer(self.hostname, self.utcoffset, self.pid, json_default)
        return buffer

    def wakeup(self) -> None:
        """Have the sender thread flush now (a buffer is full)."""
        self._wake.set()

    def woken(self) -> bool:
        """True from `wakeup()` until the sender thread starts its flush."""
        return self._wake.is_set()

    def publish(self, events: Any, routing_key: str) -> bool:
        """Publish one event, a list, or a JSON body of events now; False (and kept for later, when buffering
        offline) on failure."""
        return self._publish([(events, routing_key)])

    def _publish(self, batches: list[tuple[Any, str]]) -> bool:
        """Publish (events, routing key) pairs in order, in one round trip where the broker can; on failure all
        of them are kept for the next flush (when buffering offline) and False returned."""
        try:
            payloads = [(encode_events(events, self.hostname, key, self.exchange), key) for events, key in batches]
            with self._mutex:
                self.broker.fanout_publish_many(self.exchange, payloads)
        except Exception as exc:
            if not self.buffer_while_offline:
                raise
            if not self._warned_offline:
                self._warned_offline = True
                logger.warning('Cannot send events to %s (kept until it is back): %s', self.broker.describe(), exc)
            self._outbound.extend(batches)
            return False
        self._warned_offline = False
        return True

    def flush(self, errors: bool = True, groups: bool = True) -> None:
        """Publish what waits: events kept while offline (`errors`), then the buffered groups (`groups`)."""
        if errors:
            while self._outbound:
                events, routing_key = self._outbound.popleft()
                if not self.publish(events, routing_key):
                    self._outbound.appendleft(self._outbound.pop())  # kept at the end: back in front
                    return
        if not groups:
            return
        batches: list[tuple[Any, str]] = []
        for batch in self._ready_batches():
            batches.append(batch)
            if len(batches) >= PIPELINE:
                if not self._publish(batches):
                    return
                batches = []
        if batches:
            self._publish(batches)

    def _ready_batches(self) -> Iterator[tuple[Any, str]]:
        """The buffered groups' events, as `<group>.multi` batches of up to BATCH, taken as they are yielded."""
        for group, buffer in self._buffers.items():
            routing_key = f'{group}.multi'
            while buffer:
                yield [buffer.popleft() for _ in range(min(len(buffer), BATCH))], routing_key
            encoded = self._encoded.get(group)
            while encoded is not None and (body := encoded.take(BATCH)) is not None:
                yield body, routing_key

    # --- the sender thread (workers) ----------------------------------------------------------------------

    def call_repeatedly(self, interval: float, fn: Callable[[], Any]) -> None:
        """Run `fn` every `interval` seconds in the sender thread (the worker's heartbeat)."""
        self._periodic.append((interval, fn, [0.0]))

    def start(self) -> None:
        """Start the sender thread: flushes buffered events and runs the periodic calls."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name='fastq-events', daemon=True)
            self._thread.start()

    def _run(self) -> None:
        import time

        while not self._stopping.is_set():
            self._wake.wait(self.flush_interval)
            self._wake.clear()
            now = time.monotonic()
            for interval, fn, due in self._periodic:
                if now >= due[0]:
                    due[0] = now + interval
                    try:
                        fn()
                    except Exception as exc:
                        logger.warning('Periodic event sender %r failed: %s', fn, exc)
            try:
                self.flush()
            except Exception as exc:  # never let the thread die
                logger.warning('Cannot flush events: %s', exc)

    def close(self) -> None:
        """Stop the sender thread and publish what is still buffered."""
        self._stopping.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(5.0)
            self._thread = None
        self.flush()

    def __enter__(self) -> EventDispatcher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
