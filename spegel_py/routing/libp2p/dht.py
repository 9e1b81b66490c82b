"""The node of Spegel's DHT: py-libp2p's host in the trio thread, its peers and connections.

Wire-compatible with go-libp2p-kad-dht on ``/spegel/kad/1.0.0``: the same messages, keys and
XOR distance. What differs from py-libp2p's stock KadDHT is how messages travel: ADD_PROVIDER
messages are pipelined on one long-lived stream per peer with no reply (:mod:`.publish`),
requests share a small pool of long-lived streams (:mod:`.streams`), records expire after
``record_ttl`` and are reprovided every ``reprovide_interval``, and nothing rate-limits records
silently.

Placement is Kademlia's: a key's records go to the ``k`` peers closest to it, and a lookup asks
the closest peers first (``alpha`` at a time), so a Go Spegel node finds our records where it
looks, and we find its. The routing table is k-buckets (:mod:`.table`), filled by bootstrap,
by the peers that answer or send requests, and by bucket refresh lookups every
``bucket_refresh`` seconds. Peers leave it when a request to them fails. Connections are
dialled when a lookup or a sender needs a peer and closed when idle (:mod:`.conns`), so their
number, and the idle cost, do not grow with the cluster.

:class:`DhtNode` builds the state (routing table, address book, record store, own records) and
hands it to the parts that use it: the server (:mod:`.server`), the lookup (:mod:`.query`) and
the publisher (:mod:`.publish`). It keeps what needs the host: dialling, walking the table,
admitting and evicting peers, request streams, connection trimming and the periodic maintenance.
Peers named by others are dialled through :mod:`.reach`, which proves their id (:mod:`.addrs`).
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

import multiaddr  # type: ignore[import-untyped]  # py-multiaddr ships no type information
import trio
from libp2p.abc import IHost
from libp2p.peer.id import ID

from spegel_py.errors import RoutingError
from spegel_py.routing.base import Peer
from spegel_py.routing.libp2p import wire
from spegel_py.routing.libp2p.addrs import AddressBook, addr_ip
from spegel_py.routing.libp2p.conns import ConnectionKeeper
from spegel_py.routing.libp2p.host import TrackedTCP, dial, split_p2p
from spegel_py.routing.libp2p.limits import StreamGate
from spegel_py.routing.libp2p.options import DhtOptions
from spegel_py.routing.libp2p.own import OwnRecords
from spegel_py.routing.libp2p.providers import ProviderStore
from spegel_py.routing.libp2p.publish import Publisher
from spegel_py.routing.libp2p.query import LookupStats, ProviderQuery
from spegel_py.routing.libp2p.reach import Reach
from spegel_py.routing.libp2p.server import DhtServer, Notifee
from spegel_py.routing.libp2p.side import NodeSide
from spegel_py.routing.libp2p.streams import PROTOCOL, ProvideSender, RequestPool, StreamClosed
from spegel_py.routing.libp2p.table import RoutingTable

log = logging.getLogger(__name__)

CLOSE_TIMEOUT = 5.0  # seconds the host may take to close its connections and listeners


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
        self._table = RoutingTable(self._self_id, options.k)
        self._store = ProviderStore(ttl=options.record_ttl, limits=options.limits.records)
        self.gate = StreamGate(options.limits.streams)  # inbound streams (read: refusal count)
        self._book = AddressBook(registry_port=registry_port)
        self._own = OwnRecords(self._self_id)
        self._keeper = ConnectionKeeper(options.conns)
        self._reach = Reach(host.get_network(), self._book, self._dial)
        self._query = ProviderQuery(
            self_id=self._self_id,
            table=self._table,
            store=self._store,
            book=self._book,
            ask=self._ask,
            reach=self._reach.provider,
            k=options.k,
            alpha=options.alpha,
        )
        self._publisher = Publisher(
            table=self._table,
            own=self._own,
            spawn=self._spawn,
            open_sender=self._open_sender,
            closest=self._query.closest,
            k=options.k,
            idle=options.conns.idle,
        )
        self._source_ip: str | None = None  # our listen IP: outgoing connections come from it
        self._pools: dict[bytes, RequestPool] = {}
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
                        stall_timeout=self._options.limits.sends.stall_timeout,
                    )
                    self._host.set_stream_handler(PROTOCOL, server.handle)
                    self._host.get_network().register_notifee(Notifee(self._drop, self._connected))
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
        ips = {ip for a in addrs if (ip := addr_ip(a)) is not None}
        self._book.set_self(ips)  # loopback peers only in a lab on loopback
        self._source_ip = ips.pop() if len(ips) == 1 else None
        self._tcp.source_ip = self._source_ip  # py-libp2p's own dials (new_stream) bind to it too

    def listen_multiaddrs(self) -> list[str]:
        pid = self._host.get_id().to_base58()
        return [f"{multiaddr.Multiaddr(a)}/p2p/{pid}" for a in self._own.info.addrs]

    def _spawn(self, fn: Callable[..., Awaitable[object]], *args: object) -> None:
        if self._nursery is None or self._stop.is_set():
            raise RoutingError("DHT is not running")
        self._nursery.start_soon(fn, *args)

    # -- peers -----------------------------------------------------------------------------

    async def connect(self, addr: str) -> bytes | None:
        """Dial ``addr`` (``/p2p/<id>`` optional), verify it speaks the DHT, and look up our own
        id through it (Kademlia's join: fills the buckets near us and tells those peers of us)."""
        maddr, pid = split_p2p(addr)
        if pid is not None and pid.to_bytes() == self._self_id:
            return None
        # a known peer is asked again: a bootstrap round is also how a young node, whose first
        # lookup came back before the seed knew the cluster, learns it
        if pid is not None and pid.to_bytes() in self._table and len(self._table) >= self._options.k:
            return pid.to_bytes()  # a big table is kept current by lookups and bucket refresh
        remote = await self._dial(maddr, pid)
        rb = remote.to_bytes()
        if rb == self._self_id:
            return None
        self._reach.vouch(remote, (bytes(maddr.to_bytes()),))  # Noise proved the id on the connection
        await self._ask(rb, wire.Message(wire.FIND_NODE, key=self._self_id))
        await self._query.closest(self._self_id)
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

    def _admit(self, peer: ID) -> None:
        """A peer spoke the protocol (see :meth:`.publish.Publisher.admit`)."""
        rb = peer.to_bytes()
        self._keeper.touch(rb)
        if rb != self._self_id and not self._stop.is_set():
            self._publisher.admit(rb, peer.to_base58())

    def _drop(self, peer: ID) -> None:
        """The last connection to ``peer`` closed: its streams go; it stays in the table (the
        next request dials it again)."""
        rb = peer.to_bytes()
        self._keeper.forget(rb)
        self._publisher.lost(rb)
        if rb not in self._table:
            self._book.forget(rb)  # kept a while for a redial and the mirror (addrs.py)
        pool = self._pools.pop(rb, None)
        if pool is not None:
            pool.close()

    def _connected(self, peer: ID, ip: str | None) -> None:
        """An authenticated connection with ``peer`` opened on ``ip``: its address (addrs.py)."""
        self._book.connected(peer.to_bytes(), ip)
        self._keeper.touch(peer.to_bytes())
        if self._keeper.over(len(self._host.get_network().connections)):
            with contextlib.suppress(RoutingError):  # shutting down
                self._spawn(self._trim)

    async def _trim(self) -> None:
        """Close the connections the keeper says are idle or too many (see :mod:`.conns`)."""
        keep = self._publisher.active

        def closing(rb: bytes) -> None:
            self._publisher.remove_peer(rb)  # closed on purpose: nothing to resend
            self._drop(ID(rb))

        await self._keeper.trim(self._host.get_network(), lambda p: p in self._table or keep(p), closing)

    def _open_sender(self, peer: bytes, on_loss: Callable[[], None]) -> ProvideSender:
        limits = self._options.limits.sends  # a peer that stops reading is disconnected
        return ProvideSender(self._host, ID(peer), PROTOCOL, on_loss=on_loss, limits=limits)

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
        self._keeper.touch(peer.to_bytes())
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
        """Reprovide, expire records, close idle connections, and refresh the buckets."""
        opts = self._options
        next_reprovide = trio.current_time() + opts.reprovide_interval
        next_refresh = trio.current_time() + min(opts.bucket_refresh, opts.refresh_interval * 2)
        while True:
            await trio.sleep(min(opts.refresh_interval, opts.reprovide_interval, opts.record_ttl / 4))
            self._store.expire()
            self._publisher.sweep()
            await self._trim()
            if trio.current_time() >= next_reprovide:
                next_reprovide = trio.current_time() + opts.reprovide_interval
                await self._reprovide()
            if trio.current_time() >= next_refresh and len(self._table):
                next_refresh = trio.current_time() + opts.bucket_refresh
                await self.refresh()

    async def refresh(self) -> None:
        """One lookup per bucket (and one past the deepest): learns the peers that joined."""
        for key in [self._self_id, *self._table.refresh_targets()]:
            await self._query.closest(key)

    async def _reprovide(self) -> None:
        """Re-send every advertised key to its closest peers (records elsewhere expire otherwise)."""
        started = time.perf_counter()
        keys = await self._publisher.reprovide()
        if self._on_reprovide is not None:
            self._on_reprovide(keys, time.perf_counter() - started)

    # -- lookups (see query.py) ------------------------------------------------------------

    def local_providers(self, key: bytes, limit: int) -> list[Peer]:
        """Providers from this node's own records, safe to call from the asyncio thread (see
        :meth:`.query.ProviderQuery.local`)."""
        return self._query.local(key, limit)

    async def find_providers(
        self, key: bytes, limit: int, emit: Callable[[Peer], None], stats: LookupStats | None = None
    ) -> LookupStats:
        """Call ``emit`` for up to ``limit`` providers of ``key`` as found (see :mod:`.query`)."""
        return await self._query.run(key, limit, emit, stats if stats is not None else LookupStats())

    async def _ask(self, pid: bytes, msg: wire.Message) -> wire.Message:
        """``msg`` at ``pid``, dialled first if not connected; a reply admits the peer, a failed
        dial or no answer in time evicts it. A stream that closes under the request (the peer
        closed an idle connection) is retried once on a new connection."""
        peer = ID(pid)
        for attempt in (1, 2):
            try:
                await self._connect(pid)
                reply = await self._request(peer, msg)
            except StreamClosed:
                if attempt == 2:
                    self._evict(pid)
                    raise
                continue
            except (RoutingError, trio.TooSlowError):
                self._evict(pid)
                raise
            self._admit(peer)
            return reply
        raise AssertionError("unreachable")

    async def _connect(self, pid: bytes) -> None:
        """Dial ``pid`` unless connected, at its first known address (the dial proves the id)."""
        if not self._host.get_network().connections.get(ID(pid)):
            addrs = self._book.dialable(pid)
            if not addrs:
                raise RoutingError(f"no address for {ID(pid)}")
            await self._reach.dial(addrs[0], pid)  # maybe a hint

    def side(self) -> NodeSide:
        """What spegel-py's own protocols on this host use (:mod:`.claim`)."""
        return NodeSide(self._host, self._table, self._book, self._query.closest, self._connect,
                        lambda: self._source_ip)

    def _evict(self, pid: bytes) -> None:
        """A request to ``pid`` failed (see :meth:`.publish.Publisher.evict`); once out of the
        table and unconnected, the address book forgets it (kept a while, addrs.py)."""
        self._publisher.evict(pid)
        if pid not in self._table and not self._host.get_network().connections.get(ID(pid)):
            self._book.forget(pid)
