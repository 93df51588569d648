"""The main job on the embedded default: a real worker process runs real tasks on SQLite.

Starts `fastq -A tasks worker` in a scratch directory, calls a few tasks and prints their results, then
pushes a batch through and prints tasks/s. Run it with `bash ci/demo.sh` (or `make demo` once set up).
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument('-n', '--tasks', type=int, default=5000, help='tasks in the throughput run')
    parser.add_argument('-c', '--concurrency', type=int, default=2)
    opts = parser.parse_args()

    workdir = tempfile.mkdtemp(prefix='fastq-demo-')
    os.chdir(workdir)
    sys.path.insert(0, str(HERE))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(HERE), os.environ.get('PYTHONPATH', '')]))
    logfile = os.path.join(workdir, 'worker.log')
    print(f'$ cd {workdir} && fastq -A tasks worker -l info -c {opts.concurrency} --logfile worker.log')
    worker = subprocess.Popen(
        [
            sys.executable,
            '-m',
            'fastq',
            '-A',
            'tasks',
            'worker',
            '-l',
            'info',
            '-c',
            str(opts.concurrency),
            '--logfile',
            logfile,
        ],
        env=env,
    )
    try:
        from tasks import add, div, hello

        from fastq.exceptions import TimeoutError

        time.sleep(0.5)
        print('\n>>> add.delay(4, 4).get(timeout=10)')
        print(add.delay(4, 4).get(timeout=10))
        print(">>> hello.delay('world').get(timeout=10)")
        print(hello.delay('world').get(timeout=10))
        print('>>> div.delay(1, 0).get(timeout=10)')
        try:
            div.delay(1, 0).get(timeout=10)
        except ZeroDivisionError as exc:
            print(f'ZeroDivisionError: {exc}  (raised in the worker, re-raised here)')
        print('>>> add.apply_async((2, 3), countdown=1).get(timeout=10)')
        started = time.monotonic()
        print(add.apply_async((2, 3), countdown=1).get(timeout=10), f'(after {time.monotonic() - started:.2f}s)')

        print('\n$ tail worker.log')
        with open(logfile) as f:
            print(''.join(f.readlines()[-12:]).rstrip())

        print(f'\n>>> {opts.tasks} x add.delay(i, i), then .get() on each')
        started = time.monotonic()
        results = [add.delay(i, i) for i in range(opts.tasks)]
        sent = time.monotonic()
        values = [r.get(timeout=120) for r in results]
        done = time.monotonic()
        assert values == [i + i for i in range(opts.tasks)], 'wrong results'
        print(
            f'{opts.tasks} tasks: published in {sent - started:.2f}s, all results in {done - started:.2f}s -> '
            f'{opts.tasks / (done - started):,.0f} tasks/s end to end (SQLite broker and results, '
            f'prefork -c {opts.concurrency}, worker logging every task at INFO)'
        )
        print(f'worker log: {logfile}')
        return 0
    except TimeoutError:
        print('the worker did not answer in time', file=sys.stderr)
        return 1
    finally:
        worker.send_signal(signal.SIGTERM)
        try:
            worker.wait(30)
        except subprocess.TimeoutExpired:
            worker.kill()


if __name__ == '__main__':
    sys.exit(main())
