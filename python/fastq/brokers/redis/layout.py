"""Every Redis key and channel name the Redis broker uses, in kombu's layout (so Celery peers interoperate).

    <queue>                          list, priority step 0 (LPUSH by producers, consumed from the right)
    <queue><sep><step>               list per further priority step (default steps 3, 6, 9; sep = 0x06 0x16)
    unacked                          hash  delivery_tag -> JSON [envelope, exchange, routing_key]
    unacked_index                    zset  delivery_tag -> reservation time (restore when older than the
                                           visibility timeout; fastq parks ETA messages here at eta - timeout)
    unacked_mutex                    kombu's restore lock (fastq restores with a script and does not need it)
    _kombu.binding.<exchange>        set   "<routing_key><sep><pattern><sep><queue>" (pattern: kombu's regex
                                           for a topic exchange's key, `routing.topic_pattern`; else empty)
    /<db>.<exchange>[/<routing_key>] pub/sub channels of fanout exchanges (pidbox, events)
    fastq.deadletter(.index)         hash id -> dead letter (JSON) and zset id -> time: fastq's own
    fastq.revoked                    zset  task_id -> until when it stays revoked
    fastq.parked.<node>              zset  delivery_tag -> ETA, of the tasks <node> parked (`inspect scheduled`;
                                           trimmed as ETAs pass, and gone after the last one)
    fastq.lease.<name>               string holder, with a TTL: a named lease (beat's leader lock)
    fastq.claim.<key>                string '1', with a TTL: a claimed key (one beat run, `<entry>@<time>`)
    fastq.hold.<token>.<n>.<key>     list  a batch a busy consumer moved off queue key <key> and has not
                                           recorded in unacked yet (holding.py): gone a write later
    fastq.holds                      zset  hold -> when it was filled (a dead consumer's holds are restored)

`global_keyprefix` is prepended to every key and channel, as kombu does.
"""

from __future__ import annotations

from bisect import bisect
from collections.abc import Sequence
from dataclasses import dataclass, field

DEFAULT_SEP = '\x06\x16'
DEFAULT_PRIORITY_STEPS = (0, 3, 6, 9)
MIN_PRIORITY, MAX_PRIORITY = 0, 9

#: Header where fastq counts earlier deliveries that ended without an ack (restores and requeues). Kombu keeps
#: unknown headers, so the count survives a Celery worker in between (it just does not add to it).
DELIVERIES_HEADER = 'x-fastq-deliveries'


@dataclass(frozen=True)
class Layout:
    prefix: str = ''
    sep: str = DEFAULT_SEP
    priority_steps: Sequence[int] = DEFAULT_PRIORITY_STEPS
    db: int = 0
    fanout_prefix: str = '/{db}.'
    fanout_patterns: bool = True
    unacked_key: str = 'unacked'
    unacked_index_key: str = 'unacked_index'
    unacked_mutex_key: str = 'unacked_mutex'
    _steps: tuple[int, ...] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, '_steps', tuple(sorted(self.priority_steps)))

    # --- queues -------------------------------------------------------------------------------------------

    def step(self, priority: int | None) -> int:
        """kombu's priority step: clamp to 0..9, then the largest step not above it (lower = served first)."""
        p = min(max(int(priority or 0), MIN_PRIORITY), MAX_PRIORITY)
        return self._steps[max(bisect(self._steps, p) - 1, 0)]

    def queue_key(self, queue: str, priority: int | None = 0) -> str:
        step = self.step(priority)
        return f'{self.prefix}{queue}{self.sep}{step}' if step else f'{self.prefix}{queue}'

    def step_keys(self, queue: str) -> list[str]:
        return [self.queue_key(queue, step) for step in self._steps]

    def consume_keys(self, queues: Sequence[str]) -> list[tuple[str, str]]:
        """(key, queue) in kombu's BRPOP order: step-major, so every queue's step 0 before any step 3."""
        return [(self.queue_key(q, step), q) for step in self._steps for q in queues]

    # --- acks ---------------------------------------------------------------------------------------------

    @property
    def unacked(self) -> str:
        return f'{self.prefix}{self.unacked_key}'

    @property
    def unacked_index(self) -> str:
        return f'{self.prefix}{self.unacked_index_key}'

    # --- routing ------------------------------------------------------------------------------------------

    def binding_key(self, exchange: str) -> str:
        return f'{self.prefix}_kombu.binding.{exchange}'

    @property
    def binding_pattern(self) -> str:
        return f'{self.prefix}_kombu.binding.*'

    def binding_member(self, routing_key: str, queue: str, pattern: str = '') -> str:
        return self.sep.join([routing_key, pattern, queue])

    def parse_binding(self, member: str) -> tuple[str, str, str]:
        routing_key, pattern, queue = (member.split(self.sep) + ['', '', ''])[:3]
        return routing_key, pattern, queue

    def fanout_topic(self, exchange: str, routing_key: str = '') -> str:
        base = f'{self.prefix}{self.fanout_prefix.format(db=self.db)}{exchange}'
        return f'{base}/{routing_key}' if routing_key and self.fanout_patterns else base

    # --- fastq's own --------------------------------------------------------------------------------------

    @property
    def revoked(self) -> str:
        return f'{self.prefix}fastq.revoked'

    def parked(self, node: str) -> str:
        return f'{self.prefix}fastq.parked.{node}'

    @property
    def dead_letters(self) -> str:
        return f'{self.prefix}fastq.deadletter'

    @property
    def dead_letters_index(self) -> str:
        return f'{self.prefix}fastq.deadletter.index'

    def lease(self, name: str) -> str:
        return f'{self.prefix}fastq.lease.{name}'

    def claim(self, key: str) -> str:
        return f'{self.prefix}fastq.claim.{key}'

    @property
    def holds(self) -> str:
        return f'{self.prefix}fastq.holds'

    def hold(self, token: str, n: int, key: str) -> str:
        """A consumer's (`token`) n-th hold of messages moved off queue key `key` (which carries the prefix)."""
        return f'{self.prefix}fastq.hold.{token}.{n}.{key}'

    def hold_source(self, hold: str) -> str | None:
        """The queue key a hold was filled from (None for a name that is not a hold's)."""
        head = f'{self.prefix}fastq.hold.'
        if not hold.startswith(head):
            return None
        parts = hold[len(head) :].split('.', 2)
        return parts[2] if len(parts) == 3 and parts[2] else None
