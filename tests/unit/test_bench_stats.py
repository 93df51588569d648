"""The benchmark suite's arithmetic and tables (benches/suite/stats.py, queues.clone): no processes, no timing."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / 'benches'))

from suite.queues import clone
from suite.stats import BY_KEY, Results, advantage, format_value, percentile, render, summarize


def results() -> Results:
    r = Results()
    for metric, pairs in (
        ('drain', [(50_000.0, 1_000.0), (40_000.0, 1_000.0), (60_000.0, 2_000.0)]),
        ('latency-p50', [(0.5, 3.0), (0.4, 2.0), (0.6, 4.0)]),
    ):
        for round_, (fastq, celery) in enumerate(pairs):
            r.add('fastq', metric, fastq, round_)
            r.add('celery', metric, celery, round_)
    r.add('celery-default', 'drain', 500, 0)
    r.add('fastq', 'soak-growth', 1.5, 0)
    r.add('celery', 'soak-growth', 12.0, 0)
    return r


def test_summary_is_median_and_range() -> None:
    s = summarize([3.0, 1.0, 2.0, 10.0])
    assert s is not None
    assert (s.median, s.low, s.high, s.count) == (2.5, 1.0, 10.0, 4)
    assert summarize([]) is None


def test_advantage_higher_is_better_for_throughput() -> None:
    adv = advantage(results(), BY_KEY['drain'])
    assert adv is not None
    assert adv.ratio == pytest.approx(50_000 / 1_000)
    assert adv.low == pytest.approx(30.0)  # per-round pairs: 50, 40, 30
    assert adv.high == pytest.approx(50.0)
    assert adv.rounds == 3


def test_advantage_lower_is_better_for_latency() -> None:
    adv = advantage(results(), BY_KEY['latency-p50'])
    assert adv is not None
    assert adv.ratio == pytest.approx(3.0 / 0.5)
    assert adv.low == pytest.approx(5.0)
    assert adv.high == pytest.approx(20 / 3)


def test_no_ratio_for_growth_or_a_missing_side() -> None:
    r = results()
    assert advantage(r, BY_KEY['soak-growth']) is None
    assert advantage(r, BY_KEY['e2e']) is None
    only_round0 = advantage(r, BY_KEY['drain'], other='celery-default')
    assert only_round0 is not None and only_round0.rounds == 1 and only_round0.ratio == pytest.approx(100.0)


def test_percentile_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 50) == 50.0
    assert percentile(values, 99) == 99.0
    assert percentile(values, 100) == 100.0
    assert percentile([7.0], 99) == 7.0
    with pytest.raises(ValueError):
        percentile([], 50)


def test_format_value_by_unit() -> None:
    assert format_value(123456.7, 'tasks/s') == '123,457'
    assert format_value(0.4567, 'ms') == '0.457'
    assert format_value(2.345, 'ms') == '2.35'  # float rounding of 2.345 goes down; two decimals either way
    assert format_value(130.04, 'MiB') == '130.0'
    assert format_value(-1.25, '%') == '-1.2'


def test_text_and_markdown_tables() -> None:
    r = results()
    text = render(r)
    lines = text.splitlines()
    assert lines[0].split()[:6] == ['workload', 'unit', 'fastq', 'Celery', 'fastq', 'adv.']
    drain = next(line for line in lines if line.startswith('drain'))
    assert '50,000 (40,000-60,000)' in drain
    assert '50.0x (30.0x-50.0x)' in drain
    assert '100x' in drain  # against Celery's defaults, a single round: no range
    assert drain.endswith('>= 50,000, 25x')  # issue 5's target, last
    growth = next(line for line in lines if 'growth' in line)
    assert '+1.5' in growth and '+12.0' in growth
    assert 'floor' not in lines[0]  # columns without any value are left out
    md = render(r, markdown=True).splitlines()
    assert md[0].startswith('| workload | unit | fastq | Celery | fastq adv. | Celery defaults | adv. vs defaults |')
    assert md[1] == '|---|---|' + '---:|' * 6  # five value columns and the target
    assert all(line.count('|') == md[0].count('|') for line in md)


def test_clone_gives_every_copy_its_own_id_and_tag() -> None:
    task_id, tag = '11111111-2222-3333-4444-555555555555', '99999999-8888-7777-6666-555555555555'
    envelope = {
        'body': 'W1tdLCB7fSwge31d',
        'headers': {'id': task_id, 'root_id': task_id, 'task': 'benchapp.noop'},
        'properties': {'correlation_id': task_id, 'delivery_tag': tag},
    }
    copies = [json.loads(c) for c in clone(json.dumps(envelope).encode(), 50)]
    ids = {c['headers']['id'] for c in copies}
    assert len(ids) == 50 and task_id not in ids
    assert len({c['properties']['delivery_tag'] for c in copies}) == 50
    for c in copies:
        assert c['headers']['root_id'] == c['headers']['id'] == c['properties']['correlation_id']
        assert c['body'] == envelope['body'] and c['headers']['task'] == 'benchapp.noop'


def test_drain_floor_is_a_column_and_a_floor_line() -> None:
    from suite.run import floor_text

    r = results()
    for round_, rate in enumerate((58_000.0, 55_000.0, 60_000.0)):
        r.add('floor-fetch', 'drain', rate, round_)
    r.add('floor-1rt', 'publish', 14_000.0, 0)
    lines = render(r).splitlines()
    assert 'floor fetch' in lines[0]
    drain = next(line for line in lines if line.startswith('drain'))
    assert '58,000 (55,000-60,000)' in drain
    text = floor_text(r).splitlines()
    assert any(line.startswith('- publish: one LPUSH') and line.endswith(': 14,000 tasks/s') for line in text)
    assert any(line.startswith('- drain: one consumer') and line.endswith(': 58,000 tasks/s') for line in text)
