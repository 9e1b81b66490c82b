"""Static bootstrap: the operator lists the peers (``--static-bootstrap-peers``)."""

from __future__ import annotations

from collections.abc import Iterable

from spegel_py.routing.bootstrap._addr import check_multiaddr


class StaticBootstrapper:
    """Always answers the same multiaddrs, validated once at construction."""

    def __init__(self, peers: Iterable[str]) -> None:
        self._peers = [check_multiaddr(p) for p in peers if p.strip()]

    async def peers(self) -> list[str]:
        return list(self._peers)
