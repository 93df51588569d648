"""Logging as Celery's worker does it: its formats, `get_task_logger`, and task id/name in task log records."""

from __future__ import annotations

import io
import logging
import os
import sys
import threading
from contextvars import ContextVar
from typing import Any

__all__ = ['Logging', 'get_logger', 'get_task_logger', 'setup_logging', 'task_context']

# (task id, task name) of the task running in this thread or asyncio task, for task log records.
_task_ctx: ContextVar[tuple[str, str] | None] = ContextVar('fastq.task_log_context', default=None)
_CONFIGURED = False
#: The pool's logger, billiard's name for it (Celery keeps it at ERROR unless the MP_LOG variable is set).
MP_LOGGER = 'multiprocessing'
#: (the `--logfile` template, the node name, its handler) when the template names a file per process (`%i`,
#: `%I`): each pool child then writes to a file of its own, as Celery's do (`process_logfile`).
_PER_PROCESS: tuple[str, str, logging.FileHandler] | None = None


def get_logger(name: str) -> logging.Logger:
    return logging.getLogger(name)


def get_task_logger(name: str) -> logging.Logger:
    """A logger whose records carry the running task's id and name (`worker_task_log_format` shows them)."""
    logger = logging.getLogger(name)
    if not any(isinstance(f, _TaskFilter) for f in logger.filters):
        logger.addFilter(_TaskFilter())
    if logger.parent is logging.root or logger.parent is None:
        logger.parent = logging.getLogger('celery.task')
    return logger


class _TaskFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        current = _task_ctx.get()
        record.task_id, record.task_name = current if current is not None else ('???', '???')
        record.__dict__.setdefault('_fastq_task_record', True)
        return True


_TASK_FILTER = _TaskFilter()


def task_context(task_id: str | None, task_name: str | None) -> None:
    """Set (or clear, with None) the task whose id/name task log records carry; called by the worker."""
    _task_ctx.set(None if task_id is None else (task_id, task_name or '???'))


class _WorkerFormatter(logging.Formatter):
    """Formats task records with `worker_task_log_format` and all others with `worker_log_format`."""

    def __init__(
        self, fmt: str, task_fmt: str, datefmt: str | None, color: bool, task_datefmt: str | None = None
    ) -> None:
        super().__init__(fmt, datefmt)
        self._task = logging.Formatter(task_fmt, task_datefmt or datefmt)
        self._color = color

    _COLORS = {logging.ERROR: '\033[31m', logging.CRITICAL: '\033[35m', logging.WARNING: '\033[33m'}

    def format(self, record: logging.LogRecord) -> str:
        if not record.__dict__.get('_fastq_task_record') and record.name.startswith('celery.task'):
            if record.name == 'celery.task' or record.name[11:12] == '.':  # a logger under celery.task, as
                _TASK_FILTER.filter(record)  # Celery's guide suggests, formats as a task logger's
        if record.__dict__.get('_fastq_task_record'):
            text = self._task.format(record)
        else:
            text = super().format(record)
        color = self._COLORS.get(record.levelno) if self._color else None
        return f'{color}{text}\033[0m' if color else text


def setup_logging(
    loglevel: int | str = logging.WARNING,
    logfile: str | None = None,
    fmt: str = '[%(asctime)s: %(levelname)s/%(processName)s] %(message)s',
    task_fmt: str = '[%(asctime)s: %(levelname)s/%(processName)s] %(task_name)s[%(task_id)s]: %(message)s',
    datefmt: str | None = None,
    colorize: bool | None = None,
    hijack_root: bool = True,
    nodename: str | None = None,
    task_datefmt: str | None = None,
) -> None:
    """Configure the root logger for a worker unless the `setup_logging` signal has a receiver that did it.

    With `nodename`, `logfile` is a template (`%n%I.log`, expanded as Celery's worker does: `node_format`).
    """
    global _CONFIGURED, _PER_PROCESS
    from fastq import signals
    from fastq.utils.nodenames import node_format

    level = logging.getLevelName(loglevel.upper()) if isinstance(loglevel, str) else loglevel
    template = logfile
    if logfile and nodename:
        logfile = node_format(logfile, nodename)
    # (Celery's `supports_color`: never into a file, else as asked, else when stderr is a terminal)
    use_color = False if logfile else colorize if colorize is not None else sys.stderr.isatty()
    if signals.setup_logging.receivers:
        signals.reraise_errors(
            signals.setup_logging.send(sender=None, loglevel=level, logfile=logfile, format=fmt, colorize=use_color)
        )
        _CONFIGURED = True
        return
    handler: logging.Handler
    if logfile:
        handler = logging.FileHandler(logfile)
        if template and nodename and '%i' in template.lower():
            _PER_PROCESS = (template, nodename, handler)
    else:
        handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_WorkerFormatter(fmt, task_fmt, datefmt, use_color, task_datefmt))
    root = logging.getLogger()
    if hijack_root:
        for old in list(root.handlers):
            root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    for name in ('celery', 'celery.task', 'fastq'):
        logging.getLogger(name).setLevel(logging.NOTSET)
    # The pool's own lines (billiard's 'multiprocessing' logger: a child recycled over its memory limit) show
    # only from ERROR up, as Celery configures that logger, unless MP_LOG is set
    logging.getLogger(MP_LOGGER).setLevel(level if os.environ.get('MP_LOG') else logging.ERROR)
    signals.after_setup_logger.send(
        sender=None, logger=root, loglevel=level, logfile=logfile, format=fmt, colorize=use_color
    )
    signals.after_setup_task_logger.send(
        sender=None,
        logger=logging.getLogger('celery.task'),
        loglevel=level,
        logfile=logfile,
        format=task_fmt,
        colorize=use_color,
    )
    _CONFIGURED = True


