"""Small helpers shared by the client and the worker."""

import uuid as _uuid

__all__ = ['uuid']


def uuid() -> str:
    """A new task id (Celery's `celery.utils.uuid`, a random UUID4 as text)."""
    return str(_uuid.uuid4())
