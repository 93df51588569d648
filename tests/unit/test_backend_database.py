"""The database result backend against Celery's own (the oracle), on SQLite through SQLAlchemy and a real PostgreSQL.

Each side writes with its real backend object and the other reads the same rows: results, failures, extended
results, children, stamps, saved groups, compression and serializers. The tables fastq creates are compared
with the ones Celery creates, column for column.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
import warnings
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from fastq import Fastq, states
from fastq.exceptions import ImproperlyConfigured, TimeoutError

sa = pytest.importorskip('sqlalchemy')
celery = pytest.importorskip('celery')


@pytest.fixture(params=['sqlite', 'postgresql'])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A SQLAlchemy URL of an empty database of this test's own."""
    if request.param == 'postgresql':
        return str(request.getfixturevalue('postgres_url'))
    return f'sqlite:///{tmp_path}/results.db'


def _fastq(url: str, **conf: Any) -> Fastq:
    app = Fastq('t', broker='memory://', backend=f'db+{url}', set_as_current=False)
    app.conf.update(**conf)
    return app


@pytest.fixture
def apps(db_url: str) -> Iterator[Any]:
    """`apps(**conf)` -> (fastq app, Celery app) on the same database with the same settings."""
    made: list[Any] = []

    def make(**conf: Any) -> tuple[Fastq, Any]:
        conf = {'accept_content': ['json', 'msgpack'], **conf}
        f_app = _fastq(db_url, **conf)
        c_app = celery.Celery('t', broker='memory://', backend=f'db+{db_url}', set_as_current=False)
        c_app.conf.update(**conf)
        made.extend([f_app, c_app])
        return f_app, c_app

    yield make
    for app in made:
        if isinstance(app, Fastq):
            app.close()
        else:
            app.backend.session_manager.invalidate(app.backend.url)
            app.close()


def _request(**extra: Any) -> SimpleNamespace:
    base: dict[str, Any] = dict(
        id='r1', task='proj.add', args=[1, 2], kwargs={'z': 3}, hostname='w1@host', retries=1,
        delivery_info={'routing_key': 'celery'}, group=None, parent_id=None, children=[], stamps=None,
    )  # fmt: skip
    base.update(extra)
    return SimpleNamespace(**base)


def _without(meta: dict[str, Any], *keys: str) -> dict[str, Any]:
    return {k: v for k, v in meta.items() if k not in keys}


# --- layout ------------------------------------------------------------------------------------------------


def _layout(url: str) -> dict[str, Any]:
    engine = sa.create_engine(url)
    try:
        inspector = sa.inspect(engine)
        out = {}
        for table in ('celery_taskmeta', 'celery_tasksetmeta'):
            columns = [(c['name'], str(c['type']), c['nullable']) for c in inspector.get_columns(table)]
            indexes = sorted((i['name'], tuple(i['column_names']), i['unique']) for i in inspector.get_indexes(table))
            uniques = sorted(tuple(u['column_names']) for u in inspector.get_unique_constraints(table))
            out[table] = (columns, indexes, uniques, inspector.get_pk_constraint(table)['constrained_columns'])
        return out
    finally:
        engine.dispose()


def test_tables_are_celerys(tmp_path: Path, request: pytest.FixtureRequest, db_url: str) -> None:
    """Created by fastq or by Celery, the tables come out the same (plus fastq's chord tables)."""
    if db_url.startswith('sqlite'):
        other = f'sqlite:///{tmp_path}/celery.db'
    else:
        server = request.getfixturevalue('postgres_server')
        other = server.url(server.database())
    f_app = _fastq(db_url)
    c_app = celery.Celery('t', backend=f'db+{other}', set_as_current=False)
    try:
        f_app.backend  # noqa: B018 - both create their tables with the backend (database_create_tables_at_setup)
        c_app.backend  # noqa: B018
        assert _layout(db_url) == _layout(other)
        engine = sa.create_engine(db_url)
        assert {'fastq_chords', 'fastq_chord_parts'} <= set(sa.inspect(engine).get_table_names())
        engine.dispose()
    finally:
        f_app.close()
        c_app.backend.session_manager.invalidate(c_app.backend.url)


