"""django-celery-results' backends in a Django project: a fastq worker and a Celery worker on the same tables.

The project below is what django-celery-results' guide sets up (its app in INSTALLED_APPS, `migrate`,
`CELERY_RESULT_BACKEND = 'django-db'`), on SQLite, with Redis as the broker so that Celery and fastq clients
and workers share one queue server. A fastq worker consumes `celery`, a Celery worker `c`; one client process
holds a fastq app and a Celery app (both configured from Django's settings) and checks, through
django-celery-results' models, the rows each worker wrote, and what each side reads of the other's.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytest.importorskip('django')
pytest.importorskip('django_celery_results')
pytest.importorskip('celery')

pytestmark = pytest.mark.slow

FILES = {
    'proj/__init__.py': '',
    'proj/settings.py': """
        import os
        HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        SECRET_KEY = 'test'
        INSTALLED_APPS = ['django.contrib.contenttypes', 'django_celery_results', 'shop']
        DATABASES = {'default': {
            'ENGINE': 'django.db.backends.sqlite3',
            'NAME': os.path.join(HERE, 'db.sqlite3'),
            'OPTIONS': {'timeout': 30, 'init_command': 'PRAGMA journal_mode=WAL;'},
        }}
        CACHES = {'default': {
            'BACKEND': 'django.core.cache.backends.filebased.FileBasedCache',
            'LOCATION': os.path.join(HERE, 'cache'),
        }}
        USE_TZ = True
        CELERY_BROKER_URL = os.environ['BROKER_URL']
        CELERY_RESULT_BACKEND = 'django-db'
        CELERY_RESULT_EXTENDED = True
        CELERY_TASK_TRACK_STARTED = True
    """,
    # fastq's app, as Celery's Django guide writes proj/celery.py (with fastq's import)
    'fastq_app.py': """
        import os
        from fastq import Celery

        os.environ.setdefault('DJANGO_SETTINGS_MODULE', 'proj.settings')
        app = Celery('proj')
        app.config_from_object('django.conf:settings', namespace='CELERY')
        app.autodiscover_tasks()
    """,
    # the same, with Celery's (its worker imports shop.tasks with Celery's shared_task)
    'celery_peer.py': """
        import os
        os.environ['PEER'] = 'celery'
        os.environ.setdefault('DJANGO_SETTINGS_MODULE', 'proj.settings')
        from celery import Celery

        app = Celery('proj')
        app.config_from_object('django.conf:settings', namespace='CELERY')
        app.autodiscover_tasks()
    """,
    'shop/__init__.py': '',
    'shop/tasks.py': """
        import os

        if os.environ.get('PEER') == 'celery':
            from celery import shared_task
        else:
            from fastq import shared_task

        @shared_task
        def add(x, y):
            return x + y

        @shared_task
        def fail(message):
            raise ValueError(message)

        @shared_task
        def tsum(values):
            return sum(values)

        if os.environ.get('PEER') != 'celery':
            @shared_task
            async def aadd(x, y):
                return x + y
    """,
}

CLIENT = """
import sys
from datetime import UTC, datetime, timedelta

import django
django.setup()

from celery import Celery, chord as celery_chord, group as celery_group
from django.core.management import call_command
from django_celery_results.models import ChordCounter, GroupResult, TaskResult

from fastq import chord, group
from fastq_app import app
from shop.tasks import add, fail, tsum

SAME = ('status', 'result', 'meta', 'content_type', 'content_encoding', 'task_name', 'task_args', 'task_kwargs',
        'periodic_task_name')
peer = Celery('peer', set_as_current=False)
peer.config_from_object('django.conf:settings', namespace='CELERY')


def row(task_id):
    return TaskResult.objects.values().get(task_id=task_id)


def expect_error(result, *words):
    try:
        result.get(timeout=30)
    except Exception as exc:
        assert all(w in str(exc) for w in words), repr(exc)
        return exc
    raise AssertionError(f'{result.id} did not fail')


