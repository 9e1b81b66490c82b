"""The address book: where each peer listens, which IP vouches for it, and what others say.

The DHT names peers by id; dialling them and sending the mirror to their registry needs an IP.
Any host that reaches the router port can put addresses into a reply, so the book trusts only
what a connection proves (docs/operations.md, "Router address trust"):

- a peer's **own** address is the IP of an authenticated connection with it (Noise proved the
  peer id on it, inbound or outbound), combined with the ports the peer announces for itself
  (identify, its own ADD_PROVIDER records) or that we dialled. Only these go to the mirror
  (:meth:`AddressBook.to_peer`) and into our replies to others;
- addresses that a reply names for a **third** peer (closer peers, providers) are **hints**:
  used only to dial that peer (the dial proves its id), never to replace an own address, kept
  for a bounded number of peers;
- loopback, link-local, multicast and unspecified IPs are refused everywhere, except loopback
  when this node's own router address is loopback (a lab on one machine).

A peer that leaves the table is forgotten; its own address is kept for :data:`DEPARTED_TTL`
seconds (bounded to :data:`MAX_DEPARTED` peers) so that a redial and the mirror still reach it.
That is a record's lifetime: in a cluster larger than the table, the provider of a key is often
a peer this node is not connected to now, but every provider connected here within the last
reprovide interval to place its records (it places them on the k closest peers of each key, so
on most nodes of the cluster); its proof from then lets the mirror ask it at once, where a dial
(~25 ms of handshakes) would miss the mirror's 20 ms resolve timeout.
The book keeps binary multiaddrs, the form the wire carries. The node (:mod:`.dht`) builds one
book and hands it to the serving side (:mod:`.server`) and the lookup side (:mod:`.query`).
Everything here runs in the trio thread, except :meth:`AddressBook.to_peer`, which the asyncio
thread may also call for the node's own records (single dict reads).
"""

from __future__ import annotations

import ipaddress
from collections import OrderedDict
from collections.abc import Callable, Iterable
from time import monotonic

from libp2p.peer.id import ID

from spegel_py.routing.base import RECORD_LIFETIME, Peer

MAX_HINTS = 4096  # peers whose third-party addresses are kept (least recently named go first)
HINTS_PER_PEER = 4  # addresses kept per hinted peer
MAX_DEPARTED = 4096  # peers that left whose own address is kept for a while (~1 MiB at most)
DEPARTED_TTL = RECORD_LIFETIME  # seconds a departed peer's own address stays usable

_IP = ipaddress.IPv4Address | ipaddress.IPv6Address


