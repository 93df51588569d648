"""Text helpers: reprs for logs and headers, and masking secrets before anything is printed."""

from __future__ import annotations

import re
import reprlib
from collections.abc import Mapping
from typing import Any
from urllib.parse import unquote, urlsplit, urlunsplit

#: Setting names whose values `conf.humanize()` hides whole (Celery's `HIDDEN_SETTINGS`).
_SECRET_KEYS = re.compile(r'API|TOKEN|KEY|SECRET|PASS|PROFANITIES_LIST|SIGNATURE|DATABASE|BEAT_DBURI', re.IGNORECASE)
#: What `conf.humanize()` / `fastq report` print in place of a secret, in a URL too (Celery's; the worker's
#: banner and log lines use kombu's shorter `**`).
SETTINGS_MASK = '*' * 8


def mask_url(url: str, mask: str = '**') -> str:
    """`redis://:secret@host:6379/0` -> `redis://:**@host:6379/0`; several `;`-separated URLs each masked."""
    if ';' in url:
        return ';'.join(mask_url(part, mask) for part in url.split(';'))
    try:
        parts = urlsplit(url)
    except ValueError:
        return url
    if parts.password is None:
        return url
    user = parts.username or ''
    host = parts.hostname or ''
    if parts.port is not None:
        host = f'{host}:{parts.port}'
    netloc = f'{user}:{mask}@{host}'
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


#: scheme -> (the scheme kombu shows, its default port, its default user), for `as_uri`.
_KOMBU_URIS: dict[str, tuple[str, int | None, str]] = {
    'amqp': ('amqp', 5672, 'guest'),
    'pyamqp': ('amqp', 5672, 'guest'),
    'librabbitmq': ('amqp', 5672, 'guest'),
    'amqps': ('amqps', 5671, 'guest'),
    'redis': ('redis', 6379, ''),
    'rediss': ('rediss', 6379, ''),
    'sentinel': ('sentinel', 26379, ''),
    'sqs': ('sqs', None, ''),
    'memory': ('memory', None, ''),
}


def as_uri(url: str) -> str:
    """A broker URL as Celery prints it in the worker's banner and "Connected to" line (kombu's
    `Connection.as_uri()`): transport aliases resolved, default host, port, user and virtual host filled in,
    the password always `**`, the first of several failover URLs. Other URLs (fastq's own: sqlite://) are
    only masked."""
    first = url.split(';', 1)[0]
    try:
        parts = urlsplit(first)
        port = parts.port
    except ValueError:
        return mask_url(url)
    known = _KOMBU_URIS.get(parts.scheme.lower())
    if known is None:
        return mask_url(url)
    scheme, default_port, default_user = known
    user = unquote(parts.username) if parts.username else default_user
    host = parts.hostname or 'localhost'
    port = port or default_port
    vhost = unquote(parts.path[1:]) if parts.path[1:] else '/'
    address = f'{host}:{port}' if port else host
    return f'{scheme}://{user}:**@{address}/{vhost}'


def mask_secrets(key: str, value: Any) -> Any:
    """What `conf.humanize()` shows for a setting: URLs with passwords masked, secret-looking keys starred,
    at any depth (`broker_transport_options={'sentinel_kwargs': {'password': ...}}`, a beat entry's kwargs).

    As Celery's `filter_hidden_settings`: a secret-looking key hides its value whatever it is (`database_url`
    whole, not only its password; None and booleans too, so `report` prints what Celery's does), and URL
    passwords show as eight stars. Unlike Celery, URLs under any key and lists are masked too."""
    if isinstance(key, str) and _SECRET_KEYS.search(key) and not isinstance(value, Mapping):
        return SETTINGS_MASK
    if isinstance(value, str) and '://' in value:
        return mask_url(value, SETTINGS_MASK)
    if isinstance(value, Mapping):
        return {k: mask_secrets(k, v) for k, v in value.items()}
    if type(value) in (list, tuple):
        return type(value)(mask_secrets(key, v) for v in value)
    return value


_repr = reprlib.Repr()
_repr.maxlevel = 3
_repr.maxstring = 256
_repr.maxother = 256
_repr.maxlist = _repr.maxtuple = _repr.maxdict = _repr.maxset = 64


def saferepr(obj: Any, maxlen: int = 1024) -> str:
    """A repr that never raises and never grows past `maxlen` (task args in headers, logs and events).

    Equal to `repr(obj)` for ordinary small values (what Celery's saferepr gives too); deep or huge values
    are abbreviated with `...`.
    """
    try:
        text = repr(obj)
    except Exception as exc:  # a broken __repr__ must not stop a task from being sent
        return f'<unrepresentable {type(obj).__name__}: {exc!r}>'
    if len(text) <= maxlen:
        return text
    try:
        text = _repr.repr(obj)
    except Exception:
        pass
    return text if len(text) <= maxlen else text[: maxlen - 3] + '...'


def truncate(text: str, maxlen: int = 128, suffix: str = '...') -> str:
    """Celery's: cut at the last space before `maxlen` (a `map` signature's repr shows its items so)."""
    if maxlen and len(text) >= maxlen:
        return text[:maxlen].rsplit(' ', 1)[0] + suffix
    return text


def pluralize(n: int, word: str) -> str:
    return f'{n} {word}' if n == 1 else f'{n} {word}s'
