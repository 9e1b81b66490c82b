"""Sending this node's provider records to the peers that should store them.

Kademlia's placement: a key's records go to the ``k`` peers closest to it (XOR of sha256, see
:mod:`.keys`), as found by an iterative FIND_NODE lookup (:meth:`.query.ProviderQuery.closest`).
While the routing table holds at most ``k`` peers and no bucket is full, every peer is among the
closest of every key and the table knows the whole cluster: each peer gets every record and no
lookup is needed (in a cluster of at most ``k + 1`` nodes every node holds every record).
Records travel as framed ADD_PROVIDER messages on one long-lived stream per peer (a sender,
:class:`.streams.ProvideSender` in production), batched and without replies, as
go-libp2p-kad-dht sends them.

Senders are opened when a peer is first given records and closed after ``idle`` seconds
without any, so a node keeps streams (and connections) only to the peers it places records on
now. A peer that joins the table gets the records it is now among the closest for; a peer whose
stream failed gets them again (records are idempotent); :meth:`Publisher.reprovide` re-sends
everything before the copies at the peers expire.

The transport is a seam: ``open_sender(peer, on_loss)`` builds a sender and ``closest(key)`` runs
a lookup; the node (:mod:`.dht`) passes py-libp2p's, the simulation (``bench/dht_sim.py``) its own.
"""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable, Iterable
from typing import Protocol

import trio
import trio.lowlevel

from spegel_py.errors import RoutingError
from spegel_py.routing.libp2p.keys import kad_id
from spegel_py.routing.libp2p.own import OwnRecords
from spegel_py.routing.libp2p.table import RoutingTable

_YIELD_EVERY = 4096  # keys encoded between checkpoints, so a big advertise never stalls trio
PLACE_CONCURRENCY = 8  # placement lookups in flight at once


class Sender(Protocol):
    """Writes framed ADD_PROVIDER messages to one peer (see :class:`.streams.ProvideSender`)."""

    stalled: bool  # the peer stopped reading and was disconnected (it leaves the table)

    def enqueue(self, data: bytes) -> None: ...
    async def run(self) -> None: ...
    def close(self) -> None: ...


