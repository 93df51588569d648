"""What Celery's key-value result backends share, for fastq's memcached and filesystem backends: the key names
(Celery's `BaseKeyValueStoreBackend` prefixes). (`get()` polls them: fastq.backends.polling.)"""

from __future__ import annotations

from fastq.backends.polling import PollingBackend

__all__ = ['CHORD_KEYPREFIX', 'GROUP_KEYPREFIX', 'TASK_KEYPREFIX', 'KeyNames', 'PollingBackend']

#: A task's meta document.
TASK_KEYPREFIX = 'celery-task-meta-'
#: A saved GroupResult: `{"result": GroupResult.as_tuple()}`.
GROUP_KEYPREFIX = 'celery-taskset-meta-'
#: A chord's counter (memcached: INCR once per header task); the filesystem's `cleanup` also knows the prefix.
CHORD_KEYPREFIX = 'chord-unlock-'

_PREFIX_ENDINGS = ':_-.'


class KeyNames:
    """Celery's key names with `result_backend_transport_options['global_keyprefix']` applied (Celery adds a
    `_` unless the prefix ends in one of `:_-.`)."""

    def __init__(self, global_keyprefix: str | None = None) -> None:
        prefix = global_keyprefix or ''
        if prefix and prefix[-1] not in _PREFIX_ENDINGS:
            prefix += '_'
        self.task_prefix = f'{prefix}{TASK_KEYPREFIX}'
        self.group_prefix = f'{prefix}{GROUP_KEYPREFIX}'
        self.chord_prefix = f'{prefix}{CHORD_KEYPREFIX}'

    @staticmethod
    def _join(prefix: str, what: str, id: str) -> str:
        if not id:
            raise ValueError(f'{what} must not be empty. Got {id!r} instead.')
        return f'{prefix}{id}'

    def task(self, task_id: str) -> str:
        return self._join(self.task_prefix, 'task_id', task_id)

    def group(self, group_id: str) -> str:
        return self._join(self.group_prefix, 'group_id', group_id)

    def chord(self, group_id: str) -> str:
        return self._join(self.chord_prefix, 'group_id', group_id)
