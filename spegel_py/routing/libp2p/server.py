"""The serving side of ``/spegel/kad/1.0.0``: answer requests, store announced records.

One handler per inbound stream reads messages as they come (a peer pipelines many on one
stream), answers GET_PROVIDERS / FIND_NODE / PING in order, in one write per batch, and stores
ADD_PROVIDER records without replying, as go-libp2p-kad-dht does. It also watches connections
(a notifee), so the node can release a peer's streams when its connection closes and trim
connections when there are too many.

Bounded against hostile peers: inbound streams per peer and in total are capped
(:class:`~.limits.StreamGate`; more are reset at once), a request over
:data:`~.wire.MAX_REQUEST` ends its stream, so a stream buffers at most that, replies are
written as they reach 64 KiB and a peer that stops reading them loses the stream, and the record
store refuses what its limits do not admit (:mod:`.providers`).

The server is given the routing table, the record store, the address book and this node's own
records by the node (:mod:`.dht`), and tells the node about peers through ``admit`` (a peer spoke
the protocol; the node puts it in its bucket if there is room) and the notifee's
``on_disconnect`` / ``on_connect``.
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
from spegel_py.routing.libp2p.streams import READ_SIZE, WRITE_CHUNK, reset_quietly
from spegel_py.routing.libp2p.table import RoutingTable

log = logging.getLogger(__name__)

CLOSE_TIMEOUT = 5.0  # seconds closing a dead connection may take


class DhtServer:
    """The stream handler of the protocol; runs in the trio thread.

    ``peerstore``: py-libp2p's (identify fills it with a peer's listen addresses). ``admit(peer)``:
    called for every inbound stream, before its messages are read. ``k``: closer peers per answer.
    ``gate``: admits inbound streams (per peer and in total). ``stall_timeout``: seconds a reply
    write may wait for a peer that does not read (then the stream is reset).
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
        stall_timeout: float = 30.0,
    ) -> None:
        self._table = table
        self._store = store
        self._book = book
        self._own = own
        self._peerstore = peerstore
        self._admit = admit
        self._k = k
        self._gate = gate
        self._stall_timeout = stall_timeout

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
            self._book.connected(rb, conn_ip)  # Noise authenticated it on this IP
        if rb not in self._book:
            self._book.note(rb, self._peerstore_addrs(remote), conn_ip)
        self._admit(remote)
        deframer = wire.Deframer(wire.MAX_REQUEST)
        try:
            while True:
                data = await stream.read(READ_SIZE)
                if not data:
                    break
                replies: list[bytes] = []
                size = 0
                for body in deframer.feed(data):
                    if (reply := self.dispatch(rb, conn_ip, body)) is not None:
                        replies.append(reply)
                        size += len(reply)
                        if size >= WRITE_CHUNK:  # 64 KiB of requests may ask for 25 MiB of replies
                            await self._write(stream, replies)
                            replies, size = [], 0
                if replies:
                    await self._write(stream, replies)
        except Exception as exc:  # EOF, reset, bad bytes: this stream is over, the peer may open another
            log.debug("DHT stream from %s ended: %s", remote, exc)
        finally:
            await reset_quietly(stream)

    async def _write(self, stream: INetStream, replies: list[bytes]) -> None:
        """Write replies; a peer that does not read them within ``stall_timeout`` loses the stream."""
        with trio.move_on_after(self._stall_timeout) as scope:
            await stream.write(b"".join(replies))
        if scope.cancelled_caught:
            raise wire.WireError(f"the peer read no reply for {self._stall_timeout}s")

    def _peerstore_addrs(self, peer: ID) -> list[bytes]:
        try:
            return [bytes(a.to_bytes()) for a in self._peerstore.addrs(peer)]
        except Exception:  # unknown peer: py-libp2p raises PeerStoreError
            return []

    def dispatch(self, remote: bytes, conn_ip: str | None, body: bytes) -> bytes | None:
        """One request or record from ``remote`` (its connection IP ``conn_ip``): the framed
        reply, or None (ADD_PROVIDER has none)."""
        reply = self.answer(remote, conn_ip, wire.decode(body))
        return None if reply is None else wire.frame(wire.encode(reply))

    def answer(self, remote: bytes, conn_ip: str | None, msg: wire.Message) -> wire.Message | None:
        """The reply to a decoded message (also what the in-memory network of
        :mod:`.simnet` calls, skipping the encoding)."""
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
            return reply
        if msg.type == wire.FIND_NODE:
            return wire.Message(wire.FIND_NODE, key=msg.key, closer=self._closer(msg.key, remote))
        if msg.type == wire.PING:
            return wire.Message(wire.PING)
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
    """Reports connections opening and a peer's last connection closing (py-libp2p calls these
    in trio).

    ``on_disconnect(peer)``: the node drops the peer's streams. ``on_connect(peer, ip)``: a
    connection with it was authenticated on ``ip`` (the address book notes it; the node may
    close idle connections when there are too many).
    """

    def __init__(
        self,
        on_disconnect: Callable[[ID], None],
        on_connect: Callable[[ID, str | None], None] = lambda _peer, _ip: None,
    ) -> None:
        self._on_disconnect = on_disconnect
        self._on_connect = on_connect

    async def opened_stream(self, network: INetwork, stream: INetStream) -> None:
        pass

    async def closed_stream(self, network: INetwork, stream: INetStream) -> None:
        pass

    async def connected(self, network: INetwork, conn: INetConn) -> None:
        self._on_connect(conn.muxed_conn.peer_id, remote_ip(conn))

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


def remote_ip(conn: INetConn) -> str | None:
    """The remote IP of a connection (its muxer knows the socket's peer address)."""
    remote = getattr(conn.muxed_conn, "get_remote_address", lambda: None)()
    return str(remote[0]) if remote else None
