"""Mingle: a starting worker asks the workers already on its broker for the task ids they hold revoked.

Celery's `Mingle` consumer step does this before the worker consumes (`hello`, answered by every worker with
its revoked ids and Lamport clock), so that a worker started after a `revoke` does not run the task. fastq
workers also read the revoked ids kept in the broker at startup, which covers every revoke a fastq worker
saw; mingling adds what only Celery workers of a mixed fleet know, and the lines Celery prints. It runs
beside the worker rather than in front of it: waiting the whole second for replies before consuming, as
Celery does, would delay every start for what the broker's copy already gives. The clock is not adjusted
(fastq's counters are per process; Celery's adjustment only orders events).

Off with `--without-mingle` (`without_mingle=True`, as `contrib.testing`'s workers start), without remote
control, and on brokers without a fanout (SQS).
"""

from __future__ import annotations

import logging
import threading
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from fastq.worker.worker import WorkController

logger = logging.getLogger('celery.worker.consumer.mingle')

#: Seconds to wait for the other workers' replies (Celery's `Mingle.send_hello`).
TIMEOUT = 1.0


def start(worker: WorkController) -> threading.Thread:
    """Mingle in a thread of its own; returned started."""
    thread = threading.Thread(target=mingle, args=(worker,), name='fastq-mingle', daemon=True)
    thread.start()
    return thread


def mingle(worker: WorkController) -> None:
    """Say hello to the other workers and take the task ids they hold revoked."""
    dispatcher = worker.dispatcher
    if dispatcher is None:
        return
    logger.info('mingle: searching for neighbors')
    try:
        replies = worker.app.control.inspect(timeout=TIMEOUT).hello(worker.hostname, list(dispatcher.revoked))
    except Exception as exc:  # the broker went away meanwhile: the worker's own loops report and retry that
        logger.warning('mingle: could not reach the other workers: %r', exc)
        return
    nodes = {node: reply for node, reply in (replies or {}).items() if reply and node != worker.hostname}
    if not nodes:
        logger.info('mingle: all alone')
        return
    logger.info('mingle: sync with %s nodes', len(nodes))
    revoked: set[str] = set()
    for node, reply in nodes.items():
        logger.debug('mingle: processing reply from %s', node)
        try:
            revoked.update(_ids(reply))
        except Exception as exc:
            logger.exception('mingle: sync with %s failed: %r', node, exc)
    new = revoked - set(dispatcher.revoked)
    if new:
        worker.loop.call_soon_threadsafe(lambda: dispatcher.revoke(new))
    logger.info('mingle: sync complete')


def _ids(reply: Any) -> list[str]:
    """The revoked ids of one `hello` reply: a list (Celery 5.7, fastq) or a mapping of ids to stamps
    (Celery before 5.5's `LimitedSet._data`)."""
    revoked = reply.get('revoked') if isinstance(reply, dict) else None
    if not revoked:
        return []
    if not isinstance(revoked, list | dict):
        raise TypeError(f'revoked ids as {type(revoked).__name__}')
    return [str(task_id) for task_id in revoked]
