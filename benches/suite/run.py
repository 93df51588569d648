"""Command line and orchestration: rounds of workloads, each engine in turn, alternating order, on one redis-server
(and one RabbitMQ node for the RabbitMQ engines).

    python benches/macro.py              full run: 3 rounds, drain 200,000 tasks, 60 s soak; writes RESULTS.md
    python benches/macro.py --quick      small counts, 1 round, 3 s soak; writes RESULTS-quick.md (not committed)
    python benches/macro.py --soak 600   the 10-minute soak (make bench-soak)

A round runs publish, drain and e2e+latency for every engine; the engine order alternates from one round to
the next (A/B, B/A, ...) so neither engine always runs first on a warm or cold machine. The soak and the ETA
memory check run once, after the rounds. Between two workloads every worker and client process is gone and
Redis is flushed (RabbitMQ: the engine's vhost has no queue left), so each starts from the same empty state. A workload whose counts or results are wrong
records no number (and is listed under problems), so a fast wrong answer cannot win.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from tests.servers import RedisServer

from suite import report
from suite.engines import BENCHES, CONCURRENCY, PYTHON, SPECS, Engine, Worker
from suite.queues import STAGING
from suite.rabbit import RabbitNode
from suite.stats import RABBIT, REDIS, TABLES, Results, format_value, percentile, render, table_of

ALL_WORKLOADS = ('publish', 'publish-batch', 'drain', 'e2e', 'e2e-batch', 'latency', 'soak', 'eta')
# which engines run which workload (SQLite: the throughput ones; Celery's defaults: drain, as the issue asks)
# RabbitMQ (issue 6): publish, drain, e2e and latency, for fastq and Celery with and without publisher confirms.
AMQP = ('fastq-amqp', 'celery-amqp', 'celery-amqp-confirm')
AMQP_RPC = ('fastq-amqp-rpc', 'celery-amqp-rpc')  # results through rpc://: e2e and latency only
RUNS_ON: dict[str, tuple[str, ...]] = {
    'publish': ('fastq', 'celery', 'fastq-sqlite', *AMQP),
    'publish-batch': ('fastq', 'celery', 'fastq-sqlite', *AMQP),
    'drain': ('fastq', 'celery', 'celery-default', 'fastq-sqlite', 'fastq-events', *AMQP),
    'e2e': ('fastq', 'celery', 'fastq-sqlite', *AMQP, *AMQP_RPC),
    'e2e-batch': ('fastq', 'celery', 'fastq-sqlite', *AMQP, *AMQP_RPC),
    'latency': ('fastq', 'celery', 'fastq-sqlite', *AMQP, *AMQP_RPC),
    'soak': ('fastq', 'celery'),
    'eta': ('fastq', 'celery'),
}
# Celery on its default settings differs from the tuned Celery only in the prefetch multiplier, and drains at
# Celery's pace: one round of it is enough to report its figure (the issue asks for it) without doubling the
# longest part of a full run.
ONLY_FIRST_ROUND = frozenset({'celery-default'})
FULL: dict[str, float] = {'rounds': 3, 'publish': 20_000, 'batch': 20_000, 'drain': 200_000, 'e2e': 20_000}
FULL |= {'samples': 1000, 'soak': 60.0, 'eta': 100_000, 'settle': 3.0}
QUICK: dict[str, float] = {'rounds': 1, 'publish': 1_000, 'batch': 1_000, 'drain': 2_000, 'e2e': 500}
QUICK |= {'samples': 200, 'soak': 3.0, 'eta': 1_000, 'settle': 1.0}
DEFAULT_PREFETCH = 16


class Failed(Exception):
    """A workload went wrong (counts, results, a process): it records no number."""


@dataclass
class Config:
    engines: list[str]
    workloads: list[str]
    rounds: int
    n_publish: int
    n_batch: int
    n_drain: int
    n_e2e: int
    samples: int
    soak: float
    n_eta: int
    settle: float
    prefetch: int
    out: Path | None
    quick: bool
    problems: list[tuple[str, str]] = field(default_factory=list)  # (table key, what went wrong)

    def settings(self, table: str = 'redis') -> dict[str, str]:
        engines = [e for e in self.engines if table_of(e).key == table]
        if table == 'rabbitmq':
            return self.rabbit_settings(engines)
        s = {
            'engines': ', '.join(engines),
            'worker': '`-P prefork -c 2 -l warning`, both engines',
            'tuned settings (fastq, Celery)': f'worker_prefetch_multiplier={self.prefetch}, JSON, ignore_result on noop',
            'Celery, default settings': 'no configuration beyond the broker and backend URLs (prefetch multiplier 4)',
            'rounds': f'{self.rounds} (soak, ETA and Celery on its default settings: once)',
            'publish / publish-batch': f'{self.n_publish:,} / {self.n_batch:,} tasks',
            'drain': f'{self.n_drain:,} tasks',
            'e2e': f'{self.n_e2e:,} tasks',
            'latency': f'{self.samples:,} sequential round trips per run',
            'soak': f'{self.soak:g} s of continuous publish + drain',
            'ETA memory': f'{self.n_eta:,} tasks with countdown=3600',
        }
        return s

    def rabbit_settings(self, engines: list[str]) -> dict[str, str]:
        return {
            'engines': ', '.join(engines),
            'broker': 'one RabbitMQ node started for the run (own node name, loopback ports, fresh data '
            'directory), a vhost per engine, emptied of queues before every workload',
            'result backend': 'the same redis-server for every engine (e2e, latency); the rpc:// columns: '
            "rpc:// (results as messages to the caller's reply queue) for both, publisher confirms on for both",
            'worker': '`-P prefork -c 2 -l warning`, every engine',
            'settings (every engine)': f'worker_prefetch_multiplier={self.prefetch}, JSON, ignore_result on noop',
            'publisher confirms': 'fastq: on (its default, also set explicitly); Celery: off (its default); '
            "Celery + confirms: broker_transport_options={'confirm_publish': True}",
            'rounds': str(self.rounds),
            'publish / publish-batch': f'{self.n_publish:,} / {self.n_batch:,} tasks',
            'drain': f'{self.n_drain:,} tasks, queue filled before the worker starts, timed by the pool '
            "children's own clocks (first noop start to last noop end)",
            'e2e': f'{self.n_e2e:,} tasks',
            'latency': f'{self.samples:,} sequential round trips per run',
        }


# --- agents: the client processes ------------------------------------------------------------------------


class Agent:
    """A `suite.agent` process for one engine (see agent.py); `call` sends one command and waits."""

    def __init__(self, engine: Engine) -> None:
        spec = engine.spec
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(BENCHES), str(engine.dir), str(PYTHON)]))
        env.update(engine.agent_env)
        self.log_path = engine.dir / 'agent.log'
        log = open(self.log_path, 'ab')
        args = [
            spec.key,
            str(engine.dir),
            spec.package,
            spec.broker,
            engine.location,
            '1' if spec.consumer_blocks else '0',
        ]
        self.proc = subprocess.Popen(
            [sys.executable, '-m', 'suite.agent', *args],
            cwd=engine.dir,
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=log,
            text=True,
            bufsize=1,
        )
        log.close()
        self._read()

    def _read(self) -> Any:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise Failed(f'the client process exited ({self.proc.wait()}): {self.log_tail()}')
        reply = json.loads(line)
        if 'error' in reply:
            raise Failed(f'{reply["error"]} [client log: {self.log_tail(6)}]')
        return reply['ok']

    def call(self, cmd: str, **args: Any) -> Any:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps({'cmd': cmd, **args}) + '\n')
        self.proc.stdin.flush()
        return self._read()

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                assert self.proc.stdin is not None
                self.proc.stdin.write('{"cmd": "quit"}\n')
                self.proc.stdin.close()
                self.proc.wait(30)
            except (OSError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait()

    def log_tail(self, lines: int = 20) -> str:
        try:
            return ' | '.join(self.log_path.read_text(errors='replace').splitlines()[-lines:])
        except OSError:
            return ''


# --- the run ----------------------------------------------------------------------------------------------


class Bench:
    def __init__(self, config: Config, redis_url: str | None, base: Path, rabbit: RabbitNode | None = None) -> None:
        self.config = config
        self.redis_url = redis_url
        self.rabbit = rabbit
        self.vhosts: dict[str, str] = {}
        self.engines = {}
        for key in config.engines:
            amqp_url = None
            if SPECS[key].broker == 'amqp':
                if rabbit is None:
                    raise ValueError(f'{key} needs a RabbitMQ node')
                self.vhosts[key] = f'bench-{key}'
                amqp_url = rabbit.url(rabbit.vhost(self.vhosts[key]))
            engine = Engine(SPECS[key], base, redis_url, config.prefetch, amqp_url)
            if rabbit is not None:
                engine.agent_env['FASTQ_BENCH_RABBIT_NODE'] = rabbit.node
            self.engines[key] = engine
        self.results = Results()
        self.started = time.monotonic()

    def wanted(self, *workloads: str) -> bool:
        return any(w in self.config.workloads for w in workloads)

    def runs(self, workload: str, key: str) -> bool:
        return workload in self.config.workloads and key in RUNS_ON[workload]

    def record(self, key: str, metric: str, value: float, round_: int) -> None:
        self.results.add(key, metric, value, round_)

    def say(self, round_: int | None, workload: str, key: str, text: str) -> None:
        where = f'round {round_ + 1}/{self.config.rounds}' if round_ is not None else 'once'
        clock = f'+{time.monotonic() - self.started:.0f}s'
        print(f'  {clock:>6} {where:11} {workload:14} {key:15} {text}', flush=True)

    @contextmanager
    def clean(self, engine: Engine) -> Iterator[None]:
        """Empty broker before; no process of ours left after."""
        self.flush()
        self.clear_vhost(engine)
        engine.reset()
        yield
        self.flush()
        self.clear_vhost(engine)

    def clear_vhost(self, engine: Engine) -> None:
        if self.rabbit is not None and engine.spec.key in self.vhosts:
            self.rabbit.clear(self.vhosts[engine.spec.key])

    def flush(self) -> None:
        if self.redis_url:
            import redis

            client = redis.Redis.from_url(self.redis_url)
            client.flushall()
            client.close()

    @contextmanager
    def worker(self, engine: Engine) -> Iterator[Worker]:
        worker = engine.worker()
        try:
            yield worker
        except BaseException:
            worker.kill()
            raise
        finally:
            if worker.alive():
                worker.kill()

    def stop_and_count(self, engine: Engine, worker: Worker, expected: int) -> None:
        """Warm shutdown, then the pool children's counts must add up to exactly what was sent."""
        if not worker.stop():
            raise Failed(f'the worker did not stop by itself: {worker.log_tail(5)}')
        ran = engine.ran()
        if ran != expected:
            raise Failed(
                f'the pool children ran {ran:,} tasks, {expected:,} were sent [worker log: {worker.log_tail(5)}]'
            )

    def attempt(self, round_: int | None, workload: str, key: str, fn: Callable[[], None]) -> None:
        try:
            fn()
        except Failed as exc:
            self.fail(round_, workload, key, str(exc))
        except Exception as exc:  # a crash in the harness is a problem of this workload, not the whole run
            self.fail(round_, workload, key, f'{type(exc).__name__}: {exc}')

    def fail(self, round_: int | None, workload: str, key: str, why: str) -> None:
        where = f'round {round_ + 1}' if round_ is not None else 'once'
        table = table_of(key).key if key != 'floor' else 'redis'
        self.config.problems.append((table, f'{workload}, {key}, {where}: {why}'))
        self.say(round_, workload, key, f'FAILED: {why}')

    # --- workloads ------------------------------------------------------------------------------------------

    def publish(self, round_: int, key: str) -> None:
        engine = self.engines[key]
        with self.clean(engine):
            agent = Agent(engine)
            try:
                for workload, cmd, n in (
                    ('publish', 'publish', self.config.n_publish),
                    ('publish-batch', 'publish_batch', self.config.n_batch),
                ):
                    if self.runs(workload, key):
                        self.attempt(
                            round_, workload, key, partial(self._publish_one, agent, round_, key, workload, cmd, n)
                        )
            finally:
                agent.close()

    def _publish_one(self, agent: Agent, round_: int, key: str, workload: str, cmd: str, n: int) -> None:
        if cmd == 'publish' and key == 'fastq' and self.redis_url is not None:
            # Right before, in the same state of the machine: on this project's VM a round trip to an idle
            # redis-server costs 25 us or 120 depending on whether its vCPU has to be woken, which changes
            # from minute to minute, so a floor measured in another phase would not say how far delay() is.
            rate = publish_floor(self.redis_url, n)
            self.record('floor-1rt', 'publish', rate, round_)
            self.say(round_, workload, 'floor-1rt', f'{rate:>10,.0f} tasks/s  (bare redis-py LPUSH, one per task)')
        out = agent.call(cmd, n=n)
        self.record(key, workload, out['rate'], round_)
        self.say(
            round_, workload, key, f'{out["rate"]:>10,.0f} tasks/s  ({n:,} in {out["seconds"]:.2f} s, count checked)'
        )

    def drain(self, round_: int, key: str) -> None:
        engine, n = self.engines[key], self.config.n_drain
        if engine.spec.broker == 'amqp':
            self.drain_prefilled(round_, key)
            return
        with self.clean(engine):
            agent = Agent(engine)
            try:
                agent.call('fill', n=n)
                if key == 'fastq' and self.redis_url is not None:
                    # Right before the worker's drain, as the publish floor is (see _publish_one).
                    rate = drain_floor(self.redis_url, n, self.config.prefetch * CONCURRENCY)
                    self.record('floor-fetch', 'drain', rate, round_)
                    self.say(
                        round_, 'drain', 'floor-fetch', f'{rate:>10,.0f} tasks/s  (bare reserve + ack, nothing run)'
                    )
                with self.worker(engine) as worker:
                    warm = agent.call('warmup')['ran']
                    out = agent.call('drain', n=n)
                    self.stop_and_count(engine, worker, n + warm)
            finally:
                agent.close()
        self.record(key, 'drain', out['rate'], round_)
        self.say(
            round_, 'drain', key, f'{out["rate"]:>10,.0f} tasks/s  ({n:,} in {out["seconds"]:.2f} s, counts checked)'
        )

    def drain_prefilled(self, round_: int, key: str) -> None:
        """RabbitMQ has no atomic move of a queue's messages (the Redis drain's RENAMENX): the queue is filled
        with N copies before the worker starts, and the drain is timed from the first noop's start to the
        last noop's end as the pool children's own clocks saw them (written with their counts), so neither
        the fill nor the worker's start-up is in the time. Completion is still awaited on the broker (nothing
        ready, nothing unacknowledged) before the warm shutdown, and the counts must add up to exactly N."""
        engine, n = self.engines[key], self.config.n_drain
        with self.clean(engine):
            agent = Agent(engine)
            try:
                agent.call('fill', n=n)
                with self.worker(engine) as worker:
                    agent.call('drain', n=n)
                    self.stop_and_count(engine, worker, n)
            finally:
                agent.close()
        seconds = engine.noop_window()
        if seconds <= 0:
            raise Failed(f'no time between the first and the last noop ({seconds})')
        rate = n / seconds
        self.record(key, 'drain', rate, round_)
        self.say(
            round_,
            'drain',
            key,
            f"{rate:>10,.0f} tasks/s  ({n:,} in {seconds:.2f} s by the children's clocks, counts checked)",
        )

    def e2e(self, round_: int, key: str) -> None:
        engine, n = self.engines[key], self.config.n_e2e
        got: dict[str, dict[str, Any]] = {}
        with self.clean(engine):
            agent = Agent(engine)
            try:
                with self.worker(engine) as worker:
                    ran = agent.call('warmup')['ran']
                    if self.runs('e2e', key):
                        got['e2e'] = agent.call('e2e', n=n)
                        ran += got['e2e']['ran']
                    if self.runs('e2e-batch', key):
                        got['e2e-batch'] = agent.call('e2e_batch', n=n)
                        ran += got['e2e-batch']['ran']
                    if self.runs('latency', key):
                        got['latency'] = agent.call('latency', samples=self.config.samples)
                        ran += got['latency']['ran']
                    self.stop_and_count(engine, worker, ran)
            finally:
                agent.close()
        if 'e2e' in got:
            self.record(key, 'e2e', got['e2e']['rate'], round_)
            self.say(
                round_, 'e2e', key, f'{got["e2e"]["rate"]:>10,.0f} tasks/s  ({n:,} in {got["e2e"]["seconds"]:.2f} s)'
            )
        if 'e2e-batch' in got:
            rate, seconds = got['e2e-batch']['rate'], got['e2e-batch']['seconds']
            self.record(key, 'e2e-batch', rate, round_)
            self.say(round_, 'e2e-batch', key, f'{rate:>10,.0f} tasks/s  ({n:,} in {seconds:.2f} s)')
        if 'latency' in got:
            p50, p99 = got['latency']['p50'], got['latency']['p99']
            self.record(key, 'latency-p50', p50, round_)
            self.record(key, 'latency-p99', p99, round_)
            self.say(round_, 'latency', key, f'p50 {p50:.3f} ms, p99 {p99:.3f} ms')

    def floors(self, round_: int) -> None:
        """The latency floor on the same redis-server with bare redis-py (see floor() for the two kinds)."""
        assert self.redis_url is not None
        with self.clean_redis():
            for kind, (p50, p99) in floor(self.redis_url, self.config.samples).items():
                self.record(kind, 'latency-p50', p50, round_)
                self.record(kind, 'latency-p99', p99, round_)
                self.say(round_, 'latency', kind, f'p50 {p50:.3f} ms, p99 {p99:.3f} ms')

    def amqp_floor(self, round_: int) -> None:
        """The latency floor on the same RabbitMQ node with bare py-amqp (see amqp_floor())."""
        assert self.rabbit is not None
        vhost = 'bench-floor'
        if vhost not in self.vhosts.values():
            self.vhosts['floor-amqp-relay'] = vhost
            self.rabbit.vhost(vhost)
        self.rabbit.clear(vhost)
        p50, p99 = amqp_floor(self.rabbit.url(vhost), self.config.samples)
        self.rabbit.clear(vhost)
        self.record('floor-amqp-relay', 'latency-p50', p50, round_)
        self.record('floor-amqp-relay', 'latency-p99', p99, round_)
        self.say(round_, 'latency', 'floor-amqp', f'p50 {p50:.3f} ms, p99 {p99:.3f} ms')

    @contextmanager
    def clean_redis(self) -> Iterator[None]:
        self.flush()
        yield
        self.flush()

    def soak(self, key: str) -> None:
        engine, seconds = self.engines[key], self.config.soak
        samples: list[tuple[float, int]] = []
        with self.clean(engine):
            agent = Agent(engine)
            try:
                with self.worker(engine) as worker:
                    ran = agent.call('warmup')['ran']
                    stop = threading.Event()
                    started = time.monotonic()
                    processes = worker.processes()
                    sampler = threading.Thread(target=sample_rss, args=(worker, stop, samples, started), daemon=True)
                    sampler.start()
                    try:
                        out = agent.call('soak', seconds=seconds)
                    finally:
                        stop.set()
                        sampler.join()
                    self.stop_and_count(engine, worker, ran + out['ran'])
            finally:
                agent.close()
        during = [(t, rss) for t, rss in samples if t <= seconds]
        if len(during) < 2:
            raise Failed('too few memory samples')
        settle = min(10.0, seconds / 10)
        start = next(rss for t, rss in during if t >= settle) if any(t >= settle for t, _ in during) else during[0][1]
        end, peak = during[-1][1], max(rss for _, rss in samples)
        mib = 1024 * 1024
        self.record(key, 'soak-rate', out['rate'], 0)
        self.record(key, 'soak-rss-start', start / mib, 0)
        self.record(key, 'soak-rss-end', end / mib, 0)
        self.record(key, 'soak-rss-max', peak / mib, 0)
        self.record(key, 'soak-growth', 100 * (end - start) / start, 0)
        self.say(
            None,
            'soak',
            key,
            f'{out["rate"]:>10,.0f} tasks/s for {seconds:g} s; RSS {start / mib:.1f} -> {end / mib:.1f} MiB '
            f'(max {peak / mib:.1f}, {100 * (end - start) / start:+.1f}%), {len(samples)} samples of {processes} processes',
        )

    def eta(self, key: str) -> None:
        engine, n, settle = self.engines[key], self.config.n_eta, self.config.settle
        with self.clean(engine):
            agent = Agent(engine)
            try:
                agent.call('fill', n=n, eta=True)
                with self.worker(engine) as worker:
                    agent.call('warmup')
                    idle = steady_rss(worker, settle)
                    agent.call('release')
                    took = agent.call('wait_parked', n=n, timeout=max(300.0, n / 50))['seconds']
                    held = steady_rss(worker, settle)
                    worker.kill()  # the ETA tasks are not for running; nothing to count
            finally:
                agent.close()
        mib = 1024 * 1024
        self.record(key, 'eta-rss-idle', idle / mib, 0)
        self.record(key, 'eta-rss', held / mib, 0)
        self.record(key, 'eta-growth', 100 * (held - idle) / idle, 0)
        self.say(
            None,
            'eta',
            key,
            f'RSS idle {idle / mib:.1f} MiB, with {n:,} ETA tasks {held / mib:.1f} MiB '
            f'({100 * (held - idle) / idle:+.1f}%; all received in {took:.1f} s)',
        )

    def run(self) -> None:
        cfg = self.config
        per_round = [
            ('publish', self.publish, ('publish', 'publish-batch')),
            ('drain', self.drain, ('drain',)),
            ('e2e', self.e2e, ('e2e', 'e2e-batch', 'latency')),
        ]
        for round_ in range(cfg.rounds):
            order = cfg.engines if round_ % 2 == 0 else cfg.engines[::-1]
            for name, fn, workloads in per_round:
                for key in order:
                    if round_ and key in ONLY_FIRST_ROUND:
                        continue
                    if any(self.runs(w, key) for w in workloads):
                        self.attempt(round_, name, key, partial(fn, round_, key))
            if self.wanted('latency') and any(table_of(e) is REDIS for e in cfg.engines):
                self.attempt(round_, 'latency', 'floor', partial(self.floors, round_))
            if self.wanted('latency') and self.rabbit is not None:
                self.attempt(round_, 'latency', 'floor-amqp-relay', partial(self.amqp_floor, round_))
        once: list[tuple[str, Callable[[str], None]]] = [('soak', self.soak), ('eta', self.eta)]
        for name, once_fn in once:
            for key in cfg.engines:
                if self.runs(name, key):
                    self.attempt(None, name, key, partial(once_fn, key))


