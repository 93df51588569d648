"""Celery's `inspect scheduled` as the oracle: a countdown task a fastq worker parked in Redis is listed as a
Celery worker lists one it holds."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from tests.harness import wait_until


def test_a_parked_task_is_listed_as_a_celery_worker_lists_it(celery_client: Any, workers: Any) -> None:
    nodes = {}
    for kind in ('celery', 'fastq'):
        w = workers(kind, '-n', f'{kind}s@%h', '-Q', f'{kind}_eta')
        nodes[kind] = next(word for word in w.log.split() if word.startswith(f'{kind}s@'))
    sent = {
        kind: celery_client.send_task('worker_tasks.add', (2, 2), {'z': 1}, countdown=60, queue=f'{kind}_eta')
        for kind in nodes
    }
    inspect = celery_client.control.inspect(destination=list(nodes.values()), timeout=3)
    wait_until(lambda: all((inspect.scheduled() or {}).get(node) for node in nodes.values()), message='listed')
    replies = inspect.scheduled()

    def normalised(kind: str) -> dict[str, Any]:
        [item] = replies[nodes[kind]]
        request = item['request']
        assert request['id'] == sent[kind].id and request['hostname'] == nodes[kind]
        assert request['delivery_info']['routing_key'] == f'{kind}_eta'
        assert abs(datetime.fromisoformat(item['eta']).timestamp() - datetime.now().timestamp() - 60) < 15
        request.update(id='ID', hostname='NODE', delivery_info={**request['delivery_info'], 'routing_key': 'Q'})
        return {**item, 'eta': 'ETA', 'priority': 'PRIORITY'}

    assert normalised('fastq') == normalised('celery')
    # Celery's `priority` is its timer entry's (always 6); fastq's is the message's, as for tasks it holds
    assert [item['priority'] for item in replies[nodes['celery']]] == [6]
    assert [item['priority'] for item in replies[nodes['fastq']]] == [0]
