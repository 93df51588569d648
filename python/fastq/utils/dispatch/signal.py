"""Celery's `celery.utils.dispatch.signal` path: the same `Signal` as `fastq.utils.dispatch` and fastq.signals."""

from __future__ import annotations

from fastq.signals import Signal

__all__ = ['Signal']