def test_table_names_and_schemas_settings(postgres_url: str) -> None:
    engine = sa.create_engine(postgres_url)
    with engine.begin() as conn:
        conn.execute(sa.text('CREATE SCHEMA results'))
    names = {'task': 'my_tasks', 'group': 'my_groups'}
    schemas = {'task': 'results', 'group': 'results'}
    f_app = _fastq(postgres_url, database_table_names=names, database_table_schemas=schemas)
    c_app = celery.Celery('t', backend=f'db+{postgres_url}', set_as_current=False)
    c_app.conf.update(database_table_names=names, database_table_schemas=schemas)
    try:
        f_app.backend.store_result('a', 1, states.SUCCESS)
        assert c_app.backend.get_task_meta('a')['result'] == 1
        tables = set(sa.inspect(engine).get_table_names(schema='results'))
        assert {'my_tasks', 'my_groups', 'fastq_chords', 'fastq_chord_parts'} <= tables
    finally:
        f_app.close()
        c_app.backend.session_manager.invalidate(c_app.backend.url)
        # (Celery configures its model classes in place: put the default names back for later tests)
        c_app.conf.update(database_table_names={}, database_table_schemas={})
        c_app.backend.task_cls.configure()
        c_app.backend.taskset_cls.configure()
        engine.dispose()


def test_old_table_gets_celery_57_columns(tmp_path: Path) -> None:
    """A table from a Celery before 5.7 (no `children` or `stamps`) gains them, as Celery 5.7 adds them."""
    url = f'sqlite:///{tmp_path}/old.db'
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        conn.execute(
            sa.text(
                'CREATE TABLE celery_taskmeta (id INTEGER PRIMARY KEY AUTOINCREMENT, task_id VARCHAR(155) UNIQUE, '
                'status VARCHAR(50), result BLOB, date_done DATETIME, traceback TEXT)'
            )
        )
    app = _fastq(url)
    try:
        app.backend.store_result('a', [1], states.SUCCESS)
        assert app.backend.get_task_meta('a')['result'] == [1]
        columns = {c['name'] for c in sa.inspect(engine).get_columns('celery_taskmeta')}
        assert {'children', 'stamps', 'name', 'args'} <= columns
    finally:
        app.close()
        engine.dispose()


# --- results, both ways --------------------------------------------------------------------------------------


@pytest.mark.parametrize('conf', [{}, {'result_serializer': 'msgpack'}])
def test_results_cross_both_ways(apps: Any, conf: dict[str, Any]) -> None:
    f_app, c_app = apps(**conf)
    f, c = f_app.backend, c_app.backend
    f.store_result('f-ok', {'a': [1, 2]}, states.SUCCESS)
    f.store_result('f-bad', ValueError('boom', 2), states.FAILURE, traceback='Traceback: boom')
    c.store_result('c-ok', {'a': [1, 2]}, states.SUCCESS)
    c.store_result('c-bad', ValueError('boom', 2), states.FAILURE, traceback='Traceback: boom')
    for reader in (f, c):
        for writer in ('f', 'c'):
            ok = reader.get_task_meta(f'{writer}-ok', cache=False)
            assert ok['status'] == states.SUCCESS and ok['result'] == {'a': [1, 2]}
            assert isinstance(ok['date_done'], datetime) and ok['date_done'].tzinfo is None
            assert abs(ok['date_done'] - datetime.now(UTC).replace(tzinfo=None)) < timedelta(minutes=1)
            bad = reader.get_task_meta(f'{writer}-bad', cache=False)
            assert bad['status'] == states.FAILURE and bad['traceback'] == 'Traceback: boom'
            assert type(bad['result']) is ValueError and bad['result'].args == ('boom', 2)
    # The same documents, whoever wrote them (date_done aside).
    assert _without(f.get_task_meta('f-ok'), 'date_done', 'task_id') == _without(
        c.get_task_meta('c-ok', cache=False), 'date_done', 'task_id'
    )
    assert set(f.get_task_meta('f-ok')) == set(c.get_task_meta('f-ok', cache=False))
    assert f_app.AsyncResult('c-ok').get(timeout=5) == {'a': [1, 2]}
    assert c_app.AsyncResult('f-ok').get(timeout=5) == {'a': [1, 2]}


def test_compression_ignored_with_celerys_warning(apps: Any) -> None:
    f_app, c_app = apps(result_compression='zlib')
    with pytest.warns(UserWarning) as f_warned:
        f_app.backend.store_result('t', 'x' * 100, states.SUCCESS)
    with pytest.warns(UserWarning) as c_warned:
        assert c_app.backend.get_task_meta('t')['result'] == 'x' * 100
    assert [str(w.message) for w in f_warned] == [str(w.message) for w in c_warned]


