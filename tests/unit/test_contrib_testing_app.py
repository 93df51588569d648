"""`fastq.contrib.testing.app.TestApp`: Celery's test app, its settings layered as Celery layers them."""

from __future__ import annotations

from fastq.contrib.testing.app import DEFAULT_TEST_CONFIG, TestApp, setup_default_app


def test_the_test_settings_are_defaults_not_changes() -> None:
    # Celery's TestApp adds them with app.add_defaults: a test that lists or prints what was changed
    # (conf.changes, conf.humanize()) sees only its own settings.
    app = TestApp(config={'timezone': 'Europe/Paris'})
    with setup_default_app(app):
        assert (app.conf.broker_url, app.conf.result_backend) == ('memory://', 'cache+memory://')
        assert app.conf.timezone == 'Europe/Paris'
        assert not set(DEFAULT_TEST_CONFIG) & set(app.conf.changes)
        assert 'timezone' not in app.conf.changes
        app.conf.update(task_default_queue='mine', broker_url='memory://other')
        assert {'task_default_queue', 'broker_url'} <= set(app.conf.changes)
        assert app.conf.broker_url == 'memory://other'


def test_broker_and_backend_arguments_win_over_the_test_settings() -> None:
    app = TestApp('named', broker='redis://127.0.0.1:1//', backend='redis://127.0.0.1:1/1')
    with setup_default_app(app):
        assert app.main == 'named'
        assert (app.conf.broker_url, app.conf.result_backend) == ('redis://127.0.0.1:1//', 'redis://127.0.0.1:1/1')
