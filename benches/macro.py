"""The benchmark suite: fastq vs Celery side by side on a freshly started redis-server (and fastq on SQLite), and
on a freshly started RabbitMQ node.

    python benches/macro.py               full run (make bench): writes benches/RESULTS.md and results.png
    python benches/macro.py --quick       about 2 minutes (make bench-quick): benches/RESULTS-quick.md
    python benches/macro.py --soak 600    with the 10-minute soak (make bench-soak)
    python benches/macro.py --broker rabbitmq   the RabbitMQ rows only (make bench-rabbit)
    python benches/macro.py --help        every option (counts, rounds, engines, workloads)

The code is in benches/suite/; what each workload measures: benches/README.md.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
# the repository, for tests.servers: a run's redis-server and RabbitMQ node are the test suite's
sys.path.insert(1, str(Path(__file__).resolve().parents[1]))

from suite.run import main

if __name__ == '__main__':
    sys.exit(main())
