"""Celery 5.7's native chord join on Redis: the same keys, scripts and order of steps, so Celery and fastq
workers can return parts of one chord and exactly one of them sends the body.

Keys (the group key `celery-taskset-meta-<group_id>` plus a suffix, see `layout.py`): `.s` the size, set
with `.c` deleted before the last header task is sent; `.j` the parts, a zset scored by `group_index`
(`result_chord_ordered`, the default, else a list); `.t` parts added later; `.d` the `task_id:index`
members already counted; `.c` the claim. Each step is one script (`scripts.py`): record + count + claim,
extend the claim before publishing, and cleanup (delete the data, set `.c` to "done") after.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from fastq.backends.chords import ChordStore, Claim, claim_seconds, done_seconds, new_claim_token
from fastq.backends.redis.layout import CHORD_CLAIM, CHORD_DIFF, CHORD_JOIN, CHORD_SEEN, CHORD_SIZE
from fastq.backends.redis.scripts import CHORD_CLAIM_EXTEND, CHORD_CLEANUP, CHORD_PART_RETURN
from fastq.exceptions import BackendError
from fastq.utils.time import seconds

if TYPE_CHECKING:
    from fastq.backends.redis import RedisBackend

__all__ = ['RedisChordStore']


class RedisChordStore(ChordStore):
    def __init__(self, backend: RedisBackend) -> None:
        self.backend = backend
        self.ordered = bool(backend.transport_options.get('result_chord_ordered', True))
        result_expires = int(backend.expires or 0)
        chord_expires = backend.app.conf.result_chord_expires
        #: TTL of the chord's keys (`result_chord_expires`, default `result_expires`; 0: none).
        self.expires = int(seconds(chord_expires) or 0) if chord_expires is not None else result_expires
        #: TTL given to a saved header group: users read it too, so never less than `result_expires`.
        self.group_expires = max(self.expires, result_expires) if self.expires and result_expires else 0
        self._scripts: dict[str, Any] = {}

    def _script(self, lua: str) -> Any:
        script = self._scripts.get(lua)
        if script is None:
            script = self._scripts[lua] = self.backend.client.register_script(lua)
        return script

    def _call(self, lua: str, keys: list[bytes], args: list[Any], what: str) -> Any:
        script = self._script(lua)
        # Retried on connection errors (retry_policy): every script is safe to run twice with the same token.
        call = lambda: script(keys=keys, args=args, client=self.backend.client)  # noqa: E731
        return self.backend._run(call, what, BackendError, True)

    def set_size(self, group_id: str, size: int) -> None:
        keys = self.backend.layout.chord_keys(group_id)

        def write() -> None:
            with self.backend.client.pipeline() as pipe:
                pipe.delete(keys[CHORD_CLAIM])  # a re-sent frozen chord (same group id) is a new run
                pipe.set(keys[CHORD_SIZE], size, ex=self.expires or None)
                pipe.execute()

        self.backend._run(write, f'set the size of chord {group_id}', BackendError, True)

    def add(self, group_id: str, count: int = 1) -> None:
        key = self.backend.layout.chord_keys(group_id)[CHORD_DIFF]
        self.backend._run(lambda: self.backend.client.incr(key, count), f'grow chord {group_id}', BackendError)

    def record(self, group_id: str, task_id: str, index: int | None, part: bytes) -> Claim | None:
        keys = self.backend.layout.chord_keys(group_id)
        token = new_claim_token()
        count, diff, size, claimed = self._call(
            CHORD_PART_RETURN,
            [
                keys[CHORD_JOIN],
                keys[CHORD_DIFF],
                keys[CHORD_SIZE],
                keys[CHORD_SEEN],
                self.backend.layout.group_key(group_id),
                keys[CHORD_CLAIM],
            ],
            [
                task_id,
                part,
                1 if self.ordered else 0,
                '+inf' if index is None else int(index),
                self.expires,
                self.group_expires,
                claim_seconds(self.backend.app),
                token,
            ],
            f'return a part of chord {group_id}',
        )
        if count == -1 or not size or count != int(size) + int(diff or 0):
            return None
        if not claimed:  # a retried call whose first reply was lost may have taken the claim already
            claimed = self.backend.client.get(keys[CHORD_CLAIM]) == token.encode()
        return Claim(token) if claimed else None

    def parts(self, group_id: str, claim: Claim) -> list[bytes]:
        key = self.backend.layout.chord_keys(group_id)[CHORD_JOIN]
        client = self.backend.client

        def read() -> list[bytes]:
            parts: Any = client.zrange(key, 0, -1) if self.ordered else client.lrange(key, 0, -1)
            return list(parts)

        return self.backend._run(read, f'read the parts of chord {group_id}', BackendError)

    def extend(self, group_id: str, claim: Claim, seconds: int) -> bool:
        keys = self.backend.layout.chord_keys(group_id)
        return bool(
            self._call(
                CHORD_CLAIM_EXTEND,
                [keys[CHORD_CLAIM], keys[CHORD_SIZE]],
                [claim.token, seconds],
                f'extend the claim on chord {group_id}',
            )
        )

    def release(self, group_id: str, claim: Claim) -> bool:
        keys = self.backend.layout.chord_keys(group_id)
        return bool(
            self._call(
                CHORD_CLEANUP,
                [keys[CHORD_CLAIM], keys[CHORD_JOIN], keys[CHORD_DIFF], keys[CHORD_SIZE], keys[CHORD_SEEN]],
                [claim.token, done_seconds(self.backend.app)],
                f'clean up chord {group_id}',
            )
        )

    def forget_size(self, group_id: str) -> None:
        key = self.backend.layout.chord_keys(group_id)[CHORD_SIZE]
        self.backend._run(lambda: self.backend.client.delete(key), f'drop the size of chord {group_id}', BackendError)
