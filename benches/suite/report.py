"""Machine facts, the Markdown report (`benches/RESULTS.md`), the bar chart beside it (`benches/results.png`) and
the raw numbers behind both (`benches/results.json`).

The report has one section per table (Redis, RabbitMQ), each from its own run with its own machine facts and
settings. A run replaces the sections of the tables it measured and keeps the others as the JSON file has them,
so `--broker rabbitmq` adds the RabbitMQ rows without re-running Redis (and the reverse).
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import subprocess
import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from suite.engines import PYTHON
from suite.stats import TABLES, Results, Table, advantage, format_ratio, render, summarize

__all__ = ['Section', 'chart', 'load', 'machine_facts', 'markdown', 'write']

ROOT = Path(__file__).resolve().parents[2]


def _first_line(cmd: Sequence[str]) -> str:
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=20, cwd=ROOT).stdout
    except (OSError, subprocess.SubprocessError):
        return 'unknown'
    return out.strip().splitlines()[0] if out.strip() else 'unknown'


def _cpu_model() -> str:
    try:
        with open('/proc/cpuinfo') as f:
            for line in f:
                if line.startswith('model name'):
                    return line.split(':', 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or 'unknown'


def _mem_total() -> str:
    try:
        with open('/proc/meminfo') as f:
            for line in f:
                if line.startswith('MemTotal:'):
                    return f'{int(line.split()[1]) / 1024 / 1024:.1f} GiB'
    except OSError:
        pass
    return 'unknown'


def _version(module: str) -> str:
    try:
        from importlib.metadata import version

        return version(module)
    except Exception:
        return 'not installed'


def machine_facts(rabbitmq: str | None = None) -> dict[str, str]:
    load = os.getloadavg()
    commit = _first_line(['git', '-C', str(PYTHON), 'describe', '--always', '--dirty', '--abbrev=7'])
    return {
        'date': datetime.datetime.now(datetime.UTC).strftime('%Y-%m-%d %H:%M UTC'),
        'cores (nproc)': str(os.cpu_count()),
        'CPU': _cpu_model(),
        'memory': _mem_total(),
        'kernel': platform.release(),
        'load average at start': ', '.join(f'{x:.2f}' for x in load),
        'Python': platform.python_version(),
        'Redis': _first_line(['redis-server', '--version']),
        'fastq': f'{_version("fastq")} (git {commit})',
        'Celery / kombu / billiard': f'{_version("celery")} / {_version("kombu")} / {_version("billiard")}',
        'redis-py / hiredis': f'{_version("redis")} / {_version("hiredis")}',
    } | ({'RabbitMQ / py-amqp': f'{rabbitmq} / {_version("amqp")}'} if rabbitmq else {})


Section = dict[str, Any]  # facts, settings, floors (Markdown lines), problems, values (Results.values)


def load(path: Path) -> dict[str, Section]:
    """The sections stored beside a report (empty when there is no JSON file yet)."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return dict(data.get('sections', {}))


def write(out: Path, results: Results, sections: dict[str, Section]) -> tuple[Path, Path | None]:
    """Merge this run's sections (table key -> facts, settings, floors, problems) with the stored ones and
    write the JSON, the Markdown report and the chart; returns the JSON path and the chart path if drawn."""
    stem = out.stem.lower()  # RESULTS.md: results.json, results.png
    json_path, chart_path = out.with_name(stem + '.json'), out.with_name(stem + '.png')
    stored = load(json_path)
    for table in TABLES:
        if table.key in sections:
            stored[table.key] = dict(sections[table.key], values=results.only(table).values)
    ordered = {t.key: stored[t.key] for t in TABLES if t.key in stored}
    json_path.write_text(json.dumps({'sections': ordered}, indent=1, sort_keys=False) + '\n')
    drawn = chart(ordered, chart_path)
    out.write_text(markdown(ordered, chart_path.name if drawn else None))
    return json_path, chart_path if drawn else None