def test_extended_results_children_and_stamps_cross(apps: Any) -> None:
    f_app, c_app = apps(result_extended=True)
    f, c = f_app.backend, c_app.backend
    children = [[['child-1', None], None]]
    request = _request(stamps={'mark': 'yes'}, stamped_headers=['mark'])
    f.store_result('f', 3, states.SUCCESS, request=SimpleNamespace(**{**vars(request), 'children': []}))
    f.store_result('f2', 3, states.SUCCESS, request=request)
    f_meta_request = _request(children=[SimpleNamespace(as_tuple=lambda: children[0])])
    f.store_result('f3', 4, states.SUCCESS, request=f_meta_request)
    c.store_result('c2', 3, states.SUCCESS, request=request)
    for reader in (f, c):
        meta = reader.get_task_meta('f2', cache=False)
        assert (meta['name'], meta['args'], meta['kwargs']) == ('proj.add', [1, 2], {'z': 3})
        assert (meta['worker'], meta['retries'], meta['queue']) == ('w1@host', 1, 'celery')
        assert meta['stamped_headers'] == ['mark'] and meta['mark'] == 'yes'
        assert reader.get_task_meta('f3', cache=False)['children'] == children
    assert _without(f.get_task_meta('c2'), 'date_done', 'task_id') == _without(
        c.get_task_meta('f2', cache=False), 'date_done', 'task_id'
    )


def test_started_then_success_never_overwritten(apps: Any) -> None:
    f_app, c_app = apps()
    f = f_app.backend
    f.mark_as_started('t', pid=1, hostname='h')
    meta = c_app.backend.get_task_meta('t', cache=False)
    assert meta['status'] == states.STARTED and meta['result'] == {'pid': 1, 'hostname': 'h'}
    assert meta['date_done'] is None
    f.mark_as_done('t', 42)
    f.mark_as_failure('t', KeyError('late duplicate'))
    f.mark_as_retry('t', KeyError('late duplicate'))
    assert c_app.backend.get_task_meta('t', cache=False)['result'] == 42
    c_app.backend.mark_as_done('c', 1)
    f.mark_as_failure('c', KeyError('late duplicate'))  # nor one Celery stored
    assert f.get_task_meta('c')['status'] == states.SUCCESS


def test_forget_and_pending(apps: Any) -> None:
    f_app, c_app = apps()
    f_app.backend.store_result('t', 1, states.SUCCESS)
    c_app.backend.store_result('c', 1, states.SUCCESS)
    f_app.AsyncResult('c').forget()
    c_app.AsyncResult('t').forget()
    for task_id in ('t', 'c'):
        meta = f_app.backend.get_task_meta(task_id)
        assert meta == {'task_id': task_id, 'status': 'PENDING', 'result': None, 'traceback': None,
                        'date_done': None, 'children': None}  # fmt: skip
        assert c_app.backend.get_task_meta(task_id, cache=False) == meta


def test_payload_spi_round_trips(apps: Any) -> None:
    """`_set`/`_get`/`_delete`, the base class's storage calls, speak the meta document as other backends do."""
    f_app, _ = apps()
    f = f_app.backend
    f.store_result('t', [1], states.SUCCESS)
    payload = f._get('t')
    assert payload is not None
    doc = f.decode(payload)
    assert doc['status'] == states.SUCCESS and doc['result'] == [1]
    assert datetime.fromisoformat(doc['date_done']).tzinfo is not None
    f._set('u', payload, states.SUCCESS, None)
    assert f.get_task_meta('u')['result'] == [1]
    f._delete('u')
    assert f._get('u') is None


def test_pickle_rows_of_older_celery_read_only_with_pickle_accepted(db_url: str) -> None:
    """Before Celery 5.7 the column held a raw pickle whatever the serializer; read only when pickle is accepted."""
    import pickle

    app = _fastq(db_url, result_accept_content=['json', 'pickle'])
    strict = _fastq(db_url)
    try:
        app.backend.store_result('t', 0, states.SUCCESS)
        engine = sa.create_engine(db_url)
        with engine.begin() as conn:
            conn.execute(sa.text('UPDATE celery_taskmeta SET result = :r'), {'r': pickle.dumps({'old': 1}, 2)})
        engine.dispose()
        assert app.backend.get_task_meta('t')['result'] == {'old': 1}
        with pytest.raises(Exception):  # noqa: B017 - whatever the JSON decoder says
            strict.backend.get_task_meta('t')
    finally:
        app.close()
        strict.close()


