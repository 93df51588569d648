"""Fixtures shared by every test: fresh apps on the in-memory and SQLite brokers."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from fastq import Fastq

# Tests must not pick up a developer's environment overrides.
for _var in [v for v in os.environ if v.startswith('FASTQ_') or v in ('CELERY_BROKER_URL', 'CELERY_RESULT_BACKEND')]:
    del os.environ[_var]


@pytest.fixture(autouse=True)
def _forget_shared_tasks() -> Iterator[None]:
    """Tasks a test defines with `@app.task` are shared (Celery's default): forget them after the test, as
    Celery's own test setup restores its finalize callbacks, so the apps of later tests do not register them."""
    from fastq import shared

    saved = (list(shared._shared), list(shared._on_finalize))
    yield
    shared._shared[:], shared._on_finalize[:] = saved


@pytest.fixture
def memory_app() -> Iterator[Fastq]:
    app = Fastq('t', broker='memory://', backend='memory://', set_as_current=False)
    yield app
    app.close()


@pytest.fixture
def sqlite_urls(tmp_path: Path) -> tuple[str, str]:
    return f'sqlite:///{tmp_path}/broker.sqlite3', f'sqlite:///{tmp_path}/results.sqlite3'


@pytest.fixture
def sqlite_app(sqlite_urls: tuple[str, str]) -> Iterator[Fastq]:
    broker, backend = sqlite_urls
    app = Fastq('t', broker=broker, backend=backend, set_as_current=False)
    yield app
    app.close()


@pytest.fixture(params=['memory', 'sqlite', 'redis'])
def any_app(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Fastq]:
    """The same test body against each broker/backend pair (Redis: a real server of the session)."""
    if request.param == 'memory':
        app = Fastq('t', broker='memory://', backend='memory://', set_as_current=False)
    elif request.param == 'redis':
        url = request.getfixturevalue('redis_url')
        app = Fastq('t', broker=url, backend=_redis_backend_or_memory(url), set_as_current=False)
    else:
        app = Fastq(
            't',
            broker=f'sqlite:///{tmp_path}/broker.sqlite3',
            backend=f'sqlite:///{tmp_path}/results.sqlite3',
            set_as_current=False,
        )
    yield app
    app.close()


def _redis_backend_or_memory(url: str) -> str:
    from fastq.backends import BACKENDS

    return url if 'redis' in BACKENDS else 'memory://'


@pytest.fixture(scope='session')
def redis_server() -> Iterator[object]:
    """One real redis-server for the session (tests isolate by database number)."""
    from tests.servers import RedisServer

    server = RedisServer()
    yield server
    server.close()


@pytest.fixture
def redis_url(redis_server: object) -> str:
    """A clean Redis database of this test's own."""
    from tests.servers import DatabasePool, RedisServer

    assert isinstance(redis_server, RedisServer)
    pool = getattr(redis_server, '_pool', None)
    if pool is None:
        pool = DatabasePool(redis_server)
        redis_server._pool = pool  # type: ignore[attr-defined]
    return redis_server.url(pool.take())


@pytest.fixture(scope='session')
def rabbit_server() -> Iterator[object]:
    """One real RabbitMQ node for the session, started on first use (tests isolate by vhost)."""
    from tests.servers import RabbitServer

    server = RabbitServer()
    yield server
    server.close()


@pytest.fixture
def amqp_url(rabbit_server: object) -> str:
    """A fresh vhost of this test's own on the session's RabbitMQ node."""
    from tests.servers import RabbitServer

    assert isinstance(rabbit_server, RabbitServer)
    return rabbit_server.url(rabbit_server.vhost())


@pytest.fixture(scope='session')
def postgres_server() -> Iterator[object]:
    """One real PostgreSQL cluster for the session, started on first use (tests isolate by database)."""
    from tests.servers import PostgresServer

    server = PostgresServer()
    yield server
    server.close()


@pytest.fixture
def postgres_url(postgres_server: object) -> str:
    """A fresh database of this test's own on the session's PostgreSQL (`postgresql://` SQLAlchemy URL)."""
    from tests.servers import PostgresServer

    assert isinstance(postgres_server, PostgresServer)
    return postgres_server.url(postgres_server.database())


@pytest.fixture(scope='session')
def memcached_server() -> Iterator[object]:
    """One real memcached for the session, started on first use (tests keep apart by their own ids)."""
    from tests.servers import MemcachedServer

    server = MemcachedServer()
    yield server
    server.close()


@pytest.fixture
def memcached_url(memcached_server: object) -> str:
    """The session's memcached as a result backend URL, emptied for this test (`cache+memcached://...`)."""
    from tests.servers import MemcachedServer

    assert isinstance(memcached_server, MemcachedServer)
    memcached_server.flush()
    return memcached_server.url()


@pytest.fixture(scope='session')
def sqs_server() -> Iterator[object]:
    """moto's SQS server for the session, started on first use (tests keep apart by queue-name prefix). The
    dummy AWS_* variables stay set for the session, so no boto3 client here or in a worker reaches AWS."""
    pytest.importorskip('boto3')
    pytest.importorskip('moto.server')
    from tests.servers import AWS_TEST_ENV, SQSServer

    saved = {name: os.environ.get(name) for name in AWS_TEST_ENV}
    os.environ.update(AWS_TEST_ENV)
    server = SQSServer()
    yield server
    server.close()
    for name, value in saved.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


@pytest.fixture
def sqs_options(sqs_server: object) -> dict[str, object]:
    """broker_transport_options for this test: a queue-name prefix of its own, quick polls and redelivery."""
    from tests.servers import SQSServer

    assert isinstance(sqs_server, SQSServer)
    return {
        'queue_name_prefix': sqs_server.prefix(),
        'region': 'us-east-1',
        'wait_time_seconds': 1,
        'polling_interval': 0,
        'visibility_timeout': 30,
    }


@pytest.fixture
def sqs_url(sqs_server: object) -> str:
    from tests.servers import SQSServer

    assert isinstance(sqs_server, SQSServer)
    return sqs_server.url()
