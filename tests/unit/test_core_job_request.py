"""`_core.job_request` and `_core.task_request`: the request a pool child runs a task with.

The contract is relative to the general path (`Message.from_envelope`, the request fields Celery's
`Context` has, `protocol.decode_body`): whatever `job_request` returns is what that path gives, and
whatever it refuses (None) that path decodes or reports. The reference below is written out in Python on
purpose, as the request was built before it moved to Rust.
"""

from __future__ import annotations

import json
import marshal
from datetime import datetime
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fastq import Fastq, _core, protocol, states
from fastq.exceptions import ContentDisallowed, DecodeError
from fastq.serialization import json_tag_hook
from fastq.task import Context
from fastq.worker.job import DECODE_ERROR, Prepared, prepare_payload
from fastq.worker.trace import Outcome, execute
from tests.unit.test_core_protocol import MALFORMED_ENVELOPES
from tests.unit.test_core_task_head import envelope, mutated

JSON = frozenset({'application/json'})
BOTH = frozenset({'application/json', 'application/x-msgpack'})


def reference(data: bytes, queue: str, redelivered: bool, hostname: str, accept):
    """(args, kwargs, request) the general way, with the request built as the Python code built it."""
    message = _core.Message.from_envelope(data, None)
    h, props = message.headers, message.properties
    delivery_info = dict(props.get('delivery_info') or {})
    delivery_info.setdefault('routing_key', queue)
    delivery_info['priority'] = props.get('priority')
    delivery_info['redelivered'] = redelivered
    request = {
        'id': h.get('id'),
        'task': h.get('task'),
        'retries': h.get('retries') or 0,
        'eta': h.get('eta'),
        'expires': h.get('expires'),
        'group': h.get('group'),
        'group_index': h.get('group_index'),
        'root_id': h.get('root_id'),
        'parent_id': h.get('parent_id'),
        'shadow': h.get('shadow'),
        'origin': h.get('origin'),
        'timelimit': h.get('timelimit'),  # (as sent: Celery's request has the header's list)
        'ignore_result': h.get('ignore_result'),  # (None: the sender left it to the task)
        'stamps': h.get('stamps'),
        'stamped_headers': h.get('stamped_headers'),
        'replaced_task_nesting': h.get('replaced_task_nesting') or 0,
        'headers': h,
        'correlation_id': props.get('correlation_id'),
        'reply_to': props.get('reply_to'),
        'delivery_info': delivery_info,
        'hostname': hostname,
    }
    if 'ignore_result' not in h:  # (left out, so the Context's default and the task's apply, as in Celery)
        del request['ignore_result']
    args, kwargs, embed = protocol.decode_body(message.body, message.content_type, h.get('compression'), accept)
    for key in ('callbacks', 'errbacks', 'chain', 'chord'):
        request[key] = embed.get(key)
    return args, kwargs, request


def fast(data: bytes, accept=JSON):
    return _core.job_request(data, 'celery', True, 'w@h', accept, json_tag_hook)


def agrees(data: bytes, accept=JSON) -> None:
    """job_request, if it answers, says what the general path says."""
    got = fast(data, accept)
    if got is None:
        return
    assert list(got) == list(reference(data, 'celery', True, 'w@h', accept))


ENVELOPES = {
    'plain': envelope(),
    'every header': envelope(
        priority=5,
        eta='2030-01-01T00:00:00+00:00',
        expires='2030-01-02T00:00:00+00:00',
        time_limit=30,
        soft_time_limit=20.5,
        retries=3,
        shadow='alias',
        group_id='g',
        group_index=2,
        root_id='root',
        parent_id='parent',
        ignore_result=True,
        headers={'fastq_sent_at': 1.5, 'custom': [1, {'a': 2}]},
    ),
    'workflow': envelope(
        embed={
            'callbacks': [{'task': 'tasks.cb', 'args': [], 'kwargs': {}, 'options': {}}],
            'chain': [{'task': 'tasks.next', 'args': [], 'kwargs': {}, 'options': {}}],
        }
    ),
    'msgpack': envelope(serializer='msgpack', args=(b'\x00\xff', 1.5), kwargs={'n': None}),
}


@pytest.mark.parametrize('name', ENVELOPES)
def test_gives_what_the_general_path_gives(name):
    data = ENVELOPES[name]
    got = fast(data, BOTH)
    assert got is not None
    assert list(got) == list(reference(data, 'celery', True, 'w@h', BOTH))
    args, kwargs, request = got
    assert request['timelimit'] == ([30, 20.5] if name == 'every header' else [None, None])
    assert request['delivery_info'] == {
        'exchange': '',
        'routing_key': 'celery',
        'priority': 5 if name == 'every header' else 0,
        'redelivered': True,
    }