# --- groups --------------------------------------------------------------------------------------------------


def test_groups_saved_by_either_side(apps: Any) -> None:
    f_app, c_app = apps()
    f_app.backend.store_result('a', 1, states.SUCCESS)
    c_app.backend.store_result('b', 2, states.SUCCESS)
    c_group = c_app.GroupResult('cg', [c_app.AsyncResult('a'), c_app.AsyncResult('b')])
    c_group.save()
    restored = f_app.GroupResult.restore('cg')
    assert restored is not None and [r.id for r in restored.results] == ['a', 'b']
    assert restored.get(timeout=5) == [1, 2]
    f_group = f_app.GroupResult('fg', [f_app.AsyncResult('b'), f_app.AsyncResult('a')])
    f_group.save()
    f_group.save()  # again: replaced
    c_restored = c_app.GroupResult.restore('fg')
    assert c_restored is not None and c_restored.get(timeout=5) == [2, 1]
    f_app.backend.delete_group('cg')
    c_app.backend.delete_group('fg')
    assert f_app.GroupResult.restore('cg') is None and f_app.GroupResult.restore('fg') is None


# --- expiry ----------------------------------------------------------------------------------------------------


def test_cleanup_deletes_old_rows_as_celery_does(apps: Any, db_url: str) -> None:
    f_app, c_app = apps(result_expires=3600)
    f = f_app.backend
    for task_id in ('old', 'new'):
        f.store_result(task_id, 1, states.SUCCESS)
    f.store_result('running', None, states.STARTED)
    f_app.GroupResult('og', [f_app.AsyncResult('old')]).save()
    engine = sa.create_engine(db_url)
    with engine.begin() as conn:
        past = datetime.now(UTC).replace(tzinfo=None) - timedelta(hours=2)
        conn.execute(sa.text("UPDATE celery_taskmeta SET date_done = :d WHERE task_id = 'old'"), {'d': past})
        conn.execute(sa.text('UPDATE celery_tasksetmeta SET date_done = :d'), {'d': past})
    engine.dispose()
    f_app.tasks['celery.backend_cleanup'].apply()
    assert f.get_state('old') == states.PENDING and f.get_state('new') == states.SUCCESS
    assert f.get_state('running') == states.STARTED  # no date_done: never expired, as in Celery
    assert f_app.GroupResult.restore('og') is None


def test_cleanup_drops_expired_chords(db_url: str) -> None:
    app = _fastq(db_url)
    try:
        store = app.backend.chords
        store.set_size('g', 2)
        assert store.record('g', 't', 0, b'p') is None
        store.expires = -1.0
        store.set_size('g', 2)  # now expired
        app.backend.cleanup()
        engine = sa.create_engine(db_url)
        with engine.connect() as conn:
            assert conn.execute(sa.text('SELECT COUNT(*) FROM fastq_chord_parts')).scalar() == 0
            assert conn.execute(sa.text('SELECT COUNT(*) FROM fastq_chords')).scalar() == 0
        engine.dispose()
    finally:
        app.close()


# --- waiting -------------------------------------------------------------------------------------------------


def test_get_wakes_soon_after_a_store_and_times_out(apps: Any) -> None:
    f_app, c_app = apps()
    timer = threading.Timer(0.2, lambda: c_app.backend.store_result('t', 'done', states.SUCCESS))
    timer.start()
    try:
        assert f_app.AsyncResult('t').get(timeout=10) == 'done'
    finally:
        timer.join()
    with pytest.raises(TimeoutError):
        f_app.AsyncResult('never').get(timeout=0.1)


def test_await_for_polls_on_the_loop(apps: Any) -> None:
    import asyncio

    f_app, c_app = apps()

    async def main() -> Any:
        loop = asyncio.get_running_loop()
        loop.call_later(0.1, lambda: c_app.backend.store_result('t', 7, states.SUCCESS))
        meta = await f_app.backend.await_for('t', timeout=10)
        with pytest.raises(TimeoutError):
            await f_app.backend.await_for('never', timeout=0.05)
        return meta['result']

    assert asyncio.run(main()) == 7


# --- settings, URLs, errors ----------------------------------------------------------------------------------


