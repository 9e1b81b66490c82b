"""An in-memory network for the DHT: the production table, lookup, placement and server code
with the transport replaced, so thousands of nodes fit in one process (``bench/dht_sim.py``,
tests/routing/test_dht_sim.py).

Each :class:`SimNode` is built from the same parts as :class:`.dht.DhtNode`: a
:class:`.table.RoutingTable`, a :class:`.providers.ProviderStore`, an address book, its own
records, a :class:`.query.ProviderQuery`, a :class:`.publish.Publisher` and a
:class:`.server.DhtServer`, whose ``dispatch`` answers the real wire bytes. Only the seams differ:
``ask`` hands a request to the peer's server and returns its reply one modelled round trip later
(as decoded messages: the encoding is skipped); a sender delivers the real ADD_PROVIDER bytes
half a round trip after they are queued. A
killed node answers nothing: asking it fails after ``dead_timeout`` (a dial that times out).
Time is trio's: run under ``trio.testing.MockClock(autojump_threshold=0)`` the modelled
latency costs no wall-clock time. Peer admission and eviction follow :mod:`.dht`: a reply or a
request admits the peer, failed requests evict it (``RoutingTable.failed``). Admitting a peer
also vouches for its IP in the address book, as an authenticated connection does in :mod:`.dht`,
and ``reach`` (a provider named by a third party, :mod:`.query`) succeeds for a live node.
"""

from __future__ import annotations

import hashlib
from collections.abc import Awaitable, Callable
from typing import Any

import trio
import trio.lowlevel
from libp2p.peer.id import ID

from spegel_py.errors import RoutingError
from spegel_py.routing.libp2p import wire
from spegel_py.routing.libp2p.addrs import AddressBook, tcp_addr
from spegel_py.routing.libp2p.limits import StreamGate, StreamLimits
from spegel_py.routing.libp2p.own import OwnRecords
from spegel_py.routing.libp2p.providers import ProviderStore
from spegel_py.routing.libp2p.publish import Publisher
from spegel_py.routing.libp2p.query import LookupStats, ProviderQuery
from spegel_py.routing.libp2p.server import DhtServer
from spegel_py.routing.libp2p.table import RoutingTable


class _NoPeerstore:
    """The simulation has no py-libp2p peerstore: every address comes from the wire."""

    def addrs(self, peer: Any) -> list[Any]:
        raise KeyError(peer)


def sim_peer_id(i: int) -> bytes:
    """A valid identity-multihash peer id (as Ed25519 ids are) for node ``i``."""
    return b"\x00\x24\x08\x01\x12\x20" + hashlib.sha256(f"sim-{i}".encode()).digest()


class SimNetwork:
    """Nodes by peer id, the modelled round trip, and message counters."""

    def __init__(self, *, rtt: float = 0.0005, dead_timeout: float = 0.1) -> None:
        self.rtt = rtt
        self.dead_timeout = dead_timeout
        self.nodes: dict[bytes, SimNode] = {}
        self.requests = 0  # FIND_NODE / GET_PROVIDERS sent
        self.records_sent = 0  # ADD_PROVIDER messages delivered
        self._due: dict[float, trio.Event] = {}

    def add(self, node: SimNode) -> None:
        self.nodes[node.id] = node

    async def deliver(self, src: SimNode, dst: bytes, msg: wire.Message) -> wire.Message | None:
        """``msg`` answered by ``dst``'s server one modelled round trip later (the encoding is
        skipped: it is the same code either way and the simulation's largest cost)."""
        node = self.nodes.get(dst)
        if node is None or not node.alive:
            await trio.sleep(self.dead_timeout)
            raise RoutingError("no answer (node killed)")
        await self._round_trip()
        node.admit(src.id)  # the receiving side admits a peer that speaks the protocol
        return node.server.answer(src.id, src.ip, msg)

    async def _round_trip(self) -> None:
        """Wait one ``rtt``: all requests sent at one instant share a single timer (a trio timer
        per request is most of the simulation's cost otherwise)."""
        now = trio.current_time()
        due = now + self.rtt
        event = self._due.get(due)
        if event is None:
            event = self._due[due] = trio.Event()
            trio.lowlevel.spawn_system_task(self._fire, due, event)
        await event.wait()

    async def _fire(self, due: float, event: trio.Event) -> None:
        await trio.sleep_until(due)
        del self._due[due]
        event.set()


