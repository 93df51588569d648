"""Macro benchmark: N tasks through a real worker on an embedded SQLite broker, fastq and Celery side by side.

Both run the same workload in the same invocation, on the same machine, with the same settings (prefork,
concurrency 2, `-l warning`, prefetch multiplier 4, JSON): Celery on its SQLite transport
(`sqla+sqlite://` broker, `db+sqlite://` results: kombu's SQLAlchemy transport and Celery's database
backend, the embedded setup Celery documents), fastq on `sqlite://`. Reported per engine:

    publish    tasks/s of one client calling delay() N times
    drain      tasks/s of a worker started on the pre-filled queue, until every result is stored
    e2e        tasks/s with the worker running while the client publishes and then collects every result

Compare the ratio column, not the absolute numbers (the machine is shared). Every run checks its results.

    python benches/macro_sqlite.py [-n 2000] [--no-celery]
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

ENGINES = {
    'fastq': textwrap.dedent(
        """
        from fastq import Fastq
        app = Fastq('benchapp', broker='sqlite:///broker.sqlite3', backend='sqlite:///results.sqlite3')
        app.conf.worker_prefetch_multiplier = 4

        @app.task
        def add(x, y):
            return x + y
        """
    ),
    'celery': textwrap.dedent(
        """
        from celery import Celery
        app = Celery('benchapp', broker='sqla+sqlite:///broker.sqlite3', backend='db+sqlite:///results.sqlite3')
        app.conf.worker_prefetch_multiplier = 4

        @app.task
        def add(x, y):
            return x + y
        """
    ),
}
WORKER = {
    'fastq': [sys.executable, '-m', 'fastq', '-A', 'benchapp', 'worker', '-c', '2', '-P', 'prefork', '-l', 'warning'],
    'celery': [sys.executable, '-m', 'celery', '-A', 'benchapp', 'worker', '-c', '2', '-P', 'prefork', '-l', 'warning'],
}


class Run:
    def __init__(self, engine: str, n: int) -> None:
        self.engine = engine
        self.n = n
        self.dir = Path(tempfile.mkdtemp(prefix=f'bench-{engine}-'))
        (self.dir / 'benchapp.py').write_text(ENGINES[engine])
        sys.path.insert(0, str(self.dir))
        os.chdir(self.dir)
        for name in [m for m in sys.modules if m == 'benchapp']:
            del sys.modules[name]
        import benchapp

        self.mod = benchapp
        sys.path.remove(str(self.dir))

    def start_worker(self) -> tuple[subprocess.Popen[bytes], float]:
        log = open(self.dir / 'worker.log', 'ab')
        env = dict(os.environ, PYTHONPATH=str(self.dir))
        started = time.monotonic()
        proc = subprocess.Popen(WORKER[self.engine], cwd=self.dir, env=env, stdout=log, stderr=subprocess.STDOUT)
        return proc, started

    def startup_time(self) -> float:
        """Seconds from starting a worker on an empty queue to the first result (subtracted from drain)."""
        proc, started = self.start_worker()
        try:
            self.mod.add.delay(1, 1).get(timeout=120, interval=0.01)
            return time.monotonic() - started
        finally:
            self.stop(proc)

    @staticmethod
    def stop(proc: subprocess.Popen[bytes]) -> None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()

    def publish(self) -> tuple[list[object], float]:
        add = self.mod.add
        started = time.monotonic()
        results = [add.delay(i, i) for i in range(self.n)]
        return results, self.n / (time.monotonic() - started)

    def collect(self, results: list[object]) -> None:
        values = [r.get(timeout=600, interval=0.01) for r in results]  # type: ignore[attr-defined]
        assert values == [i + i for i in range(self.n)], f'{self.engine}: wrong results'

    def measure(self) -> dict[str, float]:
        startup = self.startup_time()
        results, publish_rate = self.publish()
        proc, started = self.start_worker()
        try:
            self.collect(results)
            drain_rate = self.n / max(time.monotonic() - started - startup, 1e-3)
            started = time.monotonic()
            results, _ = self.publish()
            self.collect(results)
            e2e_rate = self.n / (time.monotonic() - started)
        finally:
            self.stop(proc)
        return {'publish': publish_rate, 'drain': drain_rate, 'e2e': e2e_rate}

    def cleanup(self) -> None:
        os.chdir('/')
        shutil.rmtree(self.dir, ignore_errors=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('-n', type=int, default=2000)
    parser.add_argument('--no-celery', action='store_true')
    opts = parser.parse_args()
    engines = ['fastq'] if opts.no_celery else ['fastq', 'celery']
    if 'celery' in engines:
        try:
            import celery  # noqa: F401
            import sqlalchemy  # noqa: F401
        except ImportError:
            print('celery or SQLAlchemy not installed: running fastq alone', file=sys.stderr)
            engines = ['fastq']
    table: dict[str, dict[str, float]] = {}
    for engine in engines:
        run = Run(engine, opts.n)
        try:
            table[engine] = run.measure()
        finally:
            run.cleanup()
    print(f'\n{opts.n} tasks add(i, i), prefork -c 2, results stored and collected, embedded SQLite')
    print(f'{"":10}' + ''.join(f'{e:>14}' for e in engines) + ('   fastq/celery' if len(engines) > 1 else ''))
    for metric in ('publish', 'drain', 'e2e'):
        row = f'{metric:10}' + ''.join(f'{table[e][metric]:>12,.0f}/s' for e in engines)
        if len(engines) > 1:
            row += f'{table["fastq"][metric] / table["celery"][metric]:>14.1f}x'
        print(row)
    return 0


if __name__ == '__main__':
    sys.exit(main())
