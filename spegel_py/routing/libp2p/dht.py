"""The node of Spegel's DHT: py-libp2p's host in the trio thread, its peers and connections.

Wire-compatible with go-libp2p-kad-dht on ``/spegel/kad/1.0.0``: the same messages, keys and
XOR distance. What differs from py-libp2p's stock KadDHT is how messages travel: ADD_PROVIDER
messages are pipelined on one long-lived stream per peer with no reply (:mod:`.publish`),
requests share a small pool of long-lived streams (:mod:`.streams`), records expire after
``record_ttl`` and are reprovided every ``reprovide_interval``, and nothing rate-limits records
silently.

Placement is Kademlia's: a key's records go to the ``k`` peers closest to it, and a lookup asks
the closest peers first (``alpha`` at a time), so a Go Spegel node finds our records where it
looks, and we find its. The routing table holds every verified peer (see :mod:`.table`), so
in clusters of up to a few hundred nodes a lookup needs one round of queries.

:class:`DhtNode` builds the state (routing table, address book, record store, own records) and
hands it to the parts that use it: the server (:mod:`.server`), the lookup (:mod:`.query`) and
the publisher (:mod:`.publish`). It keeps what needs the host: dialling, walking the table,
admitting and dropping peers, request streams, and the periodic maintenance.
"""

from __future__ import annotations

import contextlib
import logging
import random
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import multiaddr  # type: ignore[import-untyped]  # py-multiaddr ships no type information
import trio
from libp2p.abc import IHost
from libp2p.peer.id import ID

from spegel_py.errors import RoutingError
from spegel_py.routing.base import RECORD_LIFETIME, REPROVIDE_INTERVAL, Peer
from spegel_py.routing.libp2p import wire
from spegel_py.routing.libp2p.addrs import AddressBook, addr_ip
from spegel_py.routing.libp2p.host import TrackedTCP, dial, split_p2p
from spegel_py.routing.libp2p.limits import Limits, StreamGate
from spegel_py.routing.libp2p.own import OwnRecords
from spegel_py.routing.libp2p.providers import ProviderStore
from spegel_py.routing.libp2p.publish import Publisher
from spegel_py.routing.libp2p.query import LookupStats, ProviderQuery
from spegel_py.routing.libp2p.server import DhtServer, Notifee
from spegel_py.routing.libp2p.streams import PROTOCOL, RequestPool
from spegel_py.routing.libp2p.table import RoutingTable

log = logging.getLogger(__name__)

CLOSE_TIMEOUT = 5.0  # seconds the host may take to close its connections and listeners


@dataclass(frozen=True, slots=True)
class DhtOptions:
    """Tuning of the exchange; the defaults are Spegel's (go-libp2p-kad-dht) where it has one."""

    k: int = 20  # peers that store each record (Kademlia's bucket size)
    alpha: int = 3  # requests in flight per lookup
    record_ttl: float = RECORD_LIFETIME  # seconds a received record stays valid
    reprovide_interval: float = REPROVIDE_INTERVAL  # seconds between re-sends of our records
    refresh_interval: float = 30.0  # seconds between FIND_NODE walks that learn new peers
    request_timeout: float = 2.0  # seconds one GET_PROVIDERS / FIND_NODE may take
    streams_per_peer: int = 4  # long-lived request streams per peer
    dial_concurrency: int = 16  # peers dialled at once when many are learned
    dial_timeout: float = 10.0  # seconds a dial may take (also the longest a close waits for one)
    limits: Limits = field(default_factory=Limits)  # what peers may take of this node (limits.py)


