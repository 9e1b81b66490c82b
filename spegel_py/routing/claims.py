"""Pull coordination: which node fetches a blob from upstream when several miss it at once.

When the mirrors of several nodes miss the same blob together (a rollout), each asks the
rendezvous of the blob's key for a claim (issue 12). The rendezvous is the node closest to the
key, the same rule that places DHT records, found by the same lookup, so every node asks the
same one. That node keeps a :class:`ClaimBook`: the first claimant of a key wins (its mirror answers
404 and its containerd goes upstream), the others are told who won and wait a bounded time to
stream from it. A claim is a lease: it expires after ``lease`` seconds, so a winner that died or
never started costs a later claimant at most that long; and a waiter that finds the winner
gone names it (``failed``), which hands the claim over at once.

Nodes that disagree on the closest peer (a node that has not yet learned of a peer closer to
the key: it just joined, or answers of its lookup were lost) ask different rendezvous and each
may win: a claim is an optimisation, never a lock. The cost is one more
upstream copy of that blob, never a wrong byte or a longer wait: every waiter's wait is bounded
by its own settings, and a rendezvous that cannot be asked means "go upstream" (a 404, as
without coordination). A restarted rendezvous forgets its claims, with the same cost.

Implementations of :class:`Rendezvous`: :mod:`.memoryclaims` (tests) and
:mod:`spegel_py.routing.libp2p.claim` (``/spegel-py/claim/1.0.0`` on the libp2p host, a
protocol Go Spegel nodes do not speak, so they never take part).
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from spegel_py.routing.base import Peer

CLAIM_LEASE = 10.0  # seconds a claim holds without its winner being named as failed
MAX_CLAIMS = 10_000  # claims a rendezvous keeps at most (the oldest go first)


@dataclass(frozen=True, slots=True)
class Verdict:
    """A rendezvous's answer to a claim.

    ``won``: the claimant fetches from upstream. Otherwise ``winner`` is the node that does (None
    when the rendezvous knows no address for it) and ``expires_in`` the seconds its claim has
    left: waiting beyond that is pointless, the claim will go to the next claimant.
    """

    won: bool
    winner: Peer | None
    expires_in: float


@runtime_checkable
class Rendezvous(Protocol):
    """Asks the rendezvous of a key which node fetches it from upstream."""

    async def claim(self, key: str, *, failed: str | None = None) -> Verdict:
        """Claim ``key`` for this node; ``failed``: the peer id of a winner this node found gone
        (its claim, if it still holds one, passes to this node).

        Raises :class:`~spegel_py.errors.RoutingError` when no rendezvous answered within the
        implementation's bound (the caller goes upstream, as without coordination).
        """
        ...


@dataclass(slots=True)
class _Claim:
    holder: Peer
    expires: float


class ClaimBook:
    """The claims one rendezvous holds: per key, the winner and when its lease ends."""

    def __init__(
        self,
        *,
        lease: float = CLAIM_LEASE,
        max_claims: int = MAX_CLAIMS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """``lease``: seconds a claim holds (expired claims are dropped as new ones come).
        ``max_claims``: claims kept at most; past it the oldest is dropped (its key is then won
        again by the next claimant)."""
        self._lease = lease
        self._max = max_claims
        self._clock = clock
        self._claims: OrderedDict[str, _Claim] = OrderedDict()

    def __len__(self) -> int:
        return len(self._claims)

    def decide(self, key: str, claimant: Peer, *, failed: str | None = None) -> Verdict:
        """``claimant`` wins ``key`` unless another node holds a live claim on it (and is not the
        ``failed`` one); asking again as the winner renews the lease."""
        now = self._clock()
        claims = self._claims
        while claims and next(iter(claims.values())).expires <= now:  # in grant order: oldest first
            claims.popitem(last=False)
        held = claims.get(key)
        if held is not None and held.expires > now and held.holder.peer_id not in (claimant.peer_id, failed):
            return Verdict(False, held.holder, held.expires - now)
        claims.pop(key, None)
        claims[key] = _Claim(claimant, now + self._lease)  # last: claims stay in expiry order
        while len(claims) > self._max:
            claims.popitem(last=False)
        return Verdict(True, claimant, self._lease)
