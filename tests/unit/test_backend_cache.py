"""The memcached result backend on a real memcached, against Celery's own cache backend (the oracle).

Each side writes with its real backend object and the other reads the same keys: results, failures, saved
groups, and the chord counter Celery's `_apply_chord_incr` sets, which fastq's chord store then counts.
"""

from __future__ import annotations

import importlib
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import pytest

from fastq import Fastq, states
from fastq.exceptions import ChordError, ImproperlyConfigured, TimeoutError

pytest.importorskip('pymemcache')
celery = pytest.importorskip('celery')


@pytest.fixture
def apps(memcached_url: str) -> Iterator[Any]:
    """`apps(**conf)` -> (fastq app, Celery app) on the same memcached with the same settings."""
    made: list[Any] = []

    def make(**conf: Any) -> tuple[Fastq, Any]:
        f_app = Fastq('t', broker='memory://', backend=memcached_url, set_as_current=False)
        f_app.conf.update(**conf)
        c_app = celery.Celery('t', broker='memory://', backend=memcached_url, set_as_current=False)
        c_app.conf.update(**conf)
        made.extend([f_app, c_app])
        return f_app, c_app

    yield make
    for app in made:
        if not isinstance(app, Fastq) and 'client' in vars(app.backend):
            app.backend.client.close()  # (Celery's close leaves its memcached client open)
        app.close()


def _id() -> str:
    return str(uuid.uuid4())


def _request(**extra: Any) -> SimpleNamespace:
    base: dict[str, Any] = dict(id=_id(), group=None, group_index=None, chord=None, parent_id=None, children=[])
    base.update(extra)
    return SimpleNamespace(**base)


# --- layout and values --------------------------------------------------------------------------------------


def test_results_read_both_ways(apps: Any) -> None:
    f_app, c_app = apps()
    ours, theirs = _id(), _id()
    f_app.backend.mark_as_done(ours, {'x': [1, 'é']})
    c_app.backend.mark_as_done(theirs, {'y': 2})
    assert c_app.AsyncResult(ours).get(timeout=5) == {'x': [1, 'é']}
    assert f_app.AsyncResult(theirs).get(timeout=5) == {'y': 2}
    # The same key and the same document Celery would write (flags 0: raw bytes for both clients).
    raw = c_app.backend.client.get(f'celery-task-meta-{ours}')
    assert f_app.backend.decode(raw)['status'] == states.SUCCESS
    assert c_app.backend.decode(raw)['task_id'] == ours
    assert raw == c_app.backend.encode(c_app.backend.decode(raw)).encode()  # Celery's own bytes for it


def test_failures_keep_type_and_traceback(apps: Any) -> None:
    f_app, c_app = apps()
    ours, theirs = _id(), _id()
    f_app.backend.mark_as_failure(ours, KeyError('gone'), traceback='Traceback: ours')
    c_app.backend.mark_as_failure(theirs, ValueError('bad'), traceback='Traceback: theirs')
    result = c_app.AsyncResult(ours)
    assert result.state == states.FAILURE and result.traceback == 'Traceback: ours'
    assert isinstance(result.result, KeyError)
    mine = f_app.AsyncResult(theirs)
    with pytest.raises(ValueError, match='bad'):
        mine.get(timeout=5)
    assert mine.traceback == 'Traceback: theirs'


def test_success_is_never_overwritten(apps: Any) -> None:
    f_app, c_app = apps()
    task_id = _id()
    f_app.backend.mark_as_started(task_id)
    f_app.backend.mark_as_done(task_id, 1)
    f_app.backend.mark_as_failure(task_id, ValueError('late duplicate'))
    c_app.backend.mark_as_failure(task_id, ValueError('late duplicate'))
    assert f_app.backend.get_task_meta(task_id)['result'] == 1
    # (forgotten, it may be written again)
    f_app.backend.forget(task_id)
    assert f_app.backend.get_state(task_id) == states.PENDING
    f_app.backend.mark_as_retry(task_id, ValueError('again'))
    assert c_app.AsyncResult(task_id).state == states.RETRY


