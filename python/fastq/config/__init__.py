"""`app.conf`: Celery's settings, read from code, config objects and the environment, validated at startup.

Lookup order for a setting: the environment (`FASTQ_<NAME>`, and Celery's `CELERY_BROKER_URL`,
`CELERY_BROKER_READ_URL` / `_WRITE_URL` and `CELERY_RESULT_BACKEND` when not empty; read once, when the
settings are first used), then values set in code (`conf.x = ...`, `conf.update`, `Fastq(broker=...)`), then
`app.add_defaults(...)`, then the object given to `config_from_object` (without one, the module named by
`CELERY_CONFIG_MODULE`, as Celery's loader reads it), then the default (Celery's order). Validation happens
once, when the app is finalized: a bad value raises `ImproperlyConfigured` naming the setting; an unknown name
warns with the closest known one, since a typo in a setting name otherwise silently does nothing.
"""

from __future__ import annotations

import difflib
import json
import os
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping, MutableMapping
from datetime import timedelta
from typing import Any, NamedTuple

from fastq.config.defaults import OLD_NAMES, SETTINGS, Setting
from fastq.exceptions import FastqWarning, ImproperlyConfigured

__all__ = ['OLD_NAMES', 'SETTINGS', 'Setting', 'Settings', 'UnknownSettingWarning']

# Prefixes that mark a name in a config module as meant to be a setting (other names there are helpers).
_SETTING_PREFIXES = tuple(sorted({name.split('_', 1)[0] + '_' for name in SETTINGS}))
#: Celery's environment variables for these settings (read when set to something: an empty one is unset).
_ENV_ALIASES = {
    'broker_url': ('CELERY_BROKER_URL',),
    'broker_read_url': ('CELERY_BROKER_READ_URL',),
    'broker_write_url': ('CELERY_BROKER_WRITE_URL',),
    'result_backend': ('CELERY_RESULT_BACKEND',),
}
#: Settings that, unset, read as another one (Celery's `conf.task_default_exchange`, `conf.broker_read_url`).
_FALLBACKS = {
    'task_default_exchange': 'task_default_queue',
    'task_default_routing_key': 'task_default_queue',
    'broker_read_url': 'broker_url',
    'broker_write_url': 'broker_url',
}
_TRUE = {'1', 'true', 'yes', 'on'}
_FALSE = {'0', 'false', 'no', 'off', ''}


class SearchResult(NamedTuple):
    """What `conf.find_option` returns: Celery's `searchresult(namespace, key, type)`, so `.type` reads."""

    namespace: str | None
    key: str
    type: Setting


class UnknownSettingWarning(FastqWarning):
    """A configured name is not a setting fastq or Celery knows."""


def closest_setting(name: str) -> str | None:
    matches = difflib.get_close_matches(name.lower(), SETTINGS, n=1, cutoff=0.6)
    return matches[0] if matches else None


def _misspelt(name: str) -> bool:
    """Whether `name` is close enough to a setting's to be a typo of it (`task_acks_lat`), not a name of the
    app's own or an extension's (`redbeat_redis_url`)."""
    return bool(difflib.get_close_matches(name.lower(), SETTINGS, n=1, cutoff=0.85))


def _warn_unknown(name: str) -> None:
    hint = closest_setting(name)
    tail = f'; did you mean {hint!r}?' if hint else ''
    warnings.warn(f'Unknown setting {name!r}{tail}', UnknownSettingWarning, stacklevel=4)


def setting_for_old_name(key: str) -> str | None:
    """The setting an old (Celery 3) name stands for: `CELERY_ALWAYS_EAGER`, `BROKER_URL`."""
    if key in OLD_NAMES:
        return OLD_NAMES[key]
    if key.isupper() and key.lower() in SETTINGS:
        return key.lower()
    return None


_MIX_NEW = """

Cannot mix new and old setting keys, please rename the
following settings to the new format:

{renames}

"""
_MIX_OLD = """

Cannot mix new setting names with old setting names, please
rename the following settings to use the old format:

{renames}

Or change all of the settings to use the new format :)

"""


