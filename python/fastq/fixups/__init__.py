"""Adjustments an app makes to fit the framework it runs in, as Celery's `celery.fixups` (Django's)."""
