"""The pull rendezvous on libp2p: ``/spegel-py/claim/1.0.0``, answered by the peer closest to a key.

:mod:`spegel_py.routing.claims` says what a claim is; this module carries it between nodes. The
rendezvous of a key is the node whose kad id is closest to the key's (the DHT's distance,
:mod:`.keys`), this node included, among the peers of its routing table and those an
iterative FIND_NODE lookup of the key finds (one round when the table already knows the whole
cluster). A claim travels on a stream of its
own: one request (the key and, maybe, a failed winner's peer id) and one reply (won or not,
the winner's peer id and IP, the lease left), each a JSON object in a varint-length frame of
at most ``MAX_MESSAGE`` bytes. The claimant is the peer at the other end of the authenticated
connection, never a name in the request, and its IP is the one that connection vouched for
(:mod:`.addrs`), so a node can only claim for itself. Go Spegel nodes do not speak the protocol:
a node that refuses it is passed over as a rendezvous for ``REFUSED_TTL`` (the first claim sent
to it fails, a :class:`~spegel_py.errors.RoutingError`, and that mirror goes upstream), so in a
mixed cluster the rendezvous of a key is the closest spegel-py node.

:class:`ClaimService` runs in the trio thread with the node's host, table and address book
(:mod:`.side`); :class:`Libp2pRendezvous` is its asyncio face, an implementation of
:class:`~spegel_py.routing.claims.Rendezvous` on a :class:`~.router.Libp2pRouter`.
"""

from __future__ import annotations

import json
import logging

import trio
from libp2p.abc import INetStream
from libp2p.custom_types import TProtocol
from libp2p.peer.id import ID

from spegel_py.errors import RoutingError
from spegel_py.routing.base import Peer
from spegel_py.routing.claims import CLAIM_LEASE, ClaimBook, Verdict
from spegel_py.routing.libp2p import wire
from spegel_py.routing.libp2p.dht import DhtNode
from spegel_py.routing.libp2p.keys import kad_id, multihash
from spegel_py.routing.libp2p.router import Libp2pRouter
from spegel_py.routing.libp2p.side import NodeSide
from spegel_py.routing.libp2p.streams import reset_quietly

log = logging.getLogger(__name__)

PROTOCOL = TProtocol("/spegel-py/claim/1.0.0")
MAX_MESSAGE = 1024  # bytes of one request or reply (a key and a peer id are ~120)
MAX_INBOUND = 256  # claim streams served at once; more are reset (a claim takes milliseconds)
# Seconds a peer that refused the protocol (a Go Spegel node, or a spegel-py one still starting)
# is passed over as a rendezvous. Every spegel-py node passes over the same peers, so they still
# agree on the rendezvous of a key, which is the closest peer that speaks the protocol.
REFUSED_TTL = 60.0
# Seconds a peer that could not be dialled is passed over (py-libp2p retries a refused dial for
# ~0.7 s, and the DHT drops a dead peer from its table only after a few failed requests).
UNREACHABLE_TTL = 10.0