def sample_rss(worker: Worker, stop: threading.Event, out: list[tuple[float, int]], started: float) -> None:
    while not stop.is_set():
        out.append((time.monotonic() - started, worker.rss()))
        stop.wait(0.5)


def steady_rss(worker: Worker, seconds: float) -> int:
    """Median of the worker tree's RSS sampled over `seconds` (after allocations have settled)."""
    values = []
    deadline = time.monotonic() + seconds
    while True:
        values.append(worker.rss())
        if time.monotonic() >= deadline:
            return int(statistics.median(values))
        time.sleep(0.1)


RELAY = """
import sys, redis
r = redis.Redis.from_url(sys.argv[1])
print('ready', flush=True)
while True:
    _, m = r.brpop(['floor:q'])
    if m == b'quit':
        break
    r.lpush('floor:r', m)
"""


def publish_floor(url: str, n: int) -> float:
    """The floor of `delay()` per task (tasks/s): n sequential LPUSHes of a task-sized (900-byte) payload from
    one redis-py client, one round trip each."""
    import redis

    client = redis.Redis.from_url(url)
    payload = b'x' * 900
    try:
        for _ in range(20):
            client.lpush('floor:publish', payload)
        start = time.perf_counter()
        for _ in range(n):
            client.lpush('floor:publish', payload)
        return n / (time.perf_counter() - start)
    finally:
        client.delete('floor:publish')
        client.close()


