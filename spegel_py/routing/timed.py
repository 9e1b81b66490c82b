"""``TimedRouter``: a :class:`~spegel_py.routing.base.Router` that reports each lookup's time to
its first provider, and answers not ready once the daemon is going down on a failure.

Wrapping keeps both concerns out of the router and the mirror: the composition root
(``spegel_py/app.py``) passes a callback that feeds the resolve-duration histogram and one that
says whether its supervised tasks are all still running.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable, Iterable

from spegel_py.routing.base import Peer, Router


class TimedRouter:
    """Delegates to ``router``; ``observe(seconds)`` is called once per lookup that found a peer.

    ``healthy()``: asked by :meth:`ready` before the router; while it answers False the node is not
    ready, whatever the router says (default: always healthy).
    """

    def __init__(
        self,
        router: Router,
        observe: Callable[[float], None],
        *,
        healthy: Callable[[], bool] = lambda: True,
    ) -> None:
        self._router = router
        self._observe = observe
        self._healthy = healthy

    def ready(self) -> bool:
        return self._healthy() and self._router.ready()

    async def advertise(self, keys: Iterable[str]) -> None:
        await self._router.advertise(keys)

    async def withdraw(self, keys: Iterable[str]) -> None:
        await self._router.withdraw(keys)

    async def lookup(self, key: str, *, limit: int = 3) -> AsyncIterator[Peer]:
        started = time.monotonic()
        first = True
        async for peer in self._router.lookup(key, limit=limit):
            if first:
                self._observe(time.monotonic() - started)
                first = False
            yield peer

    async def close(self) -> None:
        await self._router.close()
