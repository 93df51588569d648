"""Celery's file-system result backend: one file per result in a directory that Celery and fastq share.

URL: `file:///path/to/dir` (or `file://localhost/path/to/dir`). The directory must exist and be writable:
the backend checks it when it is made, as Celery does, by writing, reading and deleting a file
`.fs-backend-<uuid>`, and fails with Celery's ImproperlyConfigured message if any of that fails.

Layout: the file `<dir>/celery-task-meta-<task_id>` holds the encoded meta document, exactly the bytes Celery
writes (`result_serializer`, with `result_compression` if set), and `<dir>/celery-taskset-meta-<group_id>` a
saved GroupResult; `global_keyprefix` in `result_backend_transport_options` goes in front of both names, as in
Celery. Files have no expiry of their own: `cleanup()` (the `celery.backend_cleanup` task, which beat
schedules because `supports_autoexpire` is False) deletes those older than `result_expires` by their
modification time, as Celery's does.

Differences from Celery, none visible in the layout: fastq writes each file under a temporary name
(`.fastq-tmp-<uuid>`, which Celery's cleanup never touches) and renames it into place, so a reader never sees
half a document. Celery writes in place (truncate, then write), so a fastq reader that finds a file it cannot
decode reads it again a few times over about 0.1 s before it gives up. `forget()` of a missing result is not an
error, and `cleanup()` also removes temporary files left by a writer that died. As in Celery, a stored SUCCESS is
kept by reading before writing, which two writers of one task at the same instant could both pass.

Chords: no native join (nothing to count with atomically): a chord sends `celery.chord_unlock`, which polls the
header until it is ready, so Celery and fastq workers complete each other's chords. `get()` polls
(`keyvalue.py`).
"""

from __future__ import annotations

import contextlib
import os
import time
import uuid
from typing import TYPE_CHECKING, Any

from fastq import states
from fastq.backends.keyvalue import KeyNames, PollingBackend
from fastq.exceptions import DecodeError, ImproperlyConfigured

if TYPE_CHECKING:
    from fastq.app import Fastq
    from fastq.result import GroupResult

__all__ = ['FilesystemBackend']

#: Celery's messages, word for word.
E_NO_PATH_SET = 'You need to configure a path for the file-system backend'
E_PATH_NON_CONFORMING_SCHEME = 'A path for the file-system backend should conform to the file URI scheme'
E_PATH_INVALID = """\
The configured path for the file-system backend does not
work correctly, please make sure that it exists and has
the correct permissions.\
"""
#: The name of the file Celery writes to check the directory, plus a uuid.
DIRECTORY_TEST_PREFIX = '.fs-backend-'
#: What fastq writes before renaming into place; left over only by a writer that died mid-write.
TEMP_PREFIX = '.fastq-tmp-'
#: A temporary file older than this is a dead writer's, whatever `result_expires` says.
TEMP_MAX_AGE = 3600.0
#: Pauses before reading again a file that does not decode (a Celery writer may be halfway through it).
TORN_READ_PAUSES = (0.001, 0.005, 0.02, 0.1)


def directory_of(url: str | None) -> str:
    """The directory a `file://` URL names (Celery's `_find_path`)."""
    if not url:
        raise ImproperlyConfigured(E_NO_PATH_SET)
    if url.startswith('file://localhost/'):
        path = url[16:]
    elif url.startswith('file://'):
        path = url[7:]
    else:
        raise ImproperlyConfigured(E_PATH_NON_CONFORMING_SCHEME)
    if os.name == 'nt' and path.startswith('/'):
        path = path[1:]
    if not path:  # (`file://`: Celery would write to the root directory, fastq to the working one)
        raise ImproperlyConfigured(E_NO_PATH_SET)
    return path


