"""The serving side of ``/spegel/kad/1.0.0``: answer requests, store announced records.

One handler per inbound stream reads messages as they come (a peer pipelines many on one
stream), answers GET_PROVIDERS / FIND_NODE / PING in order, in one write per batch, and stores
ADD_PROVIDER records without replying, as go-libp2p-kad-dht does. It also watches connections
(a notifee), so a peer whose connection closes leaves the routing table.

Bounded against hostile peers: inbound streams per peer and in total are capped
(:class:`~.limits.StreamGate`; more are reset at once), a request over
:data:`~.wire.MAX_REQUEST` ends its stream, so a stream buffers at most that, and the record
store refuses what its limits do not admit (:mod:`.providers`).

The server is given the routing table, the record store, the address book and this node's own
records by the node (:mod:`.dht`), and tells the node about peers through two functions: ``admit``
(a peer spoke the protocol) and ``on_disconnect`` (its last connection closed).
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import multiaddr  # type: ignore[import-untyped]  # py-multiaddr ships no type information
import trio
from libp2p.abc import INetConn, INetStream, INetwork, INotifee, IPeerStore
from libp2p.peer.id import ID

from spegel_py.routing.libp2p import wire
from spegel_py.routing.libp2p.addrs import AddressBook
from spegel_py.routing.libp2p.keys import kad_id
from spegel_py.routing.libp2p.limits import StreamGate
from spegel_py.routing.libp2p.own import OwnRecords
from spegel_py.routing.libp2p.providers import ProviderStore
from spegel_py.routing.libp2p.streams import READ_SIZE, reset_quietly
from spegel_py.routing.libp2p.table import RoutingTable

log = logging.getLogger(__name__)

CLOSE_TIMEOUT = 5.0  # seconds closing a dead connection may take


class DhtServer:
    """The stream handler of the protocol; runs in the trio thread.

    ``peerstore``: py-libp2p's (identify fills it with a peer's listen addresses). ``admit(peer)``:
    called for every inbound stream, before its messages are read. ``k``: closer peers per answer.
    ``gate``: admits inbound streams (per peer and in total).
    """

    def __init__(
        self,
        *,
        table: RoutingTable,
        store: ProviderStore,
        book: AddressBook,
        own: OwnRecords,
        peerstore: IPeerStore,
        admit: Callable[[ID], None],
        k: int,
        gate: StreamGate,
    ) -> None:
        self._table = table
        self._store = store
        self._book = book
        self._own = own
        self._peerstore = peerstore
        self._admit = admit
        self._k = k
        self._gate = gate

    async def handle(self, stream: INetStream) -> None:
        rb = stream.muxed_conn.peer_id.to_bytes()
        if not self._gate.enter(rb):
            log.debug("inbound DHT stream from %s refused: stream limit", stream.muxed_conn.peer_id)
            await reset_quietly(stream)
            return
        try:
            await self._serve(stream, rb)
        finally:
            self._gate.leave(rb)

    async def _serve(self, stream: INetStream, rb: bytes) -> None:
        remote = stream.muxed_conn.peer_id
        remote_addr = stream.get_remote_address()
        conn_ip = remote_addr[0] if remote_addr else None
        if conn_ip is not None:
            self._book.note_conn_ip(rb, conn_ip)
        if rb not in self._book:
            self._book.note(rb, self._peerstore_addrs(remote), conn_ip)
        self._admit(remote)
        deframer = wire.Deframer(wire.MAX_REQUEST)
        try:
            while True:
                data = await stream.read(READ_SIZE)
                if not data:
                    break
                replies = [r for body in deframer.feed(data) if (r := self._dispatch(rb, conn_ip, body))]
                if replies:
                    await stream.write(b"".join(replies))
        except Exception as exc:  # EOF, reset, bad bytes: this stream is over, the peer may open another
            log.debug("DHT stream from %s ended: %s", remote, exc)
        finally:
            await reset_quietly(stream)

    def _peerstore_addrs(self, peer: ID) -> list[bytes]:
        try:
            return [bytes(a.to_bytes()) for a in self._peerstore.addrs(peer)]
        except Exception:  # unknown peer: py-libp2p raises PeerStoreError
            return []

    def _dispatch(self, remote: bytes, conn_ip: str | None, body: bytes) -> bytes | None:
        msg = wire.decode(body)
        if msg.type == wire.ADD_PROVIDER:
            for info in msg.providers:
                # a peer may only announce itself (as go-libp2p-kad-dht); the store may refuse
                if info.id == remote and self._store.add(msg.key, remote):
                    if info.addrs and self._book.get(remote) != info.addrs:
                        self._book.note(remote, info.addrs, conn_ip)
            return None
        if msg.type == wire.GET_PROVIDERS:
            providers = [self._info(p) for p in self._store.get(msg.key) if p != remote]
            if msg.key in self._own:
                providers.append(self._own.info)
            reply = wire.Message(wire.GET_PROVIDERS, key=msg.key, providers=providers)
            reply.closer = self._closer(msg.key, remote)
            return wire.frame(wire.encode(reply))
        if msg.type == wire.FIND_NODE:
            reply = wire.Message(wire.FIND_NODE, key=msg.key, closer=self._closer(msg.key, remote))
            return wire.frame(wire.encode(reply))
        if msg.type == wire.PING:
            return wire.frame(wire.encode(wire.Message(wire.PING)))
        return None  # PUT_VALUE / GET_VALUE: Spegel stores no values; go answers nothing useful either

    def _info(self, pid: bytes) -> wire.PeerInfo:
        return wire.PeerInfo(pid, self._book.get(pid))

    def _closer(self, key: bytes, exclude: bytes) -> list[wire.PeerInfo]:
        out = []
        book = self._book
        for e in self._table.closest(kad_id(key), self._k, exclude):
            addrs = book.get(e.id)
            if not addrs:  # an inbound peer: identify has filled the peerstore by now, maybe
                book.note(e.id, self._peerstore_addrs(ID(e.id)), book.conn_ip(e.id))
                addrs = book.get(e.id)
            if addrs:
                out.append(wire.PeerInfo(e.id, addrs, wire.CONNECTED))
        return out


class Notifee(INotifee):
    """Reports a peer whose last connection closed (py-libp2p calls these in trio).

    ``on_disconnect(peer)``: the node drops the peer from its table.
    """

    def __init__(self, on_disconnect: Callable[[ID], None]) -> None:
        self._on_disconnect = on_disconnect

    async def opened_stream(self, network: INetwork, stream: INetStream) -> None:
        pass

    async def closed_stream(self, network: INetwork, stream: INetStream) -> None:
        pass

    async def connected(self, network: INetwork, conn: INetConn) -> None:
        pass

    async def disconnected(self, network: INetwork, conn: INetConn) -> None:
        # py-libp2p 0.8.1 skips closing a muxed connection the remote already closed, which
        # leaves its socket to the garbage collector; close the secured layer (the socket) here,
        # but only then: a SwarmConn may share its muxed connection with a live one (py-libp2p's
        # duplicate-dial handling), and closing that would cut a healthy connection.
        muxed = conn.muxed_conn
        live = network.connections.get(muxed.peer_id) or []
        shared = getattr(conn, "_shared_muxed_conn", False) or any(c.muxed_conn is muxed for c in live)
        secured = getattr(muxed, "secured_conn", None)
        if secured is not None and muxed.is_closed and not shared:
            with trio.CancelScope(shield=True), trio.move_on_after(CLOSE_TIMEOUT):
                try:
                    await secured.close()
                except Exception:  # already closed: nothing to release
                    log.debug("closing a dead connection", exc_info=True)
        peer = conn.muxed_conn.peer_id
        if not network.connections.get(peer):
            self._on_disconnect(peer)

    async def listen(self, network: INetwork, multiaddr: multiaddr.Multiaddr) -> None:
        pass

    async def listen_close(self, network: INetwork, multiaddr: multiaddr.Multiaddr) -> None:
        pass