def _results(section: Section) -> Results:
    values = {
        column: {metric: {int(r): float(v) for r, v in rounds.items()} for metric, rounds in metrics.items()}
        for column, metrics in section.get('values', {}).items()
    }
    return Results(values)


def markdown(sections: dict[str, Section], chart_name: str | None) -> str:
    lines = [
        '# Benchmark results',
        '',
        'Written by `python benches/macro.py` (`make bench`, `make bench-rabbit`); what each workload measures,',
        'how completion is detected and how correctness is checked: [README.md](README.md). Compare the ratios,',
        'not the absolute numbers: the machine is shared, and the engines of a table ran in the same',
        'invocation, alternating. One section per broker, each from its own run (its date and settings below);',
        'the raw numbers are in [results.json](results.json).',
        '',
        'In every table: medians over the rounds, (min-max) when there was more than one. "fastq adv." is how',
        'many times better fastq did (throughput: fastq / Celery; latency and memory: Celery / fastq), as the',
        'ratio of the medians, with the lowest and highest ratio of a single round in parentheses.',
        '',
    ]
    if chart_name:
        lines += [f'![fastq advantage over Celery]({chart_name})', '']
    for table in TABLES:
        section = sections.get(table.key)
        if section is None:
            continue
        results = _results(section)
        lines += [f'## {table.title}', '', '### Results', '']
        if section.get('note'):
            lines += [section['note'], '']
        lines += [render(results, markdown=True, table=table), '']
        if section.get('floors'):
            lines += [section.get('floors_title', 'Latency floor:'), '', section['floors'], '']
        lines += ['### Problems', '']
        problems = section.get('problems', [])
        lines += [f'- {p}' for p in problems] if problems else ['None: every run checked its counts and results.']
        lines += ['', '### Machine', '', *[f'- {k}: {v}' for k, v in section.get('facts', {}).items()], '']
        lines += ['### Settings', '', *[f'- {k}: {v}' for k, v in section.get('settings', {}).items()], '']
    return '\n'.join(lines)


def chart(sections: dict[str, Section], path: Path) -> bool:
    """One row per table. Left: fastq's advantage per workload (log scale, round spread as error bars, the
    issue's ratio targets as red marks; RabbitMQ: against Celery and Celery with confirms); right: tasks/s
    per engine (medians, log scale)."""
    try:
        import matplotlib

        matplotlib.use('Agg')
        import matplotlib.pyplot as plt
        from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter
    except ImportError:
        return False
    tables = [t for t in TABLES if t.key in sections and _results(sections[t.key]).columns(t)]
    if not tables:
        return False
    fig, axes = plt.subplots(
        len(tables), 2, figsize=(15, 6.5 * len(tables)), gridspec_kw={'width_ratios': [1, 1.2]}, squeeze=False
    )
    for (left, right), table in zip(axes, tables, strict=True):
        section = sections[table.key]
        facts = section.get('facts', {})
        when = f'{facts.get("date", "")}, {facts.get("cores (nproc)", "?")} cores, {facts.get("CPU", "")}'
        _ratios(left, _results(section), table, when, FuncFormatter, NullFormatter)
        _rates(right, _results(section), table, FuncFormatter, LogLocator, NullFormatter)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


COLORS = {
    'fastq': '#2b7bba',
    'celery': '#7a9c3b',
    'celery-default': '#b8cf8a',
    'fastq-sqlite': '#9ec3e6',
    'fastq-amqp': '#2b7bba',
    'celery-amqp': '#7a9c3b',
    'celery-amqp-confirm': '#c9a227',
    'fastq-amqp-rpc': '#1b4f7a',
    'celery-amqp-rpc': '#4d6b1f',
}
PAIR_COLORS = ('#2b7bba', '#8fb8dc', '#1b4f7a')  # the advantage bars: against each compared column in turn


