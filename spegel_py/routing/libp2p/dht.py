"""The provider-record exchange of Spegel's DHT, on py-libp2p's host, in the trio thread.

Wire-compatible with go-libp2p-kad-dht on ``/spegel/kad/1.0.0``: the same messages, keys and
XOR distance. What differs from py-libp2p's stock KadDHT is how messages travel (REFERENCE
section 5): ADD_PROVIDER messages are pipelined on one long-lived stream per peer with no reply,
requests share a small pool of long-lived streams, records expire after ``record_ttl`` and are
reprovided every ``reprovide_interval``, and nothing rate-limits records silently.

Placement is Kademlia's: a key's records go to the ``k`` peers closest to it, and a lookup asks
the closest peers first (``alpha`` at a time), so a Go Spegel node finds our records where it
looks, and we find its. The routing table holds every verified peer (see :mod:`.table`), so
in clusters of up to a few hundred nodes a lookup needs one round of queries.
"""

from __future__ import annotations

import contextlib
import logging
import random
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any

import multiaddr  # type: ignore[import-untyped]  # py-multiaddr ships no type information
import trio
import trio.lowlevel
from libp2p.abc import IHost
from libp2p.custom_types import TProtocol
from libp2p.peer.id import ID

from spegel_py.errors import RoutingError
from spegel_py.routing.base import RECORD_LIFETIME, REPROVIDE_INTERVAL, Peer
from spegel_py.routing.libp2p import wire
from spegel_py.routing.libp2p.host import TrackedTCP, dial, split_p2p
from spegel_py.routing.libp2p.keys import kad_id
from spegel_py.routing.libp2p.providers import ProviderStore
from spegel_py.routing.libp2p.query import LookupStats, find_providers
from spegel_py.routing.libp2p.server import DhtServer, Notifee
from spegel_py.routing.libp2p.streams import ProvideSender, RequestPool
from spegel_py.routing.libp2p.table import RoutingTable, addr_ip, addr_port, tcp_addr

log = logging.getLogger(__name__)

PROTOCOL = TProtocol("/spegel/kad/1.0.0")
CLOSE_TIMEOUT = 5.0  # seconds the host may take to close its connections and listeners
_YIELD_EVERY = 4096  # keys encoded between checkpoints, so a big advertise never stalls trio


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


