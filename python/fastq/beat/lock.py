"""The leader lock: of the beats of one app on one broker, one sends periodic tasks and the others stand by.

The lock is a lease in the broker (`Broker.lease`): Redis, a key set with NX and a TTL that a script extends
only for its holder; SQLite, a row in the broker's database plus an owner lock file, so the lease is free the
moment its holder's process dies; memory, a dict in the broker object. The leader extends the lease every
third of `beat_lock_timeout`; a standby tries to take it as often, so it takes over at most one timeout
after the leader stopped extending it (at once when the leader shuts down cleanly, or dies, on SQLite).

A leader only sends while its lease certainly lasts: `held` counts the timeout from the moment it asked for
the lease, not from the broker's answer. Claims on each run (`Broker.claim`) cover what a lease cannot: two
beats that both believe they lead, e.g. one paused past its lease, still send each run once.
"""

from __future__ import annotations

import os
import socket
import time
import uuid
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from fastq.brokers.base import Broker

__all__ = ['LeaderLock']


class LeaderLock:
    def __init__(self, broker: Broker, name: str, timeout: float) -> None:
        self.broker = broker
        self.name = name
        self.timeout = timeout
        self.holder = f'{socket.gethostname()}.{os.getpid()}.{uuid.uuid4().hex[:8]}'
        self._held_until = 0.0  # monotonic: our lease lasts at least until then
        self._asked_at = 0.0

    @property
    def held(self) -> bool:
        return time.monotonic() < self._held_until

    @property
    def retry_interval(self) -> float:
        """How often the leader extends the lease and a standby asks for it."""
        return self.timeout / 3

    def due(self) -> float:
        """Seconds until the lease should be asked for again (0: now)."""
        return max(self._asked_at + self.retry_interval - time.monotonic(), 0.0)

    def acquire(self) -> bool:
        """Take or extend the lease; True if we hold it (an error counts as not holding it)."""
        asked = time.monotonic()
        self._asked_at = asked
        try:
            ok = self.broker.lease(self.name, self.holder, self.timeout)
        except Exception:
            self._held_until = 0.0
            raise
        self._held_until = asked + self.timeout if ok else 0.0
        return ok

    def holder_now(self) -> str | None:
        try:
            return self.broker.lease_holder(self.name)
        except Exception:
            return None

    def release(self) -> None:
        self._held_until = 0.0
        self.broker.release_lease(self.name, self.holder)