def drain_floor(url: str, n: int, window: int) -> float:
    """The floor of the drain (tasks/s): one bare redis-py consumer doing only what every worker on kombu's
    Redis layout must do per task, `window` (the prefetch multiplier times the concurrency) at a time: reserve
    it atomically (fastq's fetch script: RPOP, then HSET into `unacked` and ZADD into `unacked_index`, the
    record Celery's restore reads) and ack it (HDEL, ZREM, sent with the next fetch). Nothing is decoded,
    nothing run, no transaction around the acks: a worker with one consumer (fastq's fetcher, Celery's main
    process) cannot drain faster. A copy of the `n` tasks the drain staged, on keys of its own."""
    import redis

    from fastq.brokers.redis.consumer import reservation_time
    from fastq.brokers.redis.scripts import Scripts

    client = redis.Redis.from_url(url)
    keys = ('floor:unacked', 'floor:unacked_index', 'floor:drain')
    try:
        if not client.copy(STAGING, keys[2]) or client.llen(keys[2]) != n:
            raise Failed(f'no {n:,} staged tasks to copy for the drain floor')
        sha = client.script_load(Scripts(client).fetch_script.script)
        reserved = 0
        acks: list[bytes] = []
        began = time.perf_counter()
        while True:
            pipe = client.pipeline(transaction=False)
            if acks:
                pipe.hdel(keys[0], *acks)
                pipe.zrem(keys[1], *acks)
            pipe.evalsha(sha, len(keys), *keys, window, reservation_time())
            reply = pipe.execute()[-1]
            if not reply:
                break
            acks = reply[1::3]  # (key index, delivery tag, envelope) per task
            reserved += len(acks)
        seconds = time.perf_counter() - began
        if reserved != n or client.hlen(keys[0]):
            raise Failed(f'the drain floor reserved {reserved:,} of {n:,} tasks')
        return n / seconds
    finally:
        client.delete(*keys)
        client.close()


