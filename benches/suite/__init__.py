"""The benchmark suite: fastq and Celery side by side on one freshly started redis-server (and fastq on SQLite),
and on one freshly started RabbitMQ node.

Run it with `python benches/macro.py` (see `--help`, `make bench`, `make bench-quick`, `make bench-soak`,
`make bench-rabbit`) and
read `benches/README.md` for what each workload measures and how completion is detected.

Modules:
    run       the command line and the rounds (which engine runs which workload, A/B alternation)
    engines   the generated task module, the worker processes (start, stop, resident memory, per-child counts)
    agent     the client process (one per engine and phase): publishes, collects, times, checks
    queues    broker-side views used for pre-filling, releasing and detecting completion (Redis, SQLite, RabbitMQ)
    rabbit    the RabbitMQ node of a run (tests/servers.py's RabbitServer): vhosts, emptying them, its version
    stats     medians, spreads, fastq's advantage, the text and Markdown tables (one per broker family)
    report    machine facts, RESULTS.md, the PNG chart and results.json (sections merged across runs)
"""