def test_groups_saved_on_either_side(apps: Any) -> None:
    f_app, c_app = apps()
    ids = [_id() for _ in range(3)]
    for n, task_id in enumerate(ids):
        f_app.backend.mark_as_done(task_id, n)
    f_app.GroupResult('fg', [f_app.AsyncResult(i) for i in ids]).save()
    restored = c_app.GroupResult.restore('fg')
    assert restored is not None and restored.get(timeout=5) == [0, 1, 2]
    c_app.GroupResult('cg', [c_app.AsyncResult(i) for i in ids]).save()
    mine = f_app.GroupResult.restore('cg')
    assert mine is not None and mine.join(timeout=5) == [0, 1, 2]
    f_app.backend.delete_group('cg')
    assert c_app.GroupResult.restore('cg') is None


def test_global_keyprefix_and_get_many(apps: Any) -> None:
    options = {'global_keyprefix': 'proj'}
    f_app, c_app = apps(result_backend_transport_options=options)
    task_id = _id()
    f_app.backend.mark_as_done(task_id, 'p')
    assert c_app.backend.client.get(f'proj_celery-task-meta-{task_id}') is not None
    assert c_app.AsyncResult(task_id).get(timeout=5) == 'p'
    found = f_app.backend._get_many([task_id, _id()])
    assert list(found) == [task_id]


def test_expiry_is_memcached_expiry(apps: Any) -> None:
    f_app, _ = apps(result_expires=1)
    backend = f_app.backend
    task_id = _id()
    backend.mark_as_done(task_id, 1)
    assert backend.get_state(task_id) == states.SUCCESS
    deadline = time.monotonic() + 10
    while backend.get_state(task_id) != states.PENDING:
        assert time.monotonic() < deadline, 'the key did not expire'
        time.sleep(0.2)
    assert backend.supports_autoexpire is True
    assert backend.ttl(None) == 0 and backend.ttl(60) == 60
    assert backend.ttl(40 * 86400) > time.time()  # past 30 days memcached wants a Unix time


def test_wait_for_polls_until_ready(apps: Any) -> None:
    f_app, c_app = apps()
    task_id = _id()
    with pytest.raises(TimeoutError):
        f_app.AsyncResult(task_id).get(timeout=0.05)
    theirs = c_app.backend  # (Celery's backend is per thread: this one, closed at teardown)
    threading.Timer(0.1, lambda: theirs.mark_as_done(task_id, 'late')).start()
    assert f_app.AsyncResult(task_id).get(timeout=10) == 'late'


# --- configuration ------------------------------------------------------------------------------------------


def test_url_forms_and_options(memcached_url: str, caplog: pytest.LogCaptureFixture) -> None:
    from pymemcache.client.base import Client
    from pymemcache.client.hash import HashClient
    from pymemcache.client.retrying import RetryingClient

    servers = memcached_url.removeprefix('cache+memcached://').rstrip('/')
    app = Fastq('t', broker='memory://', backend='cache', set_as_current=False)
    app.conf.update(cache_backend=f'memcached://{servers}/', cache_backend_options={'timeout': 2, 'binary': True})
    try:
        client = app.backend.client
        assert isinstance(client, Client) and client.timeout == 2 and client.default_noreply is False
        assert 'only supported by pylibmc' in caplog.text
    finally:
        app.close()
    for url, cls in [
        (f'cache+pymemcache://{servers};{servers}/', HashClient),
        (f'cache+memcache://{servers}/', Client),
    ]:
        app = Fastq('t', broker='memory://', backend=url, set_as_current=False)
        app.conf.cache_backend_options = {'retry_attempts': 2}
        try:
            client = app.backend.client
            assert isinstance(client, RetryingClient) and isinstance(client._client, cls)
            app.backend.mark_as_done('x', 1)
            assert app.backend.get_state('x') == states.SUCCESS
        finally:
            app.close()


