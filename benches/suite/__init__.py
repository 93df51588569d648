"""The benchmark suite: fastq and Celery side by side on one freshly started redis-server (and fastq on SQLite).

Run it with `python benches/macro.py` (see `--help`, `make bench`, `make bench-quick`, `make bench-soak`) and
read `benches/README.md` for what each workload measures and how completion is detected.

Modules:
    run       the command line and the rounds (which engine runs which workload, A/B alternation)
    engines   the generated task module, the worker processes (start, stop, resident memory, per-child counts)
    agent     the client process (one per engine and phase): publishes, collects, times, checks
    queues    broker-side views used for pre-filling, releasing and detecting completion (Redis and SQLite)
    stats     medians, spreads, fastq's advantage, the text and Markdown tables
    report    machine facts, RESULTS.md and the PNG chart
"""