class FilesystemBackend(PollingBackend):
    supports_autoexpire = False  # (files carry no expiry: beat schedules celery.backend_cleanup)

    def __init__(self, app: Fastq, url: str | None = None) -> None:
        super().__init__(app, url)
        self.path = directory_of(url)
        options = app.conf.result_backend_transport_options or {}
        self.keys = KeyNames(options.get('global_keyprefix'))
        self._check_directory()

    def _check_directory(self) -> None:
        name = f'{DIRECTORY_TEST_PREFIX}{uuid.uuid4()}'
        try:
            self._write(name, b'test value')
            if self._read(name) != b'test value':
                raise ImproperlyConfigured(E_PATH_INVALID)
            os.unlink(self._filename(name))
        except OSError as exc:
            raise ImproperlyConfigured(E_PATH_INVALID) from exc

    # --- files ---------------------------------------------------------------------------------------------

    def _filename(self, key: str) -> str:
        return os.path.join(self.path, key)

    def _read(self, key: str) -> bytes | None:
        try:
            with open(self._filename(key), 'rb') as f:
                return f.read()
        except FileNotFoundError:
            return None

    def _write(self, key: str, payload: bytes) -> None:
        temp = self._filename(f'{TEMP_PREFIX}{uuid.uuid4().hex}')
        # (os.open with 0o666, as open(..., 'wb') creates a file: readable by whoever the umask lets, which a
        # Celery process of another user may be; mkstemp would make it private)
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        try:
            with os.fdopen(fd, 'wb') as f:
                f.write(payload)
            os.replace(temp, self._filename(key))
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(temp)
            raise

    def _read_document(self, key: str) -> tuple[bytes | None, Any]:
        """A file's bytes and decoded document, read again while they do not decode (see the module)."""
        for pause in (*TORN_READ_PAUSES, None):
            payload = self._read(key)
            if payload is None:
                return None, None
            try:
                return payload, self.decode(payload)
            except DecodeError:
                if pause is None:
                    raise
                time.sleep(pause)
        raise AssertionError('unreachable')  # pragma: no cover

    def _unlink(self, key: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self._filename(key))

    # --- the Backend SPI -----------------------------------------------------------------------------------

    def _set(self, task_id: str, payload: bytes, state: str, expires: float | None) -> None:
        self._write(self.keys.task(task_id), payload)

    def _get(self, task_id: str) -> bytes | None:
        return self._read_document(self.keys.task(task_id))[0]

    def get_task_meta(self, task_id: str, cache: bool = True) -> dict[str, Any]:
        payload, meta = self._read_document(self.keys.task(task_id))
        if payload is None:
            return {'status': states.PENDING, 'result': None}
        if meta.get('status') in states.EXCEPTION_STATES:
            meta['result'] = self.exception_to_python(meta.get('result'))
        return dict(meta)

    def _store(self, task_id: str, payload: bytes, state: str, expires: float | None) -> None:
        _, current = self._read_document(self.keys.task(task_id))
        if isinstance(current, dict) and current.get('status') == states.SUCCESS:
            return
        self._set(task_id, payload, state, expires)

    def _delete(self, task_id: str) -> None:
        self._unlink(self.keys.task(task_id))

    def _set_group(self, group_id: str, payload: bytes, expires: float | None) -> None:
        self._write(self.keys.group(group_id), payload)

    def _get_group(self, group_id: str) -> bytes | None:
        return self._read(self.keys.group(group_id))

    def _delete_group(self, group_id: str) -> None:
        self._unlink(self.keys.group(group_id))

    def restore_group(self, group_id: str, cache: bool = True) -> GroupResult | None:
        from fastq.result import GroupResult, result_from_tuple

        payload, document = self._read_document(self.keys.group(group_id))
        if payload is None:
            return None
        group = result_from_tuple(document['result'], self.app)
        return group if isinstance(group, GroupResult) else None

    def cleanup(self) -> None:
        """Celery's `cleanup`: delete result, group and chord files last modified before `result_expires`."""
        now = time.time()
        prefixes = (self.keys.task_prefix, self.keys.group_prefix, self.keys.chord_prefix)
        for name in os.listdir(self.path):
            if name.startswith(TEMP_PREFIX):
                cutoff = now - max(TEMP_MAX_AGE, self.expires or 0)
            elif self.expires and name.startswith(prefixes):
                cutoff = now - self.expires
            else:
                continue
            path = os.path.join(self.path, name)
            with contextlib.suppress(FileNotFoundError):
                if os.stat(path).st_mtime < cutoff:
                    os.unlink(path)