def test_database_url_with_result_backend_database(tmp_path: Path) -> None:
    app = Fastq('t', broker='memory://', backend='database', set_as_current=False)
    app.conf.database_url = f'sqlite:///{tmp_path}/d.db'
    try:
        app.backend.store_result('t', 1, states.SUCCESS)
        assert (tmp_path / 'd.db').exists()
        assert app.backend.describe() == 'database'
    finally:
        app.close()


def test_url_driver_and_table_creation_setting(tmp_path: Path) -> None:
    app = _fastq(f'sqlite+pysqlite:///{tmp_path}/lazy.db', database_create_tables_at_setup=False)
    try:
        backend = app.backend
        assert not (tmp_path / 'lazy.db').exists()  # nothing touched until first use
        backend.store_result('t', 1, states.SUCCESS)
        assert backend.get_task_meta('t')['result'] == 1
    finally:
        app.close()


def test_missing_sqlalchemy_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    from fastq.backends import backend_class

    for name in [m for m in sys.modules if m.startswith('fastq.backends.database')]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, 'sqlalchemy', None)
    with pytest.raises(ImproperlyConfigured, match='pip install sqlalchemy'):
        backend_class('db+postgresql://h/db')


def test_missing_driver_says_what_to_install() -> None:
    pytest.importorskip('sqlalchemy')
    try:
        import MySQLdb  # noqa: F401
    except ImportError:
        pass
    else:  # pragma: no cover
        pytest.skip('mysqlclient is installed')
    app = Fastq('t', broker='memory://', backend='db+mysql://u@127.0.0.1/x', set_as_current=False)
    with pytest.raises(ImproperlyConfigured, match='pip install "mysqlclient"'):
        app.backend  # noqa: B018


def test_unreachable_database_retries_then_raises_backend_error() -> None:
    from fastq.exceptions import BackendStoreError
    from tests.servers import free_port

    app = _fastq(
        f'postgresql://postgres@127.0.0.1:{free_port()}/x',
        database_create_tables_at_setup=False,
        result_backend_base_sleep_between_retries_ms=1,
        result_backend_max_sleep_between_retries_ms=5,
    )
    try:
        with pytest.raises(BackendStoreError):
            app.backend.store_result('t', 1, states.SUCCESS)
    finally:
        app.close()


# --- fork ----------------------------------------------------------------------------------------------------


def test_forked_child_uses_connections_of_its_own(postgres_url: str) -> None:
    """A pool child inherits the engine: it must open its own connections and leave the parent's alone."""
    app = _fastq(postgres_url)
    try:
        backend = app.backend
        backend.store_result('parent', 1, states.SUCCESS)
        engine = backend.engines.get()
        with engine.connect() as conn:
            parent_pid = conn.execute(sa.text('SELECT pg_backend_pid()')).scalar()
        with warnings.catch_warnings():  # (Python 3.12+ warns about forking a process with threads)
            warnings.simplefilter('ignore', DeprecationWarning)
            pid = os.fork()
        if pid == 0:  # pragma: no cover - the child reports by exit code
            code = 1
            try:
                with backend.engines.get().connect() as conn:
                    mine = conn.execute(sa.text('SELECT pg_backend_pid()')).scalar()
                backend.store_result('child', 2, states.SUCCESS)
                code = 0 if mine != parent_pid and backend.get_task_meta('parent')['result'] == 1 else 2
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        with engine.connect() as conn:  # the parent's pooled connection still works
            assert conn.execute(sa.text('SELECT pg_backend_pid()')).scalar() == parent_pid
        assert backend.get_task_meta('child')['result'] == 2
    finally:
        app.close()