def floor(url: str, samples: int) -> dict[str, tuple[float, float]]:
    """Two floors for a task round trip, in ms (p50, p99), with a task-sized (600-byte) payload.

    floor-2rt:   one client, two sequential round trips (LPUSH, then RPOP): publishing a task and fetching its
                 result can never take fewer than these two.
    floor-relay: a client LPUSHes and waits in BRPOP on a reply list; a bare redis-py process (the "worker")
                 BRPOPs the request and LPUSHes the reply. The least a worker in another process can do:
                 2 round trips for the client, 2 for the worker, 2 wake-ups.
    """
    import redis

    client = redis.Redis.from_url(url)
    payload = b'x' * 600
    out: dict[str, tuple[float, float]] = {}
    times = []
    for i in range(20 + samples):
        t = time.perf_counter()
        client.lpush('floor:2rt', payload)
        client.rpop('floor:2rt')
        if i >= 20:
            times.append((time.perf_counter() - t) * 1000)
    out['floor-2rt'] = (percentile(times, 50), percentile(times, 99))
    relay = subprocess.Popen([sys.executable, '-c', RELAY, url], stdout=subprocess.PIPE, text=True)
    try:
        assert relay.stdout is not None
        relay.stdout.readline()
        times = []
        for i in range(20 + samples):
            t = time.perf_counter()
            client.lpush('floor:q', payload)
            reply = client.brpop(['floor:r'], timeout=10)
            if reply is None or reply[1] != payload:
                raise Failed('the relay did not answer')
            if i >= 20:
                times.append((time.perf_counter() - t) * 1000)
        out['floor-relay'] = (percentile(times, 50), percentile(times, 99))
    finally:
        client.lpush('floor:q', b'quit')
        try:
            relay.wait(10)
        except subprocess.TimeoutExpired:
            relay.kill()
            relay.wait()
        client.close()
    return out


