"""Sending this node's provider records to the peers that should store them.

Kademlia's placement: a key's records go to the ``k`` peers closest to it (XOR of sha256, see
:mod:`.keys`). While the table holds at most ``k`` peers every peer is among the closest of every
key, so each gets every record; beyond that each key goes to its own ``k`` closest. Records
travel as framed ADD_PROVIDER messages on one long-lived stream per peer
(:class:`.streams.ProvideSender`), batched and without replies, as go-libp2p-kad-dht sends them.

A peer that joins gets the records it is now among the closest for; a peer whose stream failed
gets them again (records are idempotent); :meth:`Publisher.reprovide` re-sends everything before
the copies at the peers expire.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable

import trio
import trio.lowlevel
from libp2p.abc import IHost
from libp2p.peer.id import ID

from spegel_py.errors import RoutingError
from spegel_py.routing.libp2p.keys import kad_id
from spegel_py.routing.libp2p.own import OwnRecords
from spegel_py.routing.libp2p.streams import PROTOCOL, ProvideSender
from spegel_py.routing.libp2p.table import RoutingTable

_YIELD_EVERY = 4096  # keys encoded between checkpoints, so a big advertise never stalls trio


class Publisher:
    """One :class:`ProvideSender` per peer in the table, and the placement of our keys on them.

    ``spawn`` starts a task in the node's nursery (raises RoutingError once it stops). Runs in the
    trio thread.
    """

    def __init__(
        self,
        host: IHost,
        *,
        table: RoutingTable,
        own: OwnRecords,
        spawn: Callable[..., None],
        k: int,
    ) -> None:
        self._host = host
        self._table = table
        self._own = own
        self._spawn = spawn
        self._k = k
        self._senders: dict[bytes, ProvideSender] = {}
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

    def add_peer(self, peer: ID) -> None:
        """A peer joined the table: open its sender and queue the records it should hold."""
        rb = peer.to_bytes()

        def resend() -> None:
            with contextlib.suppress(RoutingError):  # shutting down
                self._spawn(self._push_to_new_peer, rb)

        sender = ProvideSender(self._host, peer, PROTOCOL, on_loss=resend)
        self._senders[rb] = sender
        self._spawn(sender.run)
        if len(self._own):
            self._spawn(self._push_to_new_peer, rb)

    def remove_peer(self, peer: bytes) -> None:
        """A peer left the table: close its sender (what it had not written is dropped)."""
        sender = self._senders.pop(peer, None)
        if sender is not None:
            sender.close()

    def close(self) -> None:
        for s in self._senders.values():
            s.close()

    async def _send(self, keys: list[bytes]) -> None:
        k = self._k
        own = self._own
        head, tail = own.head, own.tail
        for start in range(0, len(keys), _YIELD_EVERY):
            batch = keys[start : start + _YIELD_EVERY]
            peers = self._table.peers()
            if len(peers) <= k:  # every peer is among the k closest of every key
                data = b"".join([head + key + tail for key in batch])
                for e in peers:
                    self._enqueue(e.id, data)
            else:
                out: dict[bytes, list[bytes]] = {}
                for key in batch:
                    target = kad_id(key)
                    closest = self._table.closest(target, k)
                    self._kth[key] = closest[-1].kad ^ target
                    msg = head + key + tail
                    for e in closest:
                        out.setdefault(e.id, []).append(msg)
                for pid, msgs in out.items():
                    self._enqueue(pid, b"".join(msgs))
            await trio.lowlevel.checkpoint()

    def _enqueue(self, peer: bytes, data: bytes) -> None:
        sender = self._senders.get(peer)
        if sender is not None:
            sender.enqueue(data)

    async def _push_to_new_peer(self, peer: bytes) -> None:
        """Records a newly seen peer should hold: those for which it is among the k closest."""
        entry = self._table.get(peer)
        if entry is None:
            return
        own = self._own
        head, tail = own.head, own.tail
        keys = own.keys()
        small = len(self._table) <= self._k
        for start in range(0, len(keys), _YIELD_EVERY):
            batch = keys[start : start + _YIELD_EVERY]
            if not small:
                batch = [key for key in batch if (kad_id(key) ^ entry.kad) <= self._kth_distance(key)]
            if batch:
                self._enqueue(peer, b"".join([head + key + tail for key in batch]))
            await trio.lowlevel.checkpoint()

    def _kth_distance(self, key: bytes) -> int:
        """Distance of ``key``'s k-th closest peer, as of its last send; computed once for keys
        last sent while the table was small (then every peer got them), so that peers joining a
        grown cluster get only the keys they are close to, not everything until the reprovide."""
        kth = self._kth.get(key)
        if kth is None:
            target = kad_id(key)
            kth = self._kth[key] = self._table.closest(target, self._k)[-1].kad ^ target
        return kth
