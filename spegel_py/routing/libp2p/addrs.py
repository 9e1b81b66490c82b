"""The address book: where each peer listens, and the registry :class:`Peer` a provider maps to.

The DHT names peers by id; dialling them and sending the mirror to their registry needs an IP.
Addresses come from three places: what a peer announces about itself (its ADD_PROVIDER records,
py-libp2p's peerstore after identify), what other peers' replies name for it (closer peers,
providers), and the IP its connection came from (the fallback when it announces only
unspecified addresses such as ``0.0.0.0``). The book keeps them as binary multiaddrs, the form
the wire carries, so replies reuse them without re-encoding.

The node (:mod:`.dht`) builds one book and hands it to the serving side (:mod:`.server`) and the
lookup side (:mod:`.query`). Everything here runs in the trio thread, except :meth:`to_peer`,
which the asyncio thread may also call for the node's own records (single dict reads).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

from libp2p.peer.id import ID

from spegel_py.routing.base import Peer


class AddressBook:
    """Peer id -> binary multiaddrs (hints to dial and to pass on), and the IP of its connection.

    ``registry_port``: every peer's registry port (Spegel assumes one port cluster-wide), used to
    build the :class:`Peer` of a provider.
    """

    def __init__(self, *, registry_port: int) -> None:
        self._port = registry_port
        self._addrs: dict[bytes, tuple[bytes, ...]] = {}
        self._conn_ips: dict[bytes, str] = {}  # peer -> IP its connection came from (a fallback)
        self._peers: dict[bytes, Peer] = {}  # provider -> Peer as last returned by to_peer

    def __contains__(self, peer: bytes) -> bool:
        """True once some address of ``peer`` is known."""
        return peer in self._addrs

    def get(self, peer: bytes) -> tuple[bytes, ...]:
        """The addresses of ``peer`` (empty when unknown), as given to other peers."""
        return self._addrs.get(peer, ())

    def dialable(self, peer: bytes) -> list[bytes]:
        """The addresses of ``peer`` that carry an IP, in the order learned."""
        return [a for a in self._addrs.get(peer, ()) if addr_ip(a) is not None]

    def note(self, peer: bytes, addrs: Iterable[bytes], conn_ip: str | None = None) -> None:
        """Remember where ``peer`` listens: its addresses, unspecified IPs replaced by ``conn_ip``."""
        clean: list[bytes] = []
        for a in addrs:
            if addr_ip(a) is not None:
                clean.append(bytes(a))
            elif conn_ip is not None and (port := addr_port(a)) is not None:
                clean.append(tcp_addr(conn_ip, port))
        if clean:
            self._addrs[peer] = tuple(clean)

    def note_conn_ip(self, peer: bytes, ip: str) -> None:
        """Remember the IP a connection from ``peer`` came from."""
        self._conn_ips[peer] = ip

    def conn_ip(self, peer: bytes) -> str | None:
        return self._conn_ips.get(peer)

    def to_peer(self, pid: bytes, addrs: Iterable[bytes] = ()) -> Peer | None:
        """A provider as the registry needs it: the first IP of ``addrs``, else of its known
        addresses, else of its connection, with the (shared) registry port; None without an IP."""
        for ip in (*map(addr_ip, addrs), *map(addr_ip, self._addrs.get(pid, ())), self._conn_ips.get(pid)):
            if ip is not None:
                peer = self._peers.get(pid)
                if peer is None or peer.host != ip:  # cached: base58 encoding costs ~50 us
                    peer = Peer(peer_id=ID(pid).to_base58(), host=ip, port=self._port)
                    self._peers[pid] = peer
                return peer
        return None


def addr_ip(addr: bytes) -> str | None:
    """The IP of a binary multiaddr that starts with ip4 or ip6; None for anything else."""
    if len(addr) >= 5 and addr[0] == 0x04:
        ip: ipaddress.IPv4Address | ipaddress.IPv6Address = ipaddress.IPv4Address(addr[1:5])
    elif len(addr) >= 17 and addr[0] == 0x29:
        ip = ipaddress.IPv6Address(addr[1:17])
    else:
        return None
    return None if ip.is_unspecified else str(ip)


def tcp_addr(ip: str, port: int) -> bytes:
    """Binary multiaddr ``/ip4|ip6/<ip>/tcp/<port>``."""
    parsed = ipaddress.ip_address(ip)
    head = b"\x04" if parsed.version == 4 else b"\x29"
    return head + parsed.packed + b"\x06" + port.to_bytes(2, "big")


def addr_port(addr: bytes) -> int | None:
    """The TCP port of a binary ``/ip4|ip6/.../tcp/N`` multiaddr."""
    off = 5 if addr[:1] == b"\x04" else 17 if addr[:1] == b"\x29" else -1
    if off < 0 or len(addr) < off + 3 or addr[off] != 0x06:
        return None
    return int.from_bytes(addr[off + 1 : off + 3], "big")
