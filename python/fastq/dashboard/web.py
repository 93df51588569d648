"""The dashboard's web app (Starlette, served by uvicorn): one page that polls a JSON snapshot, and two actions.

The page is static HTML with a little JavaScript (no build step, nothing fetched from the internet, so it
works on an isolated network). Actions go out as remote-control broadcasts, exactly as
`fastq control revoke` / `rate_limit` send them, so they reach Celery workers too.
"""

from __future__ import annotations

from importlib import resources
from typing import TYPE_CHECKING, Any

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route

from fastq.dashboard.state import DashboardState
from fastq.serialization import json_default

if TYPE_CHECKING:
    from fastq.app import Fastq

__all__ = ['create_app']

#: How long an action waits for workers' replies.
REPLY_TIMEOUT = 1.0


class _JSON(JSONResponse):
    def render(self, content: Any) -> bytes:
        from fastq import _core

        return _core.json_dumps(content, json_default)


def _page() -> str:
    return resources.files('fastq.dashboard').joinpath('index.html').read_text(encoding='utf-8')


async def _body(request: Request) -> dict[str, Any]:
    if request.headers.get('content-type', '').startswith('application/json'):
        data = await request.json()
        return data if isinstance(data, dict) else {}
    form = await request.form()
    return {key: value for key, value in form.items() if isinstance(value, str)}


def create_app(fastq_app: Fastq, state: DashboardState) -> Starlette:
    page = _page()

    async def index(request: Request) -> Response:
        return HTMLResponse(page)

    async def snapshot(request: Request) -> Response:
        limit = int(request.query_params.get('tasks', '100'))
        return _JSON(state.snapshot(tasks=max(1, min(limit, state.max_tasks))))

    async def task(request: Request) -> Response:
        found = state.task(request.path_params['task_id'])
        if found is None:
            return _JSON({'error': 'unknown task'}, status_code=404)
        return _JSON(found)

    async def revoke(request: Request) -> Response:
        task_id = request.path_params['task_id']
        data = await _body(request)
        terminate = str(data.get('terminate', '')).lower() in ('1', 'true', 'yes', 'on')
        signal = str(data.get('signal') or 'SIGTERM')
        replies = await run_in_threadpool(
            fastq_app.control.revoke, task_id, terminate=terminate, signal=signal, reply=True, timeout=REPLY_TIMEOUT
        )
        return _JSON({'task_id': task_id, 'terminate': terminate, 'replies': replies or []})

    async def rate_limit(request: Request) -> Response:
        name = request.path_params['task_name']
        data = await _body(request)
        rate = data.get('rate')
        if rate is None or str(rate).strip() == '':
            return _JSON({'error': 'rate is required (e.g. 10/m; 0 removes the limit)'}, status_code=400)
        replies = await run_in_threadpool(
            fastq_app.control.rate_limit, name, str(rate).strip(), reply=True, timeout=REPLY_TIMEOUT
        )
        return _JSON({'task_name': name, 'rate': rate, 'replies': replies or []})

    return Starlette(
        routes=[
            Route('/', index),
            Route('/api/state', snapshot),
            Route('/api/task/{task_id}', task),
            Route('/api/task/{task_id}/revoke', revoke, methods=['POST']),
            Route('/api/task-type/{task_name}/rate-limit', rate_limit, methods=['POST']),
        ]
    )
