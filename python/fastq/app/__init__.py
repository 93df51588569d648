"""`Fastq` (alias `Celery`): the application, owner of settings, task registry, broker and result backend.

Everything is app-scoped, as in Celery: two apps in one process never share a broker or settings. With no
broker configured, the app uses SQLite files in the working directory, so `Fastq('tasks')` runs anywhere.
"""

from __future__ import annotations

import functools
import importlib
import logging
import os
import sys
import threading
import warnings
from collections import defaultdict
from collections.abc import Callable, Coroutine, Iterable, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any, Concatenate, Literal, ParamSpec, TypeVar, overload

from fastq import _state, signals
from fastq.config import OLD_NAMES, SETTINGS, Settings, check_mixed_names, setting_for_old_name
from fastq.exceptions import DuplicateTaskNameWarning, ImproperlyConfigured, InvalidTaskError, NotRegistered
from fastq.task import Task as BaseTask
from fastq.task import build_task_class
from fastq.utils.imports import module_names, module_or_symbol, symbol_by_name
from fastq.utils.nodenames import anon_nodename, oid_from
from fastq.utils.text import saferepr
from fastq.utils.time import get_timezone

if TYPE_CHECKING:
    from datetime import tzinfo

    from fastq.backends.base import Backend
    from fastq.brokers.base import Broker, Outgoing
    from fastq.control import Control
    from fastq.events import Events
    from fastq.result import AsyncResult, GroupResult, ResultSet
    from fastq.routing import Router
    from fastq.utils.log import Logging

__all__ = ['Celery', 'Fastq', 'app_or_default', 'shared_task']

W_DUPTASK = """\
Task name {0!r} is already registered to a different callable.

Existing: {1}
New:      {2}

{3}

Every task must have a unique name. Pass an explicit name= to the task \
decorator, or rename one of the callables.\
"""
W_DUPTASK_KEPT = 'The new callable was not registered; calls under this name reach the callable registered first.'
W_DUPTASK_REPLACED = 'The new callable replaced the existing one; calls under this name now reach the new callable.'


def _decorated_of(task: Any) -> Any:
    """The function `@app.task` was given for a task (None for a class-based task). (Read from the class:
    through the instance a function attribute would be a bound method, never the function itself.)"""
    found = type(task).__dict__.get('_decorated_fun')
    return found.__func__ if isinstance(found, staticmethod) else None


def _callable_of(task: Any) -> Any:
    """What a task runs: its decorated function, or its class for a class-based task."""
    return _decorated_of(task) or type(task)


def _qualname(obj: Any) -> str:
    """Celery's `qualname`: the qualified name, with the module only when that has no dot."""
    q = getattr(obj, '__qualname__', None) or type(obj).__qualname__
    return q if '.' in q else f'{obj.__module__}.{q}'


def _caller_stacklevel() -> int:
    """`warnings.warn`'s stacklevel for the first frame outside fastq (the user's decorator line)."""
    frame: Any = sys._getframe(1)
    level = 1
    while frame is not None and frame.f_globals.get('__name__', '').split('.')[0] == 'fastq':
        frame, level = frame.f_back, level + 1
    return level


# Celery's text, word for word: it tells the user what the variable is for and what to put in it.
_ERR_ENVVAR_NOT_SET = '''The environment variable {0!r} is not set,
and as such the configuration could not be loaded.

Please set this variable and make sure it points to
a valid configuration module.

Example:
    {0}="proj.celeryconfig"'''

logger = logging.getLogger('fastq.app')

P = ParamSpec('P')
R = TypeVar('R')


class TaskRegistry(dict[str, BaseTask[Any, Any]]):
    """Registered tasks by name; a missing name raises `NotRegistered` (a KeyError).

    Celery's built-in tasks (`celery.map`, `celery.chunks`, `celery.accumulate`, ...) are registered on
    first use, so an app that never starts a worker (a client, `task_always_eager` in tests) has them too.
    """

    def __init__(self, app: Fastq | None = None) -> None:
        super().__init__()
        self._app = app

    def __missing__(self, key: str) -> BaseTask[Any, Any]:
        app = self._app
        if app is not None and key.startswith('celery.') and 'celery.chord_unlock' not in self:
            from fastq.builtins import register_builtins

            register_builtins(app)
            if key in self:
                return self[key]
        raise NotRegistered(key)

    NotRegistered = NotRegistered

    def register(self, task: BaseTask[Any, Any] | type[BaseTask[Any, Any]]) -> None:
        """Celery's `app.tasks.register(task)`: add a task (a class is instantiated) under its own name, which
        it must have; bound to this registry's app when it has none yet."""
        if not task.name:
            cls = task if isinstance(task, type) else type(task)
            raise InvalidTaskError(f'Task class {cls.__name__!r} must specify .name attribute')
        instance = task() if isinstance(task, type) else task
        if self._app is not None and 'app' not in instance.__dict__:
            instance.bind(self._app)
        self[instance.name] = instance

    def unregister(self, name: str | BaseTask[Any, Any]) -> None:
        """Remove a task by name (or a task with that name); NotRegistered when there is none."""
        try:
            self.pop(getattr(name, 'name', name))  # type: ignore[arg-type]
        except KeyError:
            raise NotRegistered(name) from None

    def filter_types(self, type: str) -> dict[str, BaseTask[Any, Any]]:
        """The tasks whose `type` attribute is `type` ('regular' for a task without one), as Celery's."""
        return {name: task for name, task in self.items() if getattr(task, 'type', 'regular') == type}

    def regular(self) -> dict[str, BaseTask[Any, Any]]:
        """Every task but the periodic ones (the built-in `celery.*` tasks too, as in Celery)."""
        return self.filter_types('regular')

    def periodic(self) -> dict[str, BaseTask[Any, Any]]:
        return self.filter_types('periodic')


class _AppSignal:
    """`app.on_after_configure` / `app.on_after_finalize`: per-app signals (connect, send)."""

    def __init__(self, name: str) -> None:
        from fastq.signals import Signal

        self._signal = Signal(name=name)

    def connect(self, receiver: Callable[..., Any] | None = None, **kwargs: Any) -> Any:
        kwargs.setdefault('weak', False)
        return self._signal.connect(receiver, **kwargs)

    def send(self, sender: Any, **named: Any) -> list[tuple[Any, Any]]:
        return self._signal.send(sender, **named)


