"""`DjangoTask` (Celery's `celery.contrib.django.task`): the task class of apps configured for Django.

A task sent from inside a database transaction can run before the transaction commits, and then not see the
rows it was sent about (or run about rows a rollback removed). `delay_on_commit` and `apply_async_on_commit`
send it from Django's `transaction.on_commit` instead: at once outside a transaction, after the commit inside
one, never after a rollback.
"""

from __future__ import annotations

import functools
from typing import Any

from fastq.task import Task

__all__ = ['DjangoTask']


class DjangoTask(Task):  # type: ignore[type-arg]
    def delay_on_commit(self, *args: Any, **kwargs: Any) -> None:
        """`delay(*args, **kwargs)` once the current transaction commits (Celery 5.4's)."""
        from django.db import transaction

        transaction.on_commit(functools.partial(self.delay, *args, **kwargs))

    def apply_async_on_commit(self, *args: Any, **kwargs: Any) -> None:
        """`apply_async(*args, **kwargs)` once the current transaction commits (Celery 5.4's)."""
        from django.db import transaction

        transaction.on_commit(functools.partial(self.apply_async, *args, **kwargs))