def check_mixed_names(keys: Iterable[str]) -> None:
    """Refuse a config source with both old and new setting names, as Celery's `detect_settings` does, with
    its text: which name wins when both spell one setting is otherwise a guess. The names are to be renamed
    to whichever style most of them use; a setting given in both styles is not counted against it."""
    have = set(keys)
    new = {key for key in have if key in SETTINGS}
    old = {key for key in have if setting_for_old_name(key) is not None}
    if not new or not old:
        return
    if len(old) > len(new):  # most names are old: rename the new ones
        template, convert = _MIX_OLD, {key: (SETTINGS[key].old[:1] or (key.upper(),))[0] for key in new}
    else:
        template, convert = _MIX_NEW, {key: str(setting_for_old_name(key)) for key in old}
    left = sorted(key for key, other in convert.items() if other not in have)
    if left:
        renames = '\n'.join(f'{key:<36} -> {convert[key]}' for key in left)
        raise ImproperlyConfigured(template.format(renames=renames))


def _parse_env(setting: Setting, raw: str) -> Any:
    """Turn an environment string into a value of the setting's type."""
    kind = setting.type
    try:
        if kind == 'bool':
            low = raw.strip().lower()
            if low in _TRUE or low in _FALSE:
                return low in _TRUE
            raise ValueError(f'expected a boolean, got {raw!r}')
        if kind == 'int':
            return int(raw)
        if kind == 'float':
            return float(raw)
        if kind == 'list':
            return [part.strip() for part in raw.split(',') if part.strip()]
        if kind == 'dict':
            value = json.loads(raw)
            if not isinstance(value, dict):
                raise ValueError('expected a JSON object')
            return value
        if kind == 'any':  # a number, true/false or JSON when it reads as one ('3600'), else the text
            try:
                return json.loads(raw)
            except ValueError:
                return raw
    except ValueError as exc:
        raise ImproperlyConfigured(f'{setting.name}: bad value in the environment: {exc}') from None
    return raw


#: Settings of another type that also take a number of seconds (Celery's backends `int()` them).
_NUMERIC_ANY = frozenset({'result_expires'})


def _number_from_text(setting: Setting | None, value: Any) -> Any:
    """A number setting given as text (`worker_prefetch_multiplier = os.environ.get(...)` in a config module)
    read as the number: Celery takes such text, its consumers `int()` it (the prefetch multiplier, the
    result expiry). Text that is no number is left for validation to report."""
    if not isinstance(value, str) or setting is None:
        return value
    kind = setting.type
    if kind not in ('int', 'float') and setting.name not in _NUMERIC_ANY:
        return value
    text = value.strip()
    for parse in {'int': (int,), 'float': (float,)}.get(kind, (int, float)):
        try:
            return parse(text)
        except ValueError:
            continue
    return value


_TYPE_CHECKS: dict[str, Callable[[Any], bool]] = {
    'str': lambda v: isinstance(v, str),
    'bool': lambda v: isinstance(v, bool),
    'int': lambda v: isinstance(v, int) and not isinstance(v, bool),
    'float': lambda v: isinstance(v, int | float | timedelta) and not isinstance(v, bool),
    'list': lambda v: isinstance(v, list | tuple | set | frozenset),
    'dict': lambda v: isinstance(v, Mapping),
    'any': lambda v: True,
}
_TYPE_NAMES = {
    'str': 'a string',
    'bool': 'True or False',
    'int': 'an integer',
    'float': 'a number of seconds',
    'list': 'a list',
    'dict': 'a dict',
}


def check_type(setting: Setting, value: Any) -> None:
    if value is None or _TYPE_CHECKS[setting.type](value):
        return
    raise ImproperlyConfigured(
        f'{setting.name}: expected {_TYPE_NAMES[setting.type]}, got {type(value).__name__} {value!r}'
    )