class _FinalizingTasks:
    """`app.tasks`: reading it finalizes the app first, as in Celery (the `include`/`imports` modules and
    shared tasks are registered, so `'proj.tasks.add' in app.tasks` answers for them too); with
    `autofinalize=False`, reading it before `app.finalize()` is an error. Once finalized, the registry is an
    ordinary attribute of the app: hot paths that read `app.tasks` per task pay nothing for this."""

    def __get__(self, app: Fastq | None, owner: type | None = None) -> Any:
        if app is None:
            return self
        if not app.finalized:
            app.finalize(auto=True)  # (refused with `autofinalize=False`)
        app.__dict__['tasks'] = app._tasks
        return app._tasks


class Fastq:
    """A fastq application. `Fastq('proj', broker='sqlite:///proj.db', include=['proj.tasks'])`."""

    Task: type[BaseTask[Any, Any]]
    tasks: TaskRegistry = _FinalizingTasks()  # type: ignore[assignment]

    def __init__(
        self,
        main: str | None = None,
        broker: str | None = None,
        backend: str | None = None,
        include: Sequence[str] | None = None,
        config_source: Any = None,
        set_as_current: bool = True,
        autofinalize: bool = True,
        namespace: str | None = None,
        task_cls: type[BaseTask[Any, Any]] | str | None = None,
        strict_typing: bool = True,
        config_source_silent: bool = False,
        **preconf: Any,
    ) -> None:
        self.main = main
        #: Whether tasks check their arguments when sent, unless a task says (`typing=`): Celery's.
        self.strict_typing = strict_typing
        self.conf = Settings()
        self.namespace = namespace
        self.autofinalize = autofinalize
        self._tasks = TaskRegistry(self)  # (`tasks`, read through _FinalizingTasks)
        self.finalized = False
        self._finalize_lock = threading.RLock()
        self._worker_initialized = False  # the default modules imported for a worker, beat or shell
        self._autodiscovery: list[Callable[[], None]] = []  # (`autodiscover_tasks`, run with those imports)
        self._pending_tasks: list[Callable[[], None]] = []
        self._broker: Broker | None = None
        self._read_broker: Broker | None = None
        self._backend: Backend | None = None
        self._router: Router | None = None
        self._tz: tuple[tuple[Any, bool], tzinfo] | None = None
        self._local = threading.local()
        self._send_plans: dict[Any, Any] = {}  # see fastq.sending.plan_for
        self._origin: tuple[int, str] | None = None
        self.on_after_configure = _AppSignal(name='on_after_configure')
        self.on_after_finalize = _AppSignal(name='on_after_finalize')
        self.on_configure = _AppSignal(name='on_configure')
        self._configured = False
        self._pending_periodic_tasks: list[tuple[str, dict[str, Any], str | None]] = []
        #: Custom command-line options (click `Option`s) by command: 'worker', 'beat', 'events', and 'preload'
        #: for every command (fastq.cli.options), as Celery's.
        self.user_options: defaultdict[str, set[Any]] = defaultdict(set)
        #: Custom bootsteps: 'worker' and 'consumer' (fastq.bootsteps), as Celery's.
        self.steps: defaultdict[str, set[Any]] = defaultdict(set)
        # Celery's fixups: with DJANGO_SETTINGS_MODULE set, Django's (fastq.fixups.django), whose task class
        # (DjangoTask: delay_on_commit) the app's tasks get unless it was given one.
        from fastq.fixups.django import fixup as django_fixup

        self.fixups = [f for f in (django_fixup(self),) if f is not None]
        if task_cls is None and self.fixups:
            task_cls = 'fastq.contrib.django.task:DjangoTask'
        #: The base task class as given (a class or 'module:Class'): what a pickled app is made with again.
        self.task_cls: Any = task_cls or 'fastq.task:Task'
        self._config_source: Any = None
        self._config_source_silent = False
        base = symbol_by_name(task_cls) if task_cls else BaseTask
        # Celery's `subclass_with_self`: named Task, in the module (and with the docstring) of the class it
        # extends, and knowing its app before any task of it is bound (`app.Task.app`, `class T(app.Task)`).
        self.Task = type('Task', (base,), {'abstract': True, 'app': self, '__module__': base.__module__,
                                           '__doc__': base.__doc__})  # fmt: skip
        if broker:
            self.conf.broker_url = broker
        if backend:
            self.conf.result_backend = backend
        if include:
            self.conf.include = module_names(include)  # one name or several, as Celery takes
        if preconf:
            self.conf.update(preconf)
        if config_source is not None:
            self.config_from_object(config_source, silent=config_source_silent)
        else:
            self.conf.add_pending_source(self._config_from_environment, fallback=True)
        self.conf.on_first_read(self._configure)  # (reading a setting configures the app, as Celery's)
        if set_as_current:
            _state.set_current_app(self)
        _state.register_app(self)
        self.on_init()

    def on_init(self) -> None:
        """Called at the end of `__init__`: a hook for subclasses (Celery's)."""

    def set_current(self) -> None:
        """Make this the current app (what `current_app`, `shared_task` and `AsyncResult(id)` use)."""
        _state.set_current_app(self)

    def set_default(self) -> None:
        """Make this the default app: the one used when no app was made current."""
        _state.set_default_app(self)

    # --- configuration ------------------------------------------------------------------------------------

    def config_from_object(
        self, obj: Any, silent: bool = False, force: bool = False, namespace: str | None = None
    ) -> Settings | None:
        """Read settings from a module, a `'module:attr'` path or an object (lazily, on first use).

        With `namespace='CELERY'` only names prefixed `CELERY_` are read (Django's settings module). With
        `force`, or on an app configured already, read now and return `app.conf`, as Celery's (`force`
        configures the app); else None. (Celery's sends `on_after_configure` again each time an app configured
        already reads a config object; fastq's sends it once per app.)
        """
        namespace = self.namespace = namespace or self.namespace  # (kept, as Celery keeps it: extensions read it)
        self._config_source, self._config_source_silent = obj, silent  # (for pickling, see __reduce_keys__)
        self.conf.add_pending_source(self._object_loader(obj, silent, namespace))
        if not (force or self._configured):
            return None
        self._configure()
        self.conf._load_pending()
        return self.conf

    def _object_loader(self, obj: Any, silent: bool, namespace: str | None) -> Callable[[], dict[str, Any]]:
        """What reads the settings of a config object (see `config_from_object`), when called."""

        def load() -> dict[str, Any]:
            try:
                source = module_or_symbol(obj) if isinstance(obj, str) else obj
            except (ImportError, AttributeError):
                if silent:
                    return {}
                raise
            items: Iterable[tuple[str, Any]]
            if isinstance(source, dict):
                items = source.items()
            else:
                items = ((k, getattr(source, k)) for k in dir(source) if not k.startswith('_'))
            out: dict[str, Any] = {}
            old: dict[str, Any] = {}
            prefix = f'{namespace}_' if namespace else None
            items = list(items)
            if not prefix:  # (with a namespace, only the prefixed names are read: no mix to refuse, as Celery)
                check_mixed_names(key for key, _ in items)
            for key, value in items:
                if not prefix and (key in SETTINGS or setting_for_old_name(key) is None):
                    out[key] = value  # (an old name goes below: the new one wins when both are given, as Celery)
                elif prefix and key.startswith(prefix):
                    stripped = key[len(prefix) :].lower()
                    if stripped in SETTINGS or key not in OLD_NAMES:
                        out[stripped] = value  # CELERY_TASK_ALWAYS_EAGER, or a name of the app's own
                    else:
                        old[OLD_NAMES[key]] = value  # Celery's old names, read with a namespace too:
                elif (canonical := setting_for_old_name(key)) is not None:  # CELERYD_CONCURRENCY, BROKER_URL
                    old[canonical] = value  # (CELERY_ALWAYS_EAGER above)
            zone = dict(items).get('TIME_ZONE')  # Django's, when no timezone setting says otherwise (Celery's)
            if zone and 'timezone' not in out and 'timezone' not in old and 'CELERY_TIMEZONE' not in out:
                old['timezone'] = zone
            return {**old, **out}

        return load

    def setup_security(
        self,
        allowed_serializers: Any = None,
        key: str | None = None,
        key_password: Any = None,
        cert: str | None = None,
        store: str | None = None,
        digest: str | None = None,
        serializer: str = 'json',
    ) -> None:
        """Sign task messages and accept only signed ones (Celery's `auth` serializer; see fastq.security)."""
        from fastq.security import setup_security

        setup_security(self, allowed_serializers, key, key_password, cert, store, digest, serializer)

    def config_from_cmdline(self, argv: Sequence[str], namespace: str = 'celery') -> None:
        """Settings from `key=value` arguments, as Celery's worker and beat take them after `--`:
        `worker.concurrency=4` or `worker_concurrency=4`, `.concurrency=4` (in `namespace`), and `(json)[1, 2]`,
        `(int)5` ... to give the type; otherwise read as the setting's type."""
        import json
        import re

        from fastq.config import _parse_env

        casts: dict[str, Any] = {'json': json.loads, 'list': json.loads, 'dict': json.loads, 'tuple': json.loads,
                                 'int': int, 'float': float, 'string': str, 'str': str,
                                 'bool': lambda v: v.strip().lower() in ('1', 'true', 'yes', 'on')}  # fmt: skip
        updates: dict[str, Any] = {}
        for arg in argv:
            key, sep, value = arg.partition('=')
            if not sep:
                raise ImproperlyConfigured(f'{arg!r}: settings after -- are key=value')
            key = key.lower().replace('.', '_')
            name = f'{namespace}{key}' if key.startswith('_') and namespace != 'celery' else key.lstrip('_')
            cast = re.match(r'\((\w+)\)', value)
            if cast and cast.group(1) in casts:
                updates[name] = casts[cast.group(1)](value[cast.end() :])
            elif name in SETTINGS:
                updates[name] = _parse_env(SETTINGS[name], value)
            else:
                updates[name] = value
        self.conf.update(updates)

    def _config_from_environment(self) -> dict[str, Any]:
        """The settings of the module `CELERY_CONFIG_MODULE` names (`celery --config`'s variable), read by an
        app given no config object, as Celery's loader reads it; an app given one never imports it."""
        module = os.environ.get('CELERY_CONFIG_MODULE')
        return self._object_loader(module, False, self.namespace)() if module else {}

    def config_from_envvar(
        self, variable_name: str, silent: bool = False, force: bool = False
    ) -> Settings | Literal[False] | None:
        """`config_from_object` of the module the variable names. As Celery's, it returns what that returns
        (None, or `app.conf` with `force`): only `silent=True` with the variable unset says False."""
        module = os.environ.get(variable_name)
        if not module:
            if silent:
                return False
            raise ImproperlyConfigured(_ERR_ENVVAR_NOT_SET.format(variable_name))
        return self.config_from_object(module, silent=silent, force=force)

    def add_defaults(self, d: Any) -> None:
        """Defaults of the app's own (a mapping, or a function returning one, read lazily): below what code
        sets, above the config object and the built-in defaults, as Celery layers them (its `add_defaults`
        puts them first among the default maps, before the config source)."""
        self.conf.add_pending_source(lambda: d() if callable(d) else d, defaults=True)

    # --- tasks --------------------------------------------------------------------------------------------

    @overload
    def task(self, fun: Callable[P, Coroutine[Any, Any, R]], /) -> BaseTask[P, R]: ...
    @overload
    def task(self, fun: Callable[P, R], /) -> BaseTask[P, R]: ...
    @overload
    def task(
        self,
        *,
        bind: Literal[True],
        name: str | None = ...,
        base: type[BaseTask[Any, Any]] | None = ...,
        **options: Any,
    ) -> Callable[[Callable[Concatenate[Any, P], R]], BaseTask[P, R]]: ...
    @overload
    def task(
        self,
        *,
        name: str | None = ...,
        bind: Literal[False] = ...,
        base: type[BaseTask[Any, Any]] | None = ...,
        **options: Any,
    ) -> Callable[[Callable[P, R]], BaseTask[P, R]]: ...

    def task(self, *args: Any, **options: Any) -> Any:
        """Turn a function into a task: `@app.task` or `@app.task(name=..., bind=True, acks_late=True, ...)`.

        Shared unless `shared=False`, as Celery's: apps finalized later register the function too (fastq.shared).
        """
        if len(args) == 1:  # `@app.task`, or `app.task(fun, name=...)` (options with the function: Celery's)
            if callable(args[0]):
                return self._shared_task_from_fun(args[0], options)
            raise TypeError('argument 1 to @task() must be a callable')  # (Celery's words, here and below)
        if args:
            raise TypeError(f'@task() takes exactly 1 argument ({len(args) + len(options)} given)')

        def decorator(fun: Callable[..., Any]) -> BaseTask[Any, Any]:
            return self._shared_task_from_fun(fun, dict(options))

        return decorator

    def _shared_task_from_fun(self, fun: Callable[..., Any], options: dict[str, Any]) -> BaseTask[Any, Any]:
        """`@app.task`'s own options: `shared` (above) and `filter`, a function given the task, whose answer
        the decorator returns (Celery's)."""
        filt = options.pop('filter', None)
        if options.pop('shared', True):
            from fastq.shared import share_on_finalize

            share_on_finalize(fun, {k: v for k, v in options.items() if k != 'lazy'})
        task = self._task_from_fun(fun, **options)
        return filt(task) if filt is not None else task

    def _task_from_fun(
        self,
        fun: Callable[..., Any],
        name: str | None = None,
        base: type[BaseTask[Any, Any]] | None = None,
        bind: bool = False,
        pydantic: bool = False,
        pydantic_strict: bool = False,
        pydantic_context: dict[str, Any] | None = None,
        pydantic_dump_kwargs: dict[str, Any] | None = None,
        **options: Any,
    ) -> BaseTask[Any, Any]:
        name = name or self.gen_task_name(fun.__name__, fun.__module__)
        registry = self._tasks
        if name in registry:
            # As Celery: the task registered first stays (a module imported twice hands the same function
            # back; another function under its name is a mistake, warned about, and not registered).
            existing = _decorated_of(registry[name])
            if existing is not None and existing is not fun:
                self._warn_duplicate_task_name(name, existing, fun, W_DUPTASK_KEPT)
            return registry[name]
        options.pop('shared', None)
        lazy = options.pop('lazy', True)
        options['_decorated_fun'] = staticmethod(fun)  # (as given: what a re-registration is told apart by)
        if pydantic is True:  # Celery's argument validation with Pydantic (fastq.pydantic_args)
            from fastq.pydantic_args import pydantic_wrapper

            fun = pydantic_wrapper(self, fun, name, pydantic_strict, pydantic_context, pydantic_dump_kwargs)
            options['_dump_pydantic_arguments'] = staticmethod(functools.partial(fun.dump_arguments, bound=bind))  # type: ignore[attr-defined]
        cls = build_task_class(self, fun, name, base or self.Task, bind, options)
        task = cls()
        task.__qualname__ = cls.__qualname__  # type: ignore[attr-defined]  # (the function's, read through the task too, as Celery sets it)
        task.bind(self)
        self._tasks[name] = task
        if lazy and not self.finalized and not self.autofinalize:
            return self._task_until_finalized(task)
        return task

    def _warn_duplicate_task_name(self, name: str, existing: Any, new: Any, consequence: str) -> None:
        """Celery 5.7's DuplicateTaskNameWarning, once per name and app (one mistake, one warning)."""
        warned = self.__dict__.setdefault('_duplicate_names_warned', set())
        if name in warned:
            return
        warned.add(name)
        text = W_DUPTASK.format(name, _qualname(existing), _qualname(new), consequence)
        warnings.warn(DuplicateTaskNameWarning(text), stacklevel=_caller_stacklevel())

    def _task_until_finalized(self, task: BaseTask[Any, Any]) -> BaseTask[Any, Any]:
        """What `@app.task` returns on an app made with `autofinalize=False`, until `app.finalize()`: the task
        behind a proxy that refuses every use before then (its name, calling or sending it, `repr`), as Celery's
        lazy task does ('Contract breach: app not finalized'), so a task used too early is an error, not a
        task sent with settings the app has not read yet. Afterwards the proxy is the task."""
        from fastq.utils.local import PromiseProxy

        def evaluate() -> BaseTask[Any, Any]:
            if not self.finalized:
                raise RuntimeError('Contract breach: app not finalized')
            return task

        proxy: BaseTask[Any, Any] = PromiseProxy(evaluate, name=type(task).__name__, __doc__=task.__doc__)  # type: ignore[assignment]
        return proxy

    def gen_task_name(self, name: str, module: str) -> str:
        """`module.function`, with `__main__` replaced by the app's main name (as Celery does)."""
        if module == '__main__' and self.main:
            module = self.main
        return f'{module}.{name}'

    def register_task(self, task: BaseTask[Any, Any] | type[BaseTask[Any, Any]], **options: Any) -> BaseTask[Any, Any]:
        """Register a class-based task (a `Task` subclass with a `run` method)."""
        instance = task() if isinstance(task, type) else task
        if not instance.name:
            instance.name = self.gen_task_name(type(instance).__name__, type(instance).__module__)
        existing = self._tasks.get(instance.name)
        if existing is not None and existing is not instance:
            self._warn_duplicate_task_name(
                instance.name, _callable_of(existing), _callable_of(instance), W_DUPTASK_REPLACED
            )
        instance.bind(self)
        self._tasks[instance.name] = instance
        return instance

    def finalize(self, auto: bool = False) -> None:
        """Bind the built-in and shared tasks (once). The `include`/`imports` modules are not imported here,
        as in Celery: a client never imports them; workers, beat and the shell do (`init_worker`)."""
        with self._finalize_lock:
            if self.finalized:
                return
            if auto and not self.autofinalize:  # (finalizing on use, refused by `autofinalize=False`: Celery's)
                raise RuntimeError('Contract breach: app not finalized')
            self.finalized = True
            self._configure()
            from fastq.builtins import register_builtins

            register_builtins(self)
            from fastq.shared import bind_tasks_shared_on_finalize

            bind_tasks_shared_on_finalize(self)
            self._bind_tasks()
            self.on_after_finalize.send(sender=self)

    def _bind_tasks(self) -> None:
        """Shared tasks bound to this app, and settings configured after `@app.task` applied (Celery's)."""
        from fastq.shared import bind_shared_tasks

        bind_shared_tasks(self)
        for task in list(self._tasks.values()):
            task.sync_config()

    def import_default_modules(self) -> list[Any]:
        """Celery's `app.loader.import_default_modules()`: `import_modules` sent (the Django fixup sets Django
        up), the packages given to `autodiscover_tasks` searched, then the `imports` and `include` modules
        imported and their shared tasks bound."""
        self.finalize()
        signals.reraise_errors(signals.import_modules.send(sender=self))
        discovery, self._autodiscovery = self._autodiscovery, []
        for discover in discovery:
            discover()
        modules = [
            importlib.import_module(m) for m in [*module_names(self.conf.imports), *module_names(self.conf.include)]
        ]
        self._bind_tasks()
        return modules

    def init_worker(self) -> None:
        """Once per app and process (Celery's `loader.init_worker()`): what a worker, beat or the shell does
        before it starts, `import_default_modules`."""
        with self._finalize_lock:
            if self._worker_initialized:
                return
            self._worker_initialized = True
        self.import_default_modules()

    @property
    def configured(self) -> bool:
        """Whether the settings were read yet (Celery's): False until something needs them (a setting read,
        the broker, the backend, finalizing), since `config_from_object` and `add_defaults` only take effect
        then; `on_configure` and `on_after_configure` are sent at that moment."""
        return self._configured

    def bugreport(self) -> str:
        """Software, platform and the configured settings (censored), as `fastq report` prints them."""
        from fastq.worker.inspect import bugreport

        return bugreport(self)

    def _configure(self) -> None:
        if not self._configured:
            self._configured = True
            self.conf.on_first_read(None)
            self.on_configure.send(sender=self)
            self.conf._load_pending()
            self.conf.validate()
            for key, entry, name in self._pending_periodic_tasks:
                self._add_periodic_task(key, entry, name)
            self._pending_periodic_tasks.clear()
            self.on_after_configure.send(sender=self, source=self.conf)

    def autodiscover_tasks(
        self,
        packages: Iterable[str] | Callable[[], Iterable[str]] | None = None,
        related_name: str = 'tasks',
        force: bool = False,
    ) -> None:
        """Import `<package>.tasks` for each package (Django: every installed app) with the app's default
        modules (in a worker, beat or shell: `import_default_modules`), or now with `force`."""

        def discover() -> None:
            pkgs = packages() if callable(packages) else packages
            if pkgs is None:
                pkgs = self._django_apps()
            for pkg in pkgs:
                try:
                    importlib.import_module(f'{pkg}.{related_name}')
                except ModuleNotFoundError as exc:
                    if exc.name not in (f'{pkg}.{related_name}', pkg):
                        raise

        if force:
            discover()
        elif self._worker_initialized:  # (asked after the worker imported its modules: now)
            discover()
        else:  # with the default modules, as Celery's (on `import_modules`): in workers, beat and shells only
            self._autodiscovery.append(discover)

    @staticmethod
    def _django_apps() -> list[str]:
        try:
            apps = importlib.import_module('django.apps').apps
        except ImportError:
            return []
        return [config.name for config in apps.get_app_configs()]

    def add_periodic_task(
        self,
        schedule: Any,
        sig: Any,
        args: Sequence[Any] = (),
        kwargs: dict[str, Any] | None = None,
        name: str | None = None,
        **opts: Any,
    ) -> str:
        """Add an entry to `beat_schedule` (Celery's API, usually called in an `on_after_configure` handler):
        `app.add_periodic_task(10.0, add.s(2, 2), name='add every 10')`. The key is `name`, else the
        signature's repr; returns it."""
        from fastq.canvas import Signature

        if isinstance(sig, Signature):
            sig = sig.clone(args, kwargs)
        else:
            sig = self.signature(sig.name, args, kwargs)
        key = name or repr(sig)
        entry = {
            'schedule': schedule,
            'task': sig.task,
            'args': sig.args,
            'kwargs': sig.kwargs,
            'options': dict(sig.options, **opts),
        }
        if self._configured:
            self._add_periodic_task(key, entry, name)
        else:
            self._pending_periodic_tasks.append((key, entry, name))
        return key

    def _add_periodic_task(self, key: str, entry: dict[str, Any], name: str | None) -> None:
        schedule = dict(self.conf.beat_schedule or {})
        if name is None and key in schedule:
            logger.warning(
                "Periodic task key='%s' shadowed a previous unnamed periodic task. "
                'Pass a name kwarg to add_periodic_task to silence this warning.',
                key,
            )
        schedule[key] = entry
        self.conf.beat_schedule = schedule

    # --- broker, backend, routing -------------------------------------------------------------------------

    @property
    def broker_url(self) -> str:
        """Where `app.broker` connects: what this process publishes through (Celery's `connection_for_write`:
        `broker_write_url`, which reads as `broker_url` when unset), else the embedded default."""
        return self._broker_url(self.conf.broker_write_url)

    @property
    def read_broker_url(self) -> str:
        """Where a worker consumes (Celery's `connection_for_read`: `broker_read_url`, else `broker_url`)."""
        return self._broker_url(self.conf.broker_read_url)

    def _broker_url(self, url: Any) -> str:
        from fastq.brokers import default_broker_url

        if isinstance(url, list | tuple):  # failover URLs as a list (Celery's documented form): `;`-joined
            url = ';'.join(url)
        return str(url or '') or default_broker_url(self.conf.sqlite_directory)

    @property
    def rpc_results(self) -> bool:
        """Whether results come back as messages (rpc://): sending then declares the reply queue first."""
        return str(self.conf.result_backend or '').startswith('rpc')

    @property
    def backend_url(self) -> str | None:
        from fastq.backends import default_backend_url

        url = self.conf.result_backend
        if url:
            return str(url)
        if not self.conf.broker_url:
            return default_backend_url(self.conf.sqlite_directory)
        return None

    @property
    def broker(self) -> Broker:
        if self._broker is None:
            with self._finalize_lock:
                if self._broker is None:
                    self._configure()
                    from fastq.brokers import create_broker

                    self._broker = create_broker(self.broker_url, self.conf)
        return self._broker

    @property
    def read_broker(self) -> Broker:
        """The broker a worker consumes from: `app.broker` itself unless `broker_read_url` names another URL
        than the one `app.broker` publishes to (then a second connection, as Celery's worker makes)."""
        url = self.read_broker_url
        broker = self.broker
        if url == broker.url:
            return broker
        if self._read_broker is None:
            with self._finalize_lock:
                if self._read_broker is None:
                    from fastq.brokers import create_broker

                    self._read_broker = create_broker(url, self.conf)
        return self._read_broker

    @property
    def backend(self) -> Backend:
        if self._backend is None:
            with self._finalize_lock:
                if self._backend is None:
                    self._configure()
                    from fastq.backends import create_backend

                    self._backend = create_backend(self, self.backend_url)
        return self._backend

    @property
    def log(self) -> Logging:
        """Celery's `app.log`: set logging up as a worker does (`app.log.setup(loglevel='INFO')`)."""
        log: Logging | None = self.__dict__.get('_log')
        if log is None:
            from fastq.utils.log import Logging

            log = self.__dict__['_log'] = Logging(self)
        return log

    @property
    def loader(self) -> _Loader:
        """Celery's `app.loader`, for the calls code makes on it: importing task modules and the app's
        `imports`/`include` (`import_default_modules`), reading configuration."""
        return _Loader(self)

    @property
    def amqp(self) -> _Amqp:
        """Celery's `app.amqp`, for what code reads from it: `queues` (the configured queues by name) and
        `router`."""
        amqp: _Amqp | None = self.__dict__.get('_amqp')
        if amqp is None:  # (one per app: a worker being set up leaves its queues on it for `select_add`)
            amqp = self.__dict__['_amqp'] = _Amqp(self)
        return amqp

    @property
    def router(self) -> Router:
        if self._router is None:  # (see `amqp` and `loader` below for the names Celery code reaches for)
            from fastq.routing import Router

            self._configure()
            self._router = Router(self.conf)
        return self._router

    @property
    def timezone(self) -> tzinfo:
        key = (self.conf.timezone, self.conf.enable_utc)
        cached = self._tz
        if cached is None or cached[0] != key:
            cached = self._tz = (key, get_timezone(*key))
        return cached[1]

    def now(self) -> datetime:
        return datetime.now(self.timezone)

    @property
    def thread_oid(self) -> str:
        """The `reply_to` of messages sent from this thread (kombu's per-thread oid)."""
        oid: str | None = getattr(self._local, 'oid', None)
        if oid is None:
            oid = self._local.oid = oid_from(self)
        return oid

    @property
    def current_task(self) -> BaseTask[Any, Any] | None:
        return _state.get_current_task()

    @property
    def current_worker_task(self) -> BaseTask[Any, Any] | None:
        return _state.get_current_worker_task()

    # --- sending ------------------------------------------------------------------------------------------

    def send_task(
        self,
        name: str,
        args: Sequence[Any] | None = None,
        kwargs: dict[str, Any] | None = None,
        countdown: float | None = None,
        eta: datetime | str | None = None,
        task_id: str | None = None,
        expires: float | datetime | str | None = None,
        link: Any = None,
        link_error: Any = None,
        group_id: str | None = None,
        group_index: int | None = None,
        retries: int = 0,
        chord: Any = None,
        chain: Any = None,
        reply_to: str | None = None,
        time_limit: float | None = None,
        soft_time_limit: float | None = None,
        root_id: str | None = None,
        parent_id: str | None = None,
        shadow: str | None = None,
        task_type: BaseTask[Any, Any] | None = None,
        replaced_task_nesting: int = 0,
        **options: Any,
    ) -> AsyncResult[Any]:
        """Send a task by name (it need not be registered here); returns its `AsyncResult`."""
        from fastq.sending import send_keywords, send_task_message

        if isinstance(args, list) and args and options.get('argsrepr') is None:  # (Celery: a list as a list, [] as ())
            options['argsrepr'] = saferepr(args)
        kw = send_keywords(locals(), options)
        return send_task_message(self, name, tuple(args or ()), dict(kwargs or {}), task_type, kw, options)

    async def asend_task(
        self,
        name: str,
        args: Sequence[Any] | None = None,
        kwargs: dict[str, Any] | None = None,
        countdown: float | None = None,
        eta: datetime | str | None = None,
        task_id: str | None = None,
        expires: float | datetime | str | None = None,
        link: Any = None,
        link_error: Any = None,
        group_id: str | None = None,
        group_index: int | None = None,
        retries: int = 0,
        chord: Any = None,
        chain: Any = None,
        reply_to: str | None = None,
        time_limit: float | None = None,
        soft_time_limit: float | None = None,
        root_id: str | None = None,
        parent_id: str | None = None,
        shadow: str | None = None,
        task_type: BaseTask[Any, Any] | None = None,
        replaced_task_nesting: int = 0,
        **options: Any,
    ) -> AsyncResult[Any]:
        """`send_task` for code running in an event loop: the publish is awaited on the loop's own broker
        connection (see `Task.aapply_async`)."""
        from fastq.sending import asend_task_message, send_keywords

        kw = send_keywords(locals(), options)
        return await asend_task_message(self, name, tuple(args or ()), dict(kwargs or {}), task_type, kw, options)

    def publish(self, batch: Sequence[Outgoing]) -> None:
        """Hand built messages to the broker (retrying while it is unreachable, per task_publish_retry)."""
        from fastq.sending import publish_with_retry

        publish_with_retry(self, batch)

    @property
    def control(self) -> Control:
        """Remote control of the workers (ping, revoke, shutdown, inspect)."""
        control: Control | None = self.__dict__.get('_control')
        if control is None:
            from fastq.control import Control

            control = self.__dict__['_control'] = Control(self)
        return control

    @property
    def events(self) -> Events:
        """Monitoring events: `app.events.Receiver(conn, handlers={...})`, `.State()`, `.Dispatcher()`."""
        events: Events | None = self.__dict__.get('_events')
        if events is None:
            from fastq.events import Events

            events = self.__dict__['_events'] = Events(self)
        return events

    @property
    def AsyncResult(self) -> type[AsyncResult[Any]]:
        """Celery's app-bound class: `app.AsyncResult(id)` is a result of this app (and `isinstance(r,
        app.AsyncResult)` a check, as in Celery)."""
        cls: type[AsyncResult[Any]] = self._result_class('AsyncResult')
        return cls

    @property
    def ResultSet(self) -> type[ResultSet]:
        """Celery's app-bound class: `app.ResultSet([r1, r2])`, its results read through this app."""
        cls: type[ResultSet] = self._result_class('ResultSet')
        return cls

    @property
    def GroupResult(self) -> type[GroupResult]:
        """Celery's app-bound class: `app.GroupResult(id, results)`, and `app.GroupResult.restore(id)` for a
        group saved with `save()`."""
        cls: type[GroupResult] = self._result_class('GroupResult')
        return cls

    def _result_class(self, name: str) -> Any:
        """One subclass per app and name, made on first use (see fastq.result.bound_result_class)."""
        classes: dict[str, Any] = self.__dict__.setdefault('_result_classes', {})
        cls = classes.get(name)
        if cls is None:
            from fastq import result

            cls = classes[name] = result.bound_result_class(self, getattr(result, name))
        return cls

    # --- connections, as Celery code passes them around (see fastq.connection) ------------------------------

    def connection(self, hostname: str | None = None, **kwargs: Any) -> Any:
        """A handle on the broker (`hostname` may be another broker URL): kombu's Connection interface, for
        `with app.connection() as conn:` in code written against Celery."""
        from fastq.connection import Connection

        return Connection(self, hostname if hostname and '://' in hostname else None, **kwargs)

    broker_connection = connection

    def connection_for_write(self, url: str | None = None, **kwargs: Any) -> Any:
        return self.connection(url, **kwargs)

    def connection_for_read(self, url: str | None = None, **kwargs: Any) -> Any:
        return self.connection(url or self.read_broker_url, **kwargs)

    @property
    def pool(self) -> Any:
        """Celery's broker connection pool: `app.pool.acquire(block=True)` gives a connection."""
        from fastq.connection import ConnectionPool

        return ConnectionPool(self)

    @property
    def producer_pool(self) -> Any:
        """Celery's producer pool: `with app.producer_pool.acquire(block=True) as producer:` then
        `apply_async(..., producer=producer)`."""
        return self.amqp.producer_pool

    def connection_or_acquire(self, connection: Any = None, pool: bool = True, *_: Any, **__: Any) -> Any:
        """A context giving `connection`, or one for the block (the FAQ's connection reuse: `with
        app.connection_or_acquire() as conn: add.apply_async((2, 2), connection=conn)`), as Celery's."""
        from fastq.connection import connection_or_acquire

        return connection_or_acquire(self, connection)

    default_connection = connection_or_acquire  # (Celery's older name)

    def producer_or_acquire(self, producer: Any = None) -> Any:
        """A context giving `producer`, or one made for the block (accepted as `producer=` when sending)."""
        from fastq.connection import producer_or_acquire

        return producer_or_acquire(self, producer)

    def signature(self, *args: Any, **kwargs: Any) -> Any:
        from fastq.canvas import signature

        kwargs.setdefault('app', self)
        return signature(*args, **kwargs)

    @property
    def origin(self) -> str:
        """The `origin` header of the messages this process sends (its node name, per process)."""
        cached = self._origin
        pid = os.getpid()
        if cached is None or cached[0] != pid:
            cached = self._origin = (pid, anon_nodename())
        return cached[1]

    # --- running ------------------------------------------------------------------------------------------

    def worker_main(self, argv: Sequence[str] | None = None) -> None:
        """Run a worker as `fastq worker` would with these arguments: `app.worker_main(['worker', '-l', 'info'])`.
        Without `argv`, the process's own arguments, as Celery's reads `sys.argv`: the Application guide's
        `if __name__ == '__main__': app.worker_main()` run as `python tasks.py -l INFO -c 2` (or `python
        tasks.py worker -l INFO`) takes those options. (Celery's passes the script's name on as a command, and
        wants 'worker' among the arguments; fastq's starts a worker either way.)"""
        import sys

        from fastq.cli import main

        argv = list(sys.argv[1:] if argv is None else argv) or ['worker']
        if argv and argv[0] != 'worker':
            argv = ['worker', *argv]
        main(argv, app=self)

    def start(self, argv: Sequence[str] | None = None) -> None:
        """The command line with this app (`app.start(['worker', '-l', 'INFO'])`); without `argv`, the
        process's own arguments, so the Next Steps tutorial's `if __name__ == '__main__': app.start()` runs
        `python -m proj.celery worker` as `fastq -A proj worker`."""
        import sys

        from fastq.cli import main

        main(list(sys.argv[1:] if argv is None else argv), app=self)

    def Worker(self, **kwargs: Any) -> Any:
        """A worker to `start()` from code, taking `celery.apps.worker.Worker`'s keywords too: `loglevel` and
        `logfile` (logging set up as `fastq worker` does), `pool_cls`, `send_events`, `without_heartbeat`,
        `include`, `without_mingle`; `without_gossip`, `optimization` and `no_execv` mean nothing here."""
        from fastq.worker.worker import WorkController

        for name in ('without_gossip', 'optimization', 'no_execv', 'autoreloader', 'statedb'):
            kwargs.pop(name, None)
        if 'pool_cls' in kwargs:
            pool = kwargs.pop('pool_cls')
            kwargs.setdefault('pool', pool if isinstance(pool, str) or pool is None else getattr(pool, 'name', pool))
        if 'send_events' in kwargs:
            kwargs.setdefault('task_events', kwargs.pop('send_events'))
        if 'without_heartbeat' in kwargs:
            kwargs.setdefault('heartbeat', not kwargs.pop('without_heartbeat'))
        include = kwargs.pop('include', None)
        if include:
            extra = include.split(',') if isinstance(include, str) else list(include)
            self.conf.include = [*module_names(self.conf.include), *extra]
        loglevel, logfile = kwargs.pop('loglevel', None), kwargs.pop('logfile', None)
        if loglevel is not None or logfile is not None:
            from fastq.utils.log import setup_worker_logging

            level = loglevel if isinstance(loglevel, int) else str(loglevel or 'WARNING')
            setup_worker_logging(self.conf, level, logfile, redirect=False)
        return WorkController(self, **kwargs)

    async def aclose(self) -> None:
        """Close the connections the asyncio client opened in the running event loop.

        Optional: they are closed anyway when the loop shuts down (`asyncio.run` does that); call it when a
        loop is closed without that step, or to release them earlier.
        """
        if self._broker is not None:
            await self._broker.aclose()
        if self._read_broker is not None:
            await self._read_broker.aclose()
        if self._backend is not None:
            await self._backend.aclose()

    def close(self) -> None:
        if self._broker is not None:
            self._broker.close()
            self._broker = None
        if self._read_broker is not None:
            self._read_broker.close()
            self._read_broker = None
        if self._backend is not None:
            self._backend.close()
            self._backend = None

    def __enter__(self) -> Fastq:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f'<{type(self).__name__} {self.main or "__main__"} at {id(self):#x}>'

    def __reduce__(self) -> tuple[Any, ...]:
        """Pickled as what it was made with, as Celery's app: its main name, the settings set in code (`conf
        .changes`, with the broker, backend and `include` given to it), its config source (an object pickle can
        find: a module name, a class), task class and namespace; not its tasks nor `add_defaults`, nor its
        connections. Unpickled as a new app, not made current."""
        return (_unpickle_app, (type(self), self.__reduce_keys__()))

    def __reduce_keys__(self) -> dict[str, Any]:
        """The keyword arguments a pickled app is made again with (Celery's, those that mean something here)."""
        return {
            'main': self.main,
            'changes': self.conf.changes,
            'config_source': self._config_source,
            'config_source_silent': self._config_source_silent,
            'task_cls': self.task_cls,
            'namespace': self.namespace,
        }

    def __reduce_args__(self) -> tuple[Any, ...]:
        """Celery's older form of `__reduce_keys__` (deprecated there), in its order."""
        keys = self.__reduce_keys__()
        return (keys['main'], keys['changes'], None, None, None, None, None, None, False,
                keys['config_source'], keys['config_source_silent'])  # fmt: skip


