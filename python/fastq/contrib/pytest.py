"""pytest fixtures for testing fastq apps, with Celery's names: `celery_app`, `celery_worker` and the rest.

Enable them as Celery's are enabled, in a conftest.py: `pytest_plugins = ('fastq.contrib.pytest',)`. A test
suite written for `celery.contrib.pytest` then runs on fastq with its fixtures unchanged:

    @pytest.fixture(scope='session')
    def celery_config():
        return {'broker_url': 'redis://localhost:6379/1', 'result_backend': 'redis://localhost:6379/1'}

    def test_mul(celery_app, celery_worker):
        @celery_app.task
        def mul(x, y):
            return x * y

        celery_worker.reload()
        assert mul.delay(4, 4).get(timeout=10) == 16

Without a `celery_config`, the app uses the in-memory broker and results (the worker runs in a thread of the
test process). `@pytest.mark.celery(result_backend=...)` overrides settings for one test. `NO_WORKER=1` in
the environment makes the worker fixtures start nothing (tests then talk to workers started elsewhere).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from fastq.app import Fastq
    from fastq.contrib.testing.worker import TestWorkController

NO_WORKER = os.environ.get('NO_WORKER')


def pytest_configure(config: Any) -> None:
    config.addinivalue_line('markers', 'celery(**overrides): override celery configuration for a test case')


@contextlib.contextmanager
def _create_app(
    enable_logging: bool = False, use_trap: bool = False, parameters: Mapping[str, Any] | None = None, **config: Any
) -> Iterator[Fastq]:
    from fastq.contrib.testing.app import TestApp, setup_default_app

    app = TestApp(set_as_current=False, enable_logging=enable_logging, config=config, **dict(parameters or {}))
    with setup_default_app(app, use_trap=use_trap):
        yield app


def _config(request: Any, celery_config: Mapping[str, Any]) -> dict[str, Any]:
    mark = request.node.get_closest_marker('celery')
    return dict(celery_config, **(mark.kwargs if mark else {}))


@pytest.fixture(scope='session')
def use_celery_app_trap() -> bool:
    """Override to return True: code that uses the current app instead of the one given then raises."""
    return False


@pytest.fixture(scope='session')
def celery_session_app(
    request: Any,
    celery_config: Mapping[str, Any],
    celery_parameters: Mapping[str, Any],
    celery_enable_logging: bool,
    use_celery_app_trap: bool,
) -> Iterator[Fastq]:
    """An app for the whole session (with `celery_session_worker`)."""
    with _create_app(
        enable_logging=celery_enable_logging,
        use_trap=use_celery_app_trap,
        parameters=celery_parameters,
        **_config(request, celery_config),
    ) as app:
        if not use_celery_app_trap:
            app.set_default()
            app.set_current()
        yield app


@pytest.fixture(scope='session')
def celery_session_worker(
    request: Any,
    celery_session_app: Fastq,
    celery_includes: Sequence[str],
    celery_class_tasks: Sequence[Any],
    celery_worker_pool: Any,
    celery_worker_parameters: Mapping[str, Any],
) -> Iterator[TestWorkController | None]:
    """A worker that lives through the whole session."""
    from fastq.contrib.testing import worker

    if NO_WORKER:
        yield None
        return
    _import_tasks(celery_session_app, celery_includes)
    for class_task in celery_class_tasks:
        celery_session_app.register_task(class_task)
    with worker.start_worker(celery_session_app, pool=celery_worker_pool, **celery_worker_parameters) as w:
        yield w


@pytest.fixture(scope='session')
def celery_enable_logging() -> bool:
    """Override to return True to set logging up for the test app."""
    return False


@pytest.fixture(scope='session')
def celery_includes() -> Sequence[str]:
    """Override with module names to import before the worker starts (task modules, signal receivers)."""
    return ()


@pytest.fixture(scope='session')
def celery_worker_pool() -> Any:
    """Override to choose the worker's pool ('solo' by default; 'threads' runs tasks side by side)."""
    return 'solo'


@pytest.fixture(scope='session')
def celery_config() -> Mapping[str, Any]:
    """Override with the settings of the test app (`broker_url`, `result_backend`, ...)."""
    return {}


@pytest.fixture(scope='session')
def celery_parameters() -> Mapping[str, Any]:
    """Override with keyword arguments for the test app (`Fastq(...)`)."""
    return {}


@pytest.fixture(scope='session')
def celery_worker_parameters() -> Mapping[str, Any]:
    """Override with keyword arguments for the worker (`queues`, `concurrency`, `perform_ping_check`, ...)."""
    return {}


@pytest.fixture()
def celery_app(
    request: Any,
    celery_config: Mapping[str, Any],
    celery_parameters: Mapping[str, Any],
    celery_enable_logging: bool,
    use_celery_app_trap: bool,
) -> Iterator[Fastq]:
    """An app for one test, closed after it."""
    with _create_app(
        enable_logging=celery_enable_logging,
        use_trap=use_celery_app_trap,
        parameters=celery_parameters,
        **_config(request, celery_config),
    ) as app:
        yield app


@pytest.fixture(scope='session')
def celery_class_tasks() -> Sequence[Any]:
    """Override with task classes to register on the session app."""
    return []


@pytest.fixture()
def celery_worker(
    request: Any,
    celery_app: Fastq,
    celery_includes: Sequence[str],
    celery_worker_pool: Any,
    celery_worker_parameters: Mapping[str, Any],
) -> Iterator[TestWorkController | None]:
    """A worker for one test, in a thread of the test process, stopped when the test returns."""
    from fastq.contrib.testing import worker

    if NO_WORKER:
        yield None
        return
    _import_tasks(celery_app, celery_includes)
    with worker.start_worker(celery_app, pool=celery_worker_pool, **celery_worker_parameters) as w:
        yield w


@pytest.fixture()
def depends_on_current_app(celery_app: Fastq) -> None:
    """Make the test app the current one."""
    celery_app.set_current()


def _import_tasks(app: Fastq, modules: Sequence[str]) -> None:
    import importlib

    for module in modules:
        importlib.import_module(module)
    app.finalize()
