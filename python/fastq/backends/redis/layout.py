"""Every Redis key and channel name the result backend uses: Celery's, so both read each other's results.

A task's result is one string key, `celery-task-meta-<task_id>`, holding the encoded meta document; the same name
is the pub/sub channel on which each write is published, which is how a waiting `get()` learns of it. A
`global_keyprefix` in `result_backend_transport_options` goes in front of every name (Celery adds a `_` when
the prefix does not already end in one of `:_-.`).
"""

from __future__ import annotations

__all__ = ['CHORD_KEYPREFIX', 'GROUP_KEYPREFIX', 'TASK_KEYPREFIX', 'KeyLayout']

#: A task's meta document (string key, TTL `result_expires`); also the channel its writes are published on.
TASK_KEYPREFIX = 'celery-task-meta-'
#: A saved GroupResult, `{"result": GroupResult.as_tuple()}`, TTL `result_expires`; also a chord's prefix.
GROUP_KEYPREFIX = 'celery-taskset-meta-'
#: A chord's keys are its group key plus one of these (Celery 5.7's native join, `backends/redis/chords.py`):
CHORD_JOIN = '.j'  # the header results: zset of encoded `[1, task_id, state, result]` scored by group_index
CHORD_SIZE = '.s'  # how many parts complete the chord (string), set before the last header task is sent
CHORD_DIFF = '.t'  # parts added to a running chord (INCR)
CHORD_SEEN = '.d'  # set of `task_id:group_index` already recorded, so a redelivered task counts once
CHORD_CLAIM = '.c'  # the token of the worker sending the body (SET NX EX), then "done" for a while
#: Celery's chord_unlock bookkeeping for backends without a native join (listed so the prefix stays in one place).
CHORD_KEYPREFIX = 'chord-unlock-'

_PREFIX_ENDINGS = ':_-.'


class KeyLayout:
    """Key names for one backend instance, with its `global_keyprefix` applied once here."""

    def __init__(self, global_keyprefix: str | None = None) -> None:
        prefix = global_keyprefix or ''
        if prefix and prefix[-1] not in _PREFIX_ENDINGS:
            prefix += '_'
        self.prefix = prefix
        self.task_prefix = f'{prefix}{TASK_KEYPREFIX}'.encode()
        self.group_prefix = f'{prefix}{GROUP_KEYPREFIX}'.encode()

    def task_key(self, task_id: str) -> bytes:
        """The result key of a task, which is also the channel its results are published on."""
        if not task_id:
            raise ValueError(f'task_id must not be empty. Got {task_id!r} instead.')
        return self.task_prefix + str(task_id).encode()

    def group_key(self, group_id: str) -> bytes:
        if not group_id:
            raise ValueError(f'group_id must not be empty. Got {group_id!r} instead.')
        return self.group_prefix + str(group_id).encode()

    def chord_keys(self, group_id: str) -> dict[str, bytes]:
        """The keys of a chord's join, by suffix (`.j`, `.s`, `.t`, `.d`, `.c`)."""
        group = self.group_key(group_id)
        return {
            suffix: group + suffix.encode() for suffix in (CHORD_JOIN, CHORD_SIZE, CHORD_DIFF, CHORD_SEEN, CHORD_CLAIM)
        }
