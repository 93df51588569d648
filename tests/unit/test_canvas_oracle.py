"""The real celery package is the oracle for workflows: the same canvas must produce the same messages.

Each case builds one canvas with Celery 5.7 (memory transport, its `_put` captured) and the same canvas with
fastq (memory broker), sends both, and compares every message (queue, headers, properties, decoded body with
its `callbacks`/`errbacks`/`chain`/`chord` embed) and the returned result's `as_tuple()`. Ids are random, so
each uuid is replaced by `<idN>`, numbered by first appearance in the sorted JSON of the whole exchange: the
two sides must agree on which ids are the same (a body's `group_id` is its header's group, a chain's next
step is the result's parent, ...), not on their values. The sender's reply_to oid becomes `<oid>`.

The second half plays a worker: it takes what Celery put in the first message's embed and sends the next
step as each side's worker would (pop the reversed chain, or send the chord body with the header's values),
so a fastq worker continues a Celery-built workflow exactly as a Celery worker does.
"""

from __future__ import annotations

import base64
import copy
import json
import re
import warnings
from collections.abc import Callable, Iterator
from types import SimpleNamespace
from typing import Any

import pytest

celery = pytest.importorskip('celery')
from celery import canvas as celery_canvas  # noqa: E402
from kombu.transport import memory as kombu_memory  # noqa: E402

from fastq import Fastq  # noqa: E402
from fastq import canvas as fastq_canvas  # noqa: E402
from fastq.brokers.memory import MemoryBroker  # noqa: E402

UUID = re.compile(r'[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}')


def _namespace(app: Any, canvas: Any) -> SimpleNamespace:
    @app.task(name='oracle.add', shared=False)
    def add(x: Any, y: Any = 0) -> Any:
        return x + y

    @app.task(name='oracle.xsum', shared=False)
    def xsum(values: Any) -> Any:
        return sum(values)

    @app.task(name='oracle.err', shared=False)
    def err(task_id: str) -> str:
        return task_id

    return SimpleNamespace(
        add=add, xsum=xsum, err=err, chain=canvas.chain, group=canvas.group, chord=canvas.chord, app=app
    )


@pytest.fixture(scope='module')
def celery_side() -> Iterator[SimpleNamespace]:
    # Celery's cache backend joins chords by counting (no chord_unlock message), as fastq's memory backend does.
    app = celery.Celery('oracle', broker='memory://', backend='cache+memory://', set_as_current=False)
    yield _namespace(app, celery_canvas)


@pytest.fixture
def fastq_side() -> Iterator[SimpleNamespace]:
    app = Fastq('oracle', broker='memory://', backend='memory://', set_as_current=False)
    yield _namespace(app, fastq_canvas)
    app.close()


@pytest.fixture
def captured(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, dict[str, Any]]]:
    out: list[tuple[str, dict[str, Any]]] = []
    original = kombu_memory.Channel._put

    def put(self: Any, queue: str, message: dict[str, Any], **kwargs: Any) -> Any:
        out.append((queue, json.loads(json.dumps(message))))
        return original(self, queue, message, **kwargs)

    monkeypatch.setattr(kombu_memory.Channel, '_put', put)
    return out


def fastq_sent(app: Fastq) -> list[tuple[str, dict[str, Any]]]:
    broker = app.broker
    assert isinstance(broker, MemoryBroker)
    sent = [(m.queue, json.loads(m.payload)) for m in broker._state.messages.values()]
    broker._state.messages.clear()
    return sent


def normalise(sent: list[tuple[str, dict[str, Any]]], result: Any, oids: tuple[str, ...]) -> Any:
    messages = []
    for queue, envelope in sent:
        props = {k: v for k, v in envelope['properties'].items() if k not in ('delivery_tag', 'delivery_info')}
        body = json.loads(base64.b64decode(envelope['body']))
        # fastq's own header (its send time, for the time-in-queue metric): Celery sends none
        headers = {k: v for k, v in envelope['headers'].items() if k != 'fastq_sent_at'}
        messages.append({'queue': queue, 'headers': headers, 'properties': props, 'body': body})
    text = json.dumps(_sorted_stamp_names({'messages': messages, 'result': result}), sort_keys=True)
    for oid in oids:
        text = text.replace(oid, '<oid>')
    ids: dict[str, str] = {}
    return json.loads(UUID.sub(lambda m: ids.setdefault(m.group(0), f'<id{len(ids)}>'), text))