class DhtNode:
    """The DHT: serves the protocol, sends records, answers lookups. All methods run in trio,
    except :meth:`local_providers` and the read-only :attr:`table` and :attr:`store`."""

    def __init__(
        self,
        host: IHost,
        tcp: TrackedTCP,
        *,
        registry_port: int,
        options: DhtOptions,
        on_reprovide: Callable[[int, float], None] | None = None,
    ) -> None:
        """``on_reprovide(keys, seconds)``: called in the trio thread after each periodic
        reprovide, with the number of keys re-sent and the seconds it took."""
        self._host = host
        self._on_reprovide = on_reprovide
        self._tcp = tcp
        self._options = options
        self._self_id = host.get_id().to_bytes()
        self._table = RoutingTable(self._self_id)
        self._store = ProviderStore(ttl=options.record_ttl, limits=options.limits.records)
        self.gate = StreamGate(options.limits.streams)  # inbound streams (read: refusal count)
        self._book = AddressBook(registry_port=registry_port)
        self._own = OwnRecords(self._self_id)
        self._publisher = Publisher(host, table=self._table, own=self._own, spawn=self._spawn, k=options.k)
        self._query = ProviderQuery(
            self_id=self._self_id,
            table=self._table,
            store=self._store,
            book=self._book,
            ask=self._ask_providers,
            k=options.k,
            alpha=options.alpha,
        )
        self._source_ip: str | None = None  # our listen IP: outgoing connections come from it
        self._pools: dict[bytes, RequestPool] = {}
        self._dialing: set[bytes] = set()
        self._dials: dict[object, trio.Event] = {}  # dials in progress, by peer id or address
        self._nursery: trio.Nursery | None = None
        self._stop = trio.Event()
        self._dial_limit = trio.CapacityLimiter(options.dial_concurrency)

    @property
    def table(self) -> RoutingTable:
        """The verified peers (read from the asyncio thread: its size, a copy of its entries)."""
        return self._table

    @property
    def store(self) -> ProviderStore:
        """The records this node stores for others (read from the asyncio thread: counts)."""
        return self._store

    # -- lifecycle -------------------------------------------------------------------------

    async def serve(
        self, listen: list[multiaddr.Multiaddr], *, task_status: Any = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Listen, serve the protocol and run the background tasks until :meth:`stop`.

        ``task_status`` is trio's; typed Any because the installed trio-stubs (from trio_typing,
        a libp2p dependency) shadow trio's own annotations and lack ``TaskStatus``.
        """
        async with self._host.run(listen):
            try:
                async with trio.open_nursery() as nursery:
                    self._nursery = nursery
                    self._set_self_addrs()
                    server = DhtServer(
                        table=self._table,
                        store=self._store,
                        book=self._book,
                        own=self._own,
                        peerstore=self._host.get_peerstore(),
                        admit=self._admit,
                        k=self._options.k,
                        gate=self.gate,
                    )
                    self._host.set_stream_handler(PROTOCOL, server.handle)
                    self._host.get_network().register_notifee(Notifee(self._drop))
                    nursery.start_soon(self._maintain, name="dht-maintain")
                    task_status.started()
                    try:
                        await self._stop.wait()
                    finally:
                        self._publisher.close()
                        for p in self._pools.values():
                            p.close()
                        nursery.cancel_scope.cancel()
            finally:
                # Only now, with no dial left in flight (dials are shielded, see _dial): py-libp2p
                # leaves listener and connection sockets to the garbage collector when its
                # service is merely cancelled, and fails to register (and leaks) a connection
                # that completes after it stopped; closing the host releases them.
                with trio.CancelScope(shield=True), trio.move_on_after(CLOSE_TIMEOUT):
                    while self._dials:  # dials started from outside the nursery (bootstrap)
                        await next(iter(self._dials.values())).wait()
                    try:
                        await self._host.close()
                    except Exception:  # closing is best effort; the process may be going away
                        log.debug("host close failed", exc_info=True)
                self._tcp.close_leftovers()

    async def stop(self) -> None:
        """Make :meth:`serve` return after an orderly shutdown (cancelling it leaks sockets)."""
        self._stop.set()

    def _set_self_addrs(self) -> None:
        addrs = []
        for a in self._host.get_addrs():
            maddr, _ = split_p2p(str(a))
            raw = bytes(maddr.to_bytes())
            if addr_ip(raw) is not None:
                addrs.append(raw)
        self._own.set_addrs(tuple(addrs))
        ips = {addr_ip(a) for a in addrs}
        self._source_ip = ips.pop() if len(ips) == 1 else None

    def listen_multiaddrs(self) -> list[str]:
        pid = self._host.get_id().to_base58()
        return [f"{multiaddr.Multiaddr(a)}/p2p/{pid}" for a in self._own.info.addrs]

    def _spawn(self, fn: Callable[..., Awaitable[object]], *args: object) -> None:
        if self._nursery is None or self._stop.is_set():
            raise RoutingError("DHT is not running")
        self._nursery.start_soon(fn, *args)

    # -- peers -----------------------------------------------------------------------------

    async def connect(self, addr: str) -> bytes | None:
        """Dial ``addr`` (``/p2p/<id>`` optional), verify it speaks the DHT, learn its peers."""
        maddr, pid = split_p2p(addr)
        if pid is not None and pid.to_bytes() == self._self_id:
            return None
        # a known peer is walked again: a bootstrap round is also how a young node, whose first
        # walk came back before the seed had identified its other peers, learns the cluster
        if pid is not None and pid.to_bytes() in self._table and len(self._table) >= self._options.k:
            return pid.to_bytes()  # a big table is kept current by the refresh walks
        remote = await self._dial(maddr, pid)
        rb = remote.to_bytes()
        if rb == self._self_id:
            return None
        self._book.note(rb, (bytes(maddr.to_bytes()),))
        await self._walk(remote, self._self_id)
        await self._walk(remote, random.randbytes(32))
        return rb

    async def _dial(self, maddr: multiaddr.Multiaddr, pid: ID | None) -> ID:
        """One dial per peer (or bare address) at a time: a second concurrent dial would open a
        second connection, which py-libp2p rejects (one per peer) and leaves unclosed."""
        key: object = pid.to_bytes() if pid is not None else str(maddr)
        while (busy := self._dials.get(key)) is not None:
            await busy.wait()
            if pid is not None and self._host.get_network().connections.get(pid):
                return pid
        done = self._dials[key] = trio.Event()
        try:
            async with self._dial_limit:
                # shielded: py-libp2p closes a half-made connection in an unshielded cleanup, so
                # a cancelled dial leaks its socket; a deadline bounds the wait instead
                with trio.CancelScope(shield=True), trio.move_on_after(self._options.dial_timeout) as scope:
                    return await dial(self._host, maddr, pid, self._source_ip)
                if scope.cancelled_caught:
                    raise RoutingError(f"dial {maddr} timed out")
                raise RoutingError(f"dial {maddr} did not finish")
        finally:
            del self._dials[key]
            done.set()

    async def _walk(self, peer: ID, target: bytes) -> None:
        """FIND_NODE ``target`` at ``peer``; the reply verifies it, and names peers to dial."""
        reply = await self._request(peer, wire.Message(wire.FIND_NODE, key=target))
        self._admit(peer)
        for info in reply.closer:
            if info.id != self._self_id and info.id not in self._table and info.id not in self._dialing:
                self._book.note(info.id, info.addrs)
                self._spawn(self._dial_learned, info)

    async def _dial_learned(self, info: wire.PeerInfo) -> None:
        self._dialing.add(info.id)
        try:
            for raw in info.addrs:
                if addr_ip(raw) is None:
                    continue
                try:
                    with trio.fail_after(self._options.request_timeout * 2):
                        await self._dial(multiaddr.Multiaddr(raw), ID(info.id))
                        await self._walk(ID(info.id), self._self_id)
                    return
                except (RoutingError, trio.TooSlowError) as exc:
                    log.debug("dial of learned peer %s failed: %s", ID(info.id), exc)
        finally:
            self._dialing.discard(info.id)

    def _admit(self, peer: ID) -> None:
        """Add a peer that has spoken the protocol; a new peer gets the records it should store."""
        rb = peer.to_bytes()
        if rb == self._self_id or self._stop.is_set():
            return
        _, new = self._table.add(rb, peer.to_base58())
        if new:
            self._publisher.add_peer(peer)

    def _drop(self, peer: ID) -> None:
        """The last connection to ``peer`` closed: out of the table, its streams closed."""
        rb = peer.to_bytes()
        if self._table.remove(rb) is None:
            return
        if not self._stop.is_set() and self._book.get(rb):
            # Two peers that dial each other at once can each close a different one of the two
            # connections (py-libp2p keeps one per peer), leaving none; a dead peer simply
            # fails this one attempt. Jitter keeps the two sides from colliding again.
            with contextlib.suppress(RoutingError):  # shutting down
                self._spawn(self._redial, peer)
        self._publisher.remove_peer(rb)
        pool = self._pools.pop(rb, None)
        if pool is not None:
            pool.close()

    async def _redial(self, peer: ID) -> None:
        await trio.sleep(random.uniform(0.05, 1.0))
        addrs = self._book.dialable(peer.to_bytes())
        if not addrs or peer.to_bytes() in self._table:
            return
        try:
            await self._dial(multiaddr.Multiaddr(addrs[0]), peer)
            await self._walk(peer, self._self_id)
        except (RoutingError, trio.TooSlowError) as exc:
            log.debug("redial of %s failed: %s", peer, exc)

    def _pool(self, peer: ID) -> RequestPool:
        rb = peer.to_bytes()
        pool = self._pools.get(rb)
        if pool is None:
            pool = RequestPool(
                self._host, peer, PROTOCOL, self._spawn, max_streams=self._options.streams_per_peer
            )
            self._pools[rb] = pool
        return pool

    async def _request(self, peer: ID, msg: wire.Message) -> wire.Message:
        with trio.fail_after(self._options.request_timeout):
            return await self._pool(peer).request(wire.encode(msg))

    # -- advertising (see publish.py) ------------------------------------------------------

    async def provide(self, keys: list[bytes]) -> None:
        """Advertise ``keys`` (multihashes): remember them and send them to their closest peers."""
        await self._publisher.provide(keys)

    async def withdraw(self, keys: Iterable[bytes]) -> None:
        """Stop advertising: no more reprovides, no more self in our answers; remote copies expire."""
        self._publisher.withdraw(keys)

    async def _maintain(self) -> None:
        """Reprovide, expire records, and walk the table to learn peers that joined elsewhere."""
        opts = self._options
        next_reprovide = trio.current_time() + opts.reprovide_interval
        while True:
            await trio.sleep(min(opts.refresh_interval, opts.reprovide_interval, opts.record_ttl / 4))
            self._store.expire()
            if trio.current_time() >= next_reprovide:
                next_reprovide = trio.current_time() + opts.reprovide_interval
                await self._reprovide()
            peers = self._table.peers()
            for e in random.sample(peers, min(3, len(peers))):
                # our own id finds our neighbours; a random target finds peers elsewhere in the
                # keyspace, so the table converges to the whole cluster
                for target in (self._self_id, random.randbytes(32)):
                    try:
                        await self._walk(ID(e.id), target)
                    except (RoutingError, trio.TooSlowError) as exc:
                        log.debug("refresh walk at %s failed: %s", e.b58, exc)

    async def _reprovide(self) -> None:
        """Re-send every advertised key to its closest peers (records elsewhere expire otherwise)."""
        started = time.perf_counter()
        keys = await self._publisher.reprovide()
        if self._on_reprovide is not None:
            self._on_reprovide(keys, time.perf_counter() - started)

    # -- lookups (see query.py) ------------------------------------------------------------

    def local_providers(self, key: bytes, limit: int) -> list[Peer]:
        """Providers from this node's own records, safe to call from the asyncio thread.

        Only reads: single dict lookups are atomic under the GIL, and if the trio thread changes
        the key's record set mid-read (RuntimeError), the caller just asks the trio thread. This
        skips two thread hand-offs when the answer is local (always, in clusters of <= k nodes).
        """
        try:
            pids = self._store.get(key)
        except RuntimeError:
            return []
        out = []
        for pid in pids:
            if pid != self._self_id and (peer := self._book.to_peer(pid)) is not None:
                out.append(peer)
                if len(out) >= limit:
                    break
        return out

    async def find_providers(
        self, key: bytes, limit: int, emit: Callable[[Peer], None], stats: LookupStats | None = None
    ) -> LookupStats:
        """Call ``emit`` for up to ``limit`` providers of ``key`` as found (see :mod:`.query`)."""
        return await self._query.run(key, limit, emit, stats if stats is not None else LookupStats())

    async def _ask_providers(self, pid: bytes, key: bytes) -> wire.Message:
        """GET_PROVIDERS ``key`` at ``pid``, dialled first if not connected; a reply admits it."""
        peer = ID(pid)
        if pid not in self._table and not self._host.get_network().connections.get(peer):
            addrs = self._book.dialable(pid)
            if not addrs:
                raise RoutingError(f"no address for {peer}")
            await self._dial(multiaddr.Multiaddr(addrs[0]), peer)
        reply = await self._request(peer, wire.Message(wire.GET_PROVIDERS, key=key))
        self._admit(peer)
        return reply
