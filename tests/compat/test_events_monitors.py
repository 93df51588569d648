"""Monitors built for Celery watching fastq workers, on one real redis-server: Celery's own event receiver
and `State`, and a real Flower (its HTTP API); and fastq's receiver watching a Celery worker."""

from __future__ import annotations

import socket
import threading
import time
from typing import Any

import pytest

from fastq.events import State
from tests.harness import wait_until

pytestmark = pytest.mark.slow


class CeleryMonitor:
    """Celery's `app.events.Receiver` feeding Celery's `State`, in a thread, as Flower and `celery events` do."""

    def __init__(self, celery_app: Any) -> None:
        self.app = celery_app
        self.state = celery_app.events.State()
        self.stopping = False
        self.receiver: Any = None
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self) -> None:
        with self.app.connection() as conn:
            receiver = self.receiver = self.app.events.Receiver(conn, handlers={'*': self.state.event})
            while not self.stopping:
                try:
                    receiver.capture(limit=None, timeout=0.5, wakeup=False)
                except TimeoutError:
                    continue

    def stop(self) -> None:
        self.stopping = True
        if self.receiver is not None:
            self.receiver.should_stop = True  # capture() loops until told, whatever its timeout
        self.thread.join(10)


def test_celery_receiver_and_state_see_fastq_events(celery_client: Any, fastq_client: Any, workers: Any) -> None:
    w = workers('fastq', '-E', '-n', 'evf@%h', '--heartbeat-interval', '0.5')
    hostname = next(word for word in w.log.split() if word.startswith('evf@'))
    monitor = CeleryMonitor(celery_client)
    try:
        wait_until(lambda: hostname in monitor.state.workers, message='a heartbeat seen by Celery')
        ok = fastq_client.add.delay(20, 22)
        bad = fastq_client.fail.delay('kaput')
        assert ok.get(timeout=30) == 42
        tasks = monitor.state.tasks
        wait_until(lambda: ok.id in tasks and tasks[ok.id].state == 'SUCCESS', message='SUCCESS in Celery State')
        wait_until(lambda: bad.id in tasks and tasks[bad.id].state == 'FAILURE', message='FAILURE in Celery State')
    finally:
        monitor.stop()
    task = monitor.state.tasks[ok.id]
    assert task.name == 'worker_tasks.add' and task.args == '(20, 22)'
    assert task.result == '42' and task.worker.hostname == hostname and task.received and task.started
    assert 'kaput' in monitor.state.tasks[bad.id].exception and monitor.state.tasks[bad.id].traceback
    node = monitor.state.workers[hostname]
    assert node.alive and node.sw_ident == 'fastq' and node.freq == 0.5


def test_fastq_receiver_sees_celery_worker_events(celery_client: Any, fastq_client: Any, workers: Any) -> None:
    with fastq_client.app.events.Receiver() as receiver:
        workers('celery', '-E', '-n', 'evc@%h')
        result = celery_client.send_task('worker_tasks.add', (1, 2))
        assert result.get(timeout=30) == 3
        state = State()
        deadline = time.monotonic() + 30
        while not (result.id in state.tasks and state.tasks[result.id].state == 'SUCCESS'):
            assert time.monotonic() < deadline, state.tasks
            for event in receiver.itercapture(timeout=0.5):
                state.event(event)
    task = state.tasks[result.id]
    assert task.name == 'worker_tasks.add' and task.result == '3' and task.worker.hostname.startswith('evc@')
    assert any(w.sw_ident == 'py-celery' and w.alive for w in state.workers.values())


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(('127.0.0.1', 0))
        return int(sock.getsockname()[1])


def _get(port: int, path: str) -> Any:
    import json
    import urllib.request

    with urllib.request.urlopen(f'http://127.0.0.1:{port}{path}', timeout=10) as response:
        return json.loads(response.read())


