"""`ScheduleEntry`: one periodic task of `beat_schedule`, in Celery's dict format, and what it last did.

beat_schedule = {
    'add-every-30-seconds': {
        'task': 'tasks.add',
        'schedule': 30.0,                        # seconds, a timedelta, crontab(...) or solar(...)
        'args': (16, 16),
        'kwargs': {},
        'options': {'queue': 'periodic', 'expires': 25, 'priority': 5},  # apply_async options
        'relative': False,                       # snap interval runs to the clock
    },
}
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import datetime
from typing import TYPE_CHECKING, Any

from fastq.exceptions import ImproperlyConfigured
from fastq.schedules import BaseSchedule, maybe_schedule, schedstate

if TYPE_CHECKING:
    from fastq.app import Fastq

__all__ = ['BeatLazyFunc', 'ScheduleEntry', 'entries_from_config']

_FIELDS = {'task', 'schedule', 'args', 'kwargs', 'options', 'relative', 'last_run_at', 'total_run_count'}
#: Keys Celery's beat overrides with its own (`Entry(**dict(spec, name=key, app=app))`): accepted, and the
#: dict's key names the entry, as there.
_OVERRIDDEN = {'name', 'app'}


class BeatLazyFunc:
    """An argument computed when the task is sent, not when the schedule is read (Celery's name):
    `'kwargs': {'when': BeatLazyFunc(datetime.now)}`."""

    def __init__(self, func: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
        self._func = func
        self._func_params: dict[str, Any] = {'args': args, 'kwargs': kwargs}

    def __call__(self) -> Any:
        return self.delay()

    def delay(self) -> Any:
        return self._func(*self._func_params['args'], **self._func_params['kwargs'])


class ScheduleEntry:
    """A named periodic task: what to send (`task`, `args`, `kwargs`, `options`), when (`schedule`), and
    when it was last sent (`last_run_at`, `total_run_count`, kept in the schedule file across restarts)."""

    def __init__(
        self,
        name: str,
        task: str,
        schedule: float | BaseSchedule | Any,
        args: Any = (),
        kwargs: Mapping[str, Any] | None = None,
        options: Mapping[str, Any] | None = None,
        relative: bool = False,
        last_run_at: datetime | None = None,
        total_run_count: int = 0,
        app: Fastq | None = None,
    ) -> None:
        self.app = app
        self.name = name
        self.task = task
        self.args = tuple(args or ())
        self.kwargs = dict(kwargs or {})
        self.options = dict(options or {})
        resolved = maybe_schedule(schedule, relative, app=app)
        if resolved is None:
            raise ImproperlyConfigured(f'beat_schedule[{name!r}]: no schedule')
        self.schedule: BaseSchedule = resolved
        self.last_run_at = last_run_at or self.default_now()
        self.total_run_count = total_run_count

    def default_now(self) -> datetime:
        return self.schedule.now()

    def is_due(self) -> schedstate:
        return self.schedule.is_due(self.last_run_at)

    def evaluated_args(self) -> tuple[tuple[Any, ...], dict[str, Any]]:
        """Arguments as sent: `BeatLazyFunc` values are called now."""
        args = tuple(a() if isinstance(a, BeatLazyFunc) else a for a in self.args)
        kwargs = {k: v() if isinstance(v, BeatLazyFunc) else v for k, v in self.kwargs.items()}
        return args, kwargs

    def editable_fields_equal(self, other: ScheduleEntry) -> bool:
        return all(getattr(self, f) == getattr(other, f) for f in ('task', 'args', 'kwargs', 'options', 'schedule'))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ScheduleEntry) and self.editable_fields_equal(other)

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        call = ', '.join([*(repr(a) for a in self.args), *(f'{k}={v!r}' for k, v in self.kwargs.items())])
        return f'<ScheduleEntry: {self.name} {self.task}({call}) {self.schedule!r}>'


def entries_from_config(app: Fastq, schedule: Mapping[str, Any]) -> dict[str, ScheduleEntry]:
    """`beat_schedule` as entries; a malformed entry raises ImproperlyConfigured naming it."""
    entries = {}
    for name, spec in schedule.items():
        if isinstance(spec, ScheduleEntry):
            spec.app = app
            spec.schedule.app = app
            entries[name] = spec
            continue
        if not isinstance(spec, Mapping):
            raise ImproperlyConfigured(f'beat_schedule[{name!r}]: expected a dict with "task" and "schedule"')
        unknown = set(spec) - _FIELDS - _OVERRIDDEN
        if unknown:
            raise ImproperlyConfigured(
                f'beat_schedule[{name!r}]: unknown key(s) {", ".join(sorted(unknown))} '
                f'(known: {", ".join(sorted(_FIELDS))})'
            )
        for required in ('task', 'schedule'):
            if spec.get(required) is None:
                raise ImproperlyConfigured(f'beat_schedule[{name!r}]: {required!r} is required')
        try:
            fields = {k: v for k, v in spec.items() if k not in _OVERRIDDEN}
            entries[name] = ScheduleEntry(name=name, app=app, **fields)
        except (TypeError, ValueError) as exc:
            raise ImproperlyConfigured(f'beat_schedule[{name!r}]: {exc}') from exc
    return entries
