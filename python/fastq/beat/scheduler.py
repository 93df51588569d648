"""`Scheduler`: decides which entries are due, claims each run, and sends it.

Catch-up policy (Celery's): a run missed while no beat was running is sent once, as soon as a beat is back,
not once per missed interval; the schedule then goes on from that run. An entry every 10 minutes after two
hours of downtime runs once at restart and then every 10 minutes; a daily crontab missed for a week runs once.
With `beat_cron_starting_deadline` set, a crontab run missed by more than that many seconds is skipped
instead. A fresh entry (never run) first runs one interval after beat starts, or at the crontab's next time.

Each run is claimed in the broker before it is sent, under `<entry>@<scheduled time>`: the interval-sized
window holding the run (intervals), the latest crontab or solar time at or before it. Two schedulers that
both find the same run due agree on that key, and only the one whose claim succeeds sends; the message
carries it in the `fastq_beat_run` header (next to Celery's `celery_beat_task`). The last run time is written
to the schedule file after the claim and before the send, so a restart never sends a run again.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from fastq.beat.entry import ScheduleEntry, entries_from_config
from fastq.schedules import humanize_seconds, schedule

if TYPE_CHECKING:
    from fastq.app import Fastq
    from fastq.beat.store import ScheduleStore

__all__ = ['DEFAULT_MAX_INTERVAL', 'RUN_HEADER', 'Scheduler', 'SchedulingError']

logger = logging.getLogger('celery.beat')

DEFAULT_MAX_INTERVAL = 300.0  # Celery's: the longest sleep between two looks at the schedule
CLAIM_MARGIN = 300.0  # a claim outlives the run's turn by this much (clock skew between hosts)
RETRY_DELAY = 5.0  # seconds before an entry that could not be claimed (broker down) is tried again
RUN_HEADER = 'fastq_beat_run'


class SchedulingError(Exception):
    """A due task could not be sent (Celery's `celery.beat.SchedulingError`); logged, and beat goes on."""


class Scheduler:
    """The entries of `beat_schedule` (plus `app.add_periodic_task`), ticked by the beat service."""

    def __init__(
        self,
        app: Fastq,
        store: ScheduleStore | None = None,
        max_interval: float | None = None,
        namespace: str | None = None,
    ) -> None:
        self.app = app
        self.store = store
        self.max_interval = float(max_interval or app.conf.beat_max_loop_interval or DEFAULT_MAX_INTERVAL)
        self.namespace = namespace or app.main or 'default'
        self.entries: dict[str, ScheduleEntry] = {}
        self._retry_at: dict[str, float] = {}

    @property
    def schedule(self) -> Mapping[str, ScheduleEntry]:
        return self.entries

    def setup(self) -> None:
        """Read `beat_schedule` and each entry's last run from the schedule file (again on becoming leader,
        since another beat may have sent runs meanwhile from the same file)."""
        entries = entries_from_config(self.app, self.app.conf.beat_schedule or {})
        entries.update(self._default_entries(entries))
        if self.store is not None:
            stored = self.store.load()
            for name, entry in entries.items():
                if name in stored:
                    entry.last_run_at, entry.total_run_count = stored[name]
            self.store.keep_only(set(entries))
        self.entries = entries
        self._retry_at.clear()
        logger.debug('Current schedule:\n%s', '\n'.join(repr(entry) for entry in entries.values()))

    def _default_entries(self, entries: Mapping[str, ScheduleEntry]) -> dict[str, ScheduleEntry]:
        """Celery's: with `result_expires` and a backend whose results do not expire by themselves (the
        database backend), `celery.backend_cleanup` every day at 4:00, unless the schedule has it."""
        from fastq.backends.base import DisabledBackend
        from fastq.schedules import crontab

        if 'celery.backend_cleanup' in entries or not self.app.conf.result_expires:
            return {}
        backend = self.app.backend
        if backend.supports_autoexpire or isinstance(backend, DisabledBackend):
            return {}
        entry = ScheduleEntry(
            name='celery.backend_cleanup',
            app=self.app,
            task='celery.backend_cleanup',
            schedule=crontab('0', '4', '*'),
            options={'expires': 12 * 3600},
        )
        return {entry.name: entry}

    def tick(self) -> float:
        """Send every due entry; returns the seconds until the schedule should be looked at again."""
        next_check = self.max_interval
        for entry in list(self.entries.values()):
            wait = self._waiting(entry.name)
            if wait:
                next_check = min(next_check, wait)
                continue
            try:
                due, next_s = entry.is_due()
            except Exception:
                logger.error(
                    'beat: Cannot calculate the next run of %r, trying again in %s.',
                    entry.name,
                    humanize_seconds(self.max_interval),
                    exc_info=True,
                )
                self._retry_at[entry.name] = time.monotonic() + self.max_interval
                continue
            if due and not self.apply_entry(entry):
                next_s = RETRY_DELAY
            next_check = min(next_check, next_s)
        return max(next_check, 0.0)

    def _waiting(self, name: str) -> float:
        retry_at = self._retry_at.get(name)
        if retry_at is None:
            return 0.0
        left = retry_at - time.monotonic()
        if left > 0:
            return left
        del self._retry_at[name]
        return 0.0

    def run_key(self, entry: ScheduleEntry, now: datetime) -> tuple[str, float]:
        """`(<entry>@<scheduled time in UTC>, seconds to keep the claim)` for the run due at `now`."""
        sched = entry.schedule
        last_due_at = getattr(sched, 'last_due_at', None)
        due_at = last_due_at(now) if last_due_at is not None else None
        if due_at is None:  # a schedule of another kind: its nominal time after the last run
            due_at = now + sched.remaining_estimate(entry.last_run_at)
        if not isinstance(sched, schedule):  # computed times (solar): to the minute, so every beat agrees
            due_at = (due_at.astimezone(UTC) + timedelta(seconds=30)).replace(second=0, microsecond=0)
        ttl = max(sched.remaining_estimate(now).total_seconds(), 0.0) + CLAIM_MARGIN
        return f'{entry.name}@{due_at.astimezone(UTC).isoformat()}', ttl

    def apply_entry(self, entry: ScheduleEntry) -> bool:
        """Claim the due run and send it unless another beat has; False if the broker could not be asked."""
        now = entry.default_now()
        run, ttl = self.run_key(entry, now)
        try:
            claimed = self.app.broker.claim(f'beat.{self.namespace}/{run}', ttl)
        except Exception as exc:
            logger.error(
                'beat: Cannot claim %s (%s) in the broker: %s; trying again in %s.',
                entry.name,
                entry.task,
                exc,
                humanize_seconds(RETRY_DELAY),
            )
            self._retry_at[entry.name] = time.monotonic() + RETRY_DELAY
            return False
        entry.last_run_at = now
        entry.total_run_count += int(claimed)
        self._save(entry)
        if not claimed:
            logger.info(
                'Scheduler: Skipping due task %s (%s): run %s was sent by another beat', entry.name, entry.task, run
            )
            return True
        logger.info('Scheduler: Sending due task %s (%s)', entry.name, entry.task)
        try:
            result = self.send(entry, run)
        except Exception as exc:
            try:
                raise SchedulingError(f"Couldn't apply scheduled task {entry.name}: {exc}") from exc
            except SchedulingError as failed:
                logger.error('Message Error: %s', failed, exc_info=True)
        else:
            logger.debug('%s sent. id->%s', entry.task, getattr(result, 'id', None))
        return True

    def _save(self, entry: ScheduleEntry) -> None:
        if self.store is None:
            return
        try:
            self.store.save(entry.name, entry.last_run_at, entry.total_run_count)
        except Exception as exc:
            logger.error('beat: Cannot write the schedule file %s: %s', self.store.path, exc)

    def send(self, entry: ScheduleEntry, run: str) -> Any:
        """Send through the task's `apply_async` when it is registered here (its routing and options apply),
        else `app.send_task`; Celery's header marks it as sent by beat, and fastq's names the run."""
        args, kwargs = entry.evaluated_args()
        options = dict(entry.options)
        headers = dict(options.pop('headers', None) or {})
        headers['celery_beat_task'] = True
        headers[RUN_HEADER] = run
        task = self.app.tasks.get(entry.task)
        listed = list(args)  # (as Celery's beat passes them: the message's argsrepr shows a list)
        if task is not None:
            return task.apply_async(listed, kwargs, headers=headers, **options)
        return self.app.send_task(entry.task, listed, kwargs, headers=headers, **options)

    def standby(self) -> None:
        """Another beat leads now: nothing to let go of (each run's claim and the schedule file already say
        what this one sent)."""

    def close(self) -> None:
        if self.store is not None:
            self.store.close()

    @property
    def label(self) -> str:
        return f'{type(self).__module__}.{type(self).__qualname__}'

    @property
    def info(self) -> str:
        return f'    . db -> {self.store.filename}' if self.store is not None else ''
