"""Prometheus metrics from a real worker: counts per task name, runtime and time-in-queue histograms, the
worker's gauges, scraped over HTTP and read with prometheus_client's own text parser."""

from __future__ import annotations

import re
import urllib.request
from typing import Any

import pytest

from fastq.exceptions import ImproperlyConfigured
from tests.harness import wait_until

pytestmark = pytest.mark.slow
prometheus_client = pytest.importorskip('prometheus_client')


def scrape(port: int) -> dict[str, dict[tuple[str, tuple[tuple[str, str], ...]], float]]:
    """{family: {(sample name, sorted labels): value}}"""
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(f'http://127.0.0.1:{port}/metrics', timeout=10) as response:
        text = response.read().decode()
    out: dict[str, dict[tuple[str, tuple[tuple[str, str], ...]], float]] = {}
    for family in text_string_to_metric_families(text):
        samples = out.setdefault(family.name, {})
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def value(metrics: Any, family: str, sample: str, **labels: str) -> float:
    return float(metrics[family].get((sample, tuple(sorted(labels.items()))), 0.0))


@pytest.mark.parametrize('broker_kind', ['redis'])
def test_metrics_endpoint(tasks: Any, worker: Any, broker_kind: str) -> None:
    w = worker('--metrics-port', '0')
    port = int(re.findall(r'Metrics at http://[^:]+:(\d+)/metrics', w.log)[0])
    assert tasks.add.delay(1, 2).get(timeout=30) == 3
    assert tasks.add.delay(3, 4).get(timeout=30) == 7
    failed = tasks.fail.delay('no')
    with pytest.raises(ValueError):
        failed.get(timeout=30)
    add, fail = 'worker_tasks.add', 'worker_tasks.fail'

    def counted() -> bool:
        m = scrape(port)
        return value(m, 'fastq_tasks_succeeded', 'fastq_tasks_succeeded_total', task=add) == 2 and (
            value(m, 'fastq_tasks_failed', 'fastq_tasks_failed_total', task=fail) == 1
        )

    wait_until(counted, message='counts in the metrics')
    m = scrape(port)
    assert value(m, 'fastq_tasks_received', 'fastq_tasks_received_total', task=add) == 2
    assert value(m, 'fastq_tasks_received', 'fastq_tasks_received_total', task=fail) == 1
    assert value(m, 'fastq_tasks_retried', 'fastq_tasks_retried_total', task=add) == 0
    runtime = 'fastq_task_runtime_seconds'
    assert value(m, runtime, f'{runtime}_count', task=add) == 2
    assert value(m, runtime, f'{runtime}_bucket', task=add, le='+Inf') == 2
    assert 0 < value(m, runtime, f'{runtime}_sum', task=add) < 30
    queue = 'fastq_task_queue_seconds'
    assert value(m, queue, f'{queue}_count', task=add) == 2  # the fastq_sent_at header
    assert 0 <= value(m, queue, f'{queue}_sum', task=add) < 30
    assert value(m, 'fastq_pool_processes', 'fastq_pool_processes') == 2
    assert value(m, 'fastq_tasks_in_flight', 'fastq_tasks_in_flight') == 0
    for gauge in ('fastq_tasks_prefetched', 'fastq_tasks_reserved'):
        assert (gauge, ()) in m[gauge]
    assert value(m, 'fastq_pool_child_restarts', 'fastq_pool_child_restarts_total') == 0
    assert value(m, 'fastq_broker_reconnects', 'fastq_broker_reconnects_total') == 0


@pytest.mark.parametrize('broker_kind', ['sqlite'])
def test_child_restarts_and_bad_port(tasks: Any, worker: Any, broker_kind: str) -> None:
    w = worker('--metrics-port', '0', '--max-tasks-per-child', '1')
    port = int(re.findall(r'Metrics at http://[^:]+:(\d+)/metrics', w.log)[0])
    for i in range(3):
        assert tasks.add.delay(i, i).get(timeout=30) == 2 * i
    wait_until(
        lambda: value(scrape(port), 'fastq_pool_child_restarts', 'fastq_pool_child_restarts_total') >= 3,
        message='child restarts counted',
    )
    bad = worker('--metrics-port', '70000', wait=False)
    assert bad.proc.wait(30) != 0
    assert 'worker_metrics_port: must be a TCP port number (0-65535), got 70000' in bad.log


def test_check_metrics_port() -> None:
    from fastq.worker.metrics import check_metrics_port

    assert check_metrics_port(None) is None and check_metrics_port(9100) == 9100 and check_metrics_port('0') == 0
    for bad in (-1, 65536, 'x', 1.5, True):
        with pytest.raises(ImproperlyConfigured, match='worker_metrics_port'):
            check_metrics_port(bad)
