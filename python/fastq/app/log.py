"""`celery.app.log`'s `TaskFormatter`: a formatter for handlers a program sets up itself, as Celery's logging
docs do in an `after_setup_task_logger` receiver, whose records carry the running task's id and name.

The worker's own handlers do not need it (they format task records with `worker_task_log_format`).
"""

from __future__ import annotations

import logging
from typing import Any

__all__ = ['ColorFormatter', 'TaskFormatter']

# Celery's level colours (`celery.utils.term`): bold, and reset at the end of the line.
_COLOR_SEQ = '\033[1;%dm'
_RESET_SEQ = '\033[0m'
_COLORS = {'DEBUG': 34, 'WARNING': 33, 'ERROR': 31, 'CRITICAL': 35}


class ColorFormatter(logging.Formatter):
    """Celery's `celery.utils.log.ColorFormatter`: the whole record in its level's colour when `use_color`."""

    def __init__(self, fmt: str | None = None, use_color: bool = True, datefmt: str | None = None) -> None:
        super().__init__(fmt, datefmt)
        self.use_color = use_color

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        color = _COLORS.get(record.levelname)
        if color is not None and self.use_color:
            return f'{_COLOR_SEQ % color}{text}{_RESET_SEQ}'
        return text


class TaskFormatter(ColorFormatter):
    """Adds `task_id` and `task_name` to each record (`???` outside a task), for formats that show them."""

    def format(self, record: logging.LogRecord) -> str:
        from fastq._state import get_current_task

        task: Any = get_current_task()
        request = getattr(task, 'request', None) if task is not None else None
        if request is not None and getattr(request, 'id', None) is not None:
            record.__dict__.update(task_id=request.id, task_name=task.name)
        else:
            record.__dict__.setdefault('task_name', '???')
            record.__dict__.setdefault('task_id', '???')
        return super().format(record)
