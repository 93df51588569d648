"""app.conf: Celery's names and defaults, sources, environment, validation."""

from __future__ import annotations

import types
import warnings
from datetime import timedelta
from pathlib import Path

import pytest

from fastq import Fastq
from fastq.config import UnknownSettingWarning
from fastq.exceptions import ImproperlyConfigured


def app() -> Fastq:
    return Fastq('t', broker='memory://', backend='memory://', set_as_current=False)


def test_celery_defaults() -> None:
    conf = app().conf
    assert conf.task_serializer == 'json'
    assert conf.result_serializer == 'json'
    assert conf.accept_content == ('json',)  # tuples, as Celery's: `conf.imports + ('proj.tasks',)` works
    assert conf.imports == () and conf.include == ()
    assert conf.task_default_queue == 'celery'
    assert conf.worker_prefetch_multiplier == 4
    assert conf.result_expires == timedelta(days=1)  # Celery's default, a timedelta
    assert conf.enable_utc is True
    assert conf.task_acks_late is False
    assert conf['task_time_limit'] is None
    assert conf.task_max_redeliveries == 10  # fastq's own


def test_update_attribute_and_item() -> None:
    conf = app().conf
    conf.update(task_serializer='msgpack', worker_concurrency=3)
    conf.task_acks_late = True
    conf['result_expires'] = 10
    assert (conf.task_serializer, conf.worker_concurrency, conf.task_acks_late) == ('msgpack', 3, True)
    assert conf.result_expires == 10
    assert conf.differing()['worker_concurrency'] == 3
    # Celery's `app.conf.changes`: an attribute, what was set in code
    assert conf.changes == {'broker_url': 'memory://', 'result_backend': 'memory://', 'task_serializer': 'msgpack',
                            'worker_concurrency': 3, 'task_acks_late': True, 'result_expires': 10}  # fmt: skip


def test_config_from_object_module_and_old_names() -> None:
    module = types.ModuleType('celeryconfig')
    module.BROKER_URL = 'memory://'  # type: ignore[attr-defined]
    module.CELERY_TASK_SERIALIZER = 'msgpack'  # type: ignore[attr-defined]
    module.CELERY_ACKS_LATE = True  # type: ignore[attr-defined]
    module.timedelta = timedelta  # type: ignore[attr-defined]  # helpers in a config module are not settings
    a = app()
    with warnings.catch_warnings():
        warnings.simplefilter('error')
        a.config_from_object(module)
        assert a.conf.task_serializer == 'msgpack'
        assert a.conf.task_acks_late is True


def test_mixing_old_and_new_names_is_refused_with_celerys_text() -> None:
    """Celery's `detect_settings`: the names in the minority are to be renamed; raised on first read."""
    a = app()
    a.config_from_object({'CELERY_ALWAYS_EAGER': True, 'task_default_queue': 'x'})
    with pytest.raises(ImproperlyConfigured) as info:
        _ = a.conf.task_always_eager
    assert str(info.value) == (
        '\n\nCannot mix new and old setting keys, please rename the\nfollowing settings to the new format:\n\n'
        'CELERY_ALWAYS_EAGER                  -> task_always_eager\n\n'
    )
    a = app()
    a.config_from_object({'CELERY_ALWAYS_EAGER': True, 'BROKER_URL': 'memory://', 'worker_concurrency': 2})
    with pytest.raises(ImproperlyConfigured, match='use the old format:\n\nworker_concurrency +-> CELERYD_CONCURRENCY'):
        _ = a.conf.worker_concurrency
    a = app()  # one setting in both spellings is no mix to refuse, and a namespace reads only its own names
    a.config_from_object({'result_expires': 5, 'CELERY_TASK_RESULT_EXPIRES': 9, 'task_acks_late': True})
    assert a.conf.result_expires == 5
    a = app()
    a.config_from_object({'CELERY_ALWAYS_EAGER': True, 'CELERY_BROKER_URL': 'memory://'}, namespace='CELERY')
    assert a.conf.task_always_eager is True