class Publisher:
    """Placement of our keys, and one sender per peer that is being given records.

    ``spawn`` starts a task in the node's nursery (raises RoutingError once it stops). Runs in the
    trio thread (or the simulation's).
    """

    def __init__(
        self,
        *,
        table: RoutingTable,
        own: OwnRecords,
        spawn: Callable[..., None],
        open_sender: Callable[[bytes, Callable[[], None]], Sender],
        closest: Callable[[bytes], Awaitable[list[bytes]]],
        k: int,
        idle: float = 60.0,
    ) -> None:
        self._table = table
        self._own = own
        self._spawn = spawn
        self._open_sender = open_sender
        self._closest = closest
        self._k = k
        self._idle = idle
        self._senders: dict[bytes, Sender] = {}
        self._used: dict[bytes, float] = {}  # peer -> when its sender was last given records
        self._kth: dict[bytes, int] = {}  # key -> distance of its k-th closest peer at last send

    async def provide(self, keys: Iterable[bytes]) -> None:
        """Advertise ``keys`` (multihashes): remember them and send them to their closest peers."""
        await self._send(self._own.add(keys))

    def withdraw(self, keys: Iterable[bytes]) -> None:
        """Stop advertising: no more reprovides, no more self in answers; remote copies expire."""
        for k in keys:
            self._own.remove(k)
            self._kth.pop(k, None)

    async def reprovide(self) -> int:
        """Re-send every advertised key to its closest peers; returns how many keys."""
        keys = self._own.keys()
        await self._send(keys)
        return len(keys)

    def admit(self, peer: bytes, b58: str) -> None:
        """A peer spoke the protocol: into its bucket if there is room (its failures forgotten);
        a new member gets the records it should store. The node's and the simulation's rule."""
        self._table.answered(peer)
        _, new = self._table.add(peer, b58)
        if new:
            self.add_peer(peer)

    def evict(self, peer: bytes) -> None:
        """A request to ``peer`` failed: out of the table after a few in a row (its sender
        closed with it), and a replacement that takes its place gets its records. Until then its
        sender stays: closing it would drop the records queued or in flight to a peer that is
        still among the closest, and nothing would send them again before the reprovide."""
        removed, promoted = self._table.failed(peer)
        if removed is not None:
            self.remove_peer(peer)
        if promoted is not None:
            self.add_peer(promoted.id)

    def add_peer(self, peer: bytes) -> None:
        """A peer joined the table: queue the records it should hold."""
        if len(self._own):
            with contextlib.suppress(RoutingError):  # shutting down
                self._spawn(self._push_to_new_peer, peer)

    def remove_peer(self, peer: bytes) -> bool:
        """Close the peer's sender (what it had not written is dropped); True if it had one."""
        sender = self._senders.pop(peer, None)
        self._used.pop(peer, None)
        if sender is not None:
            sender.close()
        return sender is not None

    def lost(self, peer: bytes) -> None:
        """The connection to ``peer`` closed under its sender (records in flight may be lost):
        queue again what it should hold if it is still in the table. A peer whose sender stalled
        (it stopped reading our records) leaves the table; when it speaks again it is admitted
        and given its records anew."""
        sender = self._senders.get(peer)
        if sender is not None and sender.stalled:
            self.remove_peer(peer)
            _, promoted = self._table.remove(peer)
            if promoted is not None:
                self.add_peer(promoted.id)
            return
        if self.remove_peer(peer) and peer in self._table:
            self.add_peer(peer)

    def active(self, peer: bytes) -> bool:
        """True while the peer has an open sender (its connection is in use)."""
        return peer in self._senders

    def sweep(self) -> None:
        """Close the senders not given records for ``idle`` seconds."""
        limit = trio.current_time() - self._idle
        for peer in [p for p, t in self._used.items() if t < limit]:
            self.remove_peer(peer)

    def close(self) -> None:
        for s in self._senders.values():
            s.close()
        self._senders.clear()

    async def _send(self, keys: list[bytes]) -> None:
        if not keys:
            return
        if self._table.complete():  # every peer is among the k closest of every key
            own = self._own
            head, tail = own.head, own.tail
            for start in range(0, len(keys), _YIELD_EVERY):
                data = b"".join([head + key + tail for key in keys[start : start + _YIELD_EVERY]])
                for e in self._table.peers():
                    self._enqueue(e.id, data)
                await trio.lowlevel.checkpoint()
            return
        limiter = trio.CapacityLimiter(PLACE_CONCURRENCY)
        async with trio.open_nursery() as nursery:
            for key in keys:
                await limiter.acquire_on_behalf_of(key)  # released when its lookup ends
                nursery.start_soon(self._place, key, limiter)

    async def _place(self, key: bytes, limiter: trio.CapacityLimiter) -> None:
        try:
            peers = await self._closest(key)
        finally:
            limiter.release_on_behalf_of(key)
        if not peers or key not in self._own:
            return
        target = kad_id(key)
        self._kth[key] = kad_id(peers[-1]) ^ target if len(peers) >= self._k else 1 << 256
        msg = self._own.head + key + self._own.tail
        for pid in peers:
            self._enqueue(pid, msg)

    def _enqueue(self, peer: bytes, data: bytes) -> None:
        sender = self._senders.get(peer)
        if sender is None:

            def resend() -> None:
                with contextlib.suppress(RoutingError):  # shutting down
                    self._spawn(self._push_to_new_peer, peer)

            try:
                sender = self._open_sender(peer, resend)
                self._spawn(sender.run)
            except RoutingError:  # shutting down
                return
            self._senders[peer] = sender
        self._used[peer] = trio.current_time()
        sender.enqueue(data)

    async def _push_to_new_peer(self, peer: bytes) -> None:
        """Records a peer should hold: those for which it is among the k closest at last send."""
        entry = self._table.get(peer)
        if entry is None:
            return
        own = self._own
        head, tail = own.head, own.tail
        keys = own.keys()
        small = self._table.complete()
        for start in range(0, len(keys), _YIELD_EVERY):
            batch = keys[start : start + _YIELD_EVERY]
            if not small:
                batch = [key for key in batch if (kad_id(key) ^ entry.kad) <= self._kth_distance(key)]
            if batch:
                self._enqueue(peer, b"".join([head + key + tail for key in batch]))
            await trio.lowlevel.checkpoint()

    def _kth_distance(self, key: bytes) -> int:
        """Distance of ``key``'s k-th closest peer, as of its last placement; for keys last sent
        while the table was small (every peer got them) computed once from the table, so that
        peers joining a grown cluster get only the keys they are close to."""
        kth = self._kth.get(key)
        if kth is None:
            target = kad_id(key)
            closest = self._table.closest(target, self._k)
            kth = self._kth[key] = closest[-1].kad ^ target if len(closest) >= self._k else 1 << 256
        return kth
