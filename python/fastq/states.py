"""Task states, with Celery's names, sets and precedence (`from celery import states` ports unchanged)."""

from __future__ import annotations

__all__ = (
    'ALL_STATES',
    'EXCEPTION_STATES',
    'FAILURE',
    'IGNORED',
    'PENDING',
    'PROPAGATE_STATES',
    'READY_STATES',
    'RECEIVED',
    'REJECTED',
    'RETRY',
    'REVOKED',
    'STARTED',
    'SUCCESS',
    'UNREADY_STATES',
    'precedence',
    'state',
)

#: Task state is unknown (assumed pending since you know the id).
PENDING = 'PENDING'
#: Task was received by a worker (only used in events).
RECEIVED = 'RECEIVED'
#: Task was started by a worker (with `task_track_started`).
STARTED = 'STARTED'
SUCCESS = 'SUCCESS'
FAILURE = 'FAILURE'
REVOKED = 'REVOKED'
#: Task was rejected (only used in events).
REJECTED = 'REJECTED'
#: Task is waiting for retry.
RETRY = 'RETRY'
IGNORED = 'IGNORED'

READY_STATES = frozenset({SUCCESS, FAILURE, REVOKED})
UNREADY_STATES = frozenset({PENDING, RECEIVED, STARTED, REJECTED, RETRY})
EXCEPTION_STATES = frozenset({RETRY, FAILURE, REVOKED})
PROPAGATE_STATES = frozenset({FAILURE, REVOKED})
ALL_STATES = frozenset({PENDING, RECEIVED, STARTED, SUCCESS, FAILURE, RETRY, REVOKED})

# Lower index = higher precedence; custom states sit between the built-in ready and unready ones.
PRECEDENCE = [SUCCESS, FAILURE, None, REVOKED, STARTED, RECEIVED, REJECTED, RETRY, PENDING]
_PRECEDENCE_LOOKUP = {s: i for i, s in enumerate(PRECEDENCE)}
_NONE_PRECEDENCE = _PRECEDENCE_LOOKUP[None]


def precedence(state: str) -> int:
    """Precedence index of `state`; lower means higher precedence."""
    return _PRECEDENCE_LOOKUP.get(state, _NONE_PRECEDENCE)


class state(str):
    """A state name that compares by precedence: `state(PENDING) < state(SUCCESS)`."""

    def __gt__(self, other: str) -> bool:
        return precedence(self) < precedence(other)

    def __ge__(self, other: str) -> bool:
        return precedence(self) <= precedence(other)

    def __lt__(self, other: str) -> bool:
        return precedence(self) > precedence(other)

    def __le__(self, other: str) -> bool:
        return precedence(self) >= precedence(other)
