"""Feeds a `DashboardState` from the broker: the `celeryev` event stream and, every few seconds, queue depths.

Two daemon threads, each with its own broker connection, so a slow depth query never delays events and the
web server's loop never blocks on the broker.
"""

from __future__ import annotations

import logging
import threading
from typing import TYPE_CHECKING

from fastq.dashboard.state import DashboardState
from fastq.events.event import EVENT_EXCHANGE, decode_events

if TYPE_CHECKING:
    from fastq.app import Fastq

__all__ = ['Feed']

logger = logging.getLogger('fastq.dashboard')


class Feed:
    def __init__(self, app: Fastq, state: DashboardState, depth_interval: float = 2.0) -> None:
        self.app = app
        self.state = state
        self.depth_interval = depth_interval
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._threads = [
            threading.Thread(target=self._events, name='fastq-dashboard-events', daemon=True),
            threading.Thread(target=self._depths, name='fastq-dashboard-depths', daemon=True),
        ]

    def start(self, wait: float = 10.0) -> None:
        for thread in self._threads:
            thread.start()
        self._ready.wait(wait)

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(5.0)

    def _events(self) -> None:
        while not self._stop.is_set():
            subscription = None
            try:
                subscription = self.app.broker.subscribe(str(self.app.conf.event_exchange or EVENT_EXCHANGE))
                self._ready.set()
                while not self._stop.is_set():
                    for _, raw in subscription.get(0.5):
                        for event in decode_events(raw):
                            self.state.event(event)
            except Exception as exc:
                self._ready.set()
                logger.warning('Event stream from %s lost (%s); retrying', self.app.broker.describe(), exc)
                self._stop.wait(1.0)
            finally:
                if subscription is not None:
                    try:
                        subscription.close()
                    except Exception:
                        logger.debug('closing the event subscription failed', exc_info=True)

    def queues(self) -> list[str]:
        return [q for q in self.app.control.known_queues() if not q.endswith('.pidbox') and '.reply.' not in q]

    def _depths(self) -> None:
        while not self._stop.is_set():
            try:
                broker = self.app.broker
                broker.connect()
                self.state.set_queue_depths({q: broker.qsize(q) for q in self.queues()})
            except Exception as exc:
                logger.warning('Reading queue depths from %s failed (%s)', self.app.broker.describe(), exc)
            self._stop.wait(self.depth_interval)