def as_tuple(result: Any) -> Any:
    return result.as_tuple() if result is not None else None


Build = Callable[[SimpleNamespace], Any]


class Visitor:
    """A stamping visitor (duck-typed: Celery's and fastq's stamp() only call these methods)."""

    def on_signature(self, sig: Any, **headers: Any) -> dict[str, Any]:
        return {'on_sig': 'S', 'task_stamp': sig.task}

    def on_group_start(self, group: Any, **headers: Any) -> dict[str, Any]:
        return {'grp': 'G'}

    def on_group_end(self, group: Any, **headers: Any) -> None:
        pass

    def on_chain_start(self, chain: Any, **headers: Any) -> dict[str, Any]:
        return {'chn': 'C'}

    def on_chain_end(self, chain: Any, **headers: Any) -> None:
        pass

    def on_chord_header_start(self, sig: Any, **headers: Any) -> dict[str, Any]:
        return {'hdr': 'H'}

    def on_chord_header_end(self, sig: Any, **headers: Any) -> None:
        pass

    def on_chord_body(self, sig: Any, **headers: Any) -> dict[str, Any]:
        return {'body_stamp': 'B'}

    def on_callback(self, callback: Any, **headers: Any) -> dict[str, Any]:
        return {'cb': 'L'}

    def on_errback(self, errback: Any, **headers: Any) -> dict[str, Any]:
        return {'eb': 'E'}


def _stamped(sig: Any, append_stamps: bool = False, **headers: Any) -> Any:
    sig.stamp(Visitor(), append_stamps, **headers)
    return sig