def rows():
    # one success and one failure from each worker: the rows are the same but for ids, dates and traceback frames
    ours, theirs = add.delay(2, 3), add.apply_async((2, 3), queue='c')
    assert ours.get(timeout=30) == theirs.get(timeout=30) == 5
    a, b = row(ours.id), row(theirs.id)
    assert {k: a[k] for k in SAME} == {k: b[k] for k in SAME}, (a, b)
    assert (a['result'], a['meta'], a['task_name'], a['task_args'], a['task_kwargs']) == (
        '5', '{"children": []}', 'shop.tasks.add', '"(2, 3)"', '"{}"'), a
    for r in (a, b):
        assert r['worker'].startswith('celery@') and r['traceback'] is None, r
        assert r['date_created'] and r['date_started'] and r['date_done'], r
    ours, theirs = fail.delay('boom'), fail.apply_async(('boom',), queue='c')
    assert isinstance(expect_error(ours, 'boom'), ValueError)
    assert isinstance(expect_error(theirs, 'boom'), ValueError)  # (a Celery worker's failure, read by fastq)
    a, b = row(ours.id), row(theirs.id)
    assert {k: a[k] for k in SAME} == {k: b[k] for k in SAME}, (a, b)
    assert 'ValueError: boom' in a['traceback'] and 'ValueError: boom' in b['traceback']
    assert 'ValueError: boom' in theirs.traceback
    return ours.id


def celery_reads(failed_id):
    # what a fastq worker stored, through a Celery client and django-celery-results' backend
    sent = peer.send_task('shop.tasks.add', (20, 22))
    assert sent.get(timeout=30) == 42
    meta = peer.backend.get_task_meta(sent.id, cache=False)
    assert (meta['task_name'], meta['args'], meta['children']) == ('shop.tasks.add', '(20, 22)', []), meta
    mine = app.backend.get_task_meta(sent.id)
    assert {k: mine[k] for k in meta} == meta, (mine, meta)
    failed = peer.AsyncResult(failed_id)
    assert failed.state == 'FAILURE' and isinstance(failed.result, ValueError), failed.result
    assert 'ValueError: boom' in failed.traceback


def revoked_in_the_parent():
    # expired before it ran: the worker's parent stores REVOKED, outside any task
    r = add.apply_async((1, 1), expires=datetime.now(UTC) - timedelta(seconds=5))
    expect_error(r, 'expired')
    assert row(r.id)['status'] == 'REVOKED'


def groups():
    saved = group(add.s(i, 1) for i in range(3)).apply_async()
    saved.save()
    assert peer.GroupResult.restore(saved.id).get(timeout=30) == [1, 2, 3]
    theirs = celery_group(peer.signature('shop.tasks.add', (i, 2)) for i in range(3)).apply_async()
    theirs.save()
    assert app.GroupResult.restore(theirs.id).get(timeout=30) == [2, 3, 4]
    a = GroupResult.objects.values().get(group_id=saved.id)
    b = GroupResult.objects.values().get(group_id=theirs.id)
    assert (a['content_type'], a['content_encoding']) == (b['content_type'], b['content_encoding'])
    assert a['result'].startswith('[["') and b['result'].startswith('[["'), (a, b)
    saved.delete()
    assert not GroupResult.objects.filter(group_id=saved.id).exists()
    assert app.GroupResult.restore(saved.id) is None


def chords():
    # fastq's chord joined by the fastq worker
    joined = chord([add.s(i, i) for i in range(4)], tsum.s()).delay()
    assert joined.get(timeout=30) == 12
    # Celery's: django-celery-results' apply_chord made the counter, the fastq worker counted it down
    theirs = celery_chord([peer.signature('shop.tasks.add', (i, i)) for i in range(4)])(
        peer.signature('shop.tasks.tsum'))
    assert theirs.get(timeout=30) == 12
    # fastq's counter, counted down and joined by the Celery worker
    on_celery = chord([add.s(i, i).set(queue='c') for i in range(3)], tsum.s().set(queue='c')).delay()
    assert on_celery.get(timeout=30) == 6
    # a failed part fails the body
    failing = chord([add.s(1, 1), fail.s('part')], tsum.s()).delay()
    meta = app.backend.wait_for(failing.id, timeout=30)  # (get() may raise the header's own error first)
    assert meta['status'] == 'FAILURE' and 'Dependency' in str(meta['result']), meta
    assert "raised ValueError('part')" in str(meta['result']), meta
    assert not ChordCounter.objects.exists()


