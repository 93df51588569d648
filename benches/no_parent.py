"""What the drain would reach without the worker parent (a measurement, not a design).

A prefork worker's drain passes every task through two processes: the parent's fetcher thread reserves a
window (the fetch script), reads the envelopes' heads, and hands the tasks to the pool children, which run
them. This runs, alternately with the probe's prefork worker (`probe.py`, -c 2, prefetch multiplier 16), a
stand-in without the parent: `--procs` processes, each fetching for itself with the real `RedisConsumer`
(the same fetch script, its acks riding ahead of the next fetch) a window of its own (the worker's window
split between them: 16 each for the worker's 32, so the broker holds as many reserved), and running each
task with the pool child's `run_payload`. It checks nothing else a worker does (no revocation, rate limits,
time limits, events, nothing reported anywhere), so it is the upper bound of a worker whose children consume
for themselves, not a worker. `--no-run` leaves the tasks unrun: the ceiling of the broker's part alone.

    python benches/no_parent.py [--pairs 3] [--rounds 2] [-n 200000] [--procs 2] [--window 16] [--no-run]

Measured on the project's 2-vCPU VM (2026-12-06, the AMD EPYC placement, benches/README.md): see there.
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(Path(__file__).resolve().parents[1]))

from tests.servers import RedisServer

import probe


def stand_in(workdir: str, window: int, run: bool) -> None:
    """One consuming process (run in a subprocess): fetch, run, ack with the next fetch; on SIGTERM, print how
    many tasks it ran and exit."""
    sys.path.insert(0, workdir)
    import probeapp  # type: ignore[import-not-found]

    from fastq.worker.job import run_payload

    stopping = False

    def stop(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    app = probeapp.app
    consumer, acks = probe.carrying_consumer(app, f'no-parent-{os.getpid()}@localhost')
    accept = frozenset({'application/json'})
    ran = 0
    print('ready', flush=True)
    while not stopping:
        for d in consumer.fetch(window, 0.2):
            acks.append(d.tag)  # early, as the worker acks a no-op: it rides ahead of the next fetch
            if run:
                outcome = run_payload(app, (d.raw, d.queue, d.redelivered, None, None, 'no-parent@localhost'), accept)
                if outcome.state != 'SUCCESS':
                    raise SystemExit(f'task failed: {outcome}')
            ran += 1
    if acks:
        consumer.ack(acks[:])
    print(ran, flush=True)


class StandIns:
    """`procs` stand-in processes, with `probe.Probe`'s drain and snapshot (CPU per process)."""

    def __init__(self, workdir: Path, url: str, procs: int, window: int, run: bool) -> None:
        import redis

        self.redis = redis.Redis.from_url(url + '/0')
        self.redis.flushall()
        self.server_pid = int(self.redis.info('server')['process_id'])
        command = [sys.executable, __file__, '--stand-in', str(workdir), str(window), '1' if run else '0']
        self.procs = [subprocess.Popen(command, stdout=subprocess.PIPE, text=True) for _ in range(procs)]
        for p in self.procs:
            assert p.stdout is not None
            p.stdout.readline()

    stage = probe.Probe.stage
    drain = probe.Probe.drain

    def snapshot(self) -> dict[str, float]:
        out = {'consumers': sum(probe.cpu_seconds(p.pid) for p in self.procs)}
        out['redis-server'] = probe.cpu_seconds(self.server_pid)
        return out

    def close(self) -> int:
        """Stop them; how many tasks they ran in all."""
        for p in self.procs:
            p.send_signal(signal.SIGTERM)
        ran = 0
        for p in self.procs:
            out, _ = p.communicate(timeout=30)
            ran += int(out.split()[-1])
        return ran


def round_(runner: probe.Probe | StandIns, n: int, label: str) -> float:
    before = runner.snapshot()
    seconds = runner.drain(n)
    after = runner.snapshot()
    per_task = {key: (after[key] - before.get(key, 0.0)) / n * 1e6 for key in after}
    cpu = '  '.join(f'{key} {value:.1f}' for key, value in per_task.items() if value >= 0.2)
    print(f'  {label}: {n / seconds:>9,.0f} tasks/s   CPU µs/task: {cpu}', flush=True)
    return n / seconds


def main() -> int:
    if len(sys.argv) == 5 and sys.argv[1] == '--stand-in':
        stand_in(sys.argv[2], int(sys.argv[3]), sys.argv[4] == '1')
        return 0
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--pairs', type=int, default=3, help='turns each takes')
    parser.add_argument('--rounds', type=int, default=2, help='rounds per turn')
    parser.add_argument('-n', type=int, default=200_000, help='tasks per round')
    parser.add_argument('--procs', type=int, default=2, help='consuming processes of the stand-in')
    parser.add_argument('--window', type=int, default=16, help="each stand-in process's fetch (its window)")
    parser.add_argument('--no-run', action='store_true', help='the stand-in reserves and acks, runs nothing')
    opts = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix='fastq-no-parent-'))
    (workdir / 'probeapp.py').write_text(probe.APP)
    server = RedisServer()
    url = f'redis://127.0.0.1:{server.port}'
    os.environ.update(PROBE_BROKER=url + '/0', PROBE_BACKEND=url + '/1')
    sys.path.insert(0, str(workdir))
    stand_in_label = f'{opts.procs} processes, no parent' + (', nothing run' if opts.no_run else '')
    results: dict[str, list[float]] = {'prefork worker': [], stand_in_label: []}
    try:
        for _ in range(opts.pairs):
            worker = probe.Probe(None, False, workdir, url)
            try:
                for _ in range(opts.rounds):
                    results['prefork worker'].append(round_(worker, opts.n, 'prefork worker'))
            finally:
                worker.close()
            stand_ins = StandIns(workdir, url, opts.procs, opts.window, not opts.no_run)
            try:
                for _ in range(opts.rounds):
                    results[stand_in_label].append(round_(stand_ins, opts.n, stand_in_label))
            finally:
                ran = stand_ins.close()
            if ran != opts.n * opts.rounds:
                raise SystemExit(f'the stand-in ran {ran:,} tasks, {opts.n * opts.rounds:,} were sent')
    finally:
        server.stop()
    for label, values in results.items():
        print(f'{label}: median {statistics.median(values):,.0f} tasks/s ({min(values):,.0f}-{max(values):,.0f})')
    return 0


if __name__ == '__main__':
    sys.exit(main())
