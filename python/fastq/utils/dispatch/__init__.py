"""Celery's `celery.utils.dispatch` path for the signal class: `from fastq.utils.dispatch import Signal` makes
a custom signal as `from celery.utils.dispatch import Signal` does (the class is fastq.signals')."""

from __future__ import annotations

from fastq.signals import Signal

__all__ = ['Signal']