def _flower(command: list[str], port: int, env: dict[str, str], tmp_path: Any) -> Any:
    """A Flower process (`command` is what runs it: celery's or fastq's CLI) on 127.0.0.1:`port`, its
    output in flower.log, the API open without authentication."""
    import subprocess

    env = dict(env, FLOWER_UNAUTHENTICATED_API='true')
    env.pop('PYTEST_CURRENT_TEST', None)
    with open(tmp_path / 'flower.log', 'wb') as log:
        return subprocess.Popen(
            [*command, 'flower', f'--port={port}', '--address=127.0.0.1', '--inspect_timeout=2000',
             '--persistent=False'],
            cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip


def _workers_status(port: int) -> Any:
    """Flower's worker -> alive map ({} while it is not listening yet)."""
    try:
        return _get(port, '/api/workers?status=true')
    except OSError:
        return {}


def test_flower_shows_fastq_workers_and_tasks(fastq_client: Any, workers: Any, url: str, tmp_path: Any) -> None:
    """A real Flower (PyPI `flower`) against a fastq fleet: its event-driven views (tasks, worker status) come
    from fastq's events; its worker list from inspect replies, which it asks for on refresh."""
    import os
    import sys

    pytest.importorskip('flower')
    w = workers('fastq', '-n', 'fl1@%h', '--heartbeat-interval', '0.5')  # no -E: Flower enables task events
    hostname = next(word for word in w.log.split() if word.startswith('fl1@'))
    port = _free_port()
    flower = _flower([sys.executable, '-m', 'celery', f'--broker={url}'], port, dict(os.environ), tmp_path)
    try:
        wait_until(
            lambda: _workers_status(port).get(hostname) is True, timeout=60, message='Flower sees the worker alive'
        )
        # Flower sends enable_events to the workers when it starts (and every few seconds after): task events
        # flow once the worker took it.
        deadline = time.monotonic() + 60
        while True:  # until one task shows up, which proves task events are on; then two more
            probe = fastq_client.add.delay(1, 1)
            assert probe.get(timeout=30) == 2
            time.sleep(0.3)
            if probe.id in _get(port, '/api/tasks'):
                break
            assert time.monotonic() < deadline, (tmp_path / 'flower.log').read_text()
        results = [fastq_client.add.delay(5, 6), fastq_client.fail.delay('flower-boom')]
        assert results[0].get(timeout=30) == 11

        def shown() -> bool:
            tasks = _get(port, '/api/tasks')
            return (
                results[0].id in tasks
                and tasks[results[0].id]['state'] == 'SUCCESS'
                and (results[1].id in tasks and tasks[results[1].id]['state'] == 'FAILURE')
            )

        wait_until(shown, timeout=30, message='Flower lists the tasks with their outcome')
        info = _get(port, f'/api/task/info/{results[0].id}')
        assert info['state'] == 'SUCCESS' and info['result'] == '11' and info['name'] == 'worker_tasks.add'
        assert info['worker'] == hostname and info['args'] == '(5, 6)'
        failed = _get(port, f'/api/task/info/{results[1].id}')
        assert 'flower-boom' in failed['exception'] and 'Traceback' in failed['traceback']
        listed = _get(port, '/api/workers?refresh=true')
        assert hostname in listed  # from inspect replies (full stats, active, ... with the control commands)
    finally:
        flower.terminate()
        flower.wait(10)


def test_fastq_flower_runs_flower_on_the_fastq_app(workers: Any, url: str, tmp_path: Any) -> None:
    """`fastq -A proj flower` (Celery's `celery -A proj flower`): Celery CLI plugins run on a Celery app that
    mirrors the fastq app's broker and backend; Flower then lists the fastq workers as alive."""
    import sys

    pytest.importorskip('flower')
    w = workers('fastq', '-n', 'ff1@%h', '--heartbeat-interval', '0.5')
    hostname = next(word for word in w.log.split() if word.startswith('ff1@'))
    port = _free_port()
    flower = _flower([sys.executable, '-m', 'fastq', '-A', 'worker_tasks'], port, w.env, tmp_path)
    try:
        wait_until(
            lambda: _workers_status(port).get(hostname) is True, timeout=60, message='Flower sees the worker alive'
        )
        flower_log = (tmp_path / 'flower.log').read_text()
        assert url.rpartition('@')[2].split('/')[0] in flower_log  # (its broker)
        assert "'worker_tasks.add'" in flower_log  # (the app's tasks, registered by name on the mirror)
    finally:
        flower.terminate()
        flower.wait(10)
