"""What `fastq events` prints: `--dump` writes each event as `celery events --dump` does (same words, same
layout), and the default view redraws a summary of the workers and the latest tasks every `--freq` seconds."""

from __future__ import annotations

import sys
import time
from collections import OrderedDict
from datetime import UTC, datetime
from typing import IO, Any

from fastq.events.state import State

__all__ = ['Dumper', 'LiveView', 'humanize_type']

#: Celery's words for worker events in the dump.
HUMAN_TYPES = {'worker-offline': 'shutdown', 'worker-online': 'started', 'worker-heartbeat': 'heartbeat'}
#: Task descriptions remembered for events that only carry the id.
TASK_NAMES_KEPT = 0xFFF


def humanize_type(type: str) -> str:
    return HUMAN_TYPES.get(type.lower()) or type.lower().replace('-', ' ')


class Dumper:
    """Prints events one a line: `<hostname> [<utc time>] <what>: <task> <fields>`."""

    def __init__(self, out: IO[str] | None = None) -> None:
        self.out = out if out is not None else sys.stdout
        self.task_names: OrderedDict[str, str] = OrderedDict()

    def say(self, text: str) -> None:
        print(text, file=self.out, flush=True)

    def on_event(self, event: dict[str, Any]) -> None:
        event = dict(event)
        timestamp = datetime.fromtimestamp(float(event.pop('timestamp', time.time())), UTC)
        type = str(event.pop('type', '')).lower()
        hostname = event.pop('hostname', '?')
        if type.startswith('task-'):
            uuid = str(event.pop('uuid', ''))
            if type in ('task-received', 'task-sent'):
                task = f'{event.pop("name", None)}({uuid}) args={event.pop("args", None)} kwargs={event.pop("kwargs", None)}'
                self.task_names[uuid] = task
                while len(self.task_names) > TASK_NAMES_KEPT:
                    self.task_names.popitem(last=False)
            else:
                task = self.task_names.get(uuid, '')
            fields = ', '.join(f'{key}={event[key]}' for key in sorted(event))
            sep = ':' if fields else ''
            self.say(f'{hostname} [{timestamp}] {humanize_type(type)}{sep} {task} {fields}')
            return
        fields = ', '.join(f'{key}={event[key]}' for key in sorted(event))
        sep = ':' if fields else ''
        self.say(f'{hostname} [{timestamp}] {humanize_type(type)}{sep} {fields}')


class LiveView:
    """A text summary of the fleet, redrawn in place on a terminal (appended otherwise)."""

    def __init__(self, state: State, out: IO[str] | None = None, tasks: int = 20, title: str = '') -> None:
        self.state = state
        self.out = out if out is not None else sys.stdout
        self.tasks = tasks
        self.title = title

    def render(self) -> str:
        state = self.state
        workers = list(state.workers.values())
        online = sum(1 for w in workers if w.alive)
        lines = [f'fastq events: {self.title}  ({state.event_count} events; Ctrl-C to quit)', '']
        lines.append(f'Workers: {online} online, {len(workers) - online} offline')
        for w in workers:
            load = ' '.join(f'{x:.2f}' for x in (w.loadavg or ()))
            lines.append(
                f'  {w.hostname:<32} {w.status_string:<8} active {w.active or 0:<5} '
                f'processed {w.processed or 0:<8} load {load}'
            )
        lines += ['', f'{"UUID":<36}  {"TASK":<32} {"STATE":<9} {"WORKER":<24} RUNTIME']
        for uuid, task in state.tasks_by_time(limit=self.tasks):
            runtime = f'{task.runtime:.4f}s' if isinstance(task.runtime, int | float) else ''
            worker = task.worker.hostname if task.worker is not None else ''
            lines.append(f'{uuid:<36}  {str(task.name or "?"):<32} {str(task.state):<9} {worker:<24} {runtime}')
        return '\n'.join(lines)

    def draw(self) -> None:
        screen = self.render()
        if self.out.isatty():
            screen = '\x1b[H\x1b[2J' + screen  # home, clear
        print(screen, file=self.out, flush=True)