def test_config_from_envvar_unset_says_what_to_set() -> None:
    a = app()
    with pytest.raises(ImproperlyConfigured) as info:
        a.config_from_envvar('FASTQ_TEST_UNSET_CONFIG_VARIABLE')
    assert str(info.value).startswith(
        "The environment variable 'FASTQ_TEST_UNSET_CONFIG_VARIABLE' is not set,\nand as such the configuration"
    )
    assert str(info.value).endswith('Example:\n    FASTQ_TEST_UNSET_CONFIG_VARIABLE="proj.celeryconfig"')
    assert a.config_from_envvar('FASTQ_TEST_UNSET_CONFIG_VARIABLE', silent=True) is False


def test_config_from_envvar_returns_none_as_celerys(monkeypatch: pytest.MonkeyPatch) -> None:
    # Celery's returns what config_from_object returns (None), read lazily: a bad module name fails on first use
    monkeypatch.setenv('FASTQ_TEST_CONFIG_VARIABLE', 'fastq_test_no_such_config_module')
    a = app()
    assert a.config_from_envvar('FASTQ_TEST_CONFIG_VARIABLE') is None
    with pytest.raises(ModuleNotFoundError):
        _ = a.conf.timezone


def test_config_from_object_django_namespace() -> None:
    settings = types.SimpleNamespace(
        CELERY_BROKER_URL='memory://', CELERY_TASK_ALWAYS_EAGER=True, DEBUG=True, INSTALLED_APPS=[]
    )
    a = app()
    a.config_from_object(settings, namespace='CELERY')
    assert a.conf.task_always_eager is True
    assert a.conf.broker_url == 'memory://'


def test_config_from_object_string_is_lazy() -> None:
    a = app()
    a.config_from_object('does.not.exist')  # no error until the configuration is read
    with pytest.raises(ModuleNotFoundError):
        _ = a.conf.task_serializer


def test_unknown_setting_warns_with_closest_name() -> None:
    with pytest.warns(UnknownSettingWarning, match="did you mean 'task_serializer'"):
        app().conf.update(task_serialiser='json')


def test_unknown_attribute_suggests() -> None:
    with pytest.raises(AttributeError, match="did you mean 'broker_url'"):
        _ = app().conf.broker_ulr


@pytest.mark.parametrize(
    ('name', 'value', 'match'),
    [
        ('task_serializer', 'jsn', 'task_serializer: No encoder installed'),
        ('accept_content', 'json', 'accept_content: expected a list'),
        ('accept_content', ['json', 'bogus'], "accept_content: unknown serializer 'bogus'"),
        ('worker_concurrency', 0, 'worker_concurrency: must be positive'),
        ('worker_concurrency', 'four', "worker_concurrency: expected a number of processes or 'auto'"),
        ('worker_prefetch_multiplier', -1, 'worker_prefetch_multiplier: must not be negative'),
        ('timezone', 'Mars/Olympus', "timezone: unknown time zone 'Mars/Olympus'"),
        ('worker_pool', 'eventlet', 'worker_pool: fastq has no eventlet pool.*async def'),
        ('task_compression', 'lz5', "task_compression: Unknown compression method 'lz5'"),
        ('task_default_rate_limit', '10/x', "task_default_rate_limit: bad rate limit '10/x'"),
        ('task_acks_late', 'yes', 'task_acks_late: expected True or False'),
        ('timezone', 3, 'timezone: expected a time zone name or a tzinfo, got int 3'),
        ('worker_pool_start_method', 'forkserver', "must be 'fork' or 'spawn', got 'forkserver'"),
    ],
)
def test_bad_values_fail_naming_the_setting(name: str, value: object, match: str) -> None:
    a = app()
    a.conf[name] = value
    with pytest.raises(ImproperlyConfigured, match=match):
        a.finalize()