def forget_and_cleanup():
    r = add.delay(1, 2)
    assert r.get(timeout=30) == 3
    r.forget()
    assert not TaskResult.objects.filter(task_id=r.id).exists()
    old = add.delay(2, 2)
    old.get(timeout=30)
    TaskResult.objects.filter(task_id=old.id).update(date_done=datetime.now(UTC) - timedelta(days=2))
    app.backend.cleanup()
    assert not TaskResult.objects.filter(task_id=old.id).exists()
    assert TaskResult.objects.exists()


step = sys.argv[1]
if step == 'setup':
    call_command('migrate', verbosity=0)
else:
    failed = rows()
    celery_reads(failed)
    revoked_in_the_parent()
    groups()
    chords()
    forget_and_cleanup()
print('ok')
"""

CACHE_CLIENT = """
import django
django.setup()

from celery import Celery
from django.core.cache import cache
from django_celery_results.backends import CacheBackend

from fastq.exceptions import TaskRevokedError
from fastq_app import app

app.conf.result_backend = 'django-cache'
ours = app.backend
peer = Celery('peer', set_as_current=False)
peer.config_from_object('django.conf:settings', namespace='CELERY')
theirs = CacheBackend(app=peer)
assert type(ours).__name__ == 'DjangoCacheBackend', ours

# fastq writes, Celery reads: Celery's key, a dict the Django cache pickled
ours.store_result('t1', {'a': [1, 2]}, 'SUCCESS')
assert cache.get('celery-task-meta-t1')['status'] == 'SUCCESS'
assert theirs.get_task_meta('t1')['result'] == {'a': [1, 2]}
ours.mark_as_failure('t2', ValueError('boom'), traceback='Traceback: boom')
meta = theirs.get_task_meta('t2')
assert isinstance(meta['result'], ValueError) and meta['traceback'] == 'Traceback: boom', meta
ours.mark_as_revoked('t3', 'revoked')
assert type(theirs.get_task_meta('t3')['result']).__name__ == 'TaskRevokedError'
ours.store_result('t1', None, 'FAILURE')  # (a SUCCESS stays)
assert theirs.get_task_meta('t1')['status'] == 'SUCCESS'
# Celery writes, fastq reads
theirs.store_result('t4', [1, 'x'], 'SUCCESS')
assert ours.get_task_meta('t4')['result'] == [1, 'x']
theirs.mark_as_failure('t5', KeyError('k'))
assert isinstance(ours.get_task_meta('t5')['result'], KeyError)
# groups both ways
saved = app.GroupResult('g1', [app.AsyncResult('t1'), app.AsyncResult('t4')])
ours.save_group('g1', saved)
assert [r.id for r in theirs.restore_group('g1')] == ['t1', 't4']
theirs.save_group('g2', peer.GroupResult('g2', [peer.AsyncResult('t4')]))
assert [r.id for r in ours.restore_group('g2')] == ['t4']
ours.forget('t4')
assert cache.get('celery-task-meta-t4') is None
print('ok')
"""


ASYNCIO_CLIENT = """
import sys
import django
django.setup()

from django.core.management import call_command
from django_celery_results.models import TaskResult

if sys.argv[1] == 'setup':
    call_command('migrate', verbosity=0)
else:
    import fastq_app  # noqa: F401
    from shop.tasks import aadd

    r = aadd.delay(1, 2)
    assert r.get(timeout=30) == 3
    row = TaskResult.objects.get(task_id=r.id)
    assert (row.status, row.task_name, row.task_args) == ('SUCCESS', 'shop.tasks.aadd', '"(1, 2)"'), row
    assert row.date_started is not None