class _SimSender:
    """ADD_PROVIDER frames to one peer, delivered half a round trip after they are queued."""

    def __init__(self, net: SimNetwork, src: SimNode, dst: bytes) -> None:
        self._net, self._src, self._dst = net, src, dst
        self.stalled = False  # in memory every byte is read
        self._buf = bytearray()
        self._wake = trio.Event()
        self._closed = False

    def enqueue(self, data: bytes) -> None:
        if not self._closed:
            self._buf += data
            self._wake.set()

    async def run(self) -> None:
        while not self._closed:
            if not self._buf:
                await self._wake.wait()
                self._wake = trio.Event()
                continue
            data, self._buf = bytes(self._buf), bytearray()
            await trio.sleep(self._net.rtt / 2)
            node = self._net.nodes.get(self._dst)
            if node is None or not node.alive:
                continue  # lost, as on a dead connection; the reprovide resends
            node.admit(self._src.id)
            for body in wire.Deframer().feed(data):
                self._net.records_sent += 1
                node.server.dispatch(self._src.id, self._src.ip, body)  # the real bytes: cheap here

    def close(self) -> None:
        self._closed = True
        self._wake.set()


class SimNode:
    """One DHT node on a :class:`SimNetwork`; its tasks run in the nursery given to :meth:`start`."""

    def __init__(self, net: SimNetwork, index: int, *, k: int = 20, alpha: int = 3) -> None:
        self.net = net
        self.id = sim_peer_id(index)
        self.b58 = ID(self.id).to_base58()
        self.ip = f"10.{index >> 16 & 255}.{index >> 8 & 255}.{index & 255}"
        self.alive = True
        self.k = k
        self.table = RoutingTable(self.id, k)
        self.store = ProviderStore(ttl=3600.0)
        self.book = AddressBook(registry_port=5000)
        self.own = OwnRecords(self.id)
        self.own.set_addrs((tcp_addr(self.ip, 4001),))
        self._nursery: trio.Nursery | None = None
        self.query = ProviderQuery(
            self_id=self.id,
            table=self.table,
            store=self.store,
            book=self.book,
            ask=self.ask,
            reach=self.reach,
            k=k,
            alpha=alpha,
        )
        self.publisher = Publisher(
            table=self.table,
            own=self.own,
            spawn=self._spawn,
            open_sender=lambda peer, _on_loss: _SimSender(net, self, peer),
            closest=self.query.closest,
            k=k,
        )
        self.server = DhtServer(
            table=self.table,
            store=self.store,
            book=self.book,
            own=self.own,
            peerstore=_NoPeerstore(),  # type: ignore[arg-type]  # only .addrs() is used
            admit=lambda peer: self.admit(peer.to_bytes()),
            k=k,
            gate=StreamGate(StreamLimits()),
        )
        net.add(self)

    def start(self, nursery: trio.Nursery) -> None:
        self._nursery = nursery

    def _spawn(self, fn: Callable[..., Awaitable[object]], *args: object) -> None:
        if self._nursery is None or not self.alive:
            raise RoutingError("node is not running")
        self._nursery.start_soon(fn, *args)

    def admit(self, peer: bytes) -> None:
        if peer == self.id or not self.alive:
            return
        node = self.net.nodes.get(peer)
        if node is not None and not self.book.get(peer):
            self._vouch(node)
        self.publisher.admit(peer, node.b58 if node is not None else ID(peer).to_base58())

    def _vouch(self, node: SimNode) -> None:
        """What an authenticated connection proves in the node (addrs.py): the peer's own IP."""
        self.book.connected(node.id, node.ip)
        self.book.note(node.id, node.own.info.addrs)

    async def reach(self, peer: bytes) -> bool:
        """A provider named by a third party, dialled (query.py): here, a live node is reached."""
        node = self.net.nodes.get(peer)
        if node is None or not node.alive:
            return False
        self._vouch(node)
        return True

    async def ask(self, peer: bytes, msg: wire.Message) -> wire.Message:
        self.net.requests += 1
        try:
            reply = await self.net.deliver(self, peer, msg)
        except RoutingError:
            self.publisher.evict(peer)
            raise
        self.admit(peer)
        if reply is None:
            raise RoutingError("no reply")
        return reply

    async def join(self, seed: SimNode) -> None:
        """Kademlia's join: the seed into the table, then a lookup of our own id, then a
        refresh of every bucket (what :meth:`.dht.DhtNode.connect` and ``refresh`` do)."""
        self.admit(seed.id)
        await self.refresh()

    async def refresh(self) -> None:
        for key in [self.id, *self.table.refresh_targets()]:
            await self.query.closest(key)

    async def lookup(self, key: bytes, limit: int = 1) -> LookupStats:
        found: list[object] = []
        return await self.query.run(key, limit, found.append, LookupStats())

    def kill(self) -> None:
        self.alive = False
        self.publisher.close()
