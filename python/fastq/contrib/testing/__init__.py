"""Testing helpers with Celery's names: `TestApp` (app.py), `start_worker` (worker.py), the `celery.ping` task
(tasks.py), message and context mocks (mocks.py), the integration-test `Manager` (manager.py). The pytest
fixtures built on them are in `fastq.contrib.pytest`."""
