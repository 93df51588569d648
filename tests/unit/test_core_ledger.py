"""fastq._core.Ledger through its Python surface, against a plain-Python model."""

import pytest
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from fastq import _core

UNLIMITED = 2**31 - 1


def test_lifecycle():
    ledger = _core.Ledger(3)
    assert (ledger.window, ledger.free(), len(ledger)) == (3, 3, 0)
    ledger.add('a')
    ledger.add(1)
    ledger.add('1')
    assert ledger.free() == 0
    assert ledger.held() == ['a', 1, '1']
    assert [type(t) for t in ledger.held()] == [str, int, str]
    ledger.start(1)
    assert ledger.is_active(1) and not ledger.is_active('1') and not ledger.is_active('zz')
    assert ledger.reserved() == ['a', '1']
    assert ledger.active() == [1]
    assert 1 in ledger and '1' in ledger and 2 not in ledger
    assert ledger.settle('a') is True
    assert ledger.settle('a') is False
    assert ledger.free() == 1
    assert len(ledger) == 2


def test_errors():
    ledger = _core.Ledger(0)
    ledger.add('tag')
    with pytest.raises(KeyError) as e:
        ledger.add('tag')
    assert e.value.args == ('tag',)
    with pytest.raises(KeyError):
        ledger.start('other')
    for bad in [1.5, None, b'tag', (1,), 2**200]:
        with pytest.raises(TypeError):
            ledger.add(bad)
        with pytest.raises(TypeError):
            ledger.settle(bad)
        assert bad not in ledger
        assert not ledger.is_active(bad)
    with pytest.raises(OverflowError):
        _core.Ledger(-1)


def test_window():
    ledger = _core.Ledger(0)
    assert ledger.free() == UNLIMITED
    ledger.add(2**64 + 1)
    ledger.add(-(2**70))
    assert ledger.held() == [2**64 + 1, -(2**70)]
    ledger.window = 1
    assert (ledger.window, ledger.free()) == (1, 0)
    ledger.window = 5
    assert ledger.free() == 3
    with pytest.raises(TypeError):
        ledger.window = 'x'
    assert 'window=5' in repr(ledger)


TAGS = st.integers(-3, 3) | st.sampled_from(['a', 'b', '1', '-1', ''])


class LedgerModel(RuleBasedStateMachine):
    def __init__(self):
        super().__init__()
        self.ledger = _core.Ledger(4)
        self.model = {}  # (type, tag) -> active; dicts keep insertion order

    @staticmethod
    def key(tag):
        return type(tag), tag

    @rule(tag=TAGS)
    def add(self, tag):
        if self.key(tag) in self.model:
            with pytest.raises(KeyError):
                self.ledger.add(tag)
        else:
            self.ledger.add(tag)
            self.model[self.key(tag)] = False

    @rule(tag=TAGS)
    def start(self, tag):
        if self.key(tag) in self.model:
            self.ledger.start(tag)
            self.model[self.key(tag)] = True
        else:
            with pytest.raises(KeyError):
                self.ledger.start(tag)

    @rule(tag=TAGS)
    def settle(self, tag):
        assert self.ledger.settle(tag) is (self.model.pop(self.key(tag), None) is not None)

    @rule(window=st.integers(0, 6))
    def set_window(self, window):
        self.ledger.window = window

    @invariant()
    def agrees(self):
        held = [tag for _, tag in self.model]
        assert [self.key(t) for t in self.ledger.held()] == [self.key(t) for t in held]
        assert [self.key(t) for t in self.ledger.active()] == [k for k, active in self.model.items() if active]
        assert [self.key(t) for t in self.ledger.reserved()] == [k for k, active in self.model.items() if not active]
        window = self.ledger.window
        assert self.ledger.free() == (UNLIMITED if window == 0 else max(0, window - len(held)))
        assert len(self.ledger) == len(held)
        assert all(t in self.ledger for t in held)


TestLedgerModel = LedgerModel.TestCase
