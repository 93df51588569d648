"""Apps for tests: in-memory broker and results by default, and the current app put back afterwards.

Celery's `celery.contrib.testing.app` under the same names, so a test suite ported from Celery keeps its
`celery_config` fixtures and `TestApp(...)` calls.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from copy import deepcopy
from typing import Any

from fastq import _state
from fastq.app import Fastq

__all__ = ['DEFAULT_TEST_CONFIG', 'TestApp', 'Trap', 'set_trap', 'setup_default_app']

#: The test app's settings unless a test's config says otherwise: Celery's, spelled as Celery spells them
#: (`cache+memory://` is fastq's in-process backend too), since ported tests assert on them.
DEFAULT_TEST_CONFIG: dict[str, Any] = {
    'worker_hijack_root_logger': False,
    'worker_log_color': False,
    'accept_content': {'json'},
    'enable_utc': True,
    'timezone': 'UTC',
    'broker_url': 'memory://',
    'result_backend': 'cache+memory://',
    'broker_heartbeat': 0,
}


def TestApp(
    name: str | None = None,
    config: dict[str, Any] | None = None,
    enable_logging: bool = False,
    set_as_current: bool = False,
    log: Any = None,
    backend: str | None = None,
    broker: str | None = None,
    **kwargs: Any,
) -> Fastq:
    """An app for a test: `DEFAULT_TEST_CONFIG` updated with `config` (`broker`/`backend` win over both)."""
    from fastq.contrib.testing import tasks  # noqa: F401 (registers celery.ping on every app)

    settings = dict(deepcopy(DEFAULT_TEST_CONFIG), **(config or {}))
    if broker is not None:
        settings.pop('broker_url', None)
    if backend is not None:
        settings.pop('result_backend', None)
    app = Fastq(name or 'celery.tests', broker=broker, backend=backend, set_as_current=set_as_current, **kwargs)
    # Defaults, not changes (Celery's add_defaults): `conf.changes` and `conf.humanize()` show only what the
    # test itself set, and the app's own `broker`/`backend` arguments still win.
    app.add_defaults(settings)
    return app


TestApp.__test__ = False  # type: ignore[attr-defined]  # (pytest: not a test)


class Trap:
    """Stands in for the current app and raises when used: finds code that forgot to pass its app."""

    def __getattr__(self, name: str) -> Any:
        if name in ('_is_coroutine', '__func__'):  # (unittest.mock looks for these)
            return None
        raise RuntimeError('Test depends on current_app')


@contextlib.contextmanager
def set_trap(app: Fastq) -> Iterator[None]:
    """Within this block, using the current or default app raises (see `Trap`)."""
    previous = (_state._current_app, _state._default_app)
    trap: Any = Trap()
    _state.set_current_app(trap)
    _state.set_default_app(trap)
    try:
        yield
    finally:
        _state.set_current_app(previous[0])
        _state.set_default_app(previous[1])


@contextlib.contextmanager
def setup_default_app(app: Fastq, use_trap: bool = False) -> Iterator[None]:
    """Run a test with `app`, then put the current and default apps back and close `app`; the tasks the test
    shared (`@app.task`, `shared_task`) are forgotten too, as Celery's restores its finalize callbacks, so apps of
    later tests do not register them."""
    from fastq import shared

    previous = (_state._current_app, _state._default_app)
    finalizers = (list(shared._shared), list(shared._on_finalize))
    try:
        if use_trap:
            with set_trap(app):
                yield
        else:
            yield
    finally:
        _state.set_current_app(previous[0])
        _state.set_default_app(previous[1])
        shared._shared[:], shared._on_finalize[:] = finalizers
        if app is not previous[0]:
            app.close()
            _state.unregister_app(app)
