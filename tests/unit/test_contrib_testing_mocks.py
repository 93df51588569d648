"""`fastq.contrib.testing.mocks`: Celery's `celery.contrib.testing.mocks` (the message and context mocks its
API reference documents), giving what Celery's give for the same calls."""

from __future__ import annotations

import json
from datetime import datetime

import pytest

from fastq.contrib.testing.app import TestApp, setup_default_app
from fastq.contrib.testing.mocks import ContextMock, TaskMessage, TaskMessage1, task_message_from_sig


def test_task_message_is_a_protocol_2_message() -> None:
    message = TaskMessage('proj.add', id='abc', args=(2, 2), kwargs={'z': 1}, shadow='sh', priority=3, utc=True)
    assert message.headers == {'id': 'abc', 'task': 'proj.add', 'shadow': 'sh', 'priority': 3}
    embed = {'callbacks': None, 'errbacks': None, 'chain': None}
    assert message.payload == ((2, 2), {'z': 1}, embed)
    # Celery's body is kombu's JSON text, spaced as json.dumps spaces it.
    assert message.body == '[[2, 2], {"z": 1}, {"callbacks": null, "errbacks": null, "chain": null}]'
    assert (message.content_type, message.content_encoding) == ('application/json', 'utf-8')
    generated = TaskMessage('t')
    assert len(generated.headers['id']) == 36 and generated.payload == ((), {}, embed)


def test_task_message1_is_a_protocol_1_message() -> None:
    message = TaskMessage1('proj.add', id='abc', args=[1], eta='2030-01-01T00:00:00')
    assert message.headers == {}
    assert message.payload == {
        'task': 'proj.add', 'id': 'abc', 'args': [1], 'kwargs': {}, 'callbacks': None, 'errbacks': None,
        'eta': '2030-01-01T00:00:00',
    }  # fmt: skip
    assert json.loads(message.body) == message.payload


def test_task_message_from_a_signature() -> None:
    app = TestApp()
    with setup_default_app(app):

        @app.task
        def add(x: int, y: int) -> int:
            return x + y

        sig = add.s(2, 2).set(countdown=10, expires=30, queue='q')
        sig.link(add.s(1))
        sig.link_error(add.s(0))
        message = task_message_from_sig(app, sig)
    headers = message.headers
    assert headers['task'] == add.name and headers['id'] == sig.id and headers['queue'] == 'q'
    assert 'utc' not in headers and 'link' not in headers and 'countdown' not in headers
    assert datetime.fromisoformat(headers['eta']) < datetime.fromisoformat(headers['expires'])
    args, kwargs, embed = message.payload
    assert (args, kwargs) == ((2, 2), {})
    assert [s['task'] for s in embed['callbacks']] == [add.name]
    assert [s['task'] for s in embed['errbacks']] == [add.name]


def test_context_mock_works_in_a_with_statement() -> None:
    mock = ContextMock()
    with mock as entered:
        pass
    assert entered is mock and mock.__enter__.called and mock.__exit__.called
    with pytest.raises(KeyError), ContextMock():
        raise KeyError('not swallowed')  # (__exit__ returns None)
    assert ContextMock(return_value=5)() == 5