def test_a_str_envelope_too():
    text = ENVELOPES['plain'].decode()
    assert list(fast(text)) == list(reference(text, 'celery', True, 'w@h', JSON))


def test_workflow_fields_come_from_the_body():
    _, _, request = fast(ENVELOPES['workflow'])
    assert request['callbacks'][0]['task'] == 'tasks.cb' and request['chain'][0]['task'] == 'tasks.next'
    assert request['errbacks'] is None and request['chord'] is None


def test_kombu_type_tags_go_through_the_tag_hook():
    _, kwargs, _ = fast(envelope(kwargs={'when': datetime(2030, 1, 2, 3, 4, 5)}))
    assert kwargs == {'when': datetime(2030, 1, 2, 3, 4, 5)}


def test_a_plain_text_body_and_missing_properties():
    doc = {
        'body': '[[1], {}, null]',
        'content-encoding': 'utf-8',
        'content-type': 'application/json',
        'headers': {'id': 'i', 'task': 't', 'retries': None, 'replaced_task_nesting': False},
        'properties': {'delivery_info': [['routing_key', 'elsewhere']]},
    }
    data = json.dumps(doc).encode()
    got = fast(data)
    assert got is not None
    agrees(data)
    args, kwargs, request = got
    assert args == [1] and kwargs == {}
    assert request['retries'] == 0 and request['replaced_task_nesting'] == 0 and 'ignore_result' not in request
    assert request['delivery_info'] == {'routing_key': 'elsewhere', 'priority': None, 'redelivered': True}
    assert request['correlation_id'] is None and request['chord'] is None


@pytest.mark.parametrize(
    'data, accept',
    [
        (envelope(compression='zlib'), JSON),  # decompressing is the general path's
        (envelope(serializer='msgpack'), JSON),  # not accepted: refused there, in its words
        (envelope(serializer='pickle'), frozenset({'application/x-python-serialize'})),
        *[(doc, JSON) for doc in MALFORMED_ENVELOPES],
    ],
)
def test_leaves_the_rest_to_the_general_path(data, accept):
    assert _core.job_request(data, 'q', False, 'h', accept, json_tag_hook) is None


@pytest.mark.parametrize(
    'body',
    [b'[1, 2]', b'{}', b'[[], [], {}]', b'[{}, {}, {}]', b'[[], {}, []]', b'[[], {}, {}] x', b'\xff'],
)
def test_bad_bodies_are_reported_by_the_general_path(body):
    import base64

    doc = json.loads(ENVELOPES['plain'])
    doc['body'] = base64.b64encode(body).decode()
    data = json.dumps(doc).encode()
    assert fast(data) is None
    message = _core.Message.from_envelope(data, None)
    with pytest.raises(DecodeError):
        protocol.decode_body(message.body, message.content_type, None, JSON)


def _variant(edit) -> bytes:
    """The plain envelope's JSON text after `edit` (a function of the text)."""
    return edit(ENVELOPES['plain'].decode()).encode()


def _celery_text() -> str:
    """An envelope as Celery's kombu writes it: members in kombu's order, `delivery_info` before `priority`."""
    doc = json.loads(ENVELOPES['plain'])
    properties = doc.pop('properties')
    return json.dumps({**doc, 'properties': dict(sorted(properties.items()))})


# Envelopes the child's one-pass reader must answer, each as the general path does.
ANSWERED = {
    'kombu order': _celery_text().encode(),
    'null body_encoding, plain text body': json.dumps(
        {**json.loads(ENVELOPES['plain']), 'body': '[[1, 2], {}, {}]'}
        | {'properties': {**json.loads(ENVELOPES['plain'])['properties'], 'body_encoding': None}}
    ).encode(),
    'utf-8 body_encoding': json.dumps(
        {**json.loads(ENVELOPES['plain']), 'body': '[[1, 2], {}, {}]'}
        | {'properties': {**json.loads(ENVELOPES['plain'])['properties'], 'body_encoding': 'UTF-8'}}
    ).encode(),
    'no delivery_info': json.dumps(
        {**json.loads(ENVELOPES['plain']), 'properties': {'body_encoding': 'base64', 'priority': 3}}
    ).encode(),
    'members it skips nested deep': _variant(
        lambda t: t.replace(
            '"properties": {', '"x": {"a": [{"b": [1, 2.5, null, true]}]}, "properties": {"y": [[{}]], '
        )
    ),
    'escaped key in the headers': _variant(lambda t: t.replace('"lang"', '"l\\u0061ng"')),
}