AMQP_RELAY = """
import sys, amqp
conn = amqp.Connection(sys.argv[1], virtual_host=sys.argv[2])
conn.connect()
ch = conn.channel()
done = []
def relay(m):
    if m.body == b'quit':
        done.append(1)
    else:
        ch.basic_publish(amqp.Message(m.body), exchange='', routing_key='floor.r')
ch.basic_consume('floor.q', callback=relay, no_ack=True)
print('ready', flush=True)
while not done:
    conn.drain_events()
conn.close()
"""


def amqp_floor(url: str, samples: int) -> tuple[float, float]:
    """A task round trip's floor on RabbitMQ, in ms (p50, p99), with a task-sized (600-byte) payload: the
    client publishes a request (no confirm) and waits for the reply on a queue it consumes, while a bare
    py-amqp process (the "worker") consumes the requests and publishes each back: one publish and one
    delivery each way, two wake-ups, the least any worker in another process can do."""
    from urllib.parse import unquote, urlsplit

    import amqp

    parts = urlsplit(url)
    host, vhost = f'{parts.hostname}:{parts.port}', unquote(parts.path[1:]) or '/'
    conn = amqp.Connection(host, virtual_host=vhost)
    conn.connect()
    ch = conn.channel()
    for name in ('floor.q', 'floor.r'):
        ch.queue_declare(name, durable=False, auto_delete=False)
    replies: list[bytes] = []
    ch.basic_consume('floor.r', callback=lambda m: replies.append(m.body), no_ack=True)
    relay = subprocess.Popen([sys.executable, '-c', AMQP_RELAY, host, vhost], stdout=subprocess.PIPE, text=True)
    payload = b'x' * 600
    times = []
    try:
        assert relay.stdout is not None
        relay.stdout.readline()
        for i in range(20 + samples):
            t = time.perf_counter()
            ch.basic_publish(amqp.Message(payload), exchange='', routing_key='floor.q')
            while not replies:
                conn.drain_events(timeout=10)
            if replies.pop() != payload:
                raise Failed('the relay answered something else')
            if i >= 20:
                times.append((time.perf_counter() - t) * 1000)
    finally:
        ch.basic_publish(amqp.Message(b'quit'), exchange='', routing_key='floor.q')
        try:
            relay.wait(10)
        except subprocess.TimeoutExpired:
            relay.kill()
            relay.wait()
        conn.close()
    return percentile(times, 50), percentile(times, 99)