print('ok')
"""


def _write(root: Path) -> None:
    scripts = {'client.py': CLIENT, 'cache_client.py': CACHE_CLIENT, 'asyncio_client.py': ASYNCIO_CLIENT}
    for name, text in {**FILES, **scripts}.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text) if name in FILES else text)


def _env(root: Path, broker: str) -> dict[str, str]:
    return {
        'DJANGO_SETTINGS_MODULE': 'proj.settings',
        'PATH': os.environ.get('PATH', '/usr/bin:/bin'),
        'PYTHONPATH': str(root),
        'BROKER_URL': broker,
    }


def _client(root: Path, env: dict[str, str], script: str, *args: str) -> None:
    proc = subprocess.run(
        [sys.executable, script, *args], cwd=root, capture_output=True, text=True, env=env, timeout=180
    )
    assert proc.stdout.strip().endswith('ok'), proc.stdout + proc.stderr


def test_django_db_shared_by_fastq_and_celery(tmp_path: Path, redis_url: str) -> None:
    """Rows a fastq worker writes are the rows a Celery worker writes; each side reads the other's results,
    groups and chords (counted on django-celery-results' ChordCounter by either worker)."""
    from tests.harness import WorkerProcess

    _write(tmp_path)
    env = _env(tmp_path, redis_url)
    _client(tmp_path, env, 'client.py', 'setup')
    fastq_worker = [sys.executable, '-m', 'fastq', '-A', 'fastq_app', 'worker']
    celery_worker = [sys.executable, '-m', 'celery', '-A', 'celery_peer', 'worker']
    ours = WorkerProcess(tmp_path, env, ['-l', 'info', '-c', '2'], 'fastq-worker', fastq_worker).start(wait=False)
    celery_args = ['-l', 'info', '-Q', 'c', '-P', 'solo', '--without-gossip', '--without-mingle', '--without-heartbeat']
    theirs = WorkerProcess(tmp_path, env, celery_args, 'celery-worker', celery_worker).start(wait=False)
    try:
        ours.wait_for('ready.', 60)
        theirs.wait_for('ready.', 60)
        _client(tmp_path, env, 'client.py', 'run')
    finally:
        for w in (ours, theirs):
            w.stop(30)
    assert "Can't find ChordCounter" not in ours.log + theirs.log


def test_asyncio_pool_stores_from_its_event_loop(tmp_path: Path) -> None:
    """Django refuses its ORM in an event loop's thread: an async task's result, stored from the asyncio pool's
    loop, is written from a thread of the backend's own."""
    from tests.harness import WorkerProcess

    _write(tmp_path)
    env = _env(tmp_path, f'sqlite:///{tmp_path}/broker.sqlite3')
    _client(tmp_path, env, 'asyncio_client.py', 'setup')
    command = [sys.executable, '-m', 'fastq', '-A', 'fastq_app', 'worker']
    w = WorkerProcess(tmp_path, env, ['-l', 'info', '-P', 'asyncio', '-c', '2'], 'fastq-aio', command).start()
    try:
        _client(tmp_path, env, 'asyncio_client.py', 'run')
    finally:
        w.stop(30)


def test_django_cache_shared_by_fastq_and_celery(tmp_path: Path) -> None:
    """'django-cache': Celery's keys and documents in Django's cache, written and read by either side."""
    _write(tmp_path)
    _client(tmp_path, _env(tmp_path, 'memory://'), 'cache_client.py')


def test_missing_django_celery_results(monkeypatch: pytest.MonkeyPatch) -> None:
    from fastq import Fastq
    from fastq.exceptions import ImproperlyConfigured

    monkeypatch.setitem(sys.modules, 'django_celery_results', None)
    monkeypatch.delitem(sys.modules, 'fastq.backends.django.database', raising=False)
    app = Fastq('t', broker='memory://', backend='django-db', set_as_current=False)
    try:
        with pytest.raises(ImproperlyConfigured, match='pip install django-celery-results'):
            app.backend  # noqa: B018
    finally:
        app.close()