# Envelopes it may leave to the general path (None), and must then not contradict it.
UNUSUAL = {
    'repeated headers': _variant(lambda t: t.replace('"headers": {', '"headers": {"task": "x"}, "headers": {')),
    'repeated properties': _variant(lambda t: t.replace('"properties": {', '"properties": {}, "properties": {')),
    'repeated body_encoding': _variant(
        lambda t: t.replace('"body_encoding": "base64"', '"body_encoding": null, "body_encoding": "base64"')
    ),
    'repeated priority': _variant(lambda t: t.replace('"priority": 0', '"priority": 0, "priority": 7')),
    'escaped envelope key': _variant(lambda t: t.replace('"body"', '"b\\u006fdy"')),
    'escaped property key': _variant(lambda t: t.replace('"reply_to"', '"reply\\u005fto"')),
    'escaped body': _variant(lambda t: t.replace('"body": "', '"body": "\\u0057')),
    'big int skipped': _variant(lambda t: t.replace('"delivery_mode": 2', '"delivery_mode": ' + '9' * 40)),
    'body not a string': _variant(lambda t: t.replace('"body": "', '"body": 5, "z": "')),
    'headers not an object': _variant(lambda t: t.replace('"headers": {', '"headers": [], "h": {')),
    'properties not an object': _variant(lambda t: t.replace('"properties": {', '"properties": [], "p": {')),
}


@pytest.mark.parametrize('name', ANSWERED)
def test_the_one_pass_reader_answers(name):
    data = ANSWERED[name]
    assert fast(data) is not None
    agrees(data)


@pytest.mark.parametrize('name', UNUSUAL)
def test_the_one_pass_reader_never_contradicts(name):
    data = UNUSUAL[name]
    assert data != ENVELOPES['plain']  # the edit applied
    try:
        _core.Message.from_envelope(data, None)
    except ValueError:
        assert fast(data) is None  # the general path refuses it: so does the fast one
    else:
        agrees(data)


def test_repeated_members_read_as_the_general_path_reads_them():
    """A JSON object's later member wins, in the headers as everywhere (the general path's dict)."""
    data = _variant(lambda t: t.replace('"headers": {', '"headers": {"task": "x"}, "headers": {'))
    got = fast(data)
    assert got is None or got[2]['task'] == 'tasks.add'


@settings(max_examples=400, deadline=None)
@given(st.data())
def test_mutated_envelopes_never_disagree(data):
    """Whatever bytes a broker hands over: None, or what the general path gives."""
    agrees(mutated(data, ENVELOPES.values()), BOTH)


def test_task_request_of_a_decoded_message():
    message = _core.Message.from_envelope(ENVELOPES['every header'], None)
    request = _core.task_request(message.headers, message.properties, 'q', False, 'w@h')
    _, _, expected = reference(ENVELOPES['every header'], 'q', False, 'w@h', JSON)
    for key in ('callbacks', 'errbacks', 'chain', 'chord'):
        del expected[key]
    assert request == expected
    assert request['headers'] is message.headers  # the same dict, as Celery's request.headers
    assert request['delivery_info'] is not message.properties['delivery_info']  # a copy: it is added to
    assert list(request) == list(expected)


@pytest.fixture
def app():
    app = Fastq('jobs', broker='memory://', backend='cache+memory://')

    @app.task(name='tasks.add', bind=True)
    def add(self, x, y, k=None):
        return (x + y, k, self.request.id, self.request.args, self.request.called_directly, self.request.hostname)

    return app


def payload(data: bytes) -> bytes:
    return marshal.dumps((data, 'celery', False, 30, None, 'w@h'))


def test_prepared_job_runs_with_its_request(app):
    prepared = prepare_payload(app, payload(ENVELOPES['plain']), JSON)
    assert isinstance(prepared, Prepared)
    outcome = execute(prepared.task, prepared.args, prepared.kwargs, prepared.request)
    assert outcome.state == 'SUCCESS'
    assert outcome.retval == (3, 'é', 'id-1', [1, 2], False, 'w@h')


@pytest.mark.parametrize('compression', [None, 'zlib'])  # (the one-pass path, and the general one)
def test_the_request_has_the_message_properties_and_limits_as_sent(app, compression):
    """Celery's `request.properties` is the message's properties dict, and `request.timelimit` the header's
    list as sent: `[None, None]` here though the worker enforces 30 s (the payload's limit), which a retry's
    message must not carry on. fastq's request had no properties and the worker's pair, as a tuple."""
    data = envelope(compression=compression)
    prepared = prepare_payload(app, payload(data), JSON)
    assert isinstance(prepared, Prepared)
    ctx = Context.adopt(prepared.request)
    assert ctx.timelimit == [None, None] and ctx.time_limit is None
    json.dumps(vars(ctx))  # (the envelope it reads them from is not one of the fields)
    assert ctx.properties == _core.Message.from_envelope(data, None).properties
    assert vars(ctx)['properties'] is ctx.properties  # (read once)
    assert ctx.properties == {
        'correlation_id': 'id-1',
        'reply_to': 'r',
        'delivery_mode': 2,
        'delivery_info': {'exchange': '', 'routing_key': 'celery'},
        'priority': 0,
        'body_encoding': 'base64',
        'delivery_tag': 'tag-1',
    }
    limited = prepare_payload(app, payload(envelope(time_limit=10, soft_time_limit=5)), JSON)
    assert isinstance(limited, Prepared) and limited.request['timelimit'] == [10, 5]


