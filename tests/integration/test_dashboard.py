"""`fastq dashboard` in a real headless Chromium, against a real worker sending events on Redis.

The page must show the worker, a task as it runs, and revoke it (terminate) from a button click: the worker
kills the task and the page shows REVOKED. Skipped where Debian's chromium/chromedriver are not installed
(`ci/install-deps.sh` installs them).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.harness import WorkerProcess
from tests.servers import free_port

HERE = Path(__file__).resolve().parent
CHROMIUM, CHROMEDRIVER = shutil.which('chromium'), shutil.which('chromedriver')

pytestmark = [
    pytest.mark.parametrize('broker_kind', ['redis'], indirect=True),
    pytest.mark.skipif(not (CHROMIUM and CHROMEDRIVER), reason='needs Debian chromium and chromium-driver'),
]


@pytest.fixture
def dashboard(tmp_path: Path, urls: dict[str, str]) -> Iterator[str]:
    port = free_port()
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(HERE), os.environ.get('PYTHONPATH', '')]), **urls)
    log = open(tmp_path / 'dashboard.log', 'wb')
    proc = subprocess.Popen(
        [sys.executable, '-m', 'fastq', '-A', 'worker_tasks', 'dashboard', '--port', str(port)],
        cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    log.close()
    url = f'http://127.0.0.1:{port}/'
    deadline = time.monotonic() + 30
    while True:
        try:
            urllib.request.urlopen(url + 'api/state', timeout=2).read()
            break
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                raise AssertionError((tmp_path / 'dashboard.log').read_text()) from None
            time.sleep(0.1)
    yield url
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()


@pytest.fixture
def browser() -> Iterator[Any]:
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    options = Options()
    options.binary_location = str(CHROMIUM)
    for arg in (
        '--headless=new',
        '--no-sandbox',
        '--disable-gpu',
        '--disable-dev-shm-usage',
        '--window-size=1280,1000',
    ):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    yield driver
    driver.quit()


def _wait(check: Callable[[], Any], timeout: float = 30.0, what: str = '') -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            value = check()
        except Exception:  # the page re-renders every second: elements go stale
            value = None
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f'timed out waiting for {what}')


def test_page_shows_a_running_task_and_revokes_it(
    tasks: Any, worker: Callable[..., WorkerProcess], dashboard: str, browser: Any, tmp_path: Path
) -> None:
    from selenium.webdriver.common.by import By

    w = worker('-E', '-n', 'dash@%h')
    browser.get(dashboard)
    _wait(lambda: 'online' in browser.find_element(By.CSS_SELECTOR, 'tr[data-worker^="dash@"]').text, what='worker')

    assert tasks.add.delay(2, 3).get(timeout=30) == 5
    _wait(lambda: 'SUCCESS' in browser.find_element(By.CSS_SELECTOR, 'tr[data-task-id] .state.SUCCESS').text,
          what='a finished task')  # fmt: skip

    # fastq clients stamp the send time, so the queue shows how long tasks waited before they started
    _wait(lambda: 'ms' in browser.find_element(By.CSS_SELECTOR, 'tr[data-queue="celery"]').text, what='queue wait')

    result = tasks.sleeper.delay(str(tmp_path / 'sleeper.txt'), 'k', 60)
    row = f'tr[data-task-id="{result.id}"]'
    _wait(lambda: browser.find_element(By.CSS_SELECTOR, f'{row} .state').text == 'STARTED', what='STARTED')
    browser.find_element(By.CSS_SELECTOR, f'button.revoke[data-task-id="{result.id}"]').click()
    toast = f'terminate: {result.id}'  # Celery's reply to a revoke that terminated a running task
    _wait(lambda: toast in browser.find_element(By.ID, 'toast').text, what='the revoke reply')
    _wait(lambda: browser.find_element(By.CSS_SELECTOR, f'{row} .state').text == 'REVOKED', what='REVOKED')
    assert _wait(lambda: result.state == 'REVOKED', what='the REVOKED result')
    w.wait_for('Terminating', 10)