@pytest.mark.parametrize(
    ('url', 'conf', 'message'),
    [
        ('cache', {}, 'cache_backend'),
        ('cache', {'cache_backend': 'memory://'}, 'unknown'),
        ('cache+memcached:///', {}, 'no memcache servers'),
    ],
)
def test_misconfiguration(url: str, conf: dict[str, Any], message: str) -> None:
    app = Fastq('t', broker='memory://', backend=url, set_as_current=False)
    app.conf.update(**conf)
    try:
        with pytest.raises(ImproperlyConfigured, match=message):
            app.backend.client  # noqa: B018
    finally:
        app.close()


def test_missing_client_names_the_package(monkeypatch: pytest.MonkeyPatch) -> None:
    importlib.import_module('fastq.backends.cache')  # (so each of its modules is put back as it was, after)
    for name in [m for m in sys.modules if m == 'fastq.backends.cache' or m.startswith('fastq.backends.cache.')]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, 'pymemcache.client.base', None)
    with pytest.raises(ImproperlyConfigured, match='pip install pymemcache'):
        importlib.import_module('fastq.backends.cache')


# --- chords: Celery's counter ---------------------------------------------------------------------------------


def _header(app: Any, n: int) -> tuple[str, list[Any]]:
    return _id(), [app.AsyncResult(_id()) for _ in range(n)]


def test_apply_chord_writes_celerys_keys(apps: Any) -> None:
    f_app, c_app = apps()
    group_id, results = _header(f_app, 3)
    f_app.backend.apply_chord((group_id, results), f_app.signature('t.body'))
    assert c_app.backend.client.get(f'chord-unlock-{group_id}') == b'0'
    restored = c_app.GroupResult.restore(group_id)
    assert [r.id for r in restored.results] == [r.id for r in results]


def test_parts_counted_with_celerys_counter_once_each(apps: Any) -> None:
    f_app, c_app = apps()
    group_id, results = _header(c_app, 3)
    c_app.backend.apply_chord((group_id, results), c_app.signature('t.body'))  # Celery's _apply_chord_incr
    store = f_app.backend.chord_store
    claims = [store.record(group_id, r.id, i, b'') for i, r in enumerate(results[:2])]
    assert claims == [None, None]
    assert store.record(group_id, results[0].id, 0, b'') is None  # a redelivered part counts once
    assert c_app.backend.client.get(f'chord-unlock-{group_id}') == b'2'
    c_app.backend.incr(f'chord-unlock-{group_id}')  # the third part, counted by a Celery worker
    assert store.record(group_id, _id(), 9, b'') is None  # one too many: not a second claim
    group_id, results = _header(c_app, 2)
    c_app.backend.apply_chord((group_id, results), c_app.signature('t.body'))
    assert store.record(group_id, results[0].id, 0, b'') is None
    claim = store.record(group_id, results[1].id, 1, b'')
    assert claim is not None
    assert store.release(group_id, claim)
    assert c_app.backend.client.get(f'chord-unlock-{group_id}') is None
    assert c_app.GroupResult.restore(group_id) is None
    assert store.record(group_id, results[1].id, 1, b'') is None  # late copy after the join: nothing


def test_size_from_set_size_or_body(apps: Any) -> None:
    from fastq.backends.cache.chords import CHORD_SIZE_HINT

    f_app, _ = apps()
    store = f_app.backend.chord_store
    group_id, results = _header(f_app, 1)  # (a nested group: one result, three parts)
    f_app.backend.apply_chord((group_id, results), f_app.signature('t.body'))
    f_app.backend.set_chord_size(group_id, 3)
    assert [store.record(group_id, _id(), i, b'') is not None for i in range(3)] == [False, False, True]
    group_id, results = _header(f_app, 1)
    f_app.backend.apply_chord((group_id, results), f_app.signature('t.body'))
    token = CHORD_SIZE_HINT.set(2)
    try:
        assert [store.record(group_id, _id(), i, b'') is not None for i in range(2)] == [False, True]
    finally:
        CHORD_SIZE_HINT.reset(token)
    with pytest.raises(NotImplementedError):
        f_app.backend.add_to_chord(group_id, None)


