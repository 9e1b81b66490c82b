"""The serving side of ``/spegel/kad/1.0.0``: answer requests, store announced records.

One handler per inbound stream reads messages as they come (a peer pipelines many on one
stream), answers GET_PROVIDERS / FIND_NODE / PING in order, in one write per batch, and stores
ADD_PROVIDER records without replying, as go-libp2p-kad-dht does. It also watches connections
(a notifee), so a peer whose connection closes leaves the routing table.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import multiaddr  # type: ignore[import-untyped]  # py-multiaddr ships no type information
import trio
from libp2p.abc import INetConn, INetStream, INetwork, INotifee
from libp2p.peer.id import ID

from spegel_py.routing.libp2p import wire
from spegel_py.routing.libp2p.keys import kad_id
from spegel_py.routing.libp2p.streams import READ_SIZE, reset_quietly

if TYPE_CHECKING:
    from spegel_py.routing.libp2p.dht import DhtNode

log = logging.getLogger(__name__)

CLOSE_TIMEOUT = 5.0  # seconds closing a dead connection may take


class DhtServer:
    def __init__(self, node: DhtNode) -> None:
        self._node = node

    async def handle(self, stream: INetStream) -> None:
        remote = stream.muxed_conn.peer_id
        rb = remote.to_bytes()
        remote_addr = stream.get_remote_address()
        conn_ip = remote_addr[0] if remote_addr else None
        if conn_ip is not None:
            self._node.conn_ips[rb] = conn_ip
        if rb not in self._node.addrs:
            self._node.note_addrs(rb, self._peerstore_addrs(remote), conn_ip)
        self._node.admit(remote)
        deframer = wire.Deframer()
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
            return [bytes(a.to_bytes()) for a in self._node.host.get_peerstore().addrs(peer)]
        except Exception:  # unknown peer: py-libp2p raises PeerStoreError
            return []

    def _dispatch(self, remote: bytes, conn_ip: str | None, body: bytes) -> bytes | None:
        msg = wire.decode(body)
        if msg.type == wire.ADD_PROVIDER:
            for info in msg.providers:
                if info.id == remote:  # a peer may only announce itself (as go-libp2p-kad-dht)
                    self._node.store.add(msg.key, remote)
                    if info.addrs and self._node.addrs.get(remote) != info.addrs:
                        self._node.note_addrs(remote, info.addrs, conn_ip)
            return None
        if msg.type == wire.GET_PROVIDERS:
            providers = [self._info(p) for p in self._node.store.get(msg.key) if p != remote]
            if msg.key in self._node.advertised:
                providers.append(self._node.self_info)
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
        return wire.PeerInfo(pid, self._node.addrs.get(pid, ()))

    def _closer(self, key: bytes, exclude: bytes) -> list[wire.PeerInfo]:
        out = []
        for e in self._node.table.closest(kad_id(key), self._node.options.k, exclude):
            if not e.addrs:  # an inbound peer: identify has filled the peerstore by now, maybe
                self._node.note_addrs(e.id, self._peerstore_addrs(ID(e.id)), self._node.conn_ips.get(e.id))
            addrs = e.addrs or self._node.addrs.get(e.id, ())
            if addrs:
                out.append(wire.PeerInfo(e.id, addrs, wire.CONNECTED))
        return out


class Notifee(INotifee):
    """Drops a peer from the table when its connection closes (py-libp2p calls these in trio)."""

    def __init__(self, node: DhtNode) -> None:
        self._node = node

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
            self._node.drop(peer)

    async def listen(self, network: INetwork, multiaddr: multiaddr.Multiaddr) -> None:
        pass

    async def listen_close(self, network: INetwork, multiaddr: multiaddr.Multiaddr) -> None:
        pass
