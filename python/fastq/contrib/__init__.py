"""Extras outside the core, named as Celery's `celery.contrib` (the testing helpers and pytest plugin)."""
