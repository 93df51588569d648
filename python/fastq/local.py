"""`celery.local`'s names, where code ported from Celery imports them (`from fastq.local import Proxy`)."""

from importlib import import_module
from types import ModuleType

from fastq.utils.local import PromiseProxy, Proxy, maybe_evaluate

__all__ = ['PromiseProxy', 'Proxy', 'maybe_evaluate', 'try_import']


def try_import(module: str, default: ModuleType | None = None) -> ModuleType | None:
    """The module, or `default` when it cannot be imported (Celery's)."""
    try:
        return import_module(module)
    except ImportError:
        return default
