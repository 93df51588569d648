"""`fastq -A proj dashboard`: a live web page of the fleet, built from Celery's event stream.

Workers (online by heartbeat), queues (depth from the broker, enqueue-to-start wait from events), task rates
over the last minute, recent tasks and failures with tracebacks, and two actions: revoke (terminate) a task
and set a task type's rate limit. Task events need workers started with `-E` (or `worker_send_task_events`);
worker heartbeats are always sent. Needs the `dashboard` extra (Starlette and uvicorn).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from fastq.dashboard.state import DashboardState

if TYPE_CHECKING:
    from fastq.app import Fastq

__all__ = ['DashboardState', 'serve']


def serve(app: Fastq, address: str = '127.0.0.1', port: int = 5555, log_level: str = 'warning') -> None:
    """Serve the dashboard until interrupted."""
    import uvicorn

    from fastq.dashboard.feed import Feed
    from fastq.dashboard.web import create_app

    state = DashboardState()
    feed = Feed(app, state)
    feed.start()
    try:
        uvicorn.run(create_app(app, state), host=address, port=port, log_level=log_level, access_log=False)
    finally:
        feed.stop()
