"""Exceptions stored in results are read back as their own class on both sides: Celery's and fastq's.

fastq stores its exceptions under the module their Celery namesakes live in (`exc_module`: celery.exceptions,
billiard.exceptions, kombu.exceptions), so a Celery client's `except celery.exceptions.TimeLimitExceeded`
catches what a fastq worker stored, and fastq reads either back as its own class.
"""

from __future__ import annotations

import pytest

from fastq import Fastq
from fastq import exceptions as fx

celery = pytest.importorskip('celery')

CASES = [
    (fx.TimeLimitExceeded(3), 'billiard.exceptions'),
    (fx.SoftTimeLimitExceeded(), 'billiard.exceptions'),
    (fx.WorkerLostError('Worker exited prematurely: signal 9 (SIGKILL).'), 'billiard.exceptions'),
    (fx.TaskRevokedError('revoked'), 'celery.exceptions'),
    (fx.Retry('cancelled by Celery'), 'celery.exceptions'),
    (fx.MaxRetriesExceededError('too many'), 'celery.exceptions'),
    (fx.ChordError('Dependency x raised ValueError()'), 'celery.exceptions'),
    (fx.ContentDisallowed('refused'), 'kombu.exceptions'),
]


@pytest.fixture
def backends() -> tuple[object, object]:
    from celery import Celery

    capp = Celery('peer', backend='cache+memory://')
    return Fastq('stored', broker='memory://', backend='cache+memory://').backend, capp.backend


@pytest.mark.parametrize(('exc', 'module'), CASES, ids=[type(e).__name__ for e, _ in CASES])
def test_each_side_reads_the_others_exception_as_its_own_class(
    backends: tuple[object, object], exc: BaseException, module: str
) -> None:
    import importlib

    ours, theirs = backends
    stored = ours.prepare_exception(exc)  # type: ignore[attr-defined]
    assert stored['exc_module'] == module
    celery_cls = getattr(importlib.import_module(module), type(exc).__name__)
    seen_by_celery = theirs.exception_to_python(stored)  # type: ignore[attr-defined]
    assert type(seen_by_celery) is celery_cls
    by_celery = theirs.prepare_exception(celery_cls(*exc.args))  # type: ignore[attr-defined]
    assert by_celery['exc_module'] == module
    for document in (stored, by_celery):
        back = ours.exception_to_python(document)  # type: ignore[attr-defined]
        assert type(back) is type(exc)
        if not isinstance(exc, fx.Retry):  # (a Retry's args nest once more each way, as Celery's do)
            assert back.args == exc.args


def test_other_exceptions_keep_their_module(backends: tuple[object, object]) -> None:
    ours, _ = backends
    stored = ours.prepare_exception(ValueError('x'))  # type: ignore[attr-defined]
    assert stored['exc_module'] == 'builtins'
    assert type(ours.exception_to_python(stored)) is ValueError  # type: ignore[attr-defined]
