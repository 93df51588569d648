"""Dead letters on Redis: fastq's own keys (a hash of JSON records and a zset by time), next to kombu's."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from fastq.brokers.base import DeadLetter, DeadLetterStore

if TYPE_CHECKING:
    import redis

    from fastq.brokers.redis.layout import Layout


def _key(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class RedisDeadLetters(DeadLetterStore):
    def __init__(self, client: redis.Redis, layout: Layout) -> None:
        self.client = client
        self.layout = layout

    def add(self, letter: DeadLetter, remove_tag: str | None = None) -> None:
        """Store a letter; with `remove_tag`, drop that reservation in the same transaction."""
        layout = self.layout
        with self.client.pipeline(transaction=True) as pipe:
            pipe.hset(layout.dead_letters, letter.id, letter.to_json())
            pipe.zadd(layout.dead_letters_index, {letter.id: letter.created})
            if remove_tag is not None:
                pipe.hdel(layout.unacked, remove_tag)
                pipe.zrem(layout.unacked_index, remove_tag)
            pipe.execute()

    def list(self, limit: int = 100) -> list[DeadLetter]:
        ids = self.client.zrevrange(self.layout.dead_letters_index, 0, limit - 1)
        if not ids:
            return []
        raws = self.client.hmget(self.layout.dead_letters, [_key(i) for i in ids])
        return [DeadLetter.from_json(raw) for raw in raws if raw is not None]

    def get(self, ident: str) -> DeadLetter | None:
        raw = self.client.hget(self.layout.dead_letters, ident)
        if raw is not None:
            return DeadLetter.from_json(raw)
        matches = [d for d in self.list(10_000) if d.task_id == ident]
        return matches[0] if matches else None

    def remove(self, ident: str) -> DeadLetter | None:
        letter = self.get(ident)
        if letter is not None:
            with self.client.pipeline(transaction=True) as pipe:
                pipe.hdel(self.layout.dead_letters, letter.id)
                pipe.zrem(self.layout.dead_letters_index, letter.id)
                pipe.execute()
        return letter

    def purge(self) -> int:
        with self.client.pipeline(transaction=True) as pipe:
            pipe.hlen(self.layout.dead_letters)
            pipe.delete(self.layout.dead_letters, self.layout.dead_letters_index)
            count, _ = pipe.execute()
        return int(count)

    def count(self) -> int:
        return int(self.client.hlen(self.layout.dead_letters))
