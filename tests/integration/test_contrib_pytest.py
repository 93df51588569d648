"""Celery's "Testing with Celery" guide on fastq: `fastq.contrib.pytest` fixtures and `start_worker`.

A test module written for `celery.contrib.pytest` (the guide's examples) runs in a pytest of its own, with
the in-memory default and with a `celery_config` naming a real Redis; `start_worker` is used directly too.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from fastq import Fastq
from fastq.contrib.testing.app import TestApp, setup_default_app
from fastq.contrib.testing.worker import start_worker, test_worker_started, test_worker_stopped
from fastq.exceptions import ImproperlyConfigured

pytestmark = pytest.mark.slow

GUIDE = """
import os
import pytest
from fastq import shared_task

pytest_plugins = ('fastq.contrib.pytest',)

if os.environ.get('GUIDE_REDIS'):
    @pytest.fixture(scope='session')
    def celery_config():
        return {'broker_url': os.environ['GUIDE_REDIS'], 'result_backend': os.environ['GUIDE_REDIS']}


@shared_task
def shared_mul(x, y):
    return x * y


def test_create_task(celery_app, celery_worker):
    @celery_app.task
    def mul(x, y):
        return x * y

    celery_worker.reload()
    assert mul.delay(4, 4).get(timeout=10) == 16
    assert shared_mul.delay(3, 3).get(timeout=10) == 9
    expected = os.environ.get('GUIDE_REDIS', 'memory://')
    assert celery_app.conf.broker_url == expected


@pytest.mark.celery(task_default_queue='other')
def test_marker_overrides(celery_app, celery_worker):
    assert celery_app.conf.task_default_queue == 'other'

    @celery_app.task
    def add(x, y):
        return x + y

    assert add.delay(1, 2).get(timeout=10) == 3


def test_session_worker(celery_session_app, celery_session_worker):
    @celery_session_app.task
    def sub(x, y):
        return x - y

    assert sub.delay(5, 2).get(timeout=10) == 3
"""


@pytest.mark.parametrize('broker', ['memory', 'redis'])
def test_the_guides_fixtures_in_a_pytest_of_their_own(
    tmp_path: Path, broker: str, request: pytest.FixtureRequest
) -> None:
    (tmp_path / 'test_guide.py').write_text(GUIDE)
    env = dict(os.environ)
    env.pop('PYTEST_CURRENT_TEST', None)
    env.pop('PYTEST_ADDOPTS', None)
    if broker == 'redis':
        env['GUIDE_REDIS'] = request.getfixturevalue('redis_url')
    command = [sys.executable, '-m', 'pytest', '-q', '-p', 'no:cacheprovider', '-p', 'no:randomly', 'test_guide.py']
    done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert '3 passed' in done.stdout


def test_start_worker_directly() -> None:
    started, stopped = [], []

    def on_started(sender: Fastq, worker: object, **kwargs: object) -> None:
        started.append(worker)

    def on_stopped(sender: Fastq, worker: object, **kwargs: object) -> None:
        stopped.append(worker)

    test_worker_started.connect(on_started, weak=False)
    test_worker_stopped.connect(on_stopped, weak=False)
    app = TestApp(config={'task_default_queue': 'direct'})
    try:
        with setup_default_app(app):

            @app.task
            def double(x: int) -> int:
                return 2 * x

            with start_worker(app, pool='threads', concurrency=2) as worker:
                assert [double.delay(i).get(timeout=10) for i in range(5)] == [0, 2, 4, 6, 8]
                assert worker.queues == ['direct']
        assert started == [worker] and stopped == [worker]
        assert (app.conf.broker_url, app.conf.result_backend) == ('memory://', 'cache+memory://')  # (Celery's)
    finally:
        test_worker_started.disconnect(on_started)
        test_worker_stopped.disconnect(on_stopped)


def test_start_worker_fails_clearly_when_the_worker_cannot_start() -> None:
    app = TestApp()
    with setup_default_app(app), pytest.raises(ImproperlyConfigured, match='worker_pool: unknown pool'):
        with start_worker(app, pool='no-such-pool'):
            pass  # pragma: no cover


def test_start_worker_takes_the_queue_parameters_celerys_worker_takes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The guide's celery_worker_parameters: queues and exclude_queues (there a plain string), as
    # Celery's WorkController reads them; and its `include` modules, imported before the worker starts.
    (tmp_path / 'guide_included_module.py').write_text('IMPORTED = True\n')
    monkeypatch.syspath_prepend(str(tmp_path))
    app = TestApp()
    with setup_default_app(app):

        @app.task
        def add(x: int, y: int) -> int:
            return x + y

        with start_worker(
            app, queues=['high-prio', 'celery'], exclude_queues=('celery'), include=['guide_included_module'],
            perform_ping_check=False,
        ) as worker:  # fmt: skip
            assert worker.queues == ['high-prio']
            assert 'guide_included_module' in sys.modules
            assert add.apply_async((1, 2), queue='high-prio').get(timeout=10) == 3
        with start_worker(app, queues='low-prio,high-prio', perform_ping_check=False) as worker:
            assert worker.queues == ['low-prio', 'high-prio']


def test_start_worker_raises_the_connection_error_of_an_unreachable_broker() -> None:
    import socket

    from fastq.exceptions import OperationalError

    with socket.socket() as sock:  # a loopback port nobody listens on
        sock.bind(('127.0.0.1', 0))
        port = sock.getsockname()[1]
    app = TestApp(config={'broker_url': f'redis://127.0.0.1:{port}/0'})
    with setup_default_app(app), pytest.raises(OperationalError, match='Connection refused'):
        with start_worker(app):
            pass  # pragma: no cover


def test_the_rpc_backend_on_the_test_apps_memory_broker() -> None:
    # The guide's `@pytest.mark.celery(result_backend='rpc')` keeps the test app's memory:// broker, on which
    # Celery's rpc backend works (kombu's memory transport carries the replies).
    app = TestApp(config={'result_backend': 'rpc'})
    with setup_default_app(app):

        @app.task
        def pair(x: int, y: int) -> tuple[int, int]:
            return (x, y)

        @app.task
        def boom() -> None:
            raise KeyError('k')

        with start_worker(app):
            assert pair.delay(1, 2).get(timeout=10) == [1, 2]  # (JSON on the way back, as on the wire)
            failed = boom.delay()
            with pytest.raises(KeyError, match='k'):
                failed.get(timeout=10)
            assert failed.state == 'FAILURE'


SETUP_APP_FOR_WORKER = """
import logging
from fastq import _state, signals
from fastq.contrib.testing.app import TestApp
from fastq.contrib.testing.worker import setup_app_for_worker