Celery = Fastq


def _unpickle_app(cls: type[Fastq], keys: dict[str, Any]) -> Fastq:
    """A pickled app made again (see `Fastq.__reduce__`), not current, as Celery's `_unpickle_app_v2`."""
    keys = dict(keys)
    changes = keys.pop('changes', None) or {}
    app = cls(set_as_current=False, **keys)
    app.conf.update(changes)
    return app


class _Loader:
    def __init__(self, app: Fastq) -> None:
        self.app = app

    def import_task_module(self, module: str) -> Any:
        return importlib.import_module(module)

    import_module = import_task_module

    def import_default_modules(self) -> list[Any]:
        return self.app.import_default_modules()

    def init_worker(self) -> None:
        self.app.init_worker()

    def config_from_object(self, obj: Any, silent: bool = False) -> None:
        self.app.config_from_object(obj, silent=silent)

    def read_configuration(self, env: str = 'CELERY_CONFIG_MODULE') -> dict[str, Any]:
        module = os.environ.get(env)
        if module:
            self.app.config_from_object(module)
        return self.app.conf.table(with_defaults=False, censored=False)

    def autodiscover_tasks(self, packages: Any, related_name: str = 'tasks') -> None:
        self.app.autodiscover_tasks(packages, related_name, force=True)


