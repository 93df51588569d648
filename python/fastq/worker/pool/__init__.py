"""Execution pools: where task bodies run. prefork (processes, the default), asyncio (event loops in
processes), threads, gevent (greenlets), solo."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from fastq.worker.pool.base import Pool


def create_pool(kind: str, **kwargs: Any) -> Pool:
    if kind == 'prefork':
        from fastq.worker.pool.prefork import PreforkPool

        return PreforkPool(**kwargs)
    if kind == 'asyncio':
        from fastq.worker.pool.aio import AsyncioPool

        return AsyncioPool(**kwargs)
    if kind == 'threads':
        from fastq.worker.pool.threads import ThreadPool

        return ThreadPool(**kwargs)
    if kind == 'gevent':
        from fastq.worker.pool.green import GeventPool

        return GeventPool(**kwargs)
    if kind == 'solo':
        from fastq.worker.pool.solo import SoloPool

        return SoloPool(**kwargs)
    raise ValueError(f'unknown pool {kind!r}')
