"""Macro benchmarks: real workers, fastq and Celery side by side, in one invocation, alternating runs.

    python benches/macro.py --broker redis  [-n 5000] [--rounds 3] [--no-celery]
    python benches/macro.py --broker sqlite [-n 2000]

Same settings for both engines: prefork, concurrency 2, `-l warning`, prefetch multiplier 4, JSON. On Redis
both use one redis-server started here (127.0.0.1, a free port); on SQLite, fastq uses `sqlite://` and Celery
its own embedded setup (`sqla+sqlite://` broker, `db+sqlite://` results). Workloads:

    publish   tasks/s of one client calling delay() N times (ignore_result)
    drain     tasks/s of a worker started on a pre-filled queue of N tasks, each doing one Redis INCR
              (on SQLite: storing its result), until all are done (worker start-up time subtracted)
    e2e       tasks/s with the worker running while the client publishes N add(i, i) and collects every result
    latency   sequential add.delay(1, 1).get() round trips, p50 / p99 in ms (Redis: beside the floor, the
              same number of bare PING round trips from redis-py)

Medians over the rounds are printed with the fastq/celery ratio; compare ratios, not absolute numbers (the
machine is shared). Every run checks its results.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent

APP = {
    'fastq': 'from fastq import Fastq as App',
    'celery': 'from celery import Celery as App',
}
TASKS = textwrap.dedent(
    """
    import os
    {import_app}
    app = App('benchapp', broker={broker!r}, backend={backend!r})
    app.conf.worker_prefetch_multiplier = 4
    _counter = None

    @app.task(ignore_result=True)
    def noop():
        return None

    @app.task(ignore_result=True)
    def incr():
        global _counter
        if _counter is None:
            import redis
            _counter = redis.Redis.from_url({counter_url!r})
        _counter.incr('bench:done')

    @app.task
    def add(x, y):
        return x + y
    """
)


class Engine:
    def __init__(self, name: str, broker_kind: str, redis_url: str | None) -> None:
        self.name = name
        self.dir = Path(tempfile.mkdtemp(prefix=f'bench-{name}-'))
        if broker_kind == 'redis':
            assert redis_url is not None
            broker = backend = redis_url
        elif name == 'fastq':
            broker, backend = 'sqlite:///broker.sqlite3', 'sqlite:///results.sqlite3'
        else:
            broker, backend = 'sqla+sqlite:///broker.sqlite3', 'db+sqlite:///results.sqlite3'
        self.counter_url = redis_url
        source = TASKS.format(import_app=APP[name], broker=broker, backend=backend, counter_url=redis_url or '')
        (self.dir / 'benchapp.py').write_text(source)
        self.mod = self._import()

    def _import(self) -> Any:
        os.chdir(self.dir)
        sys.path.insert(0, str(self.dir))
        sys.modules.pop('benchapp', None)
        import benchapp

        sys.path.remove(str(self.dir))
        return benchapp

    def worker(self) -> tuple[subprocess.Popen[bytes], float]:
        cmd = [sys.executable, '-m', self.name, '-A', 'benchapp', 'worker', '-c', '2', '-P', 'prefork', '-l', 'warning']
        log = open(self.dir / 'worker.log', 'ab')
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(self.dir), str(ROOT / 'python')]))
        started = time.monotonic()
        return subprocess.Popen(cmd, cwd=self.dir, env=env, stdout=log, stderr=subprocess.STDOUT), started

    @staticmethod
    def stop(proc: subprocess.Popen[bytes]) -> None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def purge(self) -> None:
        os.chdir(self.dir)
        self.mod.app.control.purge() if self.name == 'celery' else self.mod.app.broker.purge('celery')

    def startup(self) -> float:
        proc, started = self.worker()
        try:
            self.mod.add.delay(1, 1).get(timeout=120)
            return time.monotonic() - started
        finally:
            self.stop(proc)

    def cleanup(self) -> None:
        os.chdir('/')
        shutil.rmtree(self.dir, ignore_errors=True)


def publish(engine: Engine, n: int) -> float:
    os.chdir(engine.dir)
    noop = engine.mod.noop
    started = time.monotonic()
    for _ in range(n):
        noop.delay()
    rate = n / (time.monotonic() - started)
    engine.purge()
    return rate


def drain(engine: Engine, n: int, startup: float) -> float:
    os.chdir(engine.dir)
    if engine.counter_url:
        import redis

        counter = redis.Redis.from_url(engine.counter_url)
        counter.delete('bench:done')
        for _ in range(n):
            engine.mod.incr.delay()
        proc, started = engine.worker()
        try:
            while int(counter.get('bench:done') or 0) < n:
                time.sleep(0.005)
            return n / max(time.monotonic() - started - startup, 1e-3)
        finally:
            engine.stop(proc)
    results = [engine.mod.add.delay(i, i) for i in range(n)]
    proc, started = engine.worker()
    try:
        assert [r.get(timeout=600, interval=0.01) for r in results] == [i + i for i in range(n)]
        return n / max(time.monotonic() - started - startup, 1e-3)
    finally:
        engine.stop(proc)


def e2e_and_latency(engine: Engine, n: int, samples: int) -> tuple[float, float, float]:
    os.chdir(engine.dir)
    proc, _ = engine.worker()
    try:
        engine.mod.add.delay(0, 0).get(timeout=120)
        started = time.monotonic()
        results = [engine.mod.add.delay(i, i) for i in range(n)]
        assert [r.get(timeout=600, interval=0.01) for r in results] == [i + i for i in range(n)]
        rate = n / (time.monotonic() - started)
        times = []
        for _ in range(samples):
            t = time.perf_counter()
            assert engine.mod.add.delay(1, 1).get(timeout=60, interval=0.001) == 2
            times.append(time.perf_counter() - t)
        return rate, _pct(times, 50), _pct(times, 99)
    finally:
        engine.stop(proc)


def floor(redis_url: str, samples: int) -> tuple[float, float]:
    import redis

    client = redis.Redis.from_url(redis_url)
    times = []
    for _ in range(samples):
        t = time.perf_counter()
        client.ping()
        times.append(time.perf_counter() - t)
    return _pct(times, 50), _pct(times, 99)


def _pct(values: list[float], p: int) -> float:
    ordered = sorted(values)
    return 1000 * ordered[min(len(ordered) - 1, int(len(ordered) * p / 100))]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--broker', choices=('redis', 'sqlite'), default='redis')
    parser.add_argument('-n', type=int, default=None)
    parser.add_argument('--rounds', type=int, default=3)
    parser.add_argument('--samples', type=int, default=300, help='latency round trips per run')
    parser.add_argument('--no-celery', action='store_true')
    opts = parser.parse_args()
    n = opts.n or (5000 if opts.broker == 'redis' else 2000)
    sys.path.insert(0, str(ROOT))
    server = None
    redis_url = None
    if opts.broker == 'redis':
        from tests.servers import RedisServer

        server = RedisServer()
        redis_url = server.url(0)
    names = ['fastq'] if opts.no_celery else ['fastq', 'celery']
    runs: dict[str, dict[str, list[float]]] = {e: {} for e in names}
    try:
        engines = {name: Engine(name, opts.broker, redis_url) for name in names}
        startups = {name: engine.startup() for name, engine in engines.items()}
        for round_ in range(opts.rounds):
            for name in names if round_ % 2 == 0 else reversed(names):
                engine = engines[name]
                rate, p50, p99 = e2e_and_latency(engine, n, opts.samples)
                row = {
                    'publish': publish(engine, n),
                    'drain': drain(engine, n, startups[name]),
                    'e2e': rate,
                    'p50 ms': p50,
                    'p99 ms': p99,
                }
                for key, value in row.items():
                    runs[name].setdefault(key, []).append(value)
                print(f'round {round_ + 1} {name}: ' + ', '.join(f'{k} {v:,.2f}' for k, v in row.items()), flush=True)
        for engine in engines.values():
            engine.cleanup()
        base = floor(redis_url, opts.samples) if redis_url else None
    finally:
        if server is not None:
            server.close()
    print(f'\n{n} tasks per workload, prefork -c 2, -l warning, {opts.broker}; medians of {opts.rounds} rounds')
    header = f'{"":10}' + ''.join(f'{e:>14}' for e in names) + ('   fastq/celery' if len(names) > 1 else '')
    print(header)
    for metric in ('publish', 'drain', 'e2e', 'p50 ms', 'p99 ms'):
        values = {e: statistics.median(runs[e][metric]) for e in names}
        unit = '/s' if 'ms' not in metric else 'ms'
        row = f'{metric:10}' + ''.join(
            f'{values[e]:>12,.2f}{unit}' if unit == 'ms' else f'{values[e]:>12,.0f}{unit}' for e in names
        )
        if len(names) > 1:
            ratio = values['fastq'] / values['celery'] if unit == '/s' else values['celery'] / values['fastq']
            row += f'{ratio:>14.1f}x'
        print(row)
    if base:
        print(f'floor: bare Redis PING round trip from redis-py p50 {base[0]:.2f} ms, p99 {base[1]:.2f} ms')
    return 0


if __name__ == '__main__':
    sys.exit(main())
