"""Which router connections a node keeps open: bounded, and closed when idle.

Every open py-libp2p connection costs memory (~0.1 MiB) and a little CPU (yamux's RTT ping
every 30 s, a stale-stream sweeper), and connections are counted on both ends, so a node that
kept one to every peer it ever talked to would pay O(N). The node (:mod:`.dht`) keeps
connections to the peers it uses (its bucket peers, recent lookup partners, peers it is sending
records to) and asks :class:`ConnectionKeeper` which ones to close: those of peers outside the
routing table idle for ``idle`` seconds, and, above ``high`` connections, the least recently used
down to ``low`` (peers outside the table first), sparing any used in the last ``grace`` seconds.
A closed connection is dialled again on demand (lazy dialling): a lookup or a sender that needs
the peer dials it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import trio
from libp2p.abc import INetwork
from libp2p.peer.id import ID

log = logging.getLogger(__name__)

CLOSE_TIMEOUT = 5.0  # seconds closing one connection may take


@dataclass(frozen=True, slots=True)
class ConnLimits:
    """``high``: connections above which the least used are closed, down to ``low``. ``idle``:
    seconds after which a connection to a peer outside the table is closed. ``grace``: seconds
    during which a just-used connection is never closed."""

    high: int = 64
    low: int = 48
    idle: float = 60.0
    grace: float = 5.0


class ConnectionKeeper:
    """Last use of each peer's connection, and the choice of those to close."""

    def __init__(self, limits: ConnLimits, clock: Callable[[], float] = time.monotonic) -> None:
        self._limits = limits
        self._clock = clock
        self._used: dict[bytes, float] = {}

    def touch(self, peer: bytes) -> None:
        """The connection to ``peer`` carried a request or records just now."""
        self._used[peer] = self._clock()

    def forget(self, peer: bytes) -> None:
        self._used.pop(peer, None)

    def over(self, connected: int) -> bool:
        return connected > self._limits.high

    def to_close(self, connected: Iterable[bytes], member: Callable[[bytes], bool]) -> list[bytes]:
        """The connected peers whose connections should close now (``member``: in the table)."""
        lim = self._limits
        now = self._clock()
        used = self._used
        out: list[bytes] = []
        rest: list[tuple[bool, float, bytes]] = []
        spared = 0
        for peer in connected:
            last = used.setdefault(peer, now)  # first seen now: give it its full idle time
            if now - last < lim.grace:
                spared += 1
                continue
            keep = member(peer)
            if not keep and now - last >= lim.idle:
                out.append(peer)
            else:
                rest.append((keep, last, peer))
        if len(rest) + spared > lim.high:
            rest.sort()  # non-members first, then the least recently used
            out.extend(peer for _, _, peer in rest[: len(rest) + spared - lim.low])
        for peer in out:
            used.pop(peer, None)
        return out

    async def trim(
        self, swarm: INetwork, member: Callable[[bytes], bool], closing: Callable[[bytes], None]
    ) -> None:
        """Close what :meth:`to_close` picks among ``swarm``'s connections; ``closing(peer)`` is
        called first (the node releases the peer's streams)."""
        for rb in self.to_close([p.to_bytes() for p in list(swarm.connections)], member):
            closing(rb)
            with trio.move_on_after(CLOSE_TIMEOUT):
                try:
                    await swarm.close_peer(ID(rb))
                except Exception:  # already closing: nothing to do
                    log.debug("closing the connection to %s failed", ID(rb), exc_info=True)
