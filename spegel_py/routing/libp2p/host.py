"""Build and dial with py-libp2p's host, configured the way Spegel's go-libp2p host is.

TCP only, Noise only (py-libp2p offers plaintext, secio and TLS by default; Go Spegel speaks
Noise), Yamux only (py-libp2p's mplex broke under load), an Ed25519 identity, and at most one
connection per peer: with more, py-libp2p's ``Swarm.dial_peer`` waits its 250 ms happy-eyeballs
delay after every successful dial. Each connection keeps at most 32 inbound streams open and a
peer has 5 s to name a new stream's protocol (:mod:`.muxer`; mplex, never offered, is not
bounded). Everything here runs in the trio thread.

Dialing a bare address (DNS bootstrap gives IPs, not peer ids) needs the remote's id before
py-libp2p's swarm can dial it; Noise learns it during the handshake, so :func:`dial` performs the
upgrade itself when the id is unknown and hands the connection to the swarm.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import multiaddr  # type: ignore[import-untyped]  # py-multiaddr ships no type information
import trio
from libp2p import new_host
from libp2p.abc import IHost
from libp2p.crypto.ed25519 import create_new_key_pair
from libp2p.crypto.x25519 import create_new_key_pair as x25519_pair
from libp2p.custom_types import TProtocol
from libp2p.network.config import ConnectionConfig
from libp2p.network.swarm import Swarm
from libp2p.peer.id import ID
from libp2p.rcmgr.manager import ResourceLimits, ResourceManager
from libp2p.security.noise.transport import PROTOCOL_ID as NOISE_ID
from libp2p.security.noise.transport import Transport as NoiseTransport
from libp2p.stream_muxer.yamux.yamux import PROTOCOL_ID as YAMUX_ID
from libp2p.stream_muxer.yamux.yamux import Yamux
from libp2p.transport.tcp.tcp import TCP

from spegel_py.errors import RoutingError
from spegel_py.routing.libp2p.muxer import INBOUND_NEGOTIATION_TIMEOUT, StreamGuard

log = logging.getLogger(__name__)

ADDR_TTL = 3600  # seconds py-libp2p's peerstore keeps a dialled address
# Connections at most, inbound and outbound (py-libp2p's default, now stated: the swarm refuses
# more). The DHT keeps ~64 open itself (conns.py); this is the hard ceiling above that.
MAX_CONNECTIONS = 300
# Streams at most, all protocols, both directions: ~13 per connection at MAX_CONNECTIONS (a
# spegel-py peer uses up to 5 DHT streams each way plus identify and ping). The swarm queues
# streams past it (a semaphore), so it bounds memory (each stream is a task and its buffers),
# not work; the DHT's own per-peer and total bounds are in limits.py. py-libp2p 0.8's swarm
# consults only this stream limit of the resource manager.
MAX_STREAMS = 4096


class TrackedTCP(TCP):
    """py-libp2p's TCP transport, remembering every socket it opens or accepts.

    py-libp2p 0.8.1 leaves some sockets to the garbage collector: a connection that completes
    while the swarm stops, a handshake cut short. :meth:`close_leftovers` closes them at shutdown,
    after the host has closed what it knows about.
    """

    def __init__(self) -> None:
        super().__init__()
        self._sockets: list[trio.SocketStream] = []
        # Every outgoing socket is bound to this IP when set (the node's one listen IP), also
        # those py-libp2p opens itself to give a stream a connection: the remote takes the
        # connection's source IP as our address (addrs.py), and on a host with several IPs the
        # kernel would otherwise pick another (127.0.0.1 for every node of a loopback lab).
        self.source_ip: str | None = None

    def _track(self, stream: trio.SocketStream) -> None:
        if len(self._sockets) > 64:
            self._sockets = [s for s in self._sockets if s.socket.fileno() != -1]
        self._sockets.append(stream)

    async def _dial_resolved(self, maddr: multiaddr.Multiaddr, source: tuple[str, int] | None = None) -> Any:
        if source is None and self.source_ip is not None:
            source = (self.source_ip, 0)
        raw = await super()._dial_resolved(maddr, source=source)
        inner = getattr(getattr(raw, "stream", None), "stream", None)
        if isinstance(inner, trio.SocketStream):
            self._track(inner)
        return raw

    def create_listener(self, handler_function: Any) -> Any:
        async def tracking(conn: Any) -> None:
            inner = getattr(conn, "stream", None)
            if isinstance(inner, trio.SocketStream):
                self._track(inner)
            await handler_function(conn)

        return super().create_listener(tracking)

    def close_leftovers(self) -> int:
        closed = 0
        for s in self._sockets:
            if s.socket.fileno() != -1:
                s.socket.close()
                closed += 1
        self._sockets.clear()
        return closed


def build_host(seed: bytes, tcp: TCP, guard: StreamGuard | None = None) -> IHost:
    """A py-libp2p host with this node's identity and Spegel's transport stack; ``guard`` bounds
    the inbound streams of each connection (see :mod:`.muxer`; a new one if not given)."""
    key_pair = create_new_key_pair(seed)
    noise = NoiseTransport(key_pair, noise_privkey=x25519_pair().private_key)
    # min/low watermark 0: py-libp2p's AutoConnector would otherwise dial every peer in the
    # peerstore until 200 connections are open (the all-to-all mesh and most of the idle CPU,
    # docs/benchmarks.md "Idle cost"); the DHT dials lazily and trims its own (conns.py)
    config = ConnectionConfig(
        max_connections_per_peer=1,
        max_connections=MAX_CONNECTIONS,
        min_connections=0,
        low_watermark=0,
        high_watermark=MAX_CONNECTIONS,
        inbound_stream_protocol_negotiation_timeout=INBOUND_NEGOTIATION_TIMEOUT,
    )
    host = new_host(
        key_pair=key_pair,
        sec_opt={NOISE_ID: noise},
        muxer_opt={TProtocol(YAMUX_ID): Yamux},
        connection_config=config,
        transports=[tcp],
        resource_manager=_resource_manager(),
    )
    swarm = host.get_network()
    if isinstance(swarm, Swarm):  # its target is the midpoint of the watermarks: never dial

        async def no_auto_connect() -> None:
            return None

        swarm.auto_connector.maybe_connect = no_auto_connect  # type: ignore[method-assign]
    swarm.register_notifee(guard if guard is not None else StreamGuard())
    return host


def _resource_manager() -> ResourceManager:
    """py-libp2p's resource manager with its heuristics off (connection rate limits, circuit
    breaker, memory guesses): they refuse streams and connections under bursts that are normal
    here (every node dialling every node at start) and cost CPU per stream. Its hard limits are
    set to what a node agent needs (see MAX_STREAMS; max_memory_mb is the chart's memory limit,
    not enforced with memory limits off); the rest are ours: one connection per peer, inbound
    DHT streams per peer and in total (limits.py), bounded dial concurrency."""
    return ResourceManager(
        limits=ResourceLimits(max_connections=MAX_CONNECTIONS, max_memory_mb=256, max_streams=MAX_STREAMS),
        enable_metrics=False,
        enable_connection_tracking=False,
        enable_memory_limits=False,
        enable_circuit_breaker=False,
        enable_graceful_degradation=False,
        enable_rate_limiting=False,
    )


def split_p2p(addr: str) -> tuple[multiaddr.Multiaddr, ID | None]:
    """``/ip4/.../tcp/N[/p2p/ID]`` -> (transport address, peer id or None)."""
    try:
        maddr = multiaddr.Multiaddr(addr)
        pid_text = None
        for proto in maddr.protocols():
            if proto.name == "p2p":
                pid_text = maddr.value_for_protocol("p2p")
        if pid_text is None:
            return maddr, None
        return maddr.decapsulate(multiaddr.Multiaddr(f"/p2p/{pid_text}")), ID.from_base58(pid_text)
    except Exception as exc:  # py-multiaddr raises several unrelated types for bad input
        raise RoutingError(f"invalid multiaddr {addr!r}: {exc}") from exc


async def dial(
    host: IHost, addr: multiaddr.Multiaddr, peer_id: ID | None, source_ip: str | None = None
) -> ID:
    """Connect to ``addr`` and return the remote's peer id (learned in the Noise handshake if unknown).

    ``source_ip`` binds the outgoing socket to this node's listen IP, so the remote sees the
    connection come from the address this node is known by (on loopback, 127.0.0.1 otherwise).
    """
    swarm = host.get_network()
    if not isinstance(swarm, Swarm):
        raise RoutingError("unexpected py-libp2p network type")
    source = (source_ip, 0) if source_ip else None
    if peer_id is not None:
        if swarm.connections.get(peer_id):
            return peer_id
        host.get_peerstore().add_addrs(peer_id, [addr], ADDR_TTL)
        try:
            await swarm.dial_addr(addr, peer_id, source)
        except Exception as exc:  # py-libp2p raises SwarmException, OSError, trio errors...
            if swarm.connections.get(peer_id):  # the peer dialled us at the same moment and won
                return peer_id
            raise RoutingError(f"dial {addr}/p2p/{peer_id} failed: {exc}") from exc
        return peer_id
    transport = swarm.transport_manager.transport_for_dialing(addr)
    if transport is None:
        raise RoutingError(f"no transport can dial {addr}")
    try:
        if source is not None and hasattr(transport, "dial_with_source"):
            raw = await transport.dial_with_source(addr, source)
        else:
            raw = await transport.dial(addr)
    except Exception as exc:
        raise RoutingError(f"dial {addr} failed: {exc}") from exc
    try:
        secure = await swarm.upgrader.security_multistream.secure_outbound(raw, None)  # type: ignore[arg-type]  # Noise accepts None: "learn the id"
        remote = secure.get_remote_peer()
        if remote == host.get_id() or swarm.connections.get(remote):
            await secure.close()  # ourselves, or already connected (one connection per peer)
            return remote
        muxed = await swarm.upgrader.upgrade_connection(secure, remote)
        host.get_peerstore().add_addrs(remote, [addr], ADDR_TTL)
        await swarm.add_conn(muxed, direction="outbound")
        return remote
    except trio.Cancelled:
        await _close_quietly(raw)
        raise
    except Exception as exc:
        await _close_quietly(raw)
        raise RoutingError(f"handshake with {addr} failed: {exc}") from exc


async def _close_quietly(conn: object) -> None:
    close = getattr(conn, "close", None)
    if close is None:
        return
    with trio.CancelScope(shield=True):
        try:
            await close()
        except Exception:  # already broken: nothing left to release
            log.debug("closing a failed connection", exc_info=True)


def listen_addrs(addrs: Sequence[str]) -> list[multiaddr.Multiaddr]:
    try:
        return [multiaddr.Multiaddr(a) for a in addrs]
    except Exception as exc:
        raise RoutingError(f"invalid listen address in {list(addrs)}: {exc}") from exc


def peer_id_of(seed: bytes) -> str:
    """The textual peer id (``12D3KooW...``) of the Ed25519 identity with this seed."""
    return ID.from_pubkey(create_new_key_pair(seed).public_key).to_base58()