class ClaimService:
    """Answers claims for the keys this node is closest to, and sends this node's claims."""

    def __init__(self, side: NodeSide, *, registry_port: int, lease: float, timeout: float) -> None:
        """``timeout``: seconds one claim exchange (or one served stream) may take."""
        self._side = side
        self._self_id = side.host.get_id().to_bytes()
        self._b58 = side.host.get_id().to_base58()
        self._port = registry_port
        self._timeout = timeout
        self.book = ClaimBook(lease=lease)
        self._inbound = 0
        self._passed_over: dict[bytes, float] = {}  # peer -> until (trio time): refused or unreachable

    def register(self) -> None:
        self._side.host.set_stream_handler(PROTOCOL, self._handle)

    # -- the rendezvous side ---------------------------------------------------------------

    async def _handle(self, stream: INetStream) -> None:
        remote = stream.muxed_conn.peer_id
        if self._inbound >= MAX_INBOUND:
            await reset_quietly(stream)
            return
        self._inbound += 1
        answered = False
        try:
            with trio.move_on_after(self._timeout):
                request = await _read_one(stream)
                key, failed = request.get("key"), request.get("failed")
                if not isinstance(key, str) or not (failed is None or isinstance(failed, str)):
                    raise RoutingError("malformed claim")
                verdict = self.book.decide(key, self._claimant(remote.to_bytes()), failed=failed)
                await stream.write(_encode(_reply(verdict)))
                await stream.close()
                answered = True
        except Exception as exc:  # EOF, reset, bad bytes: the claimant goes upstream on its own
            log.debug("claim stream from %s failed: %r", remote, exc)
        finally:
            self._inbound -= 1
            if not answered:
                await reset_quietly(stream)

    def _claimant(self, pid: bytes) -> Peer:
        peer = self._side.book.to_peer(pid)
        return peer if peer is not None else Peer(ID(pid).to_base58(), "", self._port)  # "": no address

    def _me(self) -> Peer:
        return Peer(self._b58, self._side.source_ip() or "", self._port)

    # -- the claimant side -----------------------------------------------------------------

    async def claim(self, key: str, failed: str | None) -> Verdict:
        """Ask the rendezvous of ``key`` (maybe this node); raises RoutingError within ``timeout``."""
        try:
            with trio.fail_after(self._timeout):
                rendezvous = await self._rendezvous(multihash(key))
                if rendezvous == self._self_id:
                    return self.book.decide(key, self._me(), failed=failed)
                return await self._ask(rendezvous, key, failed)
        except trio.TooSlowError as exc:
            raise RoutingError(f"no claim verdict for {key} within {self._timeout}s") from exc

    async def _rendezvous(self, mh: bytes) -> bytes:
        target = kad_id(mh)
        table = self._side.table
        # The lookup finds peers closer than any this node knows (a young node's table may hold
        # only a few peers without a full bucket, so "complete" is no proof), and it returns only
        # peers that answered: a dead node, still in the table until it fails a few times, is
        # passed over at once instead of costing every claim a dial. The lookup gets half the
        # claim's time (a peer that never answers must not cost the whole claim); if it runs
        # out, the table decides.
        near = [e.id for e in table.closest(target, table.k)]
        with trio.move_on_after(self._timeout / 2):
            answered = await self._side.closest(mh)
            # a peer whose answer was lost under load is still a candidate while it is connected
            # (a dead node's connections closed with it)
            connections = self._side.host.get_network().connections
            near = answered + [pid for pid in near if connections.get(ID(pid))]
        now = trio.current_time()
        speaking = [pid for pid in near if self._passed_over.get(pid, 0.0) <= now]
        return min([self._self_id, *speaking], key=lambda pid: kad_id(pid) ^ target)

    async def _ask(self, rendezvous: bytes, key: str, failed: str | None) -> Verdict:
        try:
            await self._side.connect(rendezvous)
        except Exception as exc:  # dead or unreachable: passed over until the DHT drops it
            self._passed_over[rendezvous] = trio.current_time() + UNREACHABLE_TTL
            raise RoutingError(f"rendezvous {ID(rendezvous)} cannot be reached: {exc}") from exc
        try:
            stream = await self._side.host.new_stream(ID(rendezvous), [PROTOCOL])
        except Exception as exc:  # py-libp2p raises its own types when the protocol is refused
            self._passed_over[rendezvous] = trio.current_time() + REFUSED_TTL
            raise RoutingError(f"rendezvous {ID(rendezvous)} does not speak {PROTOCOL}: {exc}") from exc
        try:
            await stream.write(_encode({"key": key, "failed": failed}))
            reply = await _read_one(stream)
        except Exception as exc:
            raise RoutingError(f"rendezvous {ID(rendezvous)} failed: {exc!r}") from exc
        finally:
            await reset_quietly(stream)
        return self._verdict(rendezvous, reply)

    def _verdict(self, rendezvous: bytes, reply: dict[str, object]) -> Verdict:
        won, winner, ip = reply.get("won"), reply.get("winner"), reply.get("ip")
        left = reply.get("expires_in")
        if not isinstance(won, bool) or not isinstance(left, int | float):
            raise RoutingError("malformed claim verdict")
        peer = None
        if isinstance(winner, str) and not won:
            if winner == ID(rendezvous).to_base58():  # the rendezvous itself: our connection's IP
                ip = self._side.book.vouched_ip(rendezvous) or ip
            if isinstance(ip, str) and ip:
                peer = Peer(winner, ip, self._port)
        return Verdict(won, self._me() if won else peer, float(left))


class Libp2pRendezvous:
    """:class:`~spegel_py.routing.claims.Rendezvous` on a running :class:`Libp2pRouter`."""

    def __init__(
        self, router: Libp2pRouter, *, registry_port: int, lease: float = CLAIM_LEASE, timeout: float = 2.0
    ) -> None:
        """``registry_port``: every node's registry port (as the router assumes). ``lease``:
        seconds a claim this node grants holds. ``timeout``: seconds a claim may take."""
        self._router = router
        self._port, self._lease, self._timeout = registry_port, lease, timeout
        self._service: ClaimService | None = None

    async def start(self) -> None:
        """Serve the protocol on the router's host (after the router started)."""

        async def register(node: DhtNode) -> None:
            self._service = ClaimService(
                node.side(), registry_port=self._port, lease=self._lease, timeout=self._timeout
            )
            self._service.register()

        await self._router.in_node(register)

    async def claim(self, key: str, *, failed: str | None = None) -> Verdict:
        service = self._service
        if service is None:
            raise RoutingError("the claim protocol is not started")
        verdicts: list[Verdict] = []

        async def run(_node: DhtNode) -> None:
            verdicts.append(await service.claim(key, failed))

        await self._router.in_node(run)
        return verdicts[0]


async def _read_one(stream: INetStream) -> dict[str, object]:
    deframer = wire.Deframer(MAX_MESSAGE)
    while True:
        data = await stream.read(MAX_MESSAGE)
        if not data:
            raise RoutingError("claim stream ended before a message")
        for body in deframer.feed(data):
            message = json.loads(body)
            if not isinstance(message, dict):
                raise RoutingError("a claim message is a JSON object")
            return message


def _encode(message: dict[str, object]) -> bytes:
    return wire.frame(json.dumps(message, separators=(",", ":")).encode())


def _reply(verdict: Verdict) -> dict[str, object]:
    winner = verdict.winner
    return {
        "won": verdict.won,
        "winner": None if winner is None else winner.peer_id,
        "ip": None if winner is None or not winner.host else winner.host,
        "expires_in": round(verdict.expires_in, 3),
    }
