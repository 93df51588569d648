"""The client side of a workload, in a process of its own: `python -m suite.agent KEY DIR PACKAGE BROKER LOCATION BLOCKS`.

One agent runs per engine and workload, so neither engine's client library is loaded in the other's process
and nothing (threads, subscriptions, caches) carries over from one measurement to the next. It imports the
engine's generated `benchapp`, then answers JSON requests, one per line on stdin (`{"cmd": "publish", "n": 1000}`)
with one JSON line on its stdout (`{"ok": {...}}` or `{"error": "..."}`); anything a library prints goes to
stderr (the agent's log). Every command checks what it did: counts on the broker, every result's value.
"""

from __future__ import annotations

import importlib
import json
import os
import sys
import time
import traceback
from typing import Any

from suite.queues import queues_for, wait_until
from suite.stats import percentile

WARM = 20  # round trips before any measurement: connections made, code paths warm


class Agent:
    def __init__(self, package: str, broker: str, location: str, consumer_blocks: bool) -> None:
        self.app_module: Any = importlib.import_module('benchapp')
        self.group: Any = importlib.import_module(package).group
        if broker == 'sqlite':
            self.app_module.app.broker.connect()  # fastq creates its tables on first use
        self.queues = queues_for(broker, location)
        self.consumer_blocks = consumer_blocks

    # --- without a worker ----------------------------------------------------------------------------------

    def cmd_publish(self, n: int) -> dict[str, Any]:
        """One `noop.delay()` per task; afterwards exactly n tasks must be on the broker."""
        noop, q = self.app_module.noop, self.queues
        q.clear()
        for _ in range(WARM):
            noop.delay()
        q.settled(WARM)  # RabbitMQ without confirms: let the warm-up land before emptying the queue
        q.clear()
        started = time.perf_counter()
        for _ in range(n):
            noop.delay()
        seconds = time.perf_counter() - started
        found = q.settled(n)
        q.clear()
        if found != n:
            raise AssertionError(f'{found} tasks on the broker after {n} delay() calls')
        return {'rate': n / seconds, 'seconds': seconds}

    def cmd_publish_batch(self, n: int) -> dict[str, Any]:
        """`group(noop.s() for _ in range(n)).apply_async()`; when it returns, all n must be on the broker."""
        noop, q, group = self.app_module.noop, self.queues, self.group
        q.clear()
        group(noop.s() for _ in range(WARM)).apply_async()
        q.settled(WARM)
        q.clear()
        started = time.perf_counter()
        group(noop.s() for _ in range(n)).apply_async()
        seconds = time.perf_counter() - started
        found = q.settled(n)
        q.clear()
        if found != n:
            raise AssertionError(f'{found} tasks on the broker after a group of {n} returned')
        return {'rate': n / seconds, 'seconds': seconds}

    def cmd_fill(self, n: int, eta: bool = False) -> dict[str, Any]:
        """Stage n copies of one envelope this engine's client publishes (see queues.py); before any worker.
        On RabbitMQ the copies go straight onto the queue the worker will consume."""
        q = self.queues
        q.clear()
        if eta:
            self.app_module.noop.apply_async(countdown=3600)
        else:
            self.app_module.noop.delay()
        template = q.pop_template()
        started = time.perf_counter()
        staged = q.stage(q.copies(template, n))
        if staged != n:
            raise AssertionError(f'staged {staged} tasks, wanted {n}')
        return {'seconds': time.perf_counter() - started}

    # --- with a worker running -----------------------------------------------------------------------------

    def cmd_warmup(self) -> dict[str, Any]:
        """Wait for the worker (first result), warm it up, and leave it idle; returns the tasks it ran."""
        add = self.app_module.add
        if add.delay(0, 0).get(timeout=180, interval=0.01) != 0:
            raise AssertionError('add(0, 0) != 0')
        for i in range(WARM):
            if add.delay(i, i).get(timeout=60, interval=0.001) != 2 * i:
                raise AssertionError('wrong result while warming up')
        burst = [add.delay(i, 1) for i in range(WARM)]
        if [r.get(timeout=60, interval=0.001) for r in burst] != [i + 1 for i in range(WARM)]:
            raise AssertionError('wrong result while warming up')
        self._idle(60)
        return {'ran': 1 + 2 * WARM}

    def _idle(self, timeout: float) -> float:
        return wait_until(lambda: self.queues.drained(self.consumer_blocks), timeout, what='an idle worker')

    def cmd_drain(self, n: int) -> dict[str, Any]:
        """Release the staged tasks onto the queue of the idle worker; time until every one is handed over.

        RabbitMQ (prefilled): the worker was started on the full queue; only wait until every task has been
        handed over. The time is taken from the pool children's own clocks (run.py), not here."""
        q = self.queues
        if q.prefilled:
            finished = wait_until(
                lambda: q.drained(self.consumer_blocks), max(600.0, n / 20), 0.02, f'{n} tasks to drain'
            )
            return {'seen': finished}
        if q.ready() or q.reserved():
            raise AssertionError('the worker is not idle')
        started = q.release()
        finished = wait_until(
            lambda: q.drained(self.consumer_blocks), timeout=max(600.0, n / 20), what=f'{n} tasks to drain'
        )
        seconds = finished - started
        return {'rate': n / seconds, 'seconds': seconds}

    def cmd_release(self) -> dict[str, Any]:
        self.queues.release()
        return {}

    def cmd_wait_parked(self, n: int, timeout: float) -> dict[str, Any]:
        """Wait until the worker has taken all n ETA tasks off the queue and holds them (in `unacked`)."""
        started = time.perf_counter()
        finished = wait_until(lambda: self.queues.parked() == (0, n), timeout, 0.05, f'{n} ETA tasks received')
        return {'seconds': finished - started}

    def cmd_e2e(self, n: int) -> dict[str, Any]:
        """Publish n add(i, i), then collect every result; each must be 2i."""
        add = self.app_module.add
        return self._round_trip(n, lambda: [add.delay(i, i) for i in range(n)])

    def cmd_e2e_batch(self, n: int) -> dict[str, Any]:
        """Publish n add(i, i) as one group (the batch API), then collect every result; each must be 2i.
        Against `e2e`, the client's n round trips are gone: what is left is the worker's pace with results."""
        add, group = self.app_module.add, self.group
        return self._round_trip(n, lambda: group(add.s(i, i) for i in range(n)).apply_async().results)

    @staticmethod
    def _round_trip(n: int, publish: Any) -> dict[str, Any]:
        """Time `publish()` (n results of add(i, i)) and collecting them; every result must be 2i."""
        started = time.perf_counter()
        results = publish()
        values = [r.get(timeout=600, interval=0.001) for r in results]
        seconds = time.perf_counter() - started
        wrong = sum(1 for i, v in enumerate(values) if v != 2 * i)
        if wrong:
            raise AssertionError(f'{wrong} of {n} results wrong')
        return {'rate': n / seconds, 'seconds': seconds, 'ran': n}

    def cmd_latency(self, samples: int) -> dict[str, Any]:
        """Sequential add.delay(1, 1).get() on an idle worker, after WARM unmeasured ones."""
        add = self.app_module.add
        times = []
        for i in range(WARM + samples):
            started = time.perf_counter()
            value = add.delay(1, 1).get(timeout=60, interval=0.001)
            elapsed = time.perf_counter() - started
            if value != 2:
                raise AssertionError(f'add(1, 1) returned {value!r}')
            if i >= WARM:
                times.append(elapsed * 1000)
        return {'p50': percentile(times, 50), 'p99': percentile(times, 99), 'ran': WARM + samples}

    def cmd_soak(self, seconds: float, batch: int = 500, checked: int = 10) -> dict[str, Any]:
        """Publish and drain continuously for `seconds`: rounds of `batch` noop.delay() and `checked` add(i, i)
        whose results are collected (so the queue never runs far ahead of the worker), then wait until idle."""
        noop, add = self.app_module.noop, self.app_module.add
        sent = 0
        started = time.perf_counter()
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            for _ in range(batch):
                noop.delay()
            results = [add.delay(i, i) for i in range(checked)]
            if [r.get(timeout=120, interval=0.001) for r in results] != [2 * i for i in range(checked)]:
                raise AssertionError('wrong result during the soak')
            sent += batch + checked
        self._idle(300)
        elapsed = time.perf_counter() - started
        return {'rate': sent / elapsed, 'ran': sent, 'seconds': elapsed}


def main() -> int:
    _key, directory, package, broker, location, blocks = sys.argv[1:7]
    out = os.fdopen(os.dup(1), 'w', buffering=1)
    os.dup2(2, 1)  # library chatter goes to the log, never into the protocol
    os.chdir(directory)
    sys.path.insert(0, directory)
    agent = Agent(package, broker, location, blocks == '1')
    out.write(json.dumps({'ok': {'pid': os.getpid()}}) + '\n')
    for line in sys.stdin:
        request = json.loads(line)
        cmd = request.pop('cmd')
        if cmd == 'quit':
            break
        try:
            reply: dict[str, Any] = {'ok': getattr(agent, f'cmd_{cmd}')(**request)}
        except Exception as exc:
            traceback.print_exc()
            reply = {'error': f'{type(exc).__name__}: {exc}'}
        out.write(json.dumps(reply) + '\n')
    agent.queues.close()
    return 0


if __name__ == '__main__':
    sys.exit(main())
