"""What the idle round trip would cost without the worker's fetcher -> child hop (a measurement, not a design).

A prefork worker's idle round trip is: the client's LPUSH, Redis, the parent's fetcher thread (woken by the
reply of its BLMOVE and the fetch script queued behind it), a pool child (woken by the job's write), Redis
again (the result's store and publish), the client. This runs, alternately with the probe's prefork worker,
a stand-in with that one hop fewer: a single process whose one thread waits in the broker with the real
`RedisConsumer` (the same lead BLMOVE, fetch script and acks riding ahead of it), runs each task with the pool
child's `run_payload` and stores its result as a child does. It checks nothing else a worker does (no
revocation, time limits, events), so it is the lower bound of a design where a pool child waits in the
broker itself while the worker is idle, not a worker.

    python benches/one_hop_fewer.py [--pairs 3] [--rounds 4] [-n 800]

Measured on the project's 2-vCPU VM (2026-12-06): 0.309 ms p50 (0.270-0.316) against 0.432 (0.337-0.451).
"""

from __future__ import annotations

import argparse
import marshal
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(Path(__file__).resolve().parents[1]))

from tests.servers import RedisServer

import probe


def stand_in(workdir: str) -> None:
    """The one-process stand-in (run in a subprocess)."""
    sys.path.insert(0, workdir)
    import probeapp  # type: ignore[import-not-found]

    from fastq.worker.job import run_payload

    app = probeapp.app
    consumer, acks = probe.carrying_consumer(app, 'one-hop-fewer@localhost')
    backend = app.backend
    backend.defer_stores()
    accept = frozenset({'application/json'})
    print('ready', flush=True)
    while True:
        for d in consumer.fetch(8, 1.0):
            acks.append(d.tag)  # early, as a pool child's task is acked: it rides ahead of the next BLMOVE
            payload = marshal.dumps((d.raw, d.queue, d.redelivered, None, None, 'one-hop-fewer@localhost'))
            run_payload(app, payload, accept)
            backend.flush_stores()


def p50s(rounds: int, n: int) -> list[float]:
    from probeapp import add  # type: ignore[import-not-found]

    out = []
    for _ in range(rounds):
        times = []
        for _ in range(n):
            start = time.perf_counter()
            if add.apply_async((1, 1), queue=probe.QUEUE).get(timeout=10) != 2:
                raise SystemExit('wrong result')
            times.append(time.perf_counter() - start)
        out.append(statistics.median(times) * 1e3)
    return out


def warm_up() -> None:
    from probeapp import add

    for _ in range(50):
        add.apply_async((1, 1), queue=probe.QUEUE).get(timeout=10)


def main() -> int:
    if len(sys.argv) == 3 and sys.argv[1] == '--stand-in':
        stand_in(sys.argv[2])
        return 0
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--pairs', type=int, default=3, help='turns each worker takes')
    parser.add_argument('--rounds', type=int, default=4, help='rounds per turn')
    parser.add_argument('-n', type=int, default=800, help='round trips per round')
    opts = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix='fastq-one-hop-'))
    (workdir / 'probeapp.py').write_text(probe.APP)
    server = RedisServer()
    url = f'redis://127.0.0.1:{server.port}'
    os.environ.update(PROBE_BROKER=url + '/0', PROBE_BACKEND=url + '/1')
    sys.path.insert(0, str(workdir))
    results: dict[str, list[float]] = {'prefork worker': [], 'one process, one hop fewer': []}
    try:
        for _ in range(opts.pairs):
            worker = probe.Probe(None, False, workdir, url)
            try:
                warm_up()
                results['prefork worker'] += p50s(opts.rounds, opts.n)
            finally:
                worker.close()
            command = [sys.executable, __file__, '--stand-in', str(workdir)]
            one = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
            try:
                assert one.stdout is not None
                one.stdout.readline()
                warm_up()
                results['one process, one hop fewer'] += p50s(opts.rounds, opts.n)
            finally:
                one.kill()
                one.wait()
    finally:
        server.stop()
    for label, values in results.items():
        print(f'{label}: p50 median {statistics.median(values):.3f} ms ({min(values):.3f}-{max(values):.3f})')
    return 0


if __name__ == '__main__':
    sys.exit(main())
