"""Where a long-lived worker's time goes: tasks/s and CPU per task by process and thread, A/B between trees.

    python benches/probe.py drain                       200,000 no-op tasks per round, 3 rounds
    python benches/probe.py drain --events              the same worker with -E
    python benches/probe.py e2e -n 20000                a group of add(i, i), results collected
    python benches/probe.py e2e-delay -n 5000           add(i, i) sent with one delay() each, then collected
    python benches/probe.py latency -n 1000             sequential add.delay(1, 1).get(), then split by step
    python benches/probe.py drain --src /tmp/old/python --src python --pairs 3
                                                        A/B: the worker runs from each tree in turn

The suite (macro.py) compares fastq with Celery on fresh workers; this is for changing fastq itself: one
worker (prefork, -c 2, prefetch multiplier 16) serves every round, so start-up and warm-up stay out of the
numbers, and the CPU time each process and thread used is read from /proc before and after each round (CPU per
task is steadier than tasks/s on a shared machine). A drain round stages the tasks on a list of its own and
RENAMEs it onto the worker's queue, so the worker sees all of them at once. Thread names come from py-spy when
it is installed (Python threads have no OS names). Every `--src` tree needs fastq's compiled modules built in
place (`make build-dev`); the client side always runs the installed fastq. Linux only (/proc).
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
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(Path(__file__).resolve().parents[1]))

from tests.servers import RedisServer

from suite.queues import clone

APP = """\
import os
import time
from fastq import Fastq
app = Fastq('probeapp', broker=os.environ['PROBE_BROKER'], backend=os.environ['PROBE_BACKEND'])
app.conf.worker_prefetch_multiplier = 16
app.conf.task_serializer = 'json'

@app.task(ignore_result=True)
def noop():
    pass

@app.task
def add(x, y):
    return x + y

@app.task
def stamp():
    return time.perf_counter()
