"""Dialling peers that others named, and noting what the connection proves about them.

A reply names peers with addresses (closer peers, providers); those are hints (:mod:`.addrs`).
Dialling one with the peer id it was named with makes Noise prove the id: only then does the IP
of the connection become that peer's own address, the one the mirror may send HTTP to. A hint
may be malformed (any bytes fit a multiaddr field), or point where the peer is not: the dial
fails and nothing is noted (py-libp2p's peerstore forgets the peer again, so names of peers that
do not exist do not pile up there). :class:`Reach` does this for the node (:mod:`.dht`), which owns the
dial itself (one dial per peer, bounded in time), and for the lookup (:mod:`.query`), which asks
it to reach a provider named by a third party before offering it.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Awaitable, Callable

import multiaddr  # type: ignore[import-untyped]  # py-multiaddr ships no type information
import trio
from libp2p.abc import INetwork
from libp2p.peer.id import ID

from spegel_py.errors import RoutingError
from spegel_py.routing.libp2p.addrs import AddressBook
from spegel_py.routing.libp2p.server import remote_ip

log = logging.getLogger(__name__)

HINTS_TRIED = 2  # hinted addresses a provider is dialled on, at most, before it is skipped


class Reach:
    """``dial(maddr, peer)``: the node's dial (returns once connected, raises RoutingError)."""

    def __init__(
        self, network: INetwork, book: AddressBook, dial: Callable[[multiaddr.Multiaddr, ID], Awaitable[ID]]
    ) -> None:
        self._network = network
        self._book = book
        self._dial = dial

    async def dial(self, raw: bytes, pid: bytes) -> None:
        """Dial ``pid`` at ``raw`` (a hint, maybe); the connection's IP becomes its own."""
        try:
            maddr = multiaddr.Multiaddr(raw)
        except Exception as exc:  # a malformed multiaddr from a reply; py-multiaddr raises many types
            raise RoutingError(f"invalid multiaddr from a peer: {exc}") from exc
        peer = ID(pid)
        try:
            await self._dial(maddr, peer)
        except BaseException:
            if not self._network.connections.get(peer):  # py-libp2p kept the address: drop it
                with contextlib.suppress(Exception):  # nothing was stored
                    self._network.peerstore.clear_peerdata(peer)
            raise
        self.vouch(peer, (raw,))

    def vouch(self, peer: ID, addrs: tuple[bytes, ...] = ()) -> None:
        """Note the IP of the live connection with ``peer`` as its own, with the ports of ``addrs``
        (a dial may have found a connection already there, on another IP than ``addrs``)."""
        for conn in self._network.connections.get(peer) or ():
            if (ip := remote_ip(conn)) is not None:
                self._book.note(peer.to_bytes(), addrs, ip)
                return

    async def provider(self, pid: bytes) -> bool:
        """Connect to ``pid`` through its hints unless a connection already vouches for an IP of
        it; True once one does (then :meth:`.AddressBook.to_peer` gives its registry)."""
        if self._book.vouched_ip(pid) is not None:
            return True
        for raw in self._book.dialable(pid)[:HINTS_TRIED]:
            try:
                await self.dial(raw, pid)
                return self._book.vouched_ip(pid) is not None
            except (RoutingError, trio.TooSlowError) as exc:
                log.debug("dial of provider %s failed: %s", ID(pid), exc)
        return False
