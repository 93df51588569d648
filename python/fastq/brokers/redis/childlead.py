"""The lead's wait, done by a pool child the worker lent it to (see fastq/worker/lending.py).

The child waits as the fetcher would (consumer.py): a `BLMOVE` on the lead key with the fetch script queued
behind it on the same connection, here with a limit of one, and an `LLEN` after it, so the child knows
whether more tasks were waiting behind the one it took (then it gives the lead back: a batch is the
fetcher's job). What the script reserved is recorded in `unacked` like any fetch; the child hands the raw
reply to the parent, which takes the reservation over (`RedisConsumer.taken`).
"""

from __future__ import annotations

import select
import time
from typing import TYPE_CHECKING, Any

import redis.exceptions

from fastq.brokers.base import Delivery
from fastq.brokers.redis.consumer import ack_commands, fetched_deliveries, reservation_time
from fastq.utils.rediswire import Link

if TYPE_CHECKING:
    from fastq.brokers.redis import RedisBroker

#: Seconds to wait for the script's reply once this child unblocked its own BLMOVE.
RELEASE_TIMEOUT = 2.0


class ChildLead:
    """A lent lead, on a connection of the child's own. `raw` replies are the fetch script's."""

    def __init__(self, broker: RedisBroker, spec: dict[str, Any]) -> None:
        self.spec = spec
        self.keys: list[str] = list(spec['keys'])
        self.queues: list[str] = list(spec['queues'])
        self.timeout = spec['timeout']
        self._script = broker.scripts.fetch_script
        self._layout = layout = broker.layout
        self._script_keys = [layout.unacked, layout.unacked_index, *self.keys]
        self._expected = 3  # replies of the commands sent when armed
        self._link = Link(broker.client)
        self._control: Link | None = None  # for CLIENT UNBLOCK of our own wait
        self._broker = broker
        self._client_id: int | None = None
        self._replies: list[Any] = []
        self.pending = False

    def fileno(self) -> int:
        return self._link.fileno()

    def arm(self, acks: list[str]) -> None:
        """Wait in Redis (once connected and not already waiting), after acking `acks` in the same write."""
        if self.pending:
            return
        if self._client_id is None or self._link.fileno() < 0:
            self._client_id = int(self._link.call('CLIENT', 'ID'))
        lead = self.keys[0]
        script_keys = self._script_keys
        ahead = ack_commands(self._layout, acks) if acks else []
        self._link.send_all(
            [
                *ahead,
                ('BLMOVE', lead, lead, 'RIGHT', 'RIGHT', self.timeout),
                ('EVALSHA', self._script.sha, len(script_keys), *script_keys, 1, reservation_time()),
                ('LLEN', lead),
            ]
        )
        acks.clear()
        self._expected = len(ahead) + 3
        self.pending = True

    def ack(self, acks: list[str]) -> None:
        """Ack `acks` now (not waiting: no wait follows to carry them)."""
        if acks:
            replies = self._link.execute(ack_commands(self._layout, acks))
            acks.clear()
            _check_acks(replies)

    def collect(self) -> tuple[list[Any], bool] | None:
        """None until every reply is in; then the script's reply (maybe empty) and whether more are waiting."""
        self._replies += self._link.replies()
        if len(self._replies) < self._expected:
            return None
        replies, self._replies, self.pending = self._replies, [], False
        _check_acks(replies[:-3])
        _, raw, length = replies[-3:]
        if isinstance(raw, redis.exceptions.NoScriptError):  # Redis restarted, or SCRIPT FLUSH: nothing reserved
            self._link.call('SCRIPT', 'LOAD', self._script.script)
            return [], False
        if isinstance(raw, redis.exceptions.RedisError):
            raise raw
        return raw or [], isinstance(length, int) and length > 0

    def release(self) -> list[Any]:
        """Stop waiting: unblock our own BLMOVE and collect what the script behind it reserved meanwhile."""
        if not self.pending:
            return []
        if self._control is None:
            self._control = Link(self._broker.client)
        assert self._client_id is not None  # (known once armed)
        self._control.call('CLIENT', 'UNBLOCK', self._client_id)
        deadline = time.monotonic() + RELEASE_TIMEOUT
        while (got := self.collect()) is None:
            remaining = deadline - time.monotonic()
            fd = self._link.fileno()
            if remaining <= 0 or fd < 0:
                raise redis.exceptions.TimeoutError('no answer from the unblocked wait')
            select.select([fd], [], [], remaining)
        return got[0]

    def deliveries(self, raw: list[Any]) -> list[Delivery]:
        """The script's reply as deliveries (as the parent's consumer will make them)."""
        return fetched_deliveries(raw, self.queues)[0]

    def close(self) -> None:
        """Drop the connections (a wait still outstanding ends with its connection; see `release`)."""
        self._link.close()
        if self._control is not None:
            self._control.close()
        self.pending = False


def _check_acks(replies: list[Any]) -> None:
    """An ack transaction's error reply, raised (the reservation would then be restored and run again)."""
    for reply in replies:
        if isinstance(reply, redis.exceptions.RedisError):
            raise reply
