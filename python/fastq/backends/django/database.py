"""django-celery-results' database backend (`result_backend = 'django-db'`): its rows, written by fastq.

Needs django-celery-results (`pip install django-celery-results`) in INSTALLED_APPS with its migrations
applied, and Django set up before the first result is read or written. Rows go through its models, so the
database is the one Django's router picks for them (`db_for_write`/`db_for_read`).

Settings: `result_serializer` and `result_accept_content` (how columns are encoded), `result_extended`,
`result_expires` (what `celery.backend_cleanup` deletes; rows carry no expiry of their own),
`result_chord_join_timeout`. `result_compression` is ignored, as django-celery-results ignores it.

Layout, as django-celery-results 2.6 writes it (models in django_celery_results/models.py):

- `django_celery_results_taskresult`, a row per task. `result` is the return value (or the exception
  document `{exc_type, exc_message, exc_module}`) serialized with `result_serializer`: text as it comes for
  `utf-8` serializers (JSON, YAML), base64 for `binary` ones (pickle, msgpack); `content_type` and
  `content_encoding` say which. `meta` holds `{"children": [...]}` (null with no request), serialized the
  same way. `date_created` is set when the row is made and `date_done` on every write (so STARTED rows have
  one too, unlike other backends), both by Django's clock; `date_started` is the database's `NOW()`, set
  when STARTED is stored. With `result_extended` only: `task_name`, `task_args` and `task_kwargs` (the
  message's `argsrepr`/`kwargsrepr` strings, serialized), `worker` (the hostname), `periodic_task_name`
  (django-celery-beat's header) and `traceback`: without it, a failure's traceback is not stored at all.
- `django_celery_results_groupresult`: a saved group, `GroupResult.as_tuple()` serialized as above.
- `django_celery_results_chordcounter`: a chord being joined (chords.py).

Reading returns django-celery-results' document: `task_id, status, result, traceback, date_done` (a
datetime), `children`, `task_name, task_args, task_kwargs, args, kwargs, worker`. Forgetting deletes the
row; a missing row reads as PENDING.

Differences: a stored SUCCESS is never overwritten (the condition is in the UPDATE), where
django-celery-results overwrites it; `get()` polls from 5 ms up to its `interval` where django-celery-results
polls every `interval`; a chord's counter is made or reset with the chord where django-celery-results fails
on a re-sent chord id; a row is updated in place where django-celery-results loads and saves it whole, so on
SQLite `date_started` keeps the text the database's `NOW()` wrote (`...:31.364`) where a re-saved row has
Django's (`...:31.364000`), the same datetime to every reader.

Mixed fleets: Celery (with django-celery-results) and fastq clients and workers share everything, chords
included (chords.py).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from fastq import states
from fastq.backends.polling import PollingBackend
from fastq.exceptions import DecodeError, ImproperlyConfigured

try:
    import django_celery_results  # noqa: F401
except ImportError as exc:  # pragma: no cover - the message is the point
    raise ImproperlyConfigured(
        'The django-db result backend requires django-celery-results: pip install django-celery-results, '
        "then add 'django_celery_results' to INSTALLED_APPS and migrate"
    ) from exc

from fastq.backends.django.chords import ChordCounterStore
from fastq.backends.django.connections import current_request, models, run
from fastq.serialization import dumps, loads, serializer_by_name

if TYPE_CHECKING:
    from fastq.app import Fastq
    from fastq.result import GroupResult

__all__ = ['DjangoDatabaseBackend']

#: `get()` looks again after 5 ms, then twice as long each time, up to its `interval`.
#: Rounds of "update, else insert" before an IntegrityError is taken for a real one.
UPSERT_ATTEMPTS = 5
#: The columns `get_task_meta` reads (TaskResult.as_dict's, and how to decode them).
COLUMNS = (
    'task_id', 'task_name', 'task_args', 'task_kwargs', 'status', 'result', 'date_done', 'traceback', 'worker',
    'meta', 'content_type', 'content_encoding',
)  # fmt: skip


class DjangoDatabaseBackend(PollingBackend):
    supports_autoexpire = False  # (beat schedules celery.backend_cleanup, as for Celery's)

    def __init__(self, app: Fastq, url: str | None = None) -> None:
        super().__init__(app, url)
        self.extended = bool(app.conf.result_extended)
        self.compression = None  # (content_encoding says how a column is encoded; there is no room for more)
        self.chord_store = self.chords = ChordCounterStore(self)

    # --- columns ----------------------------------------------------------------------------------------

    def encode_content(self, data: Any) -> tuple[str, str, str]:
        """`(content_type, content_encoding, text)` for a text column: django-celery-results' `encode_content`."""
        payload, content_type, encoding = dumps(data, self.serializer)
        text = base64.b64encode(payload).decode('ascii') if encoding == 'binary' else payload.decode(encoding)
        return content_type, encoding, text

    def decode_content(self, content_type: str, encoding: str, content: str | None) -> Any:
        """A column back; empty is None. The row's content type decides, within `result_accept_content`."""
        if not content:
            return None
        payload = base64.b64decode(content) if encoding == 'binary' else content.encode(encoding or 'utf-8')
        if not content_type:
            content_type = serializer_by_name(self.serializer).content_type
        return loads(payload, content_type, self.accept)

    def _fields(self, result: Any, state: str, traceback: str | None, request: Any) -> dict[str, Any]:
        """The columns a state writes (django-celery-results' `_store_result`); `result` already encoded."""
        content_type, encoding, text = self.encode_content(result)
        children = None if request is None else [_as_tuple(c) for c in getattr(request, 'children', None) or ()]
        meta = {**(getattr(request, 'meta', None) or {}), 'children': children}
        fields: dict[str, Any] = {
            'status': state,
            'result': text,
            'meta': self.encode_content(meta)[2],
            'content_type': content_type,
            'content_encoding': encoding,
            **dict.fromkeys(('periodic_task_name', 'task_args', 'task_kwargs', 'task_name', 'traceback', 'worker')),
        }
        if request is not None and self.extended:
            args = getattr(request, 'argsrepr', None)
            kwargs = getattr(request, 'kwargsrepr', None)
            args = getattr(request, 'args', None) if args is None else args
            kwargs = getattr(request, 'kwargs', None) if kwargs is None else kwargs
            fields.update(
                periodic_task_name=getattr(request, 'periodic_task_name', None),
                task_args=None if args is None else self.encode_content(args)[2],
                task_kwargs=None if kwargs is None else self.encode_content(kwargs)[2],
                task_name=getattr(request, 'task', None),
                traceback=traceback,
                worker=getattr(request, 'hostname', None),
            )
        return fields

    def _document(self, task_id: str, row: dict[str, Any] | None) -> dict[str, Any]:
        """django-celery-results' `_get_task_meta_for` of a row (exceptions still encoded)."""
        if row is None:
            row = {'task_id': task_id, 'status': states.PENDING, 'content_type': '', 'content_encoding': ''}
        kind, encoding = row.get('content_type') or '', row.get('content_encoding') or ''
        data = {name: row.get(name) for name in COLUMNS[:-3]}
        meta = self.decode_content(kind, encoding, row.get('meta')) or {}
        result = self.decode_content(kind, encoding, row.get('result'))
        args, kwargs = row.get('task_args'), row.get('task_kwargs')
        try:
            args = self.decode_content(kind, encoding, args)
            kwargs = self.decode_content(kind, encoding, kwargs)
        except (DecodeError, binascii.Error):  # (rows written by older versions hold plain text)
            pass
        data.update(meta, result=result, task_args=args, task_kwargs=kwargs, args=args, kwargs=kwargs)
        return data

    # --- writing ------------------------------------------------------------------------------------------

    def store_result(
        self, task_id: str, result: Any, state: str, traceback: str | None = None, request: Any = None
    ) -> Any:
        """Store a state; a stored SUCCESS is never overwritten (a duplicate delivery cannot undo it)."""
        if request is None:
            request = current_request(task_id)
        fields = self._fields(self.encode_result(result, state), state, traceback, request)
        run(lambda: self._write(task_id, fields, state == states.STARTED, keep_success=True))
        return result

    def _set(self, task_id: str, payload: bytes, state: str, expires: float | None) -> None:
        meta = self.decode(payload)
        fields = self._fields(meta.get('result'), state, meta.get('traceback'), None)
        run(lambda: self._write(task_id, fields, state == states.STARTED, keep_success=False))

    def _write(self, task_id: str, fields: dict[str, Any], started: bool, keep_success: bool) -> None:
        """UPDATE the row, else INSERT it: the values the model's `save()` would write (`date_done` is its
        `auto_now`, taken from Django's clock)."""
        from django.db import IntegrityError, router, transaction
        from django.db.models.functions import Now
        from django.utils import timezone

        model = models()[0]
        db = router.db_for_write(model)
        rows = model._default_manager.using(db)
        changes = dict(fields, date_done=timezone.now())
        if started:
            changes['date_started'] = Now()
        for n in range(UPSERT_ATTEMPTS):
            target = rows.filter(task_id=task_id)
            if keep_success:
                target = target.exclude(status=states.SUCCESS)
            if target.update(**changes):
                return
            status = rows.filter(task_id=task_id).values_list('status', flat=True).first()
            if status is not None:  # a SUCCESS kept, or a row another writer inserted meanwhile (update it)
                if status == states.SUCCESS:
                    return
                continue
            try:
                with transaction.atomic(using=db):
                    row = model(task_id=task_id, **fields)
                    if started:
                        row.date_started = Now()
                    row.save(force_insert=True, using=db)
                return
            except IntegrityError:  # another writer inserted it first: update it now
                if n == UPSERT_ATTEMPTS - 1:
                    raise

    def _delete(self, task_id: str) -> None:
        from django.db import router

        model = models()[0]
        run(lambda: model._default_manager.using(router.db_for_write(model)).filter(task_id=task_id).delete())

    # --- reading ------------------------------------------------------------------------------------------

    def _rows(self, task_ids: list[str]) -> dict[str, dict[str, Any]]:
        model = models()[0]
        found = model._default_manager.filter(task_id__in=task_ids).values(*COLUMNS)
        return {row['task_id']: row for row in found}

    def get_task_meta(self, task_id: str, cache: bool = True, managed: bool | None = None) -> dict[str, Any]:
        row = run(lambda: self._rows([task_id]).get(task_id), managed)
        data = self._document(task_id, row)
        if data['status'] in states.EXCEPTION_STATES:
            data['result'] = self.exception_to_python(data['result'])
        return data

    def get_many_meta(self, task_ids: list[str]) -> dict[str, dict[str, Any]]:
        """Several tasks' documents in one query (exceptions rebuilt); missing ones are left out."""
        rows = run(lambda: self._rows(task_ids))
        out = {}
        for task_id, row in rows.items():
            data = out[task_id] = self._document(task_id, row)
            if data['status'] in states.EXCEPTION_STATES:
                data['result'] = self.exception_to_python(data['result'])
        return out

    def _get(self, task_id: str) -> bytes | None:
        row = run(lambda: self._rows([task_id]).get(task_id))
        if row is None:
            return None
        data = self._document(task_id, row)
        if isinstance(data['date_done'], datetime):
            date_done = data['date_done']
            data['date_done'] = (date_done if date_done.tzinfo else date_done.replace(tzinfo=UTC)).isoformat()
        return self.encode(data)

    async def aget_task_meta(self, task_id: str) -> dict[str, Any]:
        """In the loop's executor, whose threads close their connections after each read (nobody else would)."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(None, lambda: self.get_task_meta(task_id, managed=True))

    # --- groups --------------------------------------------------------------------------------------------

    def save_group(self, group_id: str, result: GroupResult) -> GroupResult:
        """The group's tuple, through django-celery-results' own manager (saving an id again replaces it)."""
        content_type, encoding, text = self.encode_content(result.as_tuple())
        manager = models()[1]._default_manager
        run(lambda: manager.store_group_result(content_type, encoding, group_id, text))
        return result

    def restore_group(self, group_id: str, cache: bool = True) -> GroupResult | None:
        from fastq.result import GroupResult, result_from_tuple

        model = models()[1]
        columns = ('result', 'content_type', 'content_encoding')
        row = run(lambda: model._default_manager.filter(group_id=group_id).values(*columns).first())
        if row is None:
            return None
        value = self.decode_content(row['content_type'], row['content_encoding'], row['result'])
        if not value:
            return None
        group = result_from_tuple(value, self.app)
        return group if isinstance(group, GroupResult) else None

    def delete_group(self, group_id: str) -> None:
        from django.db import router

        model = models()[1]
        run(lambda: model._default_manager.using(router.db_for_write(model)).filter(group_id=group_id).delete())

    # --- chords (chords.py) --------------------------------------------------------------------------------

    def apply_chord(self, header_result_args: tuple[str, list[Any]], body: Any, **kwargs: Any) -> None:
        """django-celery-results' `apply_chord`: a counter row with the header's result tuples."""
        header = self.app.GroupResult(*header_result_args)
        results = [r.as_tuple() for r in header.results]
        size = body.get('chord_size', None) or len(results)
        self.chords.create(header.id or '', json.dumps(results), size)

    def add_to_chord(self, group_id: str, result: Any) -> None:
        self.chords.add_result(group_id, result.as_tuple())

    # --- expiry --------------------------------------------------------------------------------------------

    def cleanup(self) -> None:
        """`celery.backend_cleanup`: results and groups done longer than `result_expires` ago, deleted by
        django-celery-results' own managers."""
        if not self.expires:
            return
        task, group, _ = models()
        expires = self.expires
        run(lambda: (task._default_manager.delete_expired(expires), group._default_manager.delete_expired(expires)))


def _as_tuple(child: Any) -> Any:
    return child.as_tuple() if hasattr(child, 'as_tuple') else child