"""
QUEUE = 'probe'


def carrying_consumer(app: Any, owner: str) -> tuple[Any, list[Any]]:
    """`app`'s real Redis consumer on the probe's queue, and the list its acks go in: they ride ahead of its
    next fetch, as the worker's fetcher carries the settler's (for the stand-ins of one_hop_fewer.py and
    no_parent.py)."""
    broker = app.broker
    broker.connect()
    consumer = broker.consumer([QUEUE], owner=owner)
    acks: list[Any] = []

    def take() -> list[Any]:
        taken = acks[:]
        acks.clear()
        return taken

    def settled(tags: list[Any], sent: bool) -> None:
        if not sent:
            consumer.ack(tags)

    consumer.carry_acks(take, settled, lambda: None)
    return consumer, acks


TICK = os.sysconf('SC_CLK_TCK')


def cpu_seconds(pid: int, tid: int | None = None) -> float:
    path = f'/proc/{pid}/stat' if tid is None else f'/proc/{pid}/task/{tid}/stat'
    fields = Path(path).read_text().rsplit(')', 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def threads(pid: int) -> dict[int, float]:
    out = {}
    for entry in os.listdir(f'/proc/{pid}/task'):
        try:
            out[int(entry)] = cpu_seconds(pid, int(entry))
        except FileNotFoundError:  # ended meanwhile
            pass
    return out


def children(pid: int) -> list[int]:
    """Every descendant of `pid` (the pool's fork server and its children)."""
    parents: dict[int, int] = {}
    for entry in os.listdir('/proc'):
        if entry.isdigit():
            try:
                parents[int(entry)] = int(Path(f'/proc/{entry}/stat').read_text().rsplit(')', 1)[1].split()[1])
            except (FileNotFoundError, ProcessLookupError):
                pass
    found, frontier = [], [pid]
    while frontier:
        frontier = [child for child, parent in parents.items() if parent in frontier]
        found += frontier
    return found


def thread_names(pid: int) -> dict[int, str]:
    spy = shutil.which('py-spy') or str(Path(sys.executable).with_name('py-spy'))
    try:
        dump = subprocess.run([spy, 'dump', '--pid', str(pid)], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.TimeoutExpired):
        return {}
    names = {}
    for line in dump.splitlines():
        if line.startswith('Thread ') and '"' in line:
            ident = line.split()[1]
            names[int(ident, 16) if ident.startswith('0x') else int(ident)] = line.split('"')[1]
    return names


class Probe:
    def __init__(self, src: str | None, events: bool, workdir: Path, redis_url: str) -> None:
        import redis

        self.redis = redis.Redis.from_url(redis_url + '/0')
        self.redis.flushall()
        env = dict(os.environ, PROBE_BROKER=redis_url + '/0', PROBE_BACKEND=redis_url + '/1')
        trees = [str(Path(src).resolve())] if src else []
        env['PYTHONPATH'] = os.pathsep.join([str(workdir), *trees, env.get('PYTHONPATH', '')])
        command = [sys.executable, '-m', 'fastq', '-A', 'probeapp', 'worker', '-c', '2', '-P', 'prefork']
        command += ['-l', 'warning', '-Q', QUEUE] + (['-E'] if events else [])
        self.worker = subprocess.Popen(command, env=env, cwd=workdir, stdout=subprocess.DEVNULL)
        self.server_pid = int(self.redis.info('server')['process_id'])
        deadline = time.monotonic() + 30
        while not self.redis.keys('_kombu.binding.*') and time.monotonic() < deadline:
            time.sleep(0.1)  # the worker declared its queue: it is consuming
        time.sleep(1.0)
        self.names = thread_names(self.worker.pid)

    def snapshot(self) -> dict[str, float]:
        out = {f'parent:{self.names.get(tid, tid)}': cpu for tid, cpu in threads(self.worker.pid).items()}
        out['children'] = sum(cpu_seconds(pid) for pid in children(self.worker.pid))
        out['redis-server'] = cpu_seconds(self.server_pid)
        return out

    def stage(self, n: int) -> None:
        from probeapp import noop  # type: ignore[import-not-found]

        noop.apply_async(queue='probe-staging')
        template = self.redis.rpop('probe-staging')
        pipe = self.redis.pipeline(transaction=False)
        for i, envelope in enumerate(clone(template, n)):
            pipe.lpush('probe-staging', envelope)
            if i % 5000 == 4999:
                pipe.execute()
        pipe.execute()

    def drain(self, n: int) -> float:
        self.stage(n)
        start = time.perf_counter()
        self.redis.rename('probe-staging', QUEUE)
        while self.redis.llen(QUEUE) or self.redis.zcard('unacked_index') or self.redis.zcard('fastq.holds'):
            time.sleep(0.002)
        return time.perf_counter() - start

    def e2e(self, n: int) -> float:
        from probeapp import add

        from fastq import group

        start = time.perf_counter()
        results = group(add.s(i, i) for i in range(n)).apply_async(queue=QUEUE).get(timeout=600)
        elapsed = time.perf_counter() - start
        if results != [2 * i for i in range(n)]:
            raise SystemExit('wrong results')
        return elapsed

    def e2e_delay(self, n: int) -> float:
        """The suite's e2e row: one `delay()` per task while the worker runs them, then every result."""
        from probeapp import add

        start = time.perf_counter()
        sent = [add.apply_async((i, i), queue=QUEUE) for i in range(n)]
        results = [result.get(timeout=600) for result in sent]
        elapsed = time.perf_counter() - start
        if results != [2 * i for i in range(n)]:
            raise SystemExit('wrong results')
        return elapsed

    def latency(self, n: int) -> tuple[list[float], dict[str, list[float]]]:
        """`n` sequential `add.delay(1, 1).get()` (seconds each), then `n` of a task that returns when it
        started (`perf_counter` is the system's monotonic clock, the same in every process): how long
        `delay()` took, from its return to the task's start, and from there to `get()`'s return."""
        from probeapp import add, stamp

        for _ in range(20):
            add.apply_async((1, 1), queue=QUEUE).get(timeout=10)
        times = []
        for _ in range(n):
            start = time.perf_counter()
            if add.apply_async((1, 1), queue=QUEUE).get(timeout=10) != 2:
                raise SystemExit('wrong result')
            times.append(time.perf_counter() - start)
        steps: dict[str, list[float]] = {'delay': [], 'to start': [], 'start to get': []}
        for _ in range(n):
            start = time.perf_counter()
            result = stamp.apply_async(queue=QUEUE)
            sent = time.perf_counter()
            started = result.get(timeout=10)
            done = time.perf_counter()
            steps['delay'].append(sent - start)
            steps['to start'].append(started - sent)
            steps['start to get'].append(done - started)
        return times, steps

    def close(self) -> None:
        self.worker.send_signal(signal.SIGTERM)
        self.worker.wait(60)


def run_round(probe: Probe, workload: str, n: int, stats: bool = False) -> tuple[float, str]:
    """One round: its rate (tasks/s) and a line with the CPU per task of each process and parent thread."""
    client = time.process_time()
    if stats:
        probe.redis.config_resetstat()
    before = probe.snapshot()
    if workload == 'latency':
        times, steps = probe.latency(n)
        n *= 2
        seconds = 0.0
    else:
        seconds = {'drain': probe.drain, 'e2e': probe.e2e, 'e2e-delay': probe.e2e_delay}[workload](n)
    after = probe.snapshot()
    per_task = {key: (after[key] - before.get(key, 0.0)) / n * 1e6 for key in after}
    parent = sum(v for k, v in per_task.items() if k.startswith('parent:'))
    busy = {k.split(':', 1)[1]: round(v, 1) for k, v in per_task.items() if k.startswith('parent:') and v >= 0.2}
    if workload == 'latency':
        times.sort()
        p50, p99 = times[len(times) // 2] * 1e3, times[int(len(times) * 0.99)] * 1e3
        split = '  '.join(f'{k} {statistics.median(v) * 1e6:.0f}' for k, v in steps.items())
        text = f'p50 {p50:.3f} ms  p99 {p99:.3f} ms  (µs, p50 of each step: {split})\n           CPU µs/task: '
        text += f'parent {parent:.1f} {busy}'
    else:
        text = f'{n / seconds:>9,.0f} tasks/s   CPU µs/task: parent {parent:.1f} {busy}'
    text += f'  children {per_task["children"]:.1f}  redis-server {per_task["redis-server"]:.1f}'
    if workload.startswith('e2e'):
        text += f'  client {(time.process_time() - client) / n * 1e6:.1f}'
    if stats:
        rows = sorted(probe.redis.info('commandstats').items(), key=lambda kv: -kv[1]['usec'])
        text += '\n           Redis per task (calls, µs): ' + '  '.join(
            f'{k.removeprefix("cmdstat_")} {v["calls"] / n:.2f} {v["usec"] / n:.1f}'
            for k, v in rows
            if v['calls'] >= n / 1000  # (per-batch commands too: a fetch of 16 is 0.06 per task)
        )
    return (p50 if workload == 'latency' else n / seconds), text


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('workload', choices=['drain', 'e2e', 'e2e-delay', 'latency'])
    parser.add_argument(
        '-n', type=int, default=None, help='tasks per round (drain 200,000, e2e 20,000, e2e-delay 5,000, latency 1,000)'
    )
    parser.add_argument('--rounds', type=int, default=3, help='rounds per worker')
    parser.add_argument('--src', action='append', default=[], help='a tree with fastq to run the worker from')
    parser.add_argument('--pairs', type=int, default=1, help='times each --src takes its turn')
    parser.add_argument('--events', action='store_true', help='the worker with -E')
    parser.add_argument(
        '--commandstats', action='store_true', help="per round, Redis's calls and time per task by command"
    )
    opts = parser.parse_args()
    n = opts.n or {'drain': 200_000, 'e2e': 20_000, 'e2e-delay': 5000, 'latency': 1000}[opts.workload]
    workdir = Path(tempfile.mkdtemp(prefix='fastq-probe-'))
    (workdir / 'probeapp.py').write_text(APP)
    server = RedisServer()
    url = f'redis://127.0.0.1:{server.port}'
    os.environ.update(PROBE_BROKER=url + '/0', PROBE_BACKEND=url + '/1')
    sys.path.insert(0, str(workdir))
    rates: dict[str, list[float]] = {}
    try:
        for _ in range(opts.pairs):
            for src in opts.src or [None]:
                label = src or 'installed fastq'
                print(f'{label}:', flush=True)
                probe = Probe(src, opts.events, workdir, url)
                try:
                    for round_ in range(opts.rounds):
                        rate, line = run_round(probe, opts.workload, n, opts.commandstats)
                        rates.setdefault(label, []).append(rate)
                        print(f'  round {round_ + 1}: {line}', flush=True)
                finally:
                    probe.close()
        for label, values in rates.items():
            unit = 'ms p50' if opts.workload == 'latency' else 'tasks/s'
            low, mid, high = min(values), statistics.median(values), max(values)
            print(
                f'{label}: median {mid:,.3f} {unit} ({low:,.3f}-{high:,.3f})'
                if opts.workload == 'latency'
                else f'{label}: median {mid:,.0f} {unit} ({low:,.0f}-{high:,.0f})'
            )
    finally:
        server.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == '__main__':
    sys.exit(main())