seen = []
signals.after_setup_logger.connect(lambda logger=None, loglevel=None, **kw: seen.append(loglevel), weak=False)
app = TestApp()
setup_app_for_worker(app, 'info', None)
assert app.finalized and _state.get_current_app() is app and _state._default_app is app
assert seen == [logging.INFO] and logging.getLogger().level == logging.INFO
print('ok')
"""


def test_setup_app_for_worker_prepares_the_app_and_logging_as_celerys() -> None:
    # (in a process of its own: it sets the root logger up, once per process)
    done = subprocess.run([sys.executable, '-c', SETUP_APP_FOR_WORKER], capture_output=True, text=True, timeout=60)
    assert done.stdout.strip() == 'ok', done.stdout + done.stderr


def test_tasks_on_the_embedded_worker_may_wait_on_results(monkeypatch: pytest.MonkeyPatch) -> None:
    # Celery's start_worker clears task_join_will_block once its worker is up, so a task under test that
    # calls .get() on a subtask gets the value rather than "Never call result.get() within a task!".
    from fastq.result import assert_will_not_block

    app = TestApp()
    with setup_default_app(app):

        @app.task
        def inner() -> int:
            return 1

        @app.task
        def outer() -> int:
            return int(inner.delay().get(timeout=10)) + 1

        with start_worker(app, pool='threads', concurrency=2):
            assert outer.delay().get(timeout=20) == 2
        # Once the embedded worker stopped, a task waiting on a result is refused again.
        monkeypatch.setattr('fastq.result._state.get_current_worker_task', lambda: outer)
        with pytest.raises(RuntimeError, match='Never call result.get'):
            assert_will_not_block()


def test_the_integration_test_manager() -> None:
    # celery.contrib.testing.manager.Manager, as Celery's own integration suite uses it with a live worker.
    import io
    import threading

    from fastq.contrib.testing.manager import Manager, Sentinel

    app = TestApp()
    gate = threading.Event()
    out, err = io.StringIO(), io.StringIO()
    with setup_default_app(app):

        @app.task
        def add(x: int, y: int) -> int:
            return x + y

        @app.task
        def block() -> str:
            gate.wait(30)
            return 'done'

        with start_worker(app, pool='threads', concurrency=2, perform_ping_check=False):
            manager = Manager(app, stdout=out, stderr=err)
            added = add.delay(1, 2)
            manager.join(added, timeout=10)
            assert added.get(timeout=1) == 3
            blocked = block.delay()
            try:
                assert manager.assert_received([blocked.id], max_retries=20)
                assert manager.assert_accepted([blocked.id], max_retries=20)
                with pytest.raises(AssertionError, match='Test failed: Missing task results'):
                    manager.join(blocked, timeout=0.2, max_retries=2)
                assert out.getvalue().count(f'!Still waiting for 1/1: [{blocked.id}]') == 2
            finally:
                gate.set()
            manager.join(blocked, timeout=10)
            assert blocked.get(timeout=1) == 'done'
            manager.wait_until_idle()

            def never() -> None:
                raise Sentinel()

            assert manager.ensure_not_for_a_while(never, (Sentinel,), max_retries=2) is None
            assert manager.ensure_not_for_a_while(lambda: 'happened', (Sentinel,)) == 'happened'  # (Celery's)

            def missing() -> None:
                raise KeyError('no')

            with pytest.raises(KeyError):
                manager.wait_for(missing, (KeyError,), desc='key', max_retries=1, emit_warning=True)
            assert err.getvalue() == "Still waiting for key.  Trying again in 0.10 seconds: KeyError('no')\n"