class _Queues(dict[str, Any]):
    """`app.amqp.queues`: the queues by name, and `select_add` for a `celeryd_after_setup` receiver."""

    def __init__(self, amqp: _Amqp, queues: dict[str, Any]) -> None:
        super().__init__(queues)
        self.amqp = amqp

    def __missing__(self, name: str) -> Any:
        """A queue by its alias too (a `Broadcast` queue by its exchange's name), as Celery's `Queues`; any
        other name is a queue added as Celery's adds it (`Router.declared`), unless task_create_missing_queues
        is off (KeyError)."""
        router = self.amqp.app.router
        alias = router.aliases.get(name)
        if alias is not None:
            return router.declared(name)
        if not router.create_missing:
            raise KeyError(name)
        queue = self[name] = router.declared(name)
        return queue

    def select_add(self, queue: Any, **kwargs: Any) -> Any:
        """Consume from `queue` too (a name or a Queue), in the worker being set up: Celery's way to add a
        queue from `celeryd_after_setup`. Outside that signal there is no worker to tell: ValueError."""
        from fastq.routing import Queue

        selected = self.amqp.selected
        if selected is None:
            raise ValueError('select_add: only while a worker is set up (from a celeryd_after_setup receiver)')
        q = Queue(queue, **kwargs) if isinstance(queue, str) else queue
        if q.name not in selected:
            selected.append(q.name)
        self[q.name] = q
        return q


