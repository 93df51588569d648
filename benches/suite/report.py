"""Machine facts, the Markdown report (`benches/RESULTS.md`) and the bar chart beside it (`benches/results.png`)."""

from __future__ import annotations

import datetime
import os
import platform
import subprocess
import textwrap
from collections.abc import Sequence
from pathlib import Path

from suite.stats import Results, advantage, format_ratio, render, summarize

__all__ = ['chart', 'machine_facts', 'markdown']

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


def machine_facts() -> dict[str, str]:
    load = os.getloadavg()
    return {
        'date': datetime.datetime.now(datetime.UTC).strftime('%Y-%m-%d %H:%M UTC'),
        'cores (nproc)': str(os.cpu_count()),
        'CPU': _cpu_model(),
        'memory': _mem_total(),
        'kernel': platform.release(),
        'load average at start': ', '.join(f'{x:.2f}' for x in load),
        'Python': platform.python_version(),
        'Redis': _first_line(['redis-server', '--version']),
        'fastq': f'{_version("fastq")} (git {_first_line(["git", "describe", "--always", "--dirty", "--abbrev=7"])})',
        'Celery / kombu / billiard': f'{_version("celery")} / {_version("kombu")} / {_version("billiard")}',
        'redis-py / hiredis': f'{_version("redis")} / {_version("hiredis")}',
    }


def markdown(
    results: Results,
    facts: dict[str, str],
    settings: dict[str, str],
    floors: str,
    problems: Sequence[str],
    chart_name: str | None,
) -> str:
    lines = [
        '# Benchmark results',
        '',
        'Written by `python benches/macro.py` (`make bench`); what each workload measures, how completion is',
        'detected and how correctness is checked: [README.md](README.md). Compare the ratios, not the absolute',
        'numbers: the machine is shared, and both engines ran in the same invocation, alternating.',
        '',
        '## Machine',
        '',
        *[f'- {k}: {v}' for k, v in facts.items()],
        '',
        '## Settings',
        '',
        *[f'- {k}: {v}' for k, v in settings.items()],
        '',
        '## Results',
        '',
        'Medians over the rounds, (min-max) when there was more than one. "fastq advantage" is how many times',
        'better fastq did (throughput: fastq / Celery; latency and memory: Celery / fastq), as the ratio of the',
        'medians, with the lowest and highest ratio of a single round in parentheses.',
        '',
        render(results, markdown=True),
        '',
    ]
    if floors:
        lines += ['Latency floor, the same Redis with bare redis-py commands:', '', floors, '']
    if chart_name:
        lines += [f'![fastq advantage over Celery]({chart_name})', '']
    lines += ['## Problems', '']
    lines += [f'- {p}' for p in problems] if problems else ['None: every run checked its counts and results.']
    lines.append('')
    return '\n'.join(lines)


def chart(results: Results, path: Path, title: str) -> bool:
    """Left: fastq's advantage per workload (log scale, round spread as error bars, issue 5's ratio targets as
    red marks); right: tasks/s per engine (medians, log scale)."""
    try:
        import matplotlib

        matplotlib.use('Agg')
        import matplotlib.pyplot as plt
        from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter
    except ImportError:
        return False
    ratios = []
    for metric in results.metrics():
        adv = advantage(results, metric)
        if adv is not None and metric.unit != 'MiB':
            ratios.append((metric, adv))
    rates = [m for m in results.metrics() if m.unit == 'tasks/s']
    engines = [(k, t) for k, t in results.columns() if k in ('fastq', 'celery', 'celery-default', 'fastq-sqlite')]
    fig, (left, right) = plt.subplots(1, 2, figsize=(15, 6.5), gridspec_kw={'width_ratios': [1, 1.2]})
    if ratios:
        ratios.reverse()
        labels = [m.label for m, _ in ratios]
        values = [a.ratio for _, a in ratios]
        errors = [[a.ratio - a.low for _, a in ratios], [a.high - a.ratio for _, a in ratios]]
        bars = left.barh(labels, values, xerr=errors, color='#2b7bba', capsize=3)
        left.set_xscale('log')
        left.axvline(1, color='black', linewidth=1)
        top = max([*values, *(a.high for _, a in ratios), *(m.target_ratio or 1 for m, _ in ratios)]) * 1.6
        low = min(0.8, min(values) * 0.8)
        left.set_xlim(low, top)
        ticks = [t for t in (0.1, 0.2, 0.5, 1, 2, 5, 10, 25, 50, 100, 250, 500, 1000) if low <= t <= top]
        left.set_xticks(ticks)
        left.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f'{v:g}x'))
        left.xaxis.set_minor_formatter(NullFormatter())
        for bar, value in zip(bars, values, strict=True):
            left.text(value * 1.08, bar.get_y() + bar.get_height() * 0.8, format_ratio(value), va='center', fontsize=8)
        for i, (metric, _) in enumerate(ratios):
            if metric.target_ratio:
                left.plot([metric.target_ratio] * 2, [i - 0.4, i + 0.4], color='#c0392b', linewidth=2)
        left.set_xlabel('fastq advantage over Celery (log scale; >1: fastq better; red: issue 5 target)')
        left.set_title('fastq vs Celery, same machine, same run')
    if rates and engines:
        width = 0.8 / len(engines)
        colors = {'fastq': '#2b7bba', 'celery': '#7a9c3b', 'celery-default': '#b8cf8a', 'fastq-sqlite': '#9ec3e6'}
        for i, (key, title_) in enumerate(engines):
            xs, ys = [], []
            for j, metric in enumerate(rates):
                summary = summarize(results.get(key, metric.key).values())
                if summary is not None:
                    xs.append(j + i * width)
                    ys.append(summary.median)
            right.bar(xs, ys, width, label=title_, color=colors.get(key))
        right.set_xticks([j + width * (len(engines) - 1) / 2 for j in range(len(rates))])
        right.set_xticklabels([textwrap.fill(m.label, 16) for m in rates], fontsize=8)
        right.set_yscale('log')
        right.yaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
        right.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f'{v:,.0f}'))
        right.yaxis.set_minor_formatter(NullFormatter())
        right.set_ylabel('tasks/s (log scale)')
        right.set_title('throughput, medians')
        right.legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True