class AddressBook:
    """Own addresses (vouched by a connection) and hints (named by others), per peer id.

    ``registry_port``: every peer's registry port (Spegel assumes one port cluster-wide), used to
    build the :class:`Peer` of a provider.
    """

    def __init__(self, *, registry_port: int, clock: Callable[[], float] = monotonic) -> None:
        self._port = registry_port
        self._clock = clock
        self.loopback = False  # loopback IPs allowed: this node's router listens on loopback
        self._ips: dict[bytes, str] = {}  # peer -> IP of an authenticated connection with it
        self._addrs: dict[bytes, tuple[bytes, ...]] = {}  # peer -> own addresses (on that IP)
        self._hints: OrderedDict[bytes, tuple[bytes, ...]] = OrderedDict()
        # peer that left -> (IP, own addresses, when it left)
        self._departed: OrderedDict[bytes, tuple[str, tuple[bytes, ...], float]] = OrderedDict()
        self._peers: dict[bytes, Peer] = {}  # provider -> Peer as last returned by to_peer

    def set_self(self, ips: Iterable[str]) -> None:
        """This node's router IPs: loopback peers are allowed iff one of them is loopback."""
        self.loopback = any(_parse(ip).is_loopback for ip in ips)

    def usable(self, ip: str | None) -> bool:
        """An IP the node may dial or send the mirror to (see the module docstring)."""
        if ip is None:
            return False
        parsed = _parse(ip)
        if parsed.is_unspecified or parsed.is_link_local or parsed.is_multicast:
            return False
        return self.loopback or not parsed.is_loopback

    # -- own addresses ---------------------------------------------------------------------

    def connected(self, peer: bytes, ip: str | None) -> None:
        """An authenticated connection with ``peer`` runs on ``ip``: that is its address now."""
        if not self.usable(ip):
            return
        assert ip is not None
        old = self._ips.get(peer)
        self._ips[peer] = ip
        self._departed.pop(peer, None)
        self._hints.pop(peer, None)  # the connection supersedes what others said
        if old is not None and old != ip and peer in self._addrs:  # it moved: same ports, new IP
            self._addrs[peer] = _on_ip(self._addrs[peer], ip)

    def note(self, peer: bytes, addrs: Iterable[bytes], conn_ip: str | None = None) -> None:
        """What ``peer`` announces about itself (or what we dialled it on): ports kept, each on the
        IP of its connection (``conn_ip``, else the one already known); nothing without one."""
        if conn_ip is not None:
            self.connected(peer, conn_ip)
        ip = self._ips.get(peer)
        if ip is None:
            return
        own = _on_ip(addrs, ip)
        if own:
            self._addrs[peer] = own

    def get(self, peer: bytes) -> tuple[bytes, ...]:
        """The own addresses of ``peer`` (empty when none is vouched), as given to other peers."""
        return self._addrs.get(peer, ())

    def conn_ip(self, peer: bytes) -> str | None:
        return self._ips.get(peer)

    def __contains__(self, peer: bytes) -> bool:
        """True once an own address of ``peer`` is known."""
        return peer in self._addrs

    # -- hints -----------------------------------------------------------------------------

    def hint(self, peer: bytes, addrs: Iterable[bytes]) -> bool:
        """Addresses a third party names for ``peer``: kept to dial it, unless it has its own.
        Returns True if the peer can be dialled (own address or a usable hint)."""
        if peer in self._addrs or peer in self._departed:
            return True
        usable = []
        for a in addrs:
            if addr_port(a) is not None and self.usable(addr_ip(a)):
                usable.append(bytes(a))
                if len(usable) >= HINTS_PER_PEER:
                    break
        if not usable:
            return peer in self._hints
        self._hints[peer] = tuple(usable)
        self._hints.move_to_end(peer)
        while len(self._hints) > MAX_HINTS:
            self._hints.popitem(last=False)
        return True

    def dialable(self, peer: bytes) -> list[bytes]:
        """Addresses to dial ``peer`` on: its own (or recent own), else the hints about it."""
        own = self._addrs.get(peer)
        if own is None and (gone := self._fresh_departed(peer)) is not None:
            own = gone[1]
        return list(own) if own else list(self._hints.get(peer, ()))

    # -- leaving and the mirror ------------------------------------------------------------

    def forget(self, peer: bytes) -> None:
        """``peer`` left the table: drop it, keeping its own address for :data:`DEPARTED_TTL`."""
        ip = self._ips.pop(peer, None)
        addrs = self._addrs.pop(peer, ())
        self._peers.pop(peer, None)
        if ip is not None:
            self._departed[peer] = (ip, addrs, self._clock())
            self._departed.move_to_end(peer)
            while len(self._departed) > MAX_DEPARTED:
                self._departed.popitem(last=False)

    def vouched_ip(self, peer: bytes) -> str | None:
        """The IP on which ``peer``'s id was authenticated (now, or within DEPARTED_TTL)."""
        ip = self._ips.get(peer)
        if ip is None and (gone := self._fresh_departed(peer)) is not None:
            ip = gone[0]
        return ip

    def to_peer(self, pid: bytes) -> Peer | None:
        """A provider as the registry needs it: its vouched IP with the (shared) registry port;
        None when no authenticated connection vouches for an IP of it."""
        ip = self.vouched_ip(pid)
        if ip is None:
            return None
        peer = self._peers.get(pid)
        if peer is None or peer.host != ip:  # cached: base58 encoding costs ~50 us
            peer = Peer(peer_id=ID(pid).to_base58(), host=ip, port=self._port)
            self._peers[pid] = peer
        return peer

    def sizes(self) -> dict[str, int]:
        """Entries per map (tests: the maps are bounded and pruned)."""
        return {"own": len(self._ips), "hints": len(self._hints), "departed": len(self._departed)}

    def _fresh_departed(self, peer: bytes) -> tuple[str, tuple[bytes, ...], float] | None:
        # only reads (the asyncio thread calls to_peer): stale entries leave by MAX_DEPARTED
        gone = self._departed.get(peer)
        return gone if gone is not None and self._clock() - gone[2] <= DEPARTED_TTL else None


def _parse(ip: str) -> _IP:
    parsed = ipaddress.ip_address(ip)
    if isinstance(parsed, ipaddress.IPv6Address) and parsed.ipv4_mapped is not None:
        return parsed.ipv4_mapped  # ::ffff:127.0.0.1 is loopback too
    return parsed


def _on_ip(addrs: Iterable[bytes], ip: str) -> tuple[bytes, ...]:
    """The TCP ports of ``addrs``, each as ``/ip4|ip6/<ip>/tcp/<port>`` (in order, deduplicated)."""
    out: list[bytes] = []
    for a in addrs:
        port = addr_port(a)
        if port is not None and (own := tcp_addr(ip, port)) not in out:
            out.append(own)
            if len(out) >= HINTS_PER_PEER:
                break
    return tuple(out)


def addr_ip(addr: bytes) -> str | None:
    """The IP of a binary multiaddr that starts with ip4 or ip6; None for anything else."""
    if len(addr) >= 5 and addr[0] == 0x04:
        ip: _IP = ipaddress.IPv4Address(addr[1:5])
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