def setup_worker_logging(
    conf: Any, loglevel: int | str, logfile: str | None, nodename: str | None = None, redirect: bool = True
) -> None:
    """A worker's logging as Celery sets it up, from its settings: its formats, and with `redirect`
    (`worker_redirect_stdouts`, unless a `setup_logging` receiver took logging over) stdout and stderr into
    the log."""
    setup_logging(
        loglevel,
        logfile,
        fmt=conf.worker_log_format,
        task_fmt=conf.worker_task_log_format,
        datefmt=conf.worker_log_datefmt,
        colorize=False if logfile else conf.worker_log_color,
        hijack_root=conf.worker_hijack_root_logger,
        nodename=nodename,
        task_datefmt=conf.worker_task_log_datefmt,
    )
    if redirect:
        redirect_worker_stdouts(conf)


def redirect_worker_stdouts(conf: Any) -> None:
    """stdout and stderr into the worker's log (`worker_redirect_stdouts`, at `worker_redirect_stdouts_level`),
    unless a `setup_logging` receiver took logging over. `fastq worker` does it once its banner is out, as
    Celery's does: what is printed before (by `celeryd_init`/`celeryd_after_setup` receivers, bootsteps'
    `__init__`, `--purge`) stays plain text on the terminal."""
    from fastq import signals

    if conf.worker_redirect_stdouts and not signals.setup_logging.receivers:
        redirect_stdouts(conf.worker_redirect_stdouts_level)


def process_logfile(index: int) -> None:
    """In pool child `index`: log to the child's own file when the worker's `--logfile` names one per process
    (`%I`: `w1-1.log` beside the parent's `w1.log`), as Celery's children do; else keep the handlers inherited
    from the parent."""
    global _PER_PROCESS
    if _PER_PROCESS is None:
        return
    from fastq.utils.nodenames import node_format

    template, nodename, inherited = _PER_PROCESS
    path = os.path.abspath(node_format(template, nodename, index))
    if path == inherited.baseFilename:
        return
    handler = logging.FileHandler(path)
    handler.setFormatter(inherited.formatter)
    handler.setLevel(inherited.level)
    root = logging.getLogger()
    root.removeHandler(inherited)
    inherited.close()  # this process's copy of the parent's file descriptor
    root.addHandler(handler)
    _PER_PROCESS = (template, nodename, handler)


class LoggingProxy:
    """A file for `sys.stdout` and `sys.stderr` that writes each line to a logger, as Celery's worker does
    with `worker_redirect_stdouts`: what a task prints reaches the worker's log, also when it runs detached
    (its stdout is then /dev/null). The banner and other terminal output use `sys.__stdout__`."""

    mode = 'w'
    name = None
    encoding = 'utf-8'
    errors = 'strict'
    closed = False

    def __init__(self, logger: logging.Logger, level: int) -> None:
        self.logger = logger
        self.level = level
        self._pending = ''
        self._local = threading.local()

    def write(self, data: str) -> int:
        if getattr(self._local, 'busy', False):  # a handler that writes to stderr: not into the log again
            return 0
        text = self._pending + str(data)
        *lines, self._pending = text.split('\n')
        for line in lines:
            self._log(line)
        return len(data)

    def writelines(self, lines: Any) -> None:
        for line in lines:
            self.write(line)

    def flush(self) -> None:
        if self._pending:
            line, self._pending = self._pending, ''
            self._log(line)

    def _log(self, line: str) -> None:
        line = line.rstrip()
        if not line:
            return
        self._local.busy = True
        try:
            self.logger.log(self.level, '%s', line)
        finally:
            self._local.busy = False

    def isatty(self) -> bool:
        return False

    def fileno(self) -> int:
        raise io.UnsupportedOperation('fileno: stdout is redirected to the log (worker_redirect_stdouts)')

    def readable(self) -> bool:
        return False

    def writable(self) -> bool:
        return True


