"""Medians, spreads and fastq's advantage over Celery; the results table as text and as Markdown.

Pure functions only (no processes, no I/O), so the formatting is unit-tested (tests/unit/test_bench_stats.py).

The advantage is how many times better fastq did, so >1 always means fastq wins: for throughput it is
fastq / celery, for latency and memory celery / fastq. Its value is the ratio of the two medians; its spread is
the lowest and highest ratio of one round's pair (fastq and Celery measured in the same round, back to back).
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

__all__ = [
    'COLUMNS',
    'METRICS',
    'RABBIT',
    'REDIS',
    'TABLES',
    'Advantage',
    'Metric',
    'Results',
    'Summary',
    'Table',
    'advantage',
    'table_of',
    'format_value',
    'percentile',
    'render',
    'summarize',
]


@dataclass(frozen=True)
class Metric:
    key: str
    label: str
    unit: str  # 'tasks/s', 'ms', 'MiB' or '%'
    better: str | None  # 'higher', 'lower', or None when a ratio means nothing (growth in %)
    target: str = ''  # issue 5's target for fastq, as text
    target_ratio: float | None = None  # ... and its advantage over Celery, where the issue sets one


METRICS: tuple[Metric, ...] = (
    Metric('publish', 'publish: delay() per task', 'tasks/s', 'higher', '>= 8,000'),
    Metric('publish-batch', 'publish: group().apply_async()', 'tasks/s', 'higher', '>= 100,000'),
    Metric('drain', 'drain: pre-filled no-op tasks', 'tasks/s', 'higher', '>= 50,000, 25x', 25),
    Metric('e2e', 'e2e: add(i, i), results collected', 'tasks/s', 'higher', '>= 17,000, 10x', 10),
    Metric('e2e-batch', 'e2e: group of add(i, i), results collected', 'tasks/s', 'higher', '>= 17,000, 10x', 10),
    Metric('latency-p50', 'latency p50: add.delay(1,1).get()', 'ms', 'lower', '<= 0.4'),
    Metric('latency-p99', 'latency p99: add.delay(1,1).get()', 'ms', 'lower', '<= 1.5'),
    Metric('soak-rate', 'soak: publish + drain', 'tasks/s', 'higher'),
    Metric('soak-rss-start', 'soak: RSS at start', 'MiB', 'lower'),
    Metric('soak-rss-end', 'soak: RSS at end', 'MiB', 'lower'),
    Metric('soak-rss-max', 'soak: RSS max', 'MiB', 'lower'),
    Metric('soak-growth', 'soak: RSS growth', '%', None, 'within 10'),
    Metric('eta-rss-idle', 'ETA: RSS idle', 'MiB', 'lower'),
    Metric('eta-rss', 'ETA: RSS, ETA tasks waiting', 'MiB', 'lower'),
    Metric('eta-growth', 'ETA: RSS growth', '%', None, 'none'),
)
BY_KEY = {m.key: m for m in METRICS}

# Columns, in order; a column with no value at all is left out of the table.
COLUMNS: tuple[tuple[str, str], ...] = (
    ('fastq', 'fastq'),
    ('celery', 'Celery'),
    ('celery-default', 'Celery defaults'),
    ('fastq-sqlite', 'fastq sqlite'),
    ('fastq-events', 'fastq -E'),
    ('floor-relay', 'floor relay'),
    ('floor-2rt', 'floor 2 RT'),
    ('floor-1rt', 'floor 1 RT'),
    ('floor-fetch', 'floor fetch'),
)
# Advantage columns, each right after the later of the two columns it compares: (title, fastq column, compared
# column).
ADVANTAGES: tuple[tuple[str, str, str], ...] = (
    ('fastq adv.', 'fastq', 'celery'),
    ('adv. vs defaults', 'fastq', 'celery-default'),
    ('-E / off', 'fastq-events', 'fastq'),  # issue 7: task events cost at most 10% of the drain rate
)


# RabbitMQ (issue 6): the same workloads on one RabbitMQ node; Celery (py-amqp) both as configured for the
# other rows and with publisher confirms on, as fastq publishes with confirms; results in the same Redis, and
# (e2e and latency) through the rpc:// backend for both.
RABBIT_COLUMNS: tuple[tuple[str, str], ...] = (
    ('fastq-amqp', 'fastq'),
    ('celery-amqp', 'Celery'),
    ('celery-amqp-confirm', 'Celery + confirms'),
    ('fastq-amqp-rpc', 'fastq rpc://'),
    ('celery-amqp-rpc', 'Celery rpc://'),
    ('floor-amqp-relay', 'floor relay'),
)
RABBIT_ADVANTAGES: tuple[tuple[str, str, str], ...] = (
    ('fastq adv.', 'fastq-amqp', 'celery-amqp'),
    ('adv. vs confirms', 'fastq-amqp', 'celery-amqp-confirm'),
    ('rpc:// adv.', 'fastq-amqp-rpc', 'celery-amqp-rpc'),
)
RABBIT_TARGETS: dict[str, tuple[str, float | None]] = {
    'drain': ('>= 10x', 10),
    'e2e': ('>= 10x', 10),
    'e2e-batch': ('>= 10x', 10),
    'latency-p50': ('<= 0.5', None),
}


@dataclass(frozen=True)
class Table:
    """One results table (one broker family): its columns, advantage columns and targets."""

    key: str  # 'redis' or 'rabbitmq': the section of the report
    title: str
    columns: tuple[tuple[str, str], ...]
    advantages: tuple[tuple[str, str, str], ...]
    target_title: str
    # metric key -> (target text, target advantage or None); None: the targets of METRICS (issue 5)
    targets: dict[str, tuple[str, float | None]] | None = None
    charted: int = 1  # how many of the advantage columns the chart draws

    def target(self, metric: Metric) -> tuple[str, float | None]:
        if self.targets is None:
            return metric.target, metric.target_ratio
        return self.targets.get(metric.key, ('', None))


REDIS = Table('redis', 'Redis (and fastq on SQLite)', COLUMNS, ADVANTAGES, 'target (issue 5)')
RABBIT = Table('rabbitmq', 'RabbitMQ', RABBIT_COLUMNS, RABBIT_ADVANTAGES, 'target (issue 6)', RABBIT_TARGETS, 3)
TABLES: tuple[Table, ...] = (REDIS, RABBIT)


def table_of(column: str) -> Table:
    """The table a column (engine or floor) belongs to."""
    for table in TABLES:
        if any(key == column for key, _ in table.columns):
            return table
    raise KeyError(f'no table has column {column!r}')


@dataclass(frozen=True)
class Summary:
    median: float
    low: float
    high: float
    count: int


@dataclass(frozen=True)
class Advantage:
    ratio: float
    low: float
    high: float
    rounds: int


@dataclass
class Results:
    """Every measured value: `values[column][metric]` maps a round number to the value of that round."""

    values: dict[str, dict[str, dict[int, float]]] = field(default_factory=dict)

    def add(self, column: str, metric: str, value: float, round_: int = 0) -> None:
        if metric not in BY_KEY:
            raise KeyError(f'unknown metric {metric!r}')
        self.values.setdefault(column, {}).setdefault(metric, {})[round_] = float(value)

    def get(self, column: str, metric: str) -> dict[int, float]:
        return self.values.get(column, {}).get(metric, {})

    def columns(self, table: Table = REDIS) -> list[tuple[str, str]]:
        return [(key, title) for key, title in table.columns if any(self.values.get(key, {}).values())]

    def metrics(self, table: Table = REDIS) -> list[Metric]:
        return [m for m in METRICS if any(self.get(col, m.key) for col, _ in table.columns)]

    def only(self, table: Table) -> Results:
        """The values of one table's columns."""
        keys = {key for key, _ in table.columns}
        return Results({k: v for k, v in self.values.items() if k in keys})


