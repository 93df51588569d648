"""The Canvas guide's printed workflows, with the real celery package as the oracle: a group keeps the shape it
was given (tuple, list), and a generator's signatures print as Celery's lazy `_regen` shows them at that
point (what it has read so far, `...` until it has read them all)."""

from __future__ import annotations

from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import pytest

celery = pytest.importorskip('celery')
from celery import canvas as celery_canvas  # noqa: E402

from fastq import Fastq  # noqa: E402
from fastq import canvas as fastq_canvas  # noqa: E402


def _side(app: Any, canvas: Any) -> SimpleNamespace:
    @app.task(name='tasks.add', shared=False)
    def add(x: Any, y: Any = 0) -> Any:
        return x + y

    @app.task(name='tasks.xsum', shared=False)
    def xsum(values: Any) -> Any:
        return sum(values)

    return SimpleNamespace(add=add, xsum=xsum, group=canvas.group, chord=canvas.chord, chain=canvas.chain)


@pytest.fixture(scope='module')
def celery_side() -> Iterator[SimpleNamespace]:
    app = celery.Celery('tasks', broker='memory://', backend='cache+memory://', set_as_current=False)
    yield _side(app, celery_canvas)


@pytest.fixture
def fastq_side() -> Iterator[SimpleNamespace]:
    app = Fastq('tasks', broker='memory://', backend='memory://', set_as_current=False)
    yield _side(app, fastq_canvas)
    app.close()


def _printed(T: SimpleNamespace) -> list[str]:
    add, xsum, group, chord, chain = T.add, T.xsum, T.group, T.chord, T.chain

    def gen(n: int) -> Iterator[Any]:
        return (add.s(i, i) for i in range(n))

    out = [repr(group(gen(n))) for n in range(4)]
    g = group(gen(5))
    out += [repr(g), repr(g.tasks[2]), repr(g), str(len(g)), repr(g)]  # read further, then all
    g = group(gen(3))
    g.freeze()
    out.append(repr(g))  # frozen: a new lazy list (unread), as Celery's
    g = group(gen(3))
    g.stamp(on='x')
    out += [repr(g), repr(group(gen(3)).skew()), repr(group(gen(3)) | xsum.s())]
    c = chord(gen(3), xsum.s())
    out += [repr(c), repr(chord(gen(2))), repr(c.tasks), str(len(c.tasks)), repr(c)]
    c = chord([add.s(1, 1), add.s(2, 2)], xsum.s())
    c.freeze()
    out.append(repr(c))  # the header became a group
    out += [
        repr(group([add.s(1, 1), add.s(2, 2)])),
        repr(group((add.s(1, 1), add.s(2, 2)))),
        repr(group(add.s(1, 1))),
        repr(group(add.s(1, 1), add.s(2, 2)).clone()),
        repr(group([add.s(1, 1), add.s(2, 2)]).clone()),
        repr(chord(group(add.s(1, 1), add.s(2, 2)), xsum.s())),
        repr(group(add.s(1, 1), add.s(2, 2)) | group(xsum.s(), xsum.s())),
        repr(chain(add.s(1, 1), group(add.s(i) for i in range(3)), xsum.s())),
        repr(add.map(range(3))),
        repr(add.map((1, 2))),
        repr(add.starmap(zip(range(2), range(2), strict=True))),
        repr(add.starmap([(i, i) for i in range(40)])),  # cut at 100 characters, at a space
    ]
    ch = add.chunks(zip(range(4), range(4), strict=True), 2)
    out += [repr(ch), repr(ch.group()), repr(ch)]
    return out


def test_printed_as_celery_prints_them(celery_side: SimpleNamespace, fastq_side: SimpleNamespace) -> None:
    assert _printed(fastq_side) == _printed(celery_side)


def test_a_generators_group_still_sends_every_task(fastq_side: SimpleNamespace) -> None:
    g = fastq_side.group(fastq_side.add.s(i, i) for i in range(4))
    assert repr(g) == 'group(<_regen: [tasks.add(0, 0), add(1, 1)...]>)'
    assert g.apply().get() == [0, 2, 4, 6]
    assert fastq_side.chord((fastq_side.add.s(i, i) for i in range(3)), fastq_side.xsum.s()).apply().get() == 6


def test_never_call_get_within_a_task_reads_as_celerys() -> None:
    from celery.result import E_WOULDBLOCK as celery_text

    from fastq.result import E_WOULDBLOCK

    assert E_WOULDBLOCK == celery_text
