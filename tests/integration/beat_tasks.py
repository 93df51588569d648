"""An app with a beat schedule, for the beat tests (`fastq -A beat_tasks beat`, `fastq -A beat_tasks worker -B`).

Broker and backend come from the environment (FASTQ_BROKER_URL / FASTQ_RESULT_BACKEND). Each run appends the
run key beat put in its message (`fastq_beat_run`) to $BEAT_RECORD, so the tests count what actually ran.
"""

from __future__ import annotations

import os

from fastq import Fastq, signals

app = Fastq('beat_tasks')
app.conf.beat_schedule = {'every-second': {'task': 'beat_tasks.record', 'schedule': 1.0}}


@signals.beat_init.connect
def said_when_ready(sender: object = None, **kwargs: object) -> None:
    print('beat_init: the scheduler is ready')  # (beat puts what is printed into its log, as Celery's)


@app.task(bind=True, ignore_result=True)
def record(self: object) -> None:
    run = (self.request.all_headers or {}).get('fastq_beat_run')  # type: ignore[attr-defined]
    with open(os.environ['BEAT_RECORD'], 'a') as f:
        f.write(f'{run} {os.getpid()}\n')
        f.flush()
        os.fsync(f.fileno())
