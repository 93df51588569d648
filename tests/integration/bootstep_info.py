"""The Extensions and Bootsteps guide's InfoStep ("Installing Bootsteps"), as a worker and a consumer step,
printing its parent at each hook (tests/integration/test_bootsteps.py runs a worker with it)."""

from __future__ import annotations

from typing import Any

from fastq import Fastq, bootsteps

app = Fastq('bootstep_info')


class InfoStep(bootsteps.StartStopStep):
    def __init__(self, parent: Any, **kwargs: Any) -> None:
        print(f'{parent!r} is in init')

    def start(self, parent: Any) -> None:
        print(f'{parent!r} is starting')

    def stop(self, parent: Any) -> None:
        print(f'{parent!r} is stopping')

    def shutdown(self, parent: Any) -> None:
        print(f'{parent!r} is shutting down')


app.steps['worker'].add(InfoStep)
app.steps['consumer'].add(InfoStep)
