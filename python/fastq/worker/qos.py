"""The worker's prefetch count as kombu's `QoS` object, which Celery's consumer keeps as `consumer.qos`.

The Workers guide's own remote control examples read and change it (`state.consumer.qos.value`,
`state.consumer.qos.increment_eventually(n)`), so an app's commands written for Celery find it here too. It
is a view of the worker's window, not a copy: `value` is the window in force, ETA tasks held in memory
included (Celery counts those in too), and a change reaches the ledger and the broker at once, in the loop's
thread, where Celery's consumer applies it on its loop's next pass (`prev != value`). One difference follows:
`set(n)` makes n the value and it lasts, where kombu's `set` leaves `value` as it was and Celery's loop
puts it back at its next pass. Consumer steps (`c.qos`) and remote control commands (`state.consumer.qos`)
share this one object (`WorkController.qos`).
"""

from __future__ import annotations

import logging
import threading
from typing import TYPE_CHECKING

from fastq.worker.control import on_loop

if TYPE_CHECKING:
    from fastq.worker.worker import WorkController


#: AMQP's prefetch_count is a short: a count beyond it means no limit (kombu's PREFETCH_COUNT_MAX).
PREFETCH_COUNT_MAX = 0xFFFF

logger = logging.getLogger('kombu.common')


class QoS:
    """kombu's `QoS` over a worker: `value`, `prev`, `increment_eventually`, `decrement_eventually`, `set`,
    `update`. A value of 0 means no limit, which increments and decrements leave alone (kombu's rule)."""

    #: kombu's upper bound: increments stop here when set (None: no bound).
    max_prefetch: int | None = None

    def __init__(self, worker: WorkController) -> None:
        self.worker = worker
        self._mutex = threading.RLock()  # (kombu's, for code that takes it; the loop's thread is the real guard)

    @property
    def value(self) -> int:
        return on_loop(self.worker, lambda: self.worker.prefetch_count)

    @value.setter
    def value(self, value: int) -> None:
        self.set(value)

    @property
    def prev(self) -> int:
        """The value last applied: always the current one, as every change applies at once."""
        return self.value

    def increment_eventually(self, n: int = 1) -> int:
        def bump() -> int:
            value = self.worker.prefetch_count
            if value:
                value += max(n, 0)
                if self.max_prefetch is not None and value > self.max_prefetch:
                    value = self.max_prefetch
                self._apply(value)
            return value

        return on_loop(self.worker, bump)  # (read and change in one turn of the loop, which owns the window)

    def decrement_eventually(self, n: int = 1) -> int:
        def lower() -> int:
            value = self.worker.prefetch_count
            if value:
                value = max(value - n, 1)
                self._apply(value)
            return value

        return on_loop(self.worker, lower)

    def set(self, pcount: int) -> None:
        """Make `pcount` the prefetch count (0: no limit); ETA tasks held in memory stay counted in it."""
        on_loop(self.worker, lambda: self._apply(pcount))

    def _apply(self, pcount: int) -> None:
        if pcount > PREFETCH_COUNT_MAX:
            logger.warning('QoS: Disabled: prefetch_count exceeds %r', PREFETCH_COUNT_MAX)
            pcount = 0
        logger.debug('basic.qos: prefetch_count->%s', pcount)
        dispatcher = self.worker.dispatcher
        held = len(dispatcher.held) if dispatcher is not None else 0
        self.worker.set_window(0 if not pcount else max(int(pcount) - held, 1))

    def update(self) -> None:
        """Apply the value (kombu's: the main thread's catch-up after `*_eventually`; here a no-op twin)."""
        self.set(self.value)