def test_last_part_sends_the_body_with_the_values(apps: Any) -> None:
    f_app, c_app = apps()
    group_id, results = _header(f_app, 3)
    body = f_app.signature('t.body').freeze()
    f_app.backend.apply_chord((group_id, results), f_app.signature('t.body'))
    sent: list[Any] = []
    for n, result in enumerate(results):
        f_app.backend.mark_as_done(result.id, n * 10)
        request = _request(id=result.id, group=group_id, group_index=n, chord=dict(f_app.signature('t.body')))
        request.chord['options'] = {'task_id': body.id}
        import fastq.canvas.signatures as signatures

        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(signatures.Signature, 'delay', lambda self, *a, **k: sent.append((self.id, a)))
            f_app.backend.on_chord_part_return(request, states.SUCCESS, n * 10)
    assert sent == [(body.id, ([0, 10, 20],))]
    assert c_app.backend.client.get(f'chord-unlock-{group_id}') is None


def test_missing_group_fails_the_body(apps: Any) -> None:
    f_app, c_app = apps()
    body_id = _id()
    chord = dict(f_app.signature('t.body'))
    chord['options'] = {'task_id': body_id}
    request = _request(group=_id(), group_index=0, chord=chord)
    f_app.backend.on_chord_part_return(request, states.SUCCESS, 1)
    result = c_app.AsyncResult(body_id)
    assert result.state == states.FAILURE
    failed = f_app.AsyncResult(body_id)
    with pytest.raises(ChordError, match='no longer exists'):
        failed.get(timeout=5)


def test_failed_part_fails_the_body_naming_it_as_celery_does(apps: Any) -> None:
    """The body of a chord whose part failed fails with Celery's "Dependency <id> raised ..." (the saved
    header is joined: its error was reported as "Join error: ..." before), whichever worker joins it."""
    import fastq.canvas.signatures as signatures

    f_app, c_app = apps()
    group_id, results = _header(f_app, 3)
    body = f_app.signature('t.body').freeze()
    f_app.backend.apply_chord((group_id, results), f_app.signature('t.body'))
    for n, result in enumerate(results):
        if n == 1:
            f_app.backend.mark_as_failure(result.id, ValueError('boom'))
            state, value = states.FAILURE, ValueError('boom')
        else:
            f_app.backend.mark_as_done(result.id, n)
            state, value = states.SUCCESS, n
        request = _request(id=result.id, group=group_id, group_index=n, chord=dict(f_app.signature('t.body')))
        request.chord['options'] = {'task_id': body.id}
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(signatures.Signature, 'delay', lambda self, *a, **k: pytest.fail('body sent'))
            f_app.backend.on_chord_part_return(request, state, value)
    meta = c_app.backend.get_task_meta(body.id)
    assert meta['status'] == states.FAILURE
    assert str(meta['result']) == f"Dependency {results[1].id} raised ValueError('boom')"


def test_a_threads_client_is_closed_when_the_thread_ends(apps: Any) -> None:
    """Each thread has its own client; one whose thread ended must not keep its connection open until the
    backend is closed (threads come and go: `AsyncResult.then()`, a web server's request threads)."""
    import gc

    f_app, _ = apps()
    backend = f_app.backend
    used: list[Any] = []

    def work() -> None:
        client = backend.client
        client.get(backend.keys.task(_id()))
        assert client.sock is not None
        used.append(client)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    gc.collect()
    assert len(used) == 4 and len({id(c) for c in used}) == 4
    assert [client.sock for client in used] == [None] * 4
    main = backend.client
    main.get(backend.keys.task(_id()))
    backend.close()
    assert main.sock is None


def test_forked_child_does_not_wait_for_a_lock_its_parent_held(apps: Any) -> None:
    """A thread of the parent may hold the client registry's lock as the worker forks a pool child; the child
    makes its own clients without waiting for it (it would wait forever: that thread is not in the child)."""
    import os

    f_app, _ = apps()
    backend = f_app.backend
    key = backend.keys.task(_id())
    backend.client.set(key, b'parent', 60)
    with backend._clients._lock:  # (held across the fork, as by another thread)
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child
            code = 1
            try:
                signal_alarm = __import__('signal').alarm
                signal_alarm(10)
                code = 0 if backend.client.get(key) == b'parent' else 2
            finally:
                os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert backend.client.get(key) == b'parent'  # (the parent's connection is still its own)
