"""The two retry loops Celery runs around Redis result operations, with Celery's semantics and defaults.

Inner: `result_backend_transport_options['retry_policy']` (kombu's `retry_over_time`; by default 20 retries a
second apart, and with `timeout` no retry once that many seconds have passed since the first attempt) around
writes and the listener's reconnects, on connection errors only. Outer:
`result_backend_always_retry` with exponential backoff and full jitter between
`result_backend_base_sleep_between_retries_ms` and `..._max_sleep_between_retries_ms`, up to
`result_backend_max_retries`, around every store, read and forget.
"""

from __future__ import annotations

import random
import socket
import time
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import redis

from fastq.utils.functional import fxrange

__all__ = [
    'CONNECTION_ERRORS',
    'DEFAULT_RETRY_POLICY',
    'full_jitter_backoff',
    'gave_up',
    'policy_deadline',
    'policy_intervals',
    'retry_over_time',
]

T = TypeVar('T')

#: What counts as "Redis could not be reached" (retried); other Redis errors are raised at once.
CONNECTION_ERRORS = (
    redis.ConnectionError,
    redis.TimeoutError,
    socket.timeout,
    OSError,
)

#: Celery's `BaseBackend.retry_policy`, which `retry_policy` in the transport options updates.
DEFAULT_RETRY_POLICY: dict[str, Any] = {'max_retries': 20, 'interval_start': 0, 'interval_step': 1, 'interval_max': 1}


def policy_intervals(policy: dict[str, Any]) -> Iterator[float]:
    """The waits between retries, as kombu's `retry_over_time` takes them: `fxrange(start, max + start, step,
    repeatlast=True)` (so the longest wait is `interval_max + interval_start`'s last step, not `interval_max`)."""
    start = float(policy.get('interval_start', 2))
    step = float(policy.get('interval_step', 2))
    maximum = float(policy.get('interval_max', 30))
    return fxrange(start, maximum + start, step, repeatlast=True)


def policy_deadline(policy: dict[str, Any], clock: Callable[[], float] = time.monotonic) -> float | None:
    """When a policy with `timeout` stops retrying (kombu: `time() + timeout`, no more retries after it)."""
    timeout = policy.get('timeout')
    return clock() + float(timeout) if timeout else None


def gave_up(
    policy: dict[str, Any], retries: int, deadline: float | None, clock: Callable[[], float] = time.monotonic
) -> bool:
    """Whether a failed attempt is the last: `max_retries` retries made (None: no limit), or past the deadline."""
    max_retries = policy.get('max_retries', 20)
    return (max_retries is not None and retries >= max_retries) or (deadline is not None and clock() > deadline)


def retry_over_time(
    fn: Callable[[], T],
    policy: dict[str, Any],
    sleep: Callable[[float], Any],
    on_retry: Callable[[BaseException, int, float], Any] | None = None,
) -> T:
    """Call `fn`, retrying on connection errors `policy['max_retries']` times (None: forever), and not after
    `policy['timeout']` seconds (as kombu's `retry_over_time`)."""
    intervals = policy_intervals(policy)
    deadline = policy_deadline(policy)
    retries = 0
    while True:
        try:
            return fn()
        except CONNECTION_ERRORS as exc:
            if gave_up(policy, retries, deadline):
                raise
            delay = next(intervals)
            if on_retry is not None:
                on_retry(exc, retries, delay)
            retries += 1
            sleep(delay)


def full_jitter_backoff(base_ms: float, retries: int, max_ms: float) -> float:
    """Celery's `get_exponential_backoff_interval(base, retries, max, full_jitter=True)`, in seconds."""
    countdown = int(min(max_ms, base_ms * (2**retries)))
    return max(0, random.randrange(countdown + 1)) / 1000
