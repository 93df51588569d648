"""django-celery-results' result backends (`django-db`, `django-cache`), on its tables and Celery's cache keys.

A Django project that ran Celery with django-celery-results switches its workers to fastq and keeps its
results where they were: `django-db` (database.py) writes the rows django-celery-results writes, in its
tables, so the Django admin, Celery processes and fastq processes all read them; `django-cache` (cache.py)
stores Celery's key-value documents in Django's cache framework. connections.py is how both use Django's
connections from a worker's threads.
"""