class _Amqp:
    def __init__(self, app: Fastq) -> None:
        self.app = app
        #: The queues of the worker being set up, while its celeryd_after_setup receivers run.
        self.selected: list[str] | None = None

    @property
    def queues(self) -> _Queues:
        """The app's queues as Celery's `app.amqp.queues` has them (`Router.declared`): `task_queues`, else the
        default queue on the default exchange."""
        router = self.app.router
        return _Queues(self, {name: router.declared(name) for name in router.queues or router.worker_queues(None)})

    @property
    def router(self) -> Router:
        return self.app.router

    @property
    def producer_pool(self) -> Any:
        pool = self.__dict__.get('_producer_pool')
        if pool is None:
            from fastq.connection import ProducerPool

            pool = self.__dict__['_producer_pool'] = ProducerPool(self.app)
        return pool

    publisher_pool = producer_pool  # (Celery's old name, still there)

    @property
    def default_queue(self) -> Any:
        from fastq.routing import Queue

        name = self.app.conf.task_default_queue
        return self.app.router.queues.get(name) or Queue(name)


def app_or_default(app: Fastq | None = None) -> Fastq:
    """`app`, else the current app (Celery's `celery.app.app_or_default`, for helpers that take an `app=`);
    traced with `CELERY_TRACE_APP` (fastq._state.app_or_default)."""
    return _state.app_or_default(app)


def __getattr__(name: str) -> Any:
    if name == 'shared_task':  # (`from celery.app import shared_task`; the module imports this one)
        from fastq.shared import shared_task

        return shared_task
    raise AttributeError(f'module {__name__!r} has no attribute {name!r}')