def test_concurrent_first_stores_of_one_task(db_url: str) -> None:
    """Racing writers of the same new task: one row, and a SUCCESS among them is what stays."""
    app = _fastq(db_url)
    try:
        backend = app.backend
        barrier = threading.Barrier(6)
        errors: list[BaseException] = []

        def write(i: int) -> None:
            try:
                barrier.wait()
                if i == 0:
                    backend.store_result('t', 'ok', states.SUCCESS)
                else:
                    time.sleep(0.001 * i)
                    backend.store_result('t', None, states.STARTED)
            except BaseException as exc:  # pragma: no cover
                errors.append(exc)

        threads = [threading.Thread(target=write, args=(i,)) for i in range(6)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
        assert errors == []
        assert backend.get_task_meta('t')['result'] == 'ok'
    finally:
        app.close()


def test_url_schemes() -> None:
    from fastq.backends import backend_class
    from fastq.backends.database import DatabaseBackend
    from fastq.backends.sqlite import SQLiteBackend

    for url in ('db+sqlite:///r.db', 'db+postgresql://h/d', 'DB+mysql+pymysql://h/d', 'database', 'db'):
        assert backend_class(url) is DatabaseBackend
    assert backend_class('sqlite:///r.db') is SQLiteBackend  # fastq's embedded default stays its own


def test_without_native_join_chords_poll_as_celerys_do(tmp_path: Path) -> None:
    """`native_join: False`: the client sends celery.chord_unlock (any worker joins), workers skip the chord tables."""
    from fastq import chord

    app = _fastq(f'sqlite:///{tmp_path}/r.db', result_backend_transport_options={'native_join': False})
    try:
        assert app.backend.chord_store is None
        chord([app.signature('t.add', (1, 1)), app.signature('t.add', (2, 2))], app.signature('t.total')).delay()
        messages = app.broker._state.messages.values()  # type: ignore[attr-defined]
        names = [json.loads(m.payload)['headers']['task'] for m in messages]
        assert names[0] == 'celery.chord_unlock' and names.count('t.add') == 2
    finally:
        app.close()


def test_role_that_cannot_create_tables_stores_results_in_celerys(postgres_url: str, caplog: Any) -> None:
    """Celery's tables made by their owner, workers connected as a role that may only use them (PostgreSQL 15+
    lets no other role create tables in `public`): results are stored, as Celery stores them; fastq's chord tables,
    which it cannot create, are left out (with a warning saying how to make them), and not tried at all without
    native joins."""
    c_app = celery.Celery('t', broker='memory://', backend=f'db+{postgres_url}', set_as_current=False)
    c_app.backend.store_result('made', 1, states.SUCCESS)
    c_app.backend.session_manager.invalidate(c_app.backend.url)
    c_app.close()
    role = f'limited_{os.getpid()}_{time.monotonic_ns()}'  # (roles belong to the whole server)
    engine = sa.create_engine(postgres_url)
    with engine.begin() as conn:
        for statement in (
            f'CREATE ROLE {role} LOGIN',
            'REVOKE CREATE ON SCHEMA public FROM PUBLIC',
            f'GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO {role}',
            f'GRANT USAGE ON ALL SEQUENCES IN SCHEMA public TO {role}',
        ):
            conn.execute(sa.text(statement))
    engine.dispose()
    limited = postgres_url.replace('postgres@', f'{role}@', 1)
    for native in (False, True):
        app = _fastq(limited, result_backend_transport_options={'native_join': native})
        try:
            with caplog.at_level('WARNING', logger='fastq.backends.database'):
                app.backend.store_result(f't{native}', 2, states.SUCCESS)
            assert app.backend.get_task_meta(f't{native}')['result'] == 2
            assert app.backend.get_task_meta('made')['result'] == 1
            warned = [r.getMessage() for r in caplog.records if 'fastq_chords' in r.getMessage()]
            assert bool(warned) is native, warned
            if native:
                assert 'CREATE TABLE fastq_chord_parts' in warned[0] and "'native_join': False" in warned[0]
            app.backend.cleanup()  # (Celery's rows only: no chord tables to clean)
        finally:
            app.close()
        caplog.clear()


def test_forked_child_sets_up_though_its_parent_was_setting_up(tmp_path: Path) -> None:
    """A thread of the parent creating the tables (first use, the setup lock held over its round trips) as the
    worker forks a pool child: the child sets up on its own instead of waiting forever for that lock."""
    app = _fastq(f'sqlite:///{tmp_path}/r.db', database_create_tables_at_setup=False)
    try:
        backend = app.backend
        with backend.engines.setup_lock:  # (held across the fork, as by that thread)
            with warnings.catch_warnings():
                warnings.simplefilter('ignore', DeprecationWarning)
                pid = os.fork()
            if pid == 0:  # pragma: no cover - the child reports by exit code
                code = 1
                try:
                    __import__('signal').alarm(20)
                    backend.store_result('child', 2, states.SUCCESS)
                    code = 0
                finally:
                    os._exit(code)
            _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        assert backend.get_task_meta('child')['result'] == 2
    finally:
        app.close()
