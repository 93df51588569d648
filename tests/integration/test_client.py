"""The client through real worker processes, on SQLite and on Redis: the asyncio client (`adelay`, `aget`:
results, the task's own exception, timeouts, many concurrent calls in one loop) and batch publishing (a
group is on the broker, whole, when `apply_async` returns; its results come back right and in order).
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import pytest

from fastq import group
from fastq.exceptions import TimeoutError

pytestmark = pytest.mark.slow


def test_adelay_and_aget(tasks: Any, worker: Any) -> None:
    worker()

    async def main() -> None:
        result = await tasks.add.adelay(2, 3)
        assert await result.aget(timeout=60) == 5
        failed = await tasks.fail_custom.adelay('boom')
        with pytest.raises(tasks.CustomError, match='boom'):
            await failed.aget(timeout=60)
        never = tasks.app.AsyncResult(str(uuid.uuid4()))
        with pytest.raises(TimeoutError):
            await never.aget(timeout=0.5)
        slow = await tasks.long.aapply_async((1.0,), countdown=0)
        with pytest.raises(TimeoutError):
            await slow.aget(timeout=0.1)
        assert await slow.aget(timeout=60) == 1.0

    asyncio.run(main())


def test_many_concurrent_calls_in_one_loop(tasks: Any, worker: Any) -> None:
    worker()

    async def one(i: int) -> int:
        result = await tasks.add.adelay(i, i)
        value: int = await result.aget(timeout=120)
        return value

    async def main() -> list[int]:
        return await asyncio.gather(*(one(i) for i in range(200)))

    assert asyncio.run(main()) == [i + i for i in range(200)]


def test_group_batch_publish(tasks: Any, worker: Any) -> None:
    n = 3000
    result = group(tasks.add.s(i, i) for i in range(n)).apply_async()
    assert tasks.app.broker.qsize('celery') == n  # every task on the broker when apply_async returned
    worker()
    assert result.get(timeout=300) == [i + i for i in range(n)]
    chunked = tasks.add.chunks([(i, 1) for i in range(10)], 4).apply_async()
    assert chunked.get(timeout=60) == [[1, 2, 3, 4], [5, 6, 7, 8], [9, 10]]
