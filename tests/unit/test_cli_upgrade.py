"""`fastq upgrade settings` (Celery's): old setting names renamed in a config file, a backup kept."""

from __future__ import annotations

from pathlib import Path

import pytest

from fastq.cli import main

OLD = """BROKER_URL = 'redis://'
CELERY_ALWAYS_EAGER = True
CELERYD_CONCURRENCY = 4
BROKER_TRANSPORT_OPTIONS = {'visibility_timeout': 60}
MY_BROKER_URL_COPY = 1
"""


def test_upgrade_settings(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    conf = tmp_path / 'celeryconfig.py'
    conf.write_text(OLD)
    with pytest.raises(SystemExit) as done:
        main(['upgrade', 'settings', str(conf)])
    assert done.value.code == 0 and 'Changes to your setting have been made!' in capsys.readouterr().out
    assert conf.read_text().splitlines() == [
        "broker_url = 'redis://'",
        'task_always_eager = True',
        'worker_concurrency = 4',
        "broker_transport_options = {'visibility_timeout': 60}",
        'MY_BROKER_URL_COPY = 1',  # (not a setting: left alone)
    ]
    assert (tmp_path / 'celeryconfig.py.orig').read_text() == OLD
    django = tmp_path / 'settings.py'
    django.write_text(OLD)
    with pytest.raises(SystemExit):
        main(['upgrade', 'settings', str(django), '--django', '--no-backup'])
    assert django.read_text().splitlines()[:3] == [
        "CELERY_BROKER_URL = 'redis://'",
        'CELERY_TASK_ALWAYS_EAGER = True',
        'CELERY_WORKER_CONCURRENCY = 4',
    ]
    assert not (tmp_path / 'settings.py.orig').exists()
    with pytest.raises(SystemExit):
        main(['upgrade', 'settings', str(django), '--django'])
    assert 'Does not seem to require any changes :-)' in capsys.readouterr().out