def _ratios(ax: Any, results: Results, table: Table, when: str, FuncFormatter: Any, NullFormatter: Any) -> None:
    present = {key for key, _ in results.columns(table)}
    pairs = [a for a in table.advantages[: table.charted] if a[1] in present and a[2] in present]
    rows = []
    for metric in results.metrics(table):
        if metric.unit == 'MiB':
            continue
        advs = [advantage(results, metric, mine, other) for _, mine, other in pairs]
        if any(a is not None for a in advs):
            rows.append((metric, advs))
    if not rows:
        ax.set_axis_off()
        return
    rows.reverse()
    height = 0.8 / len(pairs)
    every = [a for _, advs in rows for a in advs if a is not None]
    targets = [table.target(m)[1] or 1 for m, _ in rows]
    top = max([*(a.high for a in every), *targets]) * 1.6
    low = min(0.8, min(a.ratio for a in every) * 0.8)
    for j, (_, mine, other) in enumerate(pairs):
        ys, values, errors = [], [], [[], []]
        for i, (_, advs) in enumerate(rows):
            adv = advs[j]
            if adv is None:
                continue
            ys.append(i - (j - (len(pairs) - 1) / 2) * height)  # the first pair on top
            values.append(adv.ratio)
            errors[0].append(adv.ratio - adv.low)
            errors[1].append(adv.high - adv.ratio)
        title_of = dict(table.columns)
        name = f'{title_of[mine]} vs {title_of[other]}'
        color = PAIR_COLORS[j % len(PAIR_COLORS)]
        ax.barh(ys, values, height, xerr=errors, color=color, capsize=3, label=name)
        for y, value, above in zip(ys, values, errors[1], strict=True):
            ax.text((value + above) * 1.08, y, format_ratio(value), va='center', fontsize=8)
    ax.set_yticks(range(len(rows)))
    ax.set_yticklabels([m.label for m, _ in rows])
    ax.set_xscale('log')
    ax.axvline(1, color='black', linewidth=1)
    ax.set_xlim(low, top)
    ticks = [t for t in (0.1, 0.2, 0.5, 1, 2, 5, 10, 25, 50, 100, 250, 500, 1000) if low <= t <= top]
    ax.set_xticks(ticks)
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f'{v:g}x'))
    ax.xaxis.set_minor_formatter(NullFormatter())
    for i, (metric, _) in enumerate(rows):
        ratio = table.target(metric)[1]
        if ratio:
            ax.plot([ratio] * 2, [i - 0.4, i + 0.4], color='#c0392b', linewidth=2)
    issue = table.target_title.removeprefix('target ').strip('()')
    ax.set_xlabel(f'fastq advantage over Celery (log scale; >1: fastq better; red: {issue} target)')
    ax.set_title(f'{table.title}: fastq vs Celery, same run\n{when}', fontsize=10)
    if len(pairs) > 1:
        ax.legend(fontsize=8, loc='best')


def _rates(ax: Any, results: Results, table: Table, FuncFormatter: Any, LogLocator: Any, NullFormatter: Any) -> None:
    rates = [m for m in results.metrics(table) if m.unit == 'tasks/s']
    engines = [(k, t) for k, t in results.columns(table) if not k.startswith('floor')]
    if not rates or not engines:
        ax.set_axis_off()
        return
    width = 0.8 / len(engines)
    for i, (key, title_) in enumerate(engines):
        xs, ys = [], []
        for j, metric in enumerate(rates):
            summary = summarize(results.get(key, metric.key).values())
            if summary is not None:
                xs.append(j + i * width)
                ys.append(summary.median)
        ax.bar(xs, ys, width, label=title_, color=COLORS.get(key))
    ax.set_xticks([j + width * (len(engines) - 1) / 2 for j in range(len(rates))])
    ax.set_xticklabels([textwrap.fill(m.label, 16) for m in rates], fontsize=8)
    ax.set_yscale('log')
    ax.yaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f'{v:,.0f}'))
    ax.yaxis.set_minor_formatter(NullFormatter())
    ax.set_ylabel('tasks/s (log scale)')
    ax.set_title(f'{table.title}: throughput, medians', fontsize=10)
    ax.legend(fontsize=8)
