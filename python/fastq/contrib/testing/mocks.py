"""Mocks for unit tests, under Celery's names (`celery.contrib.testing.mocks`).

`TaskMessage` builds the stand-in for a received task message (protocol 2: id and name in the headers,
`(args, kwargs, embed)` in the body) that a test hands to code reading messages; `task_message_from_sig`
builds one from a signature; `ContextMock` is a `Mock` that works in a `with` statement. The messages are
`unittest.mock.Mock`s with the attributes Celery's have, so assertions written against those hold.
"""

from __future__ import annotations

import numbers
import uuid
from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any
from unittest.mock import Mock

from fastq.serialization import dumps

if TYPE_CHECKING:
    from fastq.app import Fastq

__all__ = ['ContextMock', 'TaskMessage', 'TaskMessage1', 'task_message_from_sig']


def _encoded(payload: Any) -> tuple[str, str, Any]:
    body, content_type, content_encoding = dumps(payload, 'json')
    # kombu's `dumps` gives text for a text encoding, and Celery's mocks carry what it gives.
    return content_type, content_encoding, body.decode(content_encoding) if content_encoding != 'binary' else body


def TaskMessage(
    name: str,
    id: str | None = None,
    args: Sequence[Any] = (),
    kwargs: Mapping[str, Any] | None = None,
    callbacks: Sequence[Any] | None = None,
    errbacks: Sequence[Any] | None = None,
    chain: Sequence[Any] | None = None,
    shadow: str | None = None,
    utc: bool | None = None,
    **options: Any,
) -> Any:
    """A task message in protocol 2 format: `options` become headers (`utc` is accepted and left out)."""
    kwargs = kwargs or {}
    id = id or str(uuid.uuid4())
    message = Mock(name=f'TaskMessage-{id}')
    message.headers = {'id': id, 'task': name, 'shadow': shadow, **options}
    embed = {'callbacks': callbacks, 'errbacks': errbacks, 'chain': chain}
    message.content_type, message.content_encoding, message.body = _encoded((args, kwargs, embed))
    message.payload = (args, kwargs, embed)
    return message


def TaskMessage1(
    name: str,
    id: str | None = None,
    args: Sequence[Any] = (),
    kwargs: Mapping[str, Any] | None = None,
    callbacks: Sequence[Any] | None = None,
    errbacks: Sequence[Any] | None = None,
    chain: Sequence[Any] | None = None,
    **options: Any,
) -> Any:
    """A task message in protocol 1 format (everything in the body, no headers)."""
    kwargs = kwargs or {}
    id = id or str(uuid.uuid4())
    message = Mock(name=f'TaskMessage-{id}')
    message.headers = {}
    message.payload = {
        'task': name,
        'id': id,
        'args': args,
        'kwargs': kwargs,
        'callbacks': callbacks,
        'errbacks': errbacks,
        **options,
    }
    message.content_type, message.content_encoding, message.body = _encoded(message.payload)
    return message


def task_message_from_sig(app: Fastq, sig: Any, utc: bool = True, TaskMessage: Any = TaskMessage) -> Any:
    """A task message for the signature `sig` (frozen here, so the message's id is `sig.id`): its links as
    callbacks and errbacks, `countdown` turned into an ISO `eta`, a numeric `expires` into an ISO time."""
    sig.freeze()
    callbacks = sig.options.pop('link', None)
    errbacks = sig.options.pop('link_error', None)
    countdown = sig.options.pop('countdown', None)
    eta = app.now() + timedelta(seconds=countdown) if countdown else sig.options.pop('eta', None)
    if isinstance(eta, datetime):
        eta = eta.isoformat()
    expires = sig.options.pop('expires', None)
    if isinstance(expires, numbers.Real) and expires:
        expires = app.now() + timedelta(seconds=float(expires))
    if isinstance(expires, datetime):
        expires = expires.isoformat()
    return TaskMessage(
        sig.task,
        id=sig.id,
        args=sig.args,
        kwargs=sig.kwargs,
        callbacks=[dict(s) for s in callbacks] if callbacks else None,
        errbacks=[dict(s) for s in errbacks] if errbacks else None,
        eta=eta,
        expires=expires,
        utc=utc,
        **sig.options,
    )


class _ContextMock(Mock):
    # `with` looks `__enter__`/`__exit__` up on the class, not the instance.

    def __enter__(self) -> Any:
        return self

    def __exit__(self, *exc_info: object) -> None:
        pass


def ContextMock(*args: Any, **kwargs: Any) -> Any:
    """A `Mock` usable as a context manager: `with m as x` gives `m`, and the calls are recorded."""
    obj: Any = _ContextMock(*args, **kwargs)
    obj.attach_mock(_ContextMock(), '__enter__')
    obj.attach_mock(_ContextMock(), '__exit__')
    obj.__enter__.return_value = obj
    # A true return from __exit__ would swallow the exception raised in the block.
    obj.__exit__.return_value = None
    return obj