def summarize(values: Iterable[float]) -> Summary | None:
    data = sorted(values)
    if not data:
        return None
    return Summary(statistics.median(data), data[0], data[-1], len(data))


def advantage(results: Results, metric: Metric, column: str = 'fastq', other: str = 'celery') -> Advantage | None:
    """How many times better `column` did than `other` on `metric` (>1: better), None without both or a ratio."""
    if metric.better is None:
        return None
    mine, theirs = results.get(column, metric.key), results.get(other, metric.key)
    a, b = summarize(mine.values()), summarize(theirs.values())
    if a is None or b is None:
        return None

    def ratio(x: float, y: float) -> float:
        num, den = (x, y) if metric.better == 'higher' else (y, x)
        return num / den if den > 0 else float('inf')

    paired = [ratio(mine[r], theirs[r]) for r in sorted(mine) if r in theirs]
    if not paired:
        paired = [ratio(a.median, b.median)]
    return Advantage(ratio(a.median, b.median), min(paired), max(paired), len(paired))


def percentile(values: Sequence[float], p: float) -> float:
    """Nearest-rank percentile (p in 0..100) of unsorted values."""
    if not values:
        raise ValueError('no values')
    ordered = sorted(values)
    rank = max(1, -(-len(ordered) * p // 100))  # ceil(n * p / 100), at least the first
    return ordered[min(len(ordered), int(rank)) - 1]


def format_value(value: float, unit: str) -> str:
    if unit == 'tasks/s':
        return f'{value:,.0f}'
    if unit == 'ms':
        return f'{value:.3f}' if value < 1 else f'{value:.2f}'
    if unit == 'MiB':
        return f'{value:,.1f}'
    if unit == '%':
        return f'{value:+.1f}'
    return f'{value:g}'


def format_ratio(value: float) -> str:
    if value == float('inf'):
        return 'inf'
    return f'{value:,.0f}x' if value >= 100 else f'{value:.1f}x' if value >= 10 else f'{value:.2f}x'


def _cell(summary: Summary | None, unit: str) -> str:
    if summary is None:
        return '-'
    text = format_value(summary.median, unit)
    if summary.count > 1:
        text += f' ({format_value(summary.low, unit)}-{format_value(summary.high, unit)})'
    return text


def _ratio_cell(adv: Advantage | None) -> str:
    if adv is None:
        return '-'
    text = format_ratio(adv.ratio)
    if adv.rounds > 1:
        text += f' ({format_ratio(adv.low)}-{format_ratio(adv.high)})'
    return text


def rows(results: Results, table: Table = REDIS) -> tuple[list[str], list[list[str]]]:
    """The table as a header and rows of cells (strings)."""
    columns = results.columns(table)
    present = {key for key, _ in columns}
    # each advantage column right after the later of the two columns it compares
    order = {key: i for i, (key, _) in enumerate(columns)}
    adv_columns = [
        (label, mine, other, columns[max(order[mine], order[other])][0])
        for label, mine, other in table.advantages
        if mine in present and other in present
    ]
    header = ['workload', 'unit']
    for key, title in columns:
        header.append(title)
        header.extend(label for label, _, _, after in adv_columns if after == key)
    header.append(table.target_title)
    body = []
    for metric in results.metrics(table):
        line = [metric.label, metric.unit]
        for key, _ in columns:
            line.append(_cell(summarize(results.get(key, metric.key).values()), metric.unit))
            for _, mine, other, after in adv_columns:
                if after == key:
                    line.append(_ratio_cell(advantage(results, metric, mine, other)))
        line.append(table.target(metric)[0] or '-')
        body.append(line)
    return header, body


def render(results: Results, markdown: bool = False, table: Table = REDIS) -> str:
    header, body = rows(results, table)
    if markdown:
        out = ['| ' + ' | '.join(header) + ' |', '|' + '|'.join(['---'] * 2 + ['---:'] * (len(header) - 2)) + '|']
        out += ['| ' + ' | '.join(line) + ' |' for line in body]
        return '\n'.join(out)
    widths = [max(len(line[i]) for line in [header, *body]) for i in range(len(header))]

    def fmt(line: list[str]) -> str:
        cells = [line[0].ljust(widths[0]), line[1].ljust(widths[1])]
        cells += [cell.rjust(width) for cell, width in zip(line[2:], widths[2:], strict=True)]
        return '  '.join(cells).rstrip()

    return '\n'.join([fmt(header), '  '.join('-' * w for w in widths), *map(fmt, body)])