# --- command line -------------------------------------------------------------------------------------------


def parse(argv: list[str] | None) -> Config:
    parser = argparse.ArgumentParser(
        prog='benches/macro.py', description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument('--quick', action='store_true', help='small counts, 1 round, 3 s soak (about 2 minutes)')
    parser.add_argument('--rounds', type=int, help='rounds of publish, drain, e2e and latency (full: 3)')
    parser.add_argument('-n', '--n-drain', type=int, help='tasks pre-filled for drain (full: 200,000)')
    parser.add_argument('--n-publish', type=int, help='tasks per publish run, one delay() each (full: 20,000)')
    parser.add_argument('--n-batch', type=int, help='tasks per publish-batch run (full: 20,000)')
    parser.add_argument('--n-e2e', type=int, help='tasks per e2e run (full: 20,000)')
    parser.add_argument('--samples', type=int, help='latency round trips per run (full: 1,000)')
    parser.add_argument('--soak', type=float, help='soak seconds (full: 60; `make bench-soak`: 600)')
    parser.add_argument('--n-eta', type=int, help='ETA tasks for the memory check (full: 100,000)')
    parser.add_argument('--prefetch', type=int, default=DEFAULT_PREFETCH, help='worker_prefetch_multiplier, both')
    parser.add_argument('--engines', default=','.join(SPECS), help=f'comma-separated, of: {", ".join(SPECS)}')
    parser.add_argument('--workloads', default=','.join(ALL_WORKLOADS), help='comma-separated, of: %(default)s')
    parser.add_argument(
        '--broker', choices=('redis', 'sqlite', 'rabbitmq'), help='only the engines on this broker (comma-separated)'
    )
    parser.add_argument('--no-celery', action='store_true', help='fastq only')
    parser.add_argument('--out', type=Path, help='report path (default: benches/RESULTS.md, --quick: RESULTS-quick.md)')
    parser.add_argument('--no-write', action='store_true', help='print the table only')
    opts = parser.parse_args(argv)
    sizes = QUICK if opts.quick else FULL
    engines = [e.strip() for e in opts.engines.split(',') if e.strip()]
    workloads = [w.strip() for w in opts.workloads.split(',') if w.strip()]
    for name, known, got in (('engine', SPECS, engines), ('workload', ALL_WORKLOADS, workloads)):
        unknown = [x for x in got if x not in known]
        if unknown:
            parser.error(f'unknown {name}(s): {", ".join(unknown)}')
    if opts.broker:
        brokers = {'rabbitmq': 'amqp'}.get(opts.broker, opts.broker)
        engines = [e for e in engines if SPECS[e].broker == brokers]
    if opts.no_celery:
        engines = [e for e in engines if SPECS[e].package != 'celery']
    engines = [e for e in engines if any(e in RUNS_ON[w] for w in workloads)]  # e.g. no RabbitMQ for soak only

    def pick(value: Any, key: str) -> Any:
        if value is not None:
            return value
        return sizes[key] if key in ('soak', 'settle') else int(sizes[key])

    out = None
    if not opts.no_write:
        out = opts.out or BENCHES / ('RESULTS-quick.md' if opts.quick else 'RESULTS.md')
    return Config(
        engines=engines,
        workloads=workloads,
        rounds=pick(opts.rounds, 'rounds'),
        n_publish=pick(opts.n_publish, 'publish'),
        n_batch=pick(opts.n_batch, 'batch'),
        n_drain=pick(opts.n_drain, 'drain'),
        n_e2e=pick(opts.n_e2e, 'e2e'),
        samples=pick(opts.samples, 'samples'),
        soak=pick(opts.soak, 'soak'),
        n_eta=pick(opts.n_eta, 'eta'),
        settle=sizes['settle'],
        prefetch=opts.prefetch,
        out=out,
        quick=opts.quick,
    )


FLOORS = {
    'redis': (
        'Floors, the same Redis with bare redis-py commands:',
        (
            ('floor-2rt', 'two sequential round trips from one client (LPUSH, RPOP)'),
            ('floor-1rt', "publish: one LPUSH per task of a 900-byte payload, right before fastq's delay() run"),
            ('floor-relay', 'client LPUSH + BRPOP reply, a bare redis-py process relaying (BRPOP, LPUSH)'),
            (
                'floor-fetch',
                "drain: one consumer reserving (fastq's fetch script: kombu's unacked hash and index) a window of "
                'tasks at a time and acking them with the next fetch, nothing decoded or run, right before '
                "fastq's drain",
            ),
        ),
    ),
    'rabbitmq': (
        'Latency floor, the same RabbitMQ node with bare py-amqp:',
        (
            (
                'floor-amqp-relay',
                'client publishes (no confirm) and consumes the reply queue, a bare py-amqp process relaying '
                '(consume, publish)',
            ),
        ),
    ),
}


def floor_text(results: Results, table: str = 'redis') -> str:
    lines = []
    for key, what in FLOORS[table][1]:
        p50, p99 = results.get(key, 'latency-p50'), results.get(key, 'latency-p99')
        if p50:
            med50, med99 = statistics.median(p50.values()), statistics.median(p99.values())
            lines.append(f'- {what}: p50 {format_value(med50, "ms")} ms, p99 {format_value(med99, "ms")} ms')
        for workload in ('publish', 'drain'):
            if rates := results.get(key, workload):
                lines.append(f'- {what}: {statistics.median(rates.values()):,.0f} tasks/s')
    return '\n'.join(lines)


def main(argv: list[str] | None = None) -> int:
    config = parse(argv)
    if not config.engines:
        print('no engine selected', file=sys.stderr)
        return 2
    tables = [t for t in TABLES if any(table_of(e) is t for e in config.engines)]
    started = time.monotonic()
    server = RedisServer() if any(SPECS[e].broker in ('redis', 'amqp') for e in config.engines) else None
    rabbit = None
    base = Path(tempfile.mkdtemp(prefix='fastq-bench-'))
    try:
        if RABBIT in tables:
            print('starting a RabbitMQ node...', flush=True)
            rabbit = RabbitNode()
        facts = report.machine_facts(rabbit.version() if rabbit else None)
        print('fastq vs Celery:', ', '.join(f'{k} {v}' for k, v in facts.items()))
        for table in tables:
            print(f'settings ({table.title}):', '; '.join(f'{k}: {v}' for k, v in config.settings(table.key).items()))
        bench = Bench(config, server.url(0) if server else None, base, rabbit)
        bench.run()
    finally:
        if rabbit is not None:
            rabbit.close()
        if server is not None:
            server.close()
        shutil.rmtree(base, ignore_errors=True)
    elapsed = time.monotonic() - started
    results = bench.results
    sections: dict[str, report.Section] = {}
    for table in tables:
        print(f'\n{table.title}: medians of {config.rounds} round(s) (min-max); fastq advantage: >1 means fastq better')
        print(render(results, table=table))
        floors = floor_text(results, table.key)
        if floors:
            print(FLOORS[table.key][0] + '\n' + floors)
        problems = [text for key, text in config.problems if key == table.key]
        table_facts = facts if table is RABBIT else {k: v for k, v in facts.items() if not k.startswith('RabbitMQ')}
        sections[table.key] = {
            'facts': table_facts,
            'settings': config.settings(table.key) | {'wall time (whole invocation)': f'{elapsed:.0f} s'},
            'floors_title': FLOORS[table.key][0],
            'floors': floors,
            'problems': problems,
        }
    print(f'wall time {elapsed:.0f} s')
    if config.problems:
        print('\nPROBLEMS:\n' + '\n'.join(f'  {p}' for _, p in config.problems))
    if config.out is not None:
        json_path, chart_path = report.write(config.out, results, sections)
        drawn = f', {chart_path}' if chart_path else ' (no chart: matplotlib is missing)'
        print(f'wrote {config.out}, {json_path}{drawn}')
    return 1 if config.problems else 0