class DhtNode:
    """The DHT: serves the protocol, sends records, answers lookups. All methods run in trio."""

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
        self.host = host
        self._on_reprovide = on_reprovide
        self._tcp = tcp
        self.options = options
        self._port = registry_port
        self.self_id = host.get_id().to_bytes()
        self.table = RoutingTable(self.self_id)
        self.store = ProviderStore(ttl=options.record_ttl)
        self.addrs: dict[bytes, tuple[bytes, ...]] = {}  # peer -> binary multiaddrs, kept as hints
        self.advertised: dict[bytes, None] = {}  # our keys, in order
        self._peers: dict[bytes, Peer] = {}  # provider -> Peer as last yielded
        self.conn_ips: dict[bytes, str] = {}  # peer -> IP its connection came from (a fallback)
        self._source_ip: str | None = None  # our listen IP: outgoing connections come from it
        self._kth: dict[bytes, int] = {}  # key -> distance of its k-th closest peer at last provide
        self._senders: dict[bytes, ProvideSender] = {}
        self._pools: dict[bytes, RequestPool] = {}
        self._dialing: set[bytes] = set()
        self._dials: dict[object, trio.Event] = {}  # dials in progress, by peer id or address
        self._nursery: trio.Nursery | None = None
        self._stop = trio.Event()
        self._dial_limit = trio.CapacityLimiter(options.dial_concurrency)
        self.self_info = wire.PeerInfo(self.self_id, ())
        self._add_head, self._add_tail = wire.add_provider_prefix(wire.encode_peer(self.self_info))

    # -- lifecycle -------------------------------------------------------------------------

    async def serve(
        self, listen: list[multiaddr.Multiaddr], *, task_status: Any = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Listen, serve the protocol and run the background tasks until cancelled.

        ``task_status`` is trio's; typed Any because the installed trio-stubs (from trio_typing,
        a libp2p dependency) shadow trio's own annotations and lack ``TaskStatus``.
        """
        async with self.host.run(listen):
            try:
                async with trio.open_nursery() as nursery:
                    self._nursery = nursery
                    self._set_self_addrs()
                    self.host.set_stream_handler(PROTOCOL, DhtServer(self).handle)
                    self.host.get_network().register_notifee(Notifee(self))
                    nursery.start_soon(self._maintain, name="dht-maintain")
                    task_status.started()
                    try:
                        await self._stop.wait()
                    finally:
                        for s in self._senders.values():
                            s.close()
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
                        await self.host.close()
                    except Exception:  # closing is best effort; the process may be going away
                        log.debug("host close failed", exc_info=True)
                self._tcp.close_leftovers()

    async def stop(self) -> None:
        """Make :meth:`serve` return after an orderly shutdown (cancelling it leaks sockets)."""
        self._stop.set()

    def _set_self_addrs(self) -> None:
        addrs = []
        for a in self.host.get_addrs():
            maddr, _ = split_p2p(str(a))
            raw = bytes(maddr.to_bytes())
            if addr_ip(raw) is not None:
                addrs.append(raw)
        self.self_info = wire.PeerInfo(self.self_id, tuple(addrs))
        ips = {addr_ip(a) for a in addrs}
        self._source_ip = ips.pop() if len(ips) == 1 else None
        self._add_head, self._add_tail = wire.add_provider_prefix(wire.encode_peer(self.self_info))

    def listen_multiaddrs(self) -> list[str]:
        pid = self.host.get_id().to_base58()
        return [f"{multiaddr.Multiaddr(a)}/p2p/{pid}" for a in self.self_info.addrs]

    def _spawn(self, fn: Callable[..., Awaitable[object]], *args: object) -> None:
        if self._nursery is None or self._stop.is_set():
            raise RoutingError("DHT is not running")
        self._nursery.start_soon(fn, *args)

    # -- peers -----------------------------------------------------------------------------

    async def connect(self, addr: str) -> bytes | None:
        """Dial ``addr`` (``/p2p/<id>`` optional), verify it speaks the DHT, learn its peers."""
        maddr, pid = split_p2p(addr)
        if pid is not None and pid.to_bytes() == self.self_id:
            return None
        # a known peer is walked again: a bootstrap round is also how a young node, whose first
        # walk came back before the seed had identified its other peers, learns the cluster
        if pid is not None and pid.to_bytes() in self.table and len(self.table) >= self.options.k:
            return pid.to_bytes()  # a big table is kept current by the refresh walks
        remote = await self._dial(maddr, pid)
        rb = remote.to_bytes()
        if rb == self.self_id:
            return None
        self.note_addrs(rb, (bytes(maddr.to_bytes()),))
        await self._walk(remote, self.self_id)
        await self._walk(remote, random.randbytes(32))
        return rb

    async def _dial(self, maddr: multiaddr.Multiaddr, pid: ID | None) -> ID:
        """One dial per peer (or bare address) at a time: a second concurrent dial would open a
        second connection, which py-libp2p rejects (one per peer) and leaves unclosed."""
        key: object = pid.to_bytes() if pid is not None else str(maddr)
        while (busy := self._dials.get(key)) is not None:
            await busy.wait()
            if pid is not None and self.host.get_network().connections.get(pid):
                return pid
        done = self._dials[key] = trio.Event()
        try:
            async with self._dial_limit:
                # shielded: py-libp2p closes a half-made connection in an unshielded cleanup, so
                # a cancelled dial leaks its socket; a deadline bounds the wait instead
                with trio.CancelScope(shield=True), trio.move_on_after(self.options.dial_timeout) as scope:
                    return await dial(self.host, maddr, pid, self._source_ip)
                if scope.cancelled_caught:
                    raise RoutingError(f"dial {maddr} timed out")
                raise RoutingError(f"dial {maddr} did not finish")
        finally:
            del self._dials[key]
            done.set()

    async def _walk(self, peer: ID, target: bytes) -> None:
        """FIND_NODE ``target`` at ``peer``; the reply verifies it, and names peers to dial."""
        reply = await self._request(peer, wire.Message(wire.FIND_NODE, key=target))
        self.admit(peer)
        for info in reply.closer:
            if info.id != self.self_id and info.id not in self.table and info.id not in self._dialing:
                self.note_addrs(info.id, info.addrs)
                self._spawn(self._dial_learned, info)

    async def _dial_learned(self, info: wire.PeerInfo) -> None:
        self._dialing.add(info.id)
        try:
            for raw in info.addrs:
                if addr_ip(raw) is None:
                    continue
                try:
                    with trio.fail_after(self.options.request_timeout * 2):
                        await self._dial(multiaddr.Multiaddr(raw), ID(info.id))
                        await self._walk(ID(info.id), self.self_id)
                    return
                except (RoutingError, trio.TooSlowError) as exc:
                    log.debug("dial of learned peer %s failed: %s", ID(info.id), exc)
        finally:
            self._dialing.discard(info.id)

    def note_addrs(self, peer: bytes, addrs: Iterable[bytes], conn_ip: str | None = None) -> None:
        """Remember where ``peer`` listens: its addresses, unspecified IPs replaced by the connection's."""
        clean: list[bytes] = []
        for a in addrs:
            if addr_ip(a) is not None:
                clean.append(bytes(a))
            elif conn_ip is not None and (port := addr_port(a)) is not None:
                clean.append(tcp_addr(conn_ip, port))
        if clean:
            t = tuple(clean)
            if self.addrs.get(peer) != t:
                self.addrs[peer] = t
                entry = self.table.get(peer)
                if entry is not None:
                    entry.addrs = t

    def admit(self, peer: ID) -> None:
        """Add a peer that has spoken the protocol; a new peer gets the records it should store."""
        rb = peer.to_bytes()
        if rb == self.self_id or self._stop.is_set():
            return
        _, new = self.table.add(rb, peer.to_base58(), self.addrs.get(rb, ()))
        if not new:
            return

        def resend() -> None:
            with contextlib.suppress(RoutingError):  # shutting down
                self._spawn(self._push_to_new_peer, rb)

        sender = ProvideSender(self.host, peer, PROTOCOL, on_loss=resend)
        self._senders[rb] = sender
        self._spawn(sender.run)
        if self.advertised:
            self._spawn(self._push_to_new_peer, rb)

    def drop(self, peer: ID) -> None:
        rb = peer.to_bytes()
        if self.table.remove(rb) is None:
            return
        if not self._stop.is_set() and self.addrs.get(rb):
            # Two peers that dial each other at once can each close a different one of the two
            # connections (py-libp2p keeps one per peer), leaving none; a dead peer simply
            # fails this one attempt. Jitter keeps the two sides from colliding again.
            with contextlib.suppress(RoutingError):
                self._spawn(self._redial, peer)
        sender = self._senders.pop(rb, None)
        if sender is not None:
            sender.close()
        pool = self._pools.pop(rb, None)
        if pool is not None:
            pool.close()

    async def _redial(self, peer: ID) -> None:
        await trio.sleep(random.uniform(0.05, 1.0))
        addrs = [a for a in self.addrs.get(peer.to_bytes(), ()) if addr_ip(a) is not None]
        if not addrs or peer.to_bytes() in self.table:
            return
        try:
            await self._dial(multiaddr.Multiaddr(addrs[0]), peer)
            await self._walk(peer, self.self_id)
        except (RoutingError, trio.TooSlowError) as exc:
            log.debug("redial of %s failed: %s", peer, exc)

    def _pool(self, peer: ID) -> RequestPool:
        rb = peer.to_bytes()
        pool = self._pools.get(rb)
        if pool is None:
            pool = RequestPool(
                self.host, peer, PROTOCOL, self._spawn, max_streams=self.options.streams_per_peer
            )
            self._pools[rb] = pool
        return pool

    async def _request(self, peer: ID, msg: wire.Message) -> wire.Message:
        with trio.fail_after(self.options.request_timeout):
            return await self._pool(peer).request(wire.encode(msg))

    # -- advertising -----------------------------------------------------------------------

    async def provide(self, keys: list[bytes]) -> None:
        """Advertise ``keys`` (multihashes): remember them and send them to their closest peers."""
        new = [k for k in keys if k not in self.advertised]
        for k in new:
            self.advertised[k] = None
        await self._send(new)

    async def withdraw(self, keys: Iterable[bytes]) -> None:
        """Stop advertising: no more reprovides, no more self in our answers; remote copies expire."""
        for k in keys:
            self.advertised.pop(k, None)
            self._kth.pop(k, None)

    async def _send(self, keys: list[bytes]) -> None:
        k = self.options.k
        head, tail = self._add_head, self._add_tail
        for start in range(0, len(keys), _YIELD_EVERY):
            batch = keys[start : start + _YIELD_EVERY]
            peers = self.table.peers()
            if len(peers) <= k:  # every peer is among the k closest of every key
                data = b"".join([head + key + tail for key in batch])
                for e in peers:
                    self._sender_enqueue(e.id, data)
            else:
                out: dict[bytes, list[bytes]] = {}
                for key in batch:
                    target = kad_id(key)
                    closest = self.table.closest(target, k)
                    self._kth[key] = closest[-1].kad ^ target
                    msg = head + key + tail
                    for e in closest:
                        out.setdefault(e.id, []).append(msg)
                for pid, msgs in out.items():
                    self._sender_enqueue(pid, b"".join(msgs))
            await trio.lowlevel.checkpoint()

    def _sender_enqueue(self, peer: bytes, data: bytes) -> None:
        sender = self._senders.get(peer)
        if sender is not None:
            sender.enqueue(data)

    async def _push_to_new_peer(self, peer: bytes) -> None:
        """Records a newly seen peer should hold: those for which it is among the k closest."""
        entry = self.table.get(peer)
        if entry is None:
            return
        head, tail = self._add_head, self._add_tail
        keys = list(self.advertised)
        small = len(self.table) <= self.options.k
        for start in range(0, len(keys), _YIELD_EVERY):
            batch = keys[start : start + _YIELD_EVERY]
            if not small:
                batch = [key for key in batch if (kad_id(key) ^ entry.kad) <= self._kth_distance(key)]
            if batch:
                self._sender_enqueue(peer, b"".join([head + key + tail for key in batch]))
            await trio.lowlevel.checkpoint()

    def _kth_distance(self, key: bytes) -> int:
        """Distance of ``key``'s k-th closest peer, as of its last send; computed once for keys
        last sent while the table was small (then every peer got them), so that peers joining a
        grown cluster get only the keys they are close to, not everything until the reprovide."""
        kth = self._kth.get(key)
        if kth is None:
            target = kad_id(key)
            kth = self._kth[key] = self.table.closest(target, self.options.k)[-1].kad ^ target
        return kth

    async def _maintain(self) -> None:
        """Reprovide, expire records, and walk the table to learn peers that joined elsewhere."""
        opts = self.options
        next_reprovide = trio.current_time() + opts.reprovide_interval
        while True:
            await trio.sleep(min(opts.refresh_interval, opts.reprovide_interval, opts.record_ttl / 4))
            self.store.expire()
            if trio.current_time() >= next_reprovide:
                next_reprovide = trio.current_time() + opts.reprovide_interval
                await self._reprovide()
            peers = self.table.peers()
            for e in random.sample(peers, min(3, len(peers))):
                # our own id finds our neighbours; a random target finds peers elsewhere in the
                # keyspace, so the table converges to the whole cluster
                for target in (self.self_id, random.randbytes(32)):
                    try:
                        await self._walk(ID(e.id), target)
                    except (RoutingError, trio.TooSlowError) as exc:
                        log.debug("refresh walk at %s failed: %s", e.b58, exc)

    async def _reprovide(self) -> None:
        """Re-send every advertised key to its closest peers (records elsewhere expire otherwise)."""
        keys = list(self.advertised)
        started = time.perf_counter()
        await self._send(keys)
        if self._on_reprovide is not None:
            self._on_reprovide(len(keys), time.perf_counter() - started)

    # -- lookups ---------------------------------------------------------------------------

    def to_peer(self, pid: bytes, addrs: Iterable[bytes] = ()) -> Peer | None:
        """A provider as the registry needs it: its IP and the (shared) registry port."""
        for ip in (*map(addr_ip, addrs), *map(addr_ip, self.addrs.get(pid, ())), self.conn_ips.get(pid)):
            if ip is not None:
                peer = self._peers.get(pid)
                if peer is None or peer.host != ip:  # cached: base58 encoding costs ~50 us
                    peer = Peer(peer_id=ID(pid).to_base58(), host=ip, port=self._port)
                    self._peers[pid] = peer
                return peer
        return None

    def local_providers(self, key: bytes, limit: int) -> list[Peer]:
        """Providers from this node's own records, safe to call from the asyncio thread.

        Only reads: single dict lookups are atomic under the GIL, and if the trio thread changes
        the key's record set mid-read (RuntimeError), the caller just asks the trio thread. This
        skips two thread hand-offs when the answer is local (always, in clusters of <= k nodes).
        """
        try:
            pids = self.store.get(key)
        except RuntimeError:
            return []
        out = []
        for pid in pids:
            if pid != self.self_id and (peer := self.to_peer(pid)) is not None:
                out.append(peer)
                if len(out) >= limit:
                    break
        return out

    async def find_providers(
        self, key: bytes, limit: int, emit: Callable[[Peer], None], stats: LookupStats | None = None
    ) -> LookupStats:
        """Call ``emit`` for up to ``limit`` providers of ``key`` as found (see :mod:`.query`)."""
        return await find_providers(self, key, limit, emit, stats if stats is not None else LookupStats())

    async def ask_providers(self, pid: bytes, key: bytes) -> wire.Message:
        peer = ID(pid)
        if pid not in self.table and not self.host.get_network().connections.get(peer):
            addrs = [a for a in self.addrs.get(pid, ()) if addr_ip(a) is not None]
            if not addrs:
                raise RoutingError(f"no address for {peer}")
            await self._dial(multiaddr.Multiaddr(addrs[0]), peer)
        reply = await self._request(peer, wire.Message(wire.GET_PROVIDERS, key=key))
        self.admit(peer)
        return reply