@pytest.mark.parametrize(('sent', 'expected'), [(None, None), (False, False), (True, True), ('absent', False)])
def test_the_request_ignore_result_is_the_header(app, sent, expected):
    """Celery's `request.ignore_result` is the header as sent: None from a `send_task` that left it to the
    task (fastq's read False), the Context's default False when absent; either way the task's applies."""
    from fastq.task import actual_ignore_result

    doc = json.loads(envelope())
    if sent == 'absent':
        del doc['headers']['ignore_result']
    else:
        doc['headers']['ignore_result'] = sent
    prepared = prepare_payload(app, payload(json.dumps(doc).encode()), JSON)
    assert isinstance(prepared, Prepared)
    ctx = Context.adopt(prepared.request)
    assert ctx.ignore_result is expected
    task = app.tasks['tasks.add']
    for ignores in (False, True):
        task.ignore_result = ignores
        assert actual_ignore_result(task, ctx) is (ignores if sent in (None, 'absent') else sent)


def test_undecodable_jobs_keep_their_error_words(app):
    doc = json.loads(ENVELOPES['plain'])
    doc['body'] = 'WzEsIDJd'  # [1, 2]
    outcome = prepare_payload(app, payload(json.dumps(doc).encode()), JSON)
    assert isinstance(outcome, Outcome) and outcome.state == DECODE_ERROR
    assert outcome.exc_repr == 'DecodeError: malformed task body: expected 3 items [args, kwargs, embed], got 2'
    outcome = prepare_payload(app, payload(envelope(serializer='msgpack')), JSON)
    assert isinstance(outcome, Outcome) and outcome.state == DECODE_ERROR
    assert outcome.exc_repr.startswith(ContentDisallowed.__name__)
    outcome = prepare_payload(app, payload(b'not json'), JSON)
    assert isinstance(outcome, Outcome) and outcome.exc_repr.startswith('ValueError: Expecting value')


def test_compressed_jobs_take_the_general_path(app):
    prepared = prepare_payload(app, payload(envelope(compression='zlib')), JSON)
    assert isinstance(prepared, Prepared) and prepared.args == [1, 2]


def test_a_context_adopts_the_request_dict():
    from fastq.task import Context

    fields = {'id': 'x', 'retries': 2}
    ctx = Context.adopt(fields)
    assert ctx.__dict__ is fields
    assert (ctx.id, ctx.retries, ctx.children, ctx.is_eager, ctx.get('group')) == ('x', 2, [], False, None)
    ctx.update(group='g')
    assert fields['group'] == 'g'


def test_run_payload_runs_the_usual_job_as_the_general_path_does(app):
    """`run_payload` and `prepare_payload` + `run_prepared` give the same outcome, with and without a soft
    time limit, for an unknown task and an undecodable envelope."""
    from fastq.worker.job import run_payload, run_prepared

    def general(data: bytes) -> Outcome:
        prepared = prepare_payload(app, data, JSON)
        return prepared if isinstance(prepared, Outcome) else run_prepared(app, prepared)

    def wire(outcome: Outcome) -> tuple[Any, ...]:
        return (outcome.state, outcome.retval_repr, outcome.exc_repr)

    usual = payload(ENVELOPES['plain'])
    assert wire(run_payload(app, usual, JSON)) == wire(general(usual))
    assert run_payload(app, usual, JSON).retval == (3, 'é', 'id-1', [1, 2], False, 'w@h')
    soft = marshal.dumps((ENVELOPES['plain'], 'celery', False, 30, 20.0, 'w@h'))  # arms SIGALRM: general path
    assert wire(run_payload(app, soft, JSON)) == wire(general(soft)) == (states.SUCCESS, wire(general(usual))[1], '')
    unknown = payload(envelope(name='tasks.nope'))
    assert wire(run_payload(app, unknown, JSON)) == (states.FAILURE, '', "NotRegistered('tasks.nope')")
    undecodable = payload(b'not json')
    assert run_payload(app, undecodable, JSON).state == DECODE_ERROR
