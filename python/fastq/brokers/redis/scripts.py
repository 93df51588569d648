"""The Lua scripts of the Redis broker (sources in scripts/*.lua, each opening with the keys it touches)."""

from __future__ import annotations

from importlib import resources
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import redis


def _source(name: str) -> str:
    return resources.files(__package__).joinpath('scripts', f'{name}.lua').read_text()


class Scripts:
    """One method per script (no dynamic dispatch), registered once per client; EVALSHA with a fallback."""

    def __init__(self, client: redis.Redis) -> None:
        self._fetch = client.register_script(_source('fetch'))
        self._move = client.register_script(_source('move'))
        self._park = client.register_script(_source('park'))
        self._rate = client.register_script(_source('rate'))
        self._lease = client.register_script(_source('lease'))
        self._unlease = client.register_script(_source('unlease'))
        self._unhold = client.register_script(_source('unhold'))

    @property
    def fetch_script(self) -> Any:
        """The fetch script itself (SHA and source), for connections that run it without redis-py."""
        return self._fetch

    def fetch(self, keys: list[str], args: list[Any]) -> list[Any]:
        result: list[Any] = self._fetch(keys=keys, args=args)
        return result

    def move(self, keys: list[str], args: list[Any], client: Any = None) -> int:
        return int(self._move(keys=keys, args=args, client=client))

    def rate(self, keys: list[str], args: list[Any]) -> float:
        return float(self._rate(keys=keys, args=args))

    def park(self, keys: list[str], args: list[Any]) -> int:
        return int(self._park(keys=keys, args=args))

    def lease(self, keys: list[str], args: list[Any]) -> int:
        return int(self._lease(keys=keys, args=args))

    def unlease(self, keys: list[str], args: list[Any]) -> int:
        return int(self._unlease(keys=keys, args=args))

    def unhold(self, keys: list[str], args: list[Any]) -> int:
        return int(self._unhold(keys=keys, args=args))