def redirect_stdouts(level: int | str = logging.WARNING, name: str = 'celery.redirected') -> None:
    """`sys.stdout` and `sys.stderr` to the logger `name` at `level` (Celery's `redirect_stdouts_to_logger`)."""
    if isinstance(level, str):
        level = logging.getLevelName(level.upper())
    logger = logging.getLogger(name)
    sys.stdout = LoggingProxy(logger, int(level))
    sys.stderr = LoggingProxy(logger, int(level))


def _level(level: int | str | None, default: int = logging.WARNING) -> int:
    if level is None or level == '':
        return default
    if isinstance(level, str):
        named = logging.getLevelName(level.upper())
        return named if isinstance(named, int) else int(level)
    return int(level)


class Logging:
    """`app.log` (Celery's `celery.app.log.Logging`): a script or a program embedding the app sets logging up
    as a worker does (`app.log.setup(loglevel='INFO')`), once per process; the worker's own setup counts."""

    def __init__(self, app: Any) -> None:
        conf = app.conf
        self.app = app
        self.loglevel = logging.WARNING
        self.format = conf.worker_log_format
        self.datefmt = conf.worker_log_datefmt
        self.task_format = conf.worker_task_log_format
        self.task_datefmt = conf.worker_task_log_datefmt
        self.colorize = conf.worker_log_color

    @property
    def already_setup(self) -> bool:
        return _CONFIGURED

    @already_setup.setter
    def already_setup(self, was_setup: bool) -> None:
        global _CONFIGURED
        _CONFIGURED = bool(was_setup)

    def setup(
        self,
        loglevel: int | str | None = None,
        logfile: str | None = None,
        redirect_stdouts: bool = False,
        redirect_level: int | str = 'WARNING',
        colorize: bool | None = None,
        hostname: str | None = None,
    ) -> bool:
        """Configure logging (unless done already), then with `redirect_stdouts` send stdout and stderr into
        it; True when a `setup_logging` receiver took logging over."""
        handled = self.setup_logging_subsystem(loglevel, logfile, colorize=colorize, hostname=hostname)
        if not handled and redirect_stdouts:
            self.redirect_stdouts(redirect_level)
        logging.captureWarnings(True)
        return handled

    def setup_logging_subsystem(
        self,
        loglevel: int | str | None = None,
        logfile: str | None = None,
        format: str | None = None,
        colorize: bool | None = None,
        hostname: str | None = None,
        datefmt: str | None = None,
        **kwargs: Any,
    ) -> bool:
        from fastq import signals

        if self.already_setup:
            return False
        setup_logging(
            _level(loglevel, self.loglevel),
            logfile,
            fmt=format or self.format,
            task_fmt=self.task_format,
            datefmt=self.datefmt if datefmt is None else datefmt,
            colorize=self.supports_color(colorize, logfile),
            hijack_root=bool(self.app.conf.worker_hijack_root_logger),
            nodename=hostname,
            task_datefmt=self.task_datefmt,
        )
        return bool(signals.setup_logging.receivers)

    def setup_task_loggers(
        self,
        loglevel: int | str | None = None,
        logfile: str | None = None,
        format: str | None = None,
        colorize: bool | None = None,
        propagate: bool = False,
        **kwargs: Any,
    ) -> logging.Logger:
        """The task logger (`celery.task`) at `loglevel`; its records reach the handlers `setup` made, which
        format them with `worker_task_log_format`."""
        logger = logging.getLogger('celery.task')
        logger.setLevel(_level(loglevel, self.loglevel))
        return logger

    def redirect_stdouts(self, loglevel: int | str | None = None, name: str = 'celery.redirected') -> None:
        redirect_stdouts(_level(loglevel), name)

    def redirect_stdouts_to_logger(
        self, logger: logging.Logger, loglevel: int | str | None = None, stdout: bool = True, stderr: bool = True
    ) -> LoggingProxy:
        proxy = LoggingProxy(logger, _level(loglevel))
        if stdout:
            sys.stdout = proxy
        if stderr:
            sys.stderr = proxy
        return proxy

    def supports_color(self, colorize: bool | None = None, logfile: str | None = None) -> bool:
        """Color only on a terminal and without a log file, unless asked for (`worker_log_color`)."""
        colorize = self.colorize if colorize is None else colorize
        if colorize or colorize is None:
            return logfile is None and sys.stderr.isatty()
        return bool(colorize)

    def get_default_logger(self, name: str = 'celery', **kwargs: Any) -> logging.Logger:
        return logging.getLogger(name)