def test_environment_overrides(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv('FASTQ_WORKER_CONCURRENCY', '7')
    monkeypatch.setenv('FASTQ_TASK_ACKS_LATE', 'true')
    monkeypatch.setenv('FASTQ_ACCEPT_CONTENT', 'json,msgpack')
    monkeypatch.setenv('CELERY_BROKER_URL', 'memory://env')
    a = app()
    a.conf.worker_concurrency = 2
    assert a.conf.worker_concurrency == 7
    assert a.conf.task_acks_late is True
    assert a.conf.accept_content == ['json', 'msgpack']
    assert a.conf.broker_url == 'memory://env'


def test_bad_environment_value_names_the_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv('FASTQ_WORKER_PREFETCH_MULTIPLIER', 'many')
    with pytest.raises(ImproperlyConfigured, match='worker_prefetch_multiplier: bad value in the environment'):
        _ = app().conf.worker_prefetch_multiplier
    monkeypatch.delenv('FASTQ_WORKER_PREFETCH_MULTIPLIER')
    monkeypatch.setenv('FASTQ_WORKER_CONCURRENCY', 'many')  # (a number or 'auto': checked when validated)
    with pytest.raises(ImproperlyConfigured, match="worker_concurrency: expected a number of processes or 'auto'"):
        app().conf.validate()


def test_humanize_masks_passwords() -> None:
    a = app()
    a.conf.result_backend = 'sqlite:///x.db'
    a.conf.broker_url = 'amqp://user:secret@host:5672//'
    text = a.conf.humanize()
    assert 'secret' not in text and 'amqp://user:********@host:5672//' in text  # Celery's eight stars


def test_humanize_hides_what_celery_hides_in_the_order_set() -> None:
    a = app()
    a.conf.update(
        worker_concurrency=2,
        database_url='postgresql://u:p@h/db',  # the whole value (DATABASE), not only the password
        beat_dburi='sqlite:///beat.db',
        profanities_list=['x'],
        database_short_lived_sessions=True,
        security_key=None,
        broker_transport_options={'password': 'p', 'visibility_timeout': 9},
    )
    assert a.conf.humanize().splitlines()[-7:] == [
        'worker_concurrency: 2',
        "database_url: '********'",
        "beat_dburi: '********'",
        "profanities_list: '********'",
        "database_short_lived_sessions: '********'",
        "security_key: '********'",
        "broker_transport_options: {'password': '********', 'visibility_timeout': 9}",
    ]


def test_add_defaults_sit_above_the_config_object_and_below_code() -> None:
    """Celery's `add_defaults` is documented as `conf.update(d)` without the copy: it overrides the config
    object whichever was given first, and values set in code override it."""
    a = app()
    a.add_defaults({'foo_bar': 1, 'task_default_queue': 'dq'})
    a.config_from_object({'foo_bar': 2, 'task_default_queue': 'cq', 'worker_concurrency': 3})
    assert (a.conf.foo_bar, a.conf.task_default_queue, a.conf.worker_concurrency) == (1, 'dq', 3)
    a.add_defaults(lambda: {'worker_concurrency': 4})
    assert a.conf.worker_concurrency == 4
    a.conf.worker_concurrency = 5
    assert a.conf.worker_concurrency == 5


def test_find_option_returns_celerys_searchresult() -> None:
    found = app().conf.find_option('always_eager')
    assert (found.namespace, found.key, found.type.name) == ('task', 'always_eager', 'task_always_eager')
    assert found.type.default is False


def test_table_lists_what_was_set_even_to_the_default() -> None:
    a = app()
    a.conf.update(enable_utc=True, broker_url='redis://:pw@localhost:6379/0', security_key='abc')
    table = a.conf.table()
    assert table['enable_utc'] is True  # set explicitly, though it is the default (Celery lists it)
    assert table['security_key'] == '********' and 'pw' not in table['broker_url']
    assert a.conf.table(censored=False)['security_key'] == 'abc'
    assert 'task_serializer' not in table and a.conf.table(with_defaults=True)['task_serializer'] == 'json'
    assert 'enable_utc: True' in a.conf.humanize().splitlines()


def test_on_after_configure_and_finalize() -> None:
    a = app()
    seen: list[str] = []
    a.on_after_configure.connect(lambda sender, **kw: seen.append('configure'))
    a.on_after_finalize.connect(lambda sender, **kw: seen.append('finalize'))
    a.finalize()
    assert seen == ['configure', 'finalize']


def test_a_setting_read_as_an_attribute_follows_every_later_change(monkeypatch: pytest.MonkeyPatch) -> None:
    the_app = app()
    conf = the_app.conf
    assert conf.result_extended is False and conf.result_extended is False  # the second read: kept
    conf['result_extended'] = True
    assert conf.result_extended is True
    conf.update(result_extended=False)
    assert conf.result_extended is False
    conf.result_extended = True
    assert conf.result_extended is True
    del conf['result_extended']
    assert conf.result_extended is False
    the_app.config_from_object(types.SimpleNamespace(result_extended=True))
    assert conf.result_extended is True
    monkeypatch.setenv('FASTQ_RESULT_EXTENDED', 'false')
    conf.reload_environment()
    assert conf.result_extended is False
    assert not hasattr(conf, 'no_such_setting')


def test_an_old_setting_name_reads_the_new_setting() -> None:
    # Celery code written for 3.x still reads `app.conf.CELERYD_CONCURRENCY`; Celery answers it
    from fastq import Fastq

    app = Fastq('old_names', broker='memory://')
    app.conf.worker_concurrency = 3
    assert app.conf.CELERYD_CONCURRENCY == 3 and app.conf['CELERYD_CONCURRENCY'] == 3
    assert app.conf.CELERY_TASK_SERIALIZER == 'json'
    with pytest.raises(AttributeError, match='NOT_A_SETTING'):
        app.conf.NOT_A_SETTING  # noqa: B018


def test_a_django_settings_module_with_old_names(monkeypatch: pytest.MonkeyPatch) -> None:
    # namespace='CELERY' reads Celery's old names too (CELERY_ALWAYS_EAGER, BROKER_URL, CELERYD_*), keeps the
    # app's own CELERY_* names, and takes Django's TIME_ZONE when no timezone is set (Celery's rules)
    settings = types.ModuleType('dj_settings_old')
    settings.CELERY_ALWAYS_EAGER = True  # type: ignore[attr-defined]
    settings.CELERY_DEFAULT_QUEUE = 'dq'  # type: ignore[attr-defined]
    settings.BROKER_URL = 'redis://localhost:6379/9'  # type: ignore[attr-defined]
    settings.CELERYD_CONCURRENCY = 3  # type: ignore[attr-defined]
    settings.CELERY_TASK_ACKS_LATE = True  # type: ignore[attr-defined]
    settings.CELERY_ACKS_LATE = False  # type: ignore[attr-defined]  # (the new name wins)
    settings.CELERY_MY_KEY = 'mine'  # type: ignore[attr-defined]
    settings.TIME_ZONE = 'Europe/Paris'  # type: ignore[attr-defined]
    settings.DEBUG = True  # type: ignore[attr-defined]
    monkeypatch.setitem(__import__('sys').modules, 'dj_settings_old', settings)
    a = Fastq('dj', set_as_current=False)  # (no broker given in code: the settings module's is read)
    with warnings.catch_warnings():
        warnings.simplefilter('error')
        a.config_from_object('dj_settings_old', namespace='CELERY')
        conf = a.conf
        assert (conf.task_always_eager, conf.task_default_queue, conf.worker_concurrency) == (True, 'dq', 3)
        assert conf.broker_url == 'redis://localhost:6379/9' and conf.task_acks_late is True
        assert conf.get('my_key') == 'mine' and conf.timezone == 'Europe/Paris' and conf.get('DEBUG') is None
        assert conf.task_default_exchange == 'dq' and conf.task_default_routing_key == 'dq'  # Celery's fallbacks


def test_config_layers_setdefault_and_names_of_the_apps_own() -> None:
    a = app()
    holder = types.SimpleNamespace(task_default_queue='from-object', redbeat_redis_url='redis://x', _private=1)
    a.config_from_object(holder)
    a.add_defaults({'task_default_queue': 'from-defaults', 'worker_prefetch_multiplier': 7})
    assert a.conf.task_default_queue == 'from-defaults'  # above the config object, as Celery's
    assert a.conf.worker_prefetch_multiplier == 7 and a.conf.get('redbeat_redis_url') == 'redis://x'
    assert a.conf.setdefault('task_default_queue', 'sd') == 'from-defaults'
    assert a.conf.setdefault('my_own_option', 'sd') == 'sd'
    with warnings.catch_warnings():
        warnings.simplefilter('error')
        a.conf.update(my_custom=1)  # a name of the app's own: no warning, as in Celery
    with pytest.warns(UnknownSettingWarning, match="did you mean 'task_acks_late'"):
        a.conf.update(task_acks_lat=True)


def test_expiry_settings_take_timedeltas_and_the_environment_numbers(monkeypatch: pytest.MonkeyPatch) -> None:
    a = Fastq('exp', broker='memory://', backend='memory://', set_as_current=False)
    a.conf.update(result_failure_expires=timedelta(minutes=2), result_chord_expires=timedelta(hours=1))
    a.backend.store_result('x', None, 'FAILURE')  # (crashed: float(timedelta))
    assert a.backend.expires == 86400.0
    monkeypatch.setenv('FASTQ_RESULT_EXPIRES', '3600')
    b = app()
    assert b.conf.result_expires == 3600
    b.conf.validate()


def test_values_celery_takes_that_were_refused() -> None:
    import os

    from fastq.beat import Scheduler
    from fastq.beat.service import check_scheduler

    a = app()
    a.conf.update(
        worker_concurrency='auto', imports='os.path', broker_heartbeat=10.0, beat_cron_starting_deadline=60.0,
        broker_failover_strategy=lambda hosts: iter(hosts), beat_scheduler=Scheduler, cassandra_port=9042,
    )  # fmt: skip
    a.conf.validate()
    a.finalize()  # imports one module named as a string
    from fastq.worker.worker import _concurrency

    assert _concurrency('auto') is None and _concurrency('4') == 4 and os.cpu_count()

    class Mine(Scheduler):
        pass

    assert check_scheduler(Mine) is Mine and check_scheduler('celery.beat:PersistentScheduler') is Scheduler
    with pytest.raises(ImproperlyConfigured, match='is not available in fastq'):
        check_scheduler('django_celery_beat.schedulers:DatabaseScheduler')


def test_inspect_conf_replies_with_the_censored_table() -> None:
    """Celery's `inspect conf`: `conf.table()`, so a setting set to its default's value is listed too."""
    from fastq.worker.inspect import _conf

    a = app()
    a.conf.update(enable_utc=True, database_url='postgresql://u:p@h/d')
    reply = _conf(types.SimpleNamespace(app=a))
    assert reply == {
        'broker_url': 'memory://',
        'database_url': '********',
        'enable_utc': True,
        'result_backend': 'memory://',
    }


def test_number_settings_given_as_text_read_as_numbers() -> None:
    """A config module that reads the environment gives numbers as text; Celery takes them (its worker and
    backends `int()` the prefetch multiplier and the result expiry), so they must not fail validation."""
    a = app()
    a.config_from_object({'worker_prefetch_multiplier': '10', 'task_time_limit': ' 30 ', 'result_expires': '3600'})
    a.conf.broker_pool_limit = '5'
    a.add_defaults({'broker_connection_timeout': '2.5'})
    a.finalize()
    conf = a.conf
    assert (conf.worker_prefetch_multiplier, conf.task_time_limit, conf.result_expires) == (10, 30.0, 3600)
    assert (conf.broker_pool_limit, conf['broker_connection_timeout']) == (5, 2.5)
    assert a.backend.expires == 3600
    b = app()
    b.conf.worker_prefetch_multiplier = 'ten'  # (text that is no number is still reported)
    with pytest.raises(ImproperlyConfigured, match="worker_prefetch_multiplier: expected an integer, got str 'ten'"):
        b.finalize()


def test_broker_read_and_write_urls_default_to_the_broker_url_and_read_celerys_variables(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Celery's `conf.broker_read_url` / `broker_write_url`: CELERY_BROKER_READ_URL / _WRITE_URL, else the
    setting, else the broker URL; an empty CELERY_* variable counts as unset (Celery tests it with `or`)."""
    a = app()
    assert (a.conf.broker_read_url, a.conf.broker_write_url) == ('memory://', 'memory://')
    a.conf.broker_write_url = 'memory://write'
    assert (a.conf.broker_read_url, a.conf.broker_write_url) == ('memory://', 'memory://write')
    assert 'broker_read_url' not in a.conf.table() and 'broker_read_url' not in a.conf.differing()
    monkeypatch.setenv('CELERY_BROKER_URL', '')
    monkeypatch.setenv('CELERY_RESULT_BACKEND', '')
    monkeypatch.setenv('CELERY_BROKER_READ_URL', 'memory://read-env')
    b = app()
    assert (b.conf.broker_url, b.conf.result_backend, b.broker_url) == ('memory://', 'memory://', 'memory://')
    assert (b.conf.broker_read_url, b.conf.broker_write_url) == ('memory://read-env', 'memory://')


def test_the_read_and_write_urls_decide_where_the_app_connects(tmp_path: Path) -> None:
    # Celery's connection_for_read / connection_for_write (a worker consumes from the first; everything
    # published goes through the second); one broker when they are the same URL
    a = app()
    assert a.read_broker is a.broker
    assert (a.connection_for_read().url, a.connection_for_write().url) == ('memory://', 'memory://')
    b = app()
    read, write = f'sqlite:///{tmp_path}/read.db', f'sqlite:///{tmp_path}/write.db'
    b.conf.update(broker_read_url=read, broker_write_url=write)
    assert (b.read_broker.url, b.broker.url, b.broker_url, b.read_broker_url) == (read, write, write, read)
    assert (b.connection_for_read().url, b.connection_for_write().url, b.connection().url) == (read, write, write)
    b.close()


def test_an_app_without_a_config_object_reads_the_module_celery_config_module_names(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Celery's loader reads the module CELERY_CONFIG_MODULE names (what `celery --config` sets) when the
    app has no config source; an app given one never imports it."""
    module = types.ModuleType('envconfig_for_fastq_tests')
    module.task_default_queue = 'from-env-module'  # type: ignore[attr-defined]
    module.worker_concurrency = 3  # type: ignore[attr-defined]
    monkeypatch.setitem(__import__('sys').modules, module.__name__, module)
    monkeypatch.setenv('CELERY_CONFIG_MODULE', module.__name__)
    a = app()
    assert (a.conf.task_default_queue, a.conf.worker_concurrency, a.conf.broker_url) == (
        'from-env-module',
        3,
        'memory://',
    )
    b = app()
    b.config_from_object({'worker_concurrency': 2})
    assert (b.conf.task_default_queue, b.conf.worker_concurrency) == ('celery', 2)
    c = Fastq('t', broker='memory://', config_source={'task_acks_late': True}, set_as_current=False)
    assert (c.conf.task_default_queue, c.conf.task_acks_late) == ('celery', True)
    monkeypatch.setenv('CELERY_CONFIG_MODULE', 'no_such_config_module_for_fastq')
    with pytest.raises(ModuleNotFoundError, match='no_such_config_module_for_fastq'):
        _ = app().conf.task_default_queue


def test_the_timezone_setting_takes_a_tzinfo_as_celery_does() -> None:
    from datetime import UTC
    from zoneinfo import ZoneInfo

    for zone, name in ((ZoneInfo('Europe/Paris'), 'Europe/Paris'), (UTC, 'UTC')):
        a = app()
        a.conf.timezone = zone
        a.finalize()
        assert a.timezone is zone and a.now().tzinfo is zone and str(a.timezone) == name


def test_config_from_object_forced_or_configured_returns_conf_as_celerys() -> None:
    """Celery's `config_from_object` reads at once and returns `app.conf` with `force=True` (configuring the
    app) or on an app configured already; otherwise None, read on first use. fastq's returned None always, and
    `force` left the app unconfigured (no `on_after_configure`)."""
    a = app()
    seen: list[str] = []
    a.on_after_configure.connect(lambda sender, **kw: seen.append('configured'))
    assert a.config_from_object({'worker_concurrency': 4}) is None and not a.configured
    assert a.config_from_object({'worker_concurrency': 9}, force=True) is a.conf
    assert a.configured and seen == ['configured'] and a.conf.worker_concurrency == 9
    assert a.config_from_object({'worker_concurrency': 3}) is a.conf and a.conf.worker_concurrency == 3