class Settings(MutableMapping[str, Any]):
    """The settings of one app, readable as attributes (`conf.broker_url`) or keys (`conf['broker_url']`)."""

    def __init__(self) -> None:
        object.__setattr__(self, '_changes', {})
        object.__setattr__(self, '_source', {})
        # `app.add_defaults(...)`: below values set in code, above the config object (Celery's layers).
        object.__setattr__(self, '_added_defaults', {})
        # Sources read on first use: (load, 'object' | 'defaults' | 'fallback'), see `add_pending_source`.
        object.__setattr__(self, '_pending', [])
        # Resolved values: sending a task reads a dozen settings, which must cost nothing.
        object.__setattr__(self, '_cache', {})
        object.__setattr__(self, '_env', None)
        object.__setattr__(self, '_generation', 0)
        object.__setattr__(self, '_first_read', None)

    def on_first_read(self, callback: Callable[[], None] | None) -> None:
        """Call `callback` once, before the first setting is read through `conf.name`, `conf[name]` or
        `conf.get` (None: not at all). The app configures itself so, as Celery's does on its first read: the
        `on_configure`/`on_after_configure` signals are sent then. (Setting values, `in` and fastq's own reads
        before the app is configured, through `_read`, do not count, as in Celery.)"""
        object.__setattr__(self, '_first_read', callback)

    def _read_first(self) -> None:
        callback = self._first_read
        if callback is not None:
            object.__setattr__(self, '_first_read', None)
            callback()

    def _invalidate(self) -> None:
        attributes = self.__dict__
        for name in self._cache:
            attributes.pop(name, None)
        self._cache.clear()
        object.__setattr__(self, '_generation', self._generation + 1)

    @property
    def generation(self) -> int:
        """A number that changes whenever a setting may have: what is derived from settings and cached
        elsewhere (plans for sending tasks) is keyed by it."""
        generation: int = self._generation
        return generation

    def reload_environment(self) -> None:
        """Read the FASTQ_* / CELERY_* environment overrides again (they are read once, on first use)."""
        object.__setattr__(self, '_env', None)
        self._invalidate()

    def _environment(self) -> dict[str, Any]:
        env: dict[str, Any] | None = self._env
        if env is None:
            env = {}
            for name, setting in SETTINGS.items():
                raw = os.environ.get(f'FASTQ_{name.upper()}')
                if raw is None:  # (Celery's: `os.environ.get('CELERY_BROKER_URL') or` the setting)
                    raw = next((os.environ[var] for var in _ENV_ALIASES.get(name, ()) if os.environ.get(var)), None)
                if raw is not None:
                    env[name] = _parse_env(setting, raw)
            object.__setattr__(self, '_env', env)
        return env

    # --- loading ------------------------------------------------------------------------------------------

    def add_pending_source(
        self, load: Callable[[], Mapping[str, Any]], defaults: bool = False, fallback: bool = False
    ) -> None:
        """Register a config source loaded on first read (`config_from_object` is lazy, as in Celery); with
        `defaults`, one of `app.add_defaults`, which a later config object does not erase; with `fallback`, the
        source read only if no config object is given before the settings are first read (Celery's loader
        reads `CELERY_CONFIG_MODULE` so: never when the app has a config source)."""
        kind = 'defaults' if defaults else 'fallback' if fallback else 'object'
        if kind == 'object':
            self._pending[:] = [entry for entry in self._pending if entry[1] != 'fallback']
        self._pending.append((load, kind))
        self._invalidate()

    def _load_pending(self) -> None:
        if self._pending:
            self._invalidate()
        while self._pending:
            load, kind = self._pending.pop(0)
            values = self._normalise(load(), from_object=True)
            if kind == 'defaults':
                self._added_defaults.update(values)
            else:  # a new config object replaces the previous one (Celery's)
                self._source.clear()
                self._source.update(values)

    def _normalise(self, values: Mapping[str, Any], from_object: bool = False) -> dict[str, Any]:
        """Values by their settings' names; a name that is no setting is kept as it is (an extension's own
        setting, or the app's, read with `conf.get`), and warned about when it looks like a misspelt one."""
        out: dict[str, Any] = {}
        for key, value in values.items():
            if from_object and not self._looks_like_setting(key, value):
                if not key.startswith('_') and not callable(value) and type(value).__name__ != 'module':
                    out.setdefault(key, value)
                continue
            out[self._canonical(key, warn=True) or key] = value
        return out

    @staticmethod
    def _looks_like_setting(key: str, value: Any) -> bool:
        if key.startswith('_') or callable(value) or type(value).__name__ == 'module':
            return False
        low = key.lower()
        return low.startswith(_SETTING_PREFIXES) or closest_setting(low) is not None

    @staticmethod
    def _canonical(key: str, warn: bool) -> str | None:
        if key in SETTINGS:
            return key
        old = setting_for_old_name(key)
        if old is not None:
            return old
        if warn and _misspelt(key):  # (a name of the app's or an extension's own: no warning, as in Celery)
            _warn_unknown(key)
        return None

    # --- mapping protocol ---------------------------------------------------------------------------------

    def _lookup(self, name: str) -> Any:
        cache = self._cache
        if name in cache:
            return cache[name]
        value = self._resolve(name)
        cache[name] = value
        return value

    def _resolve(self, name: str) -> Any:
        setting = SETTINGS.get(name)
        env = self._environment()
        if name in env:
            return env[name]
        if name in self._changes:
            return _number_from_text(setting, self._changes[name])
        self._load_pending()
        if name in self._added_defaults:  # (above the config object: Celery's `add_defaults` order)
            return _number_from_text(setting, self._added_defaults[name])
        if name in self._source:
            return _number_from_text(setting, self._source[name])
        if setting is None:
            raise KeyError(name)
        default = setting.default
        if default is None and name in _FALLBACKS:  # (Celery's: unset, they are the default queue's name)
            return self[_FALLBACKS[name]]
        return list(default) if isinstance(default, list) else dict(default) if isinstance(default, dict) else default

    def __getitem__(self, name: str) -> Any:
        if self._first_read is not None:
            self._read_first()
        return self._read(name)

    def __contains__(self, name: object) -> bool:
        try:
            self._read(name)  # type: ignore[arg-type]
        except KeyError:
            return False
        return True

    def _read(self, name: str) -> Any:
        """`conf[name]`, without configuring the app (see `on_first_read`): for fastq's reads at decoration."""
        try:
            return self._lookup(name)
        except KeyError:
            canonical = self._canonical(name, warn=False)
            if canonical is None or canonical == name:
                raise
            return self._lookup(canonical)

    def __getattr__(self, name: str) -> Any:
        if name.startswith('_'):
            raise AttributeError(name)
        if self._first_read is not None:
            self._read_first()
        try:
            value = self._lookup(name)
        except KeyError:
            canonical = self._canonical(name, warn=False)  # an old name (CELERYD_CONCURRENCY): as Celery reads it
            if canonical is not None and canonical != name:
                return self._lookup(canonical)
            hint = closest_setting(name)
            tail = f'; did you mean {hint!r}?' if hint else ''
            raise AttributeError(f'No setting {name!r}{tail}') from None
        # Kept as an instance attribute until the next change (`_invalidate`), so the next `conf.name` is an
        # ordinary attribute read: this fallback costs ~0.6 µs, and hot paths read settings per task.
        self.__dict__[name] = value
        return value

    def __setattr__(self, name: str, value: Any) -> None:
        self[name] = value

    def __setitem__(self, name: str, value: Any) -> None:
        canonical = self._canonical(name, warn=True)
        self._changes[canonical or name] = value
        self._invalidate()

    def __delitem__(self, name: str) -> None:
        del self._changes[name]
        self._invalidate()

    def __iter__(self) -> Iterator[str]:
        self._load_pending()
        return iter(dict.fromkeys([*SETTINGS, *self._added_defaults, *self._source, *self._changes]))

    def __len__(self) -> int:
        return sum(1 for _ in self)

    def update(self, other: Any = (), /, **kwargs: Any) -> None:
        items = dict(other, **kwargs)
        for key, value in items.items():
            self[key] = value

    def setdefault(self, name: str, default: Any = None) -> Any:
        """`default` unless the name has a value (set, configured or a default of its own), as Celery's."""
        if name not in self:
            self[name] = default
        return self[name]

    def find_option(self, name: str, namespace: str = 'celery') -> SearchResult:
        """Celery's lookup of a setting by its short name: `(namespace, key, setting)`, the given namespace
        first (`'extended', 'result'` -> result_extended), then every other (`'always_eager'`), then the
        full name; KeyError when none has it."""
        name, namespace = name.lower(), namespace.lower()
        if namespace not in ('', 'celery') and f'{namespace}_{name}' in SETTINGS:
            return SearchResult(namespace, name, SETTINGS[f'{namespace}_{name}'])
        for prefix in _SETTING_PREFIXES:
            if prefix + name in SETTINGS:
                return SearchResult(prefix[:-1], name, SETTINGS[prefix + name])
        if name in SETTINGS:
            return SearchResult(None, name, SETTINGS[name])
        raise KeyError(name)

    def get_by_parts(self, *parts: str | None) -> Any:
        """`get_by_parts('task', 'always_eager')` reads task_always_eager."""
        return self['_'.join(part for part in parts if part)]

    def find_value_for_key(self, name: str, namespace: str = 'celery') -> Any:
        """Celery's helper: `find_value_for_key('extended', 'result')` reads `result_extended`."""
        return self.get_by_parts(*self.find_option(name, namespace)[:-1])

    def without_defaults(self) -> dict[str, Any]:
        """What was configured (in code, by the config object, `add_defaults` or the environment)."""
        return self.table(censored=False)

    def value_set_for(self, key: str) -> bool:
        return key in self.without_defaults()

    def first(self, *keys: str) -> Any:
        """The value of the first of `keys` that is set to something (not None)."""
        return next((value for value in (self.get(key) for key in keys) if value is not None), None)

    def copy(self) -> dict[str, Any]:
        return dict(self.items())

    @property
    def defaults(self) -> dict[str, Any]:
        """The built-in defaults of every setting."""
        return {name: setting.default for name, setting in SETTINGS.items()}

    @property
    def changes(self) -> dict[str, Any]:
        """The settings set in code on this app (`conf.x = ...`, `update`, `setdefault`), as Celery's
        `app.conf.changes` (an attribute, not a method): a copy, change settings through `conf` itself."""
        return dict(self._changes)

    def differing(self) -> dict[str, Any]:
        """Settings that differ from the defaults, wherever they were set."""
        self._load_pending()
        out = {}
        for name in self:
            value = self[name]
            setting = SETTINGS.get(name)
            if name in _FALLBACKS and value == self[_FALLBACKS[name]]:
                continue  # (unset: it reads as the default queue's name)
            if setting is None or value != setting.default:
                out[name] = value
        return out

    def table(self, with_defaults: bool = False, censored: bool = True) -> dict[str, Any]:
        """The settings as a dict: the ones set explicitly (by the app, its config source or the environment),
        or all of them `with_defaults`; secrets and URL passwords masked unless `censored` is False."""
        from fastq.utils.text import mask_secrets

        if with_defaults:
            items = dict(self)
        else:
            self._load_pending()
            names = dict.fromkeys([*self._added_defaults, *self._source, *self._changes, *self._environment()])
            items = {name: self[name] for name in names}
        return {key: mask_secrets(key, value) if censored else value for key, value in items.items()}

    def humanize(self, with_defaults: bool = False, censored: bool = True) -> str:
        """`table` as text, one `name: value` line each in the order they were set (Celery's, for `report`)."""
        import pprint

        table = self.table(with_defaults, censored)
        return '\n'.join(f'{key}: {pprint.pformat(value, width=50)}' for key, value in table.items())

    def __repr__(self) -> str:
        return f'<Settings: {len(self.differing())} changed>'

    # --- validation ---------------------------------------------------------------------------------------

    def validate(self) -> None:
        """Check every configured value; raise `ImproperlyConfigured` naming the first bad setting."""
        from fastq.config.validate import validate_settings

        validate_settings(self)