def _sorted_stamp_names(value: Any) -> Any:
    """Celery lists stamped_headers in a set's order (per process): compare them sorted."""
    if isinstance(value, dict):
        return {
            k: sorted(v) if k == 'stamped_headers' and isinstance(v, list) else _sorted_stamp_names(v)
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [_sorted_stamp_names(v) for v in value]
    return value


CASES: list[tuple[str, Build]] = [
    ('chain', lambda T: T.chain(T.add.s(1, 1), T.add.s(2), T.add.si(9, 9)).apply_async()),
    ('pipe', lambda T: (T.add.s(1, 1) | T.add.s(2) | T.add.s(3)).apply_async()),
    ('chain partial args', lambda T: T.chain(T.add.s(1), T.add.s(2)).apply_async((10,))),
    ('chain task_id', lambda T: T.chain(T.add.s(1, 1), T.add.s(2)).apply_async(task_id=str(UUID_FIXED))),
    ('chain links', lambda T: T.chain(T.add.s(1, 1), T.add.s(2)).on_error(T.err.s()).apply_async(link=T.err.si(1))),
    ('group', lambda T: T.group(T.add.s(1, 1), T.add.s(2, 2)).apply_async()),
    ('group generator', lambda T: T.group(T.add.s(i, i) for i in range(3)).apply_async()),
    ('group partial args', lambda T: T.group(T.add.s(1), T.add.s(2)).apply_async((10,))),
    ('group options', lambda T: T.group(T.add.s(1, 1), T.add.s(2, 2)).apply_async(queue='other', priority=3)),
    ('chord', lambda T: T.chord([T.add.s(1, 1), T.add.s(2, 2)], T.xsum.s()).apply_async()),
    ('chord(header)(body)', lambda T: T.chord([T.add.s(1, 1), T.add.s(2, 2)])(T.xsum.s())),
    ('chord partial args', lambda T: T.chord([T.add.s(1), T.add.s(2)], T.xsum.s()).apply_async((10,))),
    ('chord errback', lambda T: T.chord([T.add.s(1, 1)], T.xsum.s().on_error(T.err.s())).apply_async()),
    ('chain ending in group', lambda T: T.chain(T.add.s(1, 1), T.group(T.add.s(1), T.add.s(2))).apply_async()),
    (
        'chord in a chain',
        lambda T: (T.add.s(1, 1) | T.group(T.add.s(1), T.add.s(2)) | T.xsum.s() | T.add.s(5)).apply_async(),
    ),
    (
        'chord then group',
        lambda T: (
            T.add.s(1, 1) | T.chord([T.add.s(1), T.add.s(2)], T.xsum.s()) | T.group(T.add.s(1), T.add.s(2))
        ).apply_async(),
    ),
    (
        'group of chains',
        lambda T: T.group(T.chain(T.add.s(1, 1), T.add.s(1)), T.chain(T.add.s(2, 2), T.add.s(2))).apply_async(),
    ),
    (
        'chain as chord body',
        lambda T: T.chord([T.add.s(1, 1), T.add.s(2, 2)], T.chain(T.xsum.s(), T.add.s(1))).apply_async(),
    ),
    (
        'chord in a group',
        lambda T: T.group(T.chord([T.add.s(1, 1), T.add.s(2, 2)], T.xsum.s()), T.add.s(3, 3)).apply_async(),
    ),
    (
        'nested chords',
        lambda T: T.chord(
            [T.chord([T.add.s(1, 1), T.add.s(2, 2)], T.xsum.s()), T.add.s(3, 3)], T.xsum.s()
        ).apply_async(),
    ),
    (
        'chain of chords',
        lambda T: T.chain(
            T.chord([T.add.s(1, 1), T.add.s(2, 2)], T.xsum.s()), T.chord([T.add.s(1), T.add.s(2)], T.xsum.s())
        ).apply_async(),
    ),
    (
        'chord links',
        lambda T: T.chord([T.add.s(1, 1), T.add.s(2, 2)], T.xsum.s()).apply_async(link=T.err.s(), link_error=T.err.s()),
    ),
    ('chord options', lambda T: T.chord([T.add.s(1, 1)], T.xsum.s()).set(queue='q2').apply_async()),
    ('immutable chord body', lambda T: T.chord([T.add.s(1, 1)], T.err.si('x')).apply_async()),
    (
        'chain in a chord header',
        lambda T: T.chord([T.chain(T.add.s(1, 1), T.add.s(2)), T.add.s(3, 3)], T.xsum.s()).apply_async(),
    ),
    ('chain options', lambda T: T.chain(T.add.s(1, 1), T.add.s(2)).set(queue='q3').apply_async()),
    (
        'group link_error',
        lambda T: (lambda g: (g.link_error(T.err.s()), g.apply_async())[1])(T.group(T.add.s(1), T.add.s(2))),
    ),
    (
        'chain, group of chains',
        lambda T: T.chain(T.add.s(1, 1), T.group(T.chain(T.add.s(1), T.add.s(2)), T.add.s(3))).apply_async(),
    ),
    ('stamp', lambda T: T.add.s(1, 1).stamp(mystamp='S1').apply_async()),
    ('stamp twice, appended', lambda T: T.add.s(1, 1).stamp(a='1').stamp(append_stamps=True, a='2').apply_async()),
    ('stamp twice, kept', lambda T: T.add.s(1, 1).stamp(a='1').stamp(a='2', b='3').apply_async()),
    ('stamp links', lambda T: T.add.s(1, 1).on_error(T.err.s()).stamp(Visitor(), tag='t').apply_async(link=T.add.s(5))),
    ('group stamped by a visitor', lambda T: _stamped(T.group(T.add.s(1, 1), T.add.s(2, 2)), tag='g').apply_async()),
    ('chain stamped by a visitor', lambda T: _stamped(T.chain(T.add.s(1, 1), T.add.s(2))).apply_async()),
    (
        'chord stamped by a visitor',
        lambda T: _stamped(T.chord([T.add.s(1, 1), T.add.s(2, 2)], T.xsum.s())).apply_async(),
    ),
    (
        'chain of a group and a chord, stamped',
        lambda T: _stamped(
            T.chain(T.add.s(1, 1), T.group(T.add.s(1), T.add.s(2)), T.chord([T.add.s(3), T.add.s(4)], T.xsum.s())),
            append_stamps=True,
            tag='x',
        ).apply_async(),
    ),
    ('chunks', lambda T: T.add.chunks([(1, 1), (2, 2), (3, 3)], 2).apply_async()),
    ('map', lambda T: T.add.map([1, 2, 3]).apply_async()),
    ('starmap', lambda T: T.add.starmap([(1, 2), (3, 4)]).apply_async()),
]

UUID_FIXED = '11111111-2222-3333-4444-555555555555'
#: Cases whose task arguments hold a signature: Celery's saferepr prints it as a plain dict in the
#: `argsrepr`/`kwargsrepr` headers, fastq as `task(args)`. Those headers are for logs and never parsed back,
#: so this is a deliberate difference (as for bytes in test_protocol_oracle).
SIGNATURE_ARGS = {'chunks', 'map', 'starmap'}


def _celery_send(build: Build, side: SimpleNamespace) -> Any:
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')  # Celery's pending-deprecation notes about chord errbacks
        return build(side)


@pytest.mark.parametrize(('case', 'build'), CASES, ids=[c[0] for c in CASES])
def test_same_messages_as_celery(
    case: str, build: Build, celery_side: Any, fastq_side: Any, captured: list[Any]
) -> None:
    c_result = _celery_send(build, celery_side)
    f_result = build(fastq_side)
    oids = (celery_side.app.thread_oid, fastq_side.app.thread_oid)
    c_doc = normalise(captured, as_tuple(c_result), oids)
    f_doc = normalise(fastq_sent(fastq_side.app), as_tuple(f_result), oids)
    assert c_doc['messages'], 'nothing was sent'
    if case in SIGNATURE_ARGS:
        for c_msg, f_msg in zip(c_doc['messages'], f_doc['messages'], strict=True):
            f_msg['headers']['kwargsrepr'] = c_msg['headers']['kwargsrepr']
    assert f_doc == c_doc


def _first_embed(build: Build, celery_side: Any, captured: list[Any]) -> dict[str, Any]:
    _celery_send(build, celery_side)
    embed: dict[str, Any] = json.loads(base64.b64decode(captured[0][1]['body']))[2]
    captured.clear()
    return embed


CONTINUED = [c for c in CASES if c[0] in {'chain', 'chord in a chain', 'chord then group', 'chain ending in group'}]
JOINED = [c for c in CASES if c[0] in {'chord', 'chain as chord body', 'chain of chords', 'nested chords'}]


@pytest.mark.parametrize(('case', 'build'), CONTINUED, ids=[c[0] for c in CONTINUED])
def test_next_chain_step_as_celery_sends_it(
    case: str, build: Build, celery_side: Any, fastq_side: Any, captured: list[Any]
) -> None:
    """A worker pops the next step of a Celery-built chain: fastq sends what Celery's worker sends."""
    chain = _first_embed(build, celery_side, captured)['chain']
    ids = {'parent_id': 'aaaaaaaa-0000-0000-0000-000000000001', 'root_id': 'aaaaaaaa-0000-0000-0000-000000000002'}
    celery_side.app.set_current()  # a Celery worker's app is current; nested steps resolve through it
    celery_canvas.signature(copy.deepcopy(chain[-1]), app=celery_side.app).apply_async(
        (7,), chain=copy.deepcopy(chain[:-1]), **ids
    )
    # fastq's worker does this with the same message (the last step's message carries `chain: []`, as Celery's):
    from fastq.task import Context
    from fastq.worker.trace import _continue_chain

    request = Context(id=ids['parent_id'], root_id=ids['root_id'])
    _continue_chain(fastq_side.app, copy.deepcopy(chain), 7, request)
    oids = (celery_side.app.thread_oid, fastq_side.app.thread_oid)
    assert normalise(fastq_sent(fastq_side.app), None, oids) == normalise(captured, None, oids)


@pytest.mark.parametrize(('case', 'build'), JOINED, ids=[c[0] for c in JOINED])
def test_chord_body_as_celery_sends_it(
    case: str, build: Build, celery_side: Any, fastq_side: Any, captured: list[Any]
) -> None:
    """The worker completing a Celery-built chord sends its body as Celery's join does (`callback.delay`)."""
    body = _first_embed(build, celery_side, captured)['chord']
    celery_side.app.set_current()
    celery_canvas.maybe_signature(copy.deepcopy(body), app=celery_side.app).delay([1, 2])
    fastq_canvas.maybe_signature(copy.deepcopy(body), app=fastq_side.app).delay([1, 2])
    oids = (celery_side.app.thread_oid, fastq_side.app.thread_oid)
    assert normalise(fastq_sent(fastq_side.app), None, oids) == normalise(captured, None, oids)


def test_chord_unlock_message_as_celery_sends_it(captured: list[Any], tmp_path: Any) -> None:
    """With a backend that cannot count parts, both send `celery.chord_unlock` before the header."""
    from fastq.backends import memory

    class Polling(memory.MemoryBackend):
        def __init__(self, app: Fastq, url: str) -> None:
            super().__init__(app, url)
            self.chord_store = None

    pytest.importorskip('sqlalchemy')
    c_app = celery.Celery('oracle', broker='memory://', backend=f'db+sqlite:///{tmp_path}/c.db', set_as_current=False)
    c_side = _namespace(c_app, celery_canvas)
    f_app = Fastq('oracle', broker='memory://', set_as_current=False)
    f_app._backend = Polling(f_app, 'memory://')
    f_side = _namespace(f_app, fastq_canvas)
    try:
        c_result = _celery_send(lambda T: T.chord([T.add.s(1, 1), T.add.s(2, 2)], T.xsum.s()).apply_async(), c_side)
        f_result = f_side.chord([f_side.add.s(1, 1), f_side.add.s(2, 2)], f_side.xsum.s()).apply_async()
        oids = (c_app.thread_oid, f_app.thread_oid)
        c_doc = normalise(captured, as_tuple(c_result), oids)
        f_doc = normalise(fastq_sent(f_app), as_tuple(f_result), oids)
        assert c_doc['messages'][0]['headers']['task'] == 'celery.chord_unlock'
        # The unlock task's reprs hold the body signature and nested tuples, which Celery's saferepr shows
        # differently (see SIGNATURE_ARGS); its eta is "now + 1 s" on each side.
        for c_msg, f_msg in zip(c_doc['messages'], f_doc['messages'], strict=True):
            for key in ('argsrepr', 'kwargsrepr', 'eta'):
                assert (f_msg['headers'][key] is None) == (c_msg['headers'][key] is None)
                f_msg['headers'][key] = c_msg['headers'][key]
        assert f_doc == c_doc
    finally:
        f_app.close()
        c_app.close()


def test_group_in_a_chord_header_keeps_its_order(fastq_side: Any) -> None:
    """A deliberate difference: Celery flattens a group nested in a chord header with `deque.extendleft`,
    which reverses its members, so the body gets their results backwards; fastq keeps the written order.
    Either way the sender assigns every `group_index`, so workers of both kinds join such a chord alike."""
    T = fastq_side
    T.chord([T.group(T.add.s(1, 1), T.add.s(2, 2)), T.add.s(3, 3)], T.xsum.s()).apply_async()
    sent = [(env['headers'], json.loads(base64.b64decode(env['body']))) for _, env in fastq_sent(T.app)]
    assert [(h['group_index'], body[0]) for h, body in sent] == [(0, [1, 1]), (1, [2, 2]), (2, [3, 3])]


def test_reprs_as_celerys(celery_side: Any, fastq_side: Any) -> None:
    # printed workflows read the same (the module written once, Celery's remove_repeating_from_task)
    def build(T: SimpleNamespace) -> list[Any]:
        add, xsum = T.add, T.xsum
        return [
            add.s(2, 2), add.si(2, 2), add.s(2, y=3), add.s(), T.group(add.s(2, 2), add.s(4, 4)), T.group([]),
            T.chain(add.s(2, 2), add.s(4), add.s(8)), add.s(1, 1) | add.s(2),
            T.chord([add.s(1, 1), add.s(2, 2)], xsum.s()), T.chord([add.s(1, 1)]),
            T.chord([add.s(1, 1)], T.chain(xsum.s(), add.s(1), add.s(2))),
            add.map([1, 2]), add.starmap([(1, 2)]), add.chunks([(1, 1), (2, 2)], 1),
            T.group(T.chain(add.s(1, 1), add.s(2)), xsum.s([1])),
        ]  # fmt: skip

    assert [repr(s) for s in build(fastq_side)] == [repr(s) for s in build(celery_side)]
