"""The quickstart app: `fastq -A tasks worker -l info`, then `add.delay(4, 4).get(timeout=1)`.

No broker is configured, so fastq uses SQLite files in the working directory (the banner says which).
"""

from fastq import Fastq

app = Fastq('tasks')


@app.task
def add(x: int, y: int) -> int:
    return x + y


@app.task
def div(x: float, y: float) -> float:
    return x / y


@app.task(bind=True)
def hello(self, name: str) -> str:  # type: ignore[no-untyped-def]
    return f'hello {name} from {self.request.hostname}'
