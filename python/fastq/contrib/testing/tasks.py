"""The task `start_worker` pings the embedded worker with, under Celery's name for it."""

from __future__ import annotations

from fastq.shared import shared_task


@shared_task(name='celery.ping')  # type: ignore[untyped-decorator]
def ping() -> str:
    """Simple task that just returns 'pong'."""
    return 'pong'
