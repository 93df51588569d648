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
#: A saved GroupResult, `{"result": GroupResult.as_tuple()}` (Celery's; fastq does not write it yet).
GROUP_KEYPREFIX = 'celery-taskset-meta-'
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
