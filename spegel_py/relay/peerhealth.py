"""What this node has recently learned about its peers: who lacked a key, who misbehaved.

Why: DHT provider records cannot be deleted, so a lookup keeps naming peers that are dead or
that lost the content for up to a record's lifetime (~19 minutes). Asking them again on every
request would cost a dial timeout each time and make containerd wait. Three short-lived
memories fix that: a negative cache of ``(peer, key)`` misses (the peer answered 404 or spoke
nonsense), a set of peers that are down (a dial was refused or timed out: that says the node is
gone, so it is skipped for *every* key, and a pull of a many-layer image pays the dial timeout
once instead of once per layer) and a set of avoided peers (the peer sent bytes that did not
match their digest). All expire on their own, because a miss is a hint, not a fact: the peer may
pull the image a second later. Bounded in size so a flood of keys or peers cannot grow memory.

:class:`PeerReporter` is the one place where what happened with a peer (an answer, an error,
corrupt bytes) becomes an update of these memories; the hedger and the blob stream report
through it.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterable
from typing import TypeVar

from spegel_py.errors import PeerCorruptError, PeerDownError, PeerError, PeerTimeoutError
from spegel_py.routing.base import Peer

_K = TypeVar("_K", bound=Hashable)


class PeerHealth:
    """Negative cache of ``(peer, key)`` misses and timed down- and avoid-lists of peers."""

    def __init__(
        self,
        *,
        miss_ttl: float = 5.0,
        down_ttl: float = 10.0,
        avoid_ttl: float = 60.0,
        max_entries: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """``miss_ttl``: seconds a (peer, key) miss is remembered (short: content may arrive soon).
        ``down_ttl``: seconds a peer whose dial failed is skipped for every key (short: a
        restarting pod is back within seconds, and a success clears it at once).
        ``avoid_ttl``: seconds a peer that sent corrupt bytes is skipped for every key.
        ``max_entries``: bound on remembered misses; the oldest are forgotten first.
        """
        self._miss_ttl = miss_ttl
        self._down_ttl = down_ttl
        self._avoid_ttl = avoid_ttl
        self._max_entries = max_entries
        self._clock = clock
        self._misses: OrderedDict[tuple[str, str], float] = OrderedDict()
        self._avoided: dict[str, float] = {}
        self._down: OrderedDict[str, float] = OrderedDict()
        self._single: OrderedDict[str, float] = OrderedDict()  # keys fetched one provider at a time
        self.misses_total = 0
        self.downs_total = 0
        self.corruptions_total = 0

    @staticmethod
    def _peer_key(peer: Peer) -> str:
        # The peer id alone could be reused by a node on a new address; the address matters too.
        return f"{peer.peer_id}@{peer.host}:{peer.port}"

    def record_miss(self, peer: Peer, key: str) -> None:
        """``peer`` did not serve ``key`` (404, broke off, spoke nonsense): skip it for ``miss_ttl``."""
        self._remember(self._misses, (self._peer_key(peer), key), self._miss_ttl)
        self.misses_total += 1

    def _remember(self, timed: OrderedDict[_K, float], entry: _K, ttl: float) -> None:
        """``entry`` valid for ``ttl`` from now, as the newest; the oldest beyond the bound go."""
        timed.pop(entry, None)
        timed[entry] = self._clock() + ttl
        while len(timed) > self._max_entries:
            timed.popitem(last=False)

    def _active(self, timed: dict[str, float], peer: Peer) -> bool:
        until = timed.get(self._peer_key(peer))
        return until is not None and until > self._clock()

    def record_down(self, peer: Peer) -> None:
        """A dial to ``peer`` was refused or timed out: skip it for every key for ``down_ttl``.

        Bounded like the misses: the map holds at most ``max_entries`` peers.
        """
        self._remember(self._down, self._peer_key(peer), self._down_ttl)
        self.downs_total += 1

    def down(self, peer: Peer) -> bool:
        """True while ``peer`` is skipped because a recent dial to it failed."""
        return self._active(self._down, peer)

    def record_corruption(self, peer: Peer) -> None:
        """``peer`` sent bytes that did not match their digest: avoid it for ``avoid_ttl``."""
        self._avoided[self._peer_key(peer)] = self._clock() + self._avoid_ttl
        self.corruptions_total += 1

    def record_mixed_corruption(self, key: str) -> None:
        """A fetch of ``key`` from several providers at once did not match its digest. The digest
        cannot say which provider lied, so none is avoided (honest peers must not pay for the
        liar); instead ``key`` is fetched from one provider at a time for ``avoid_ttl``, where a
        mismatch names its sender."""
        self._remember(self._single, key, self._avoid_ttl)

    def one_at_a_time(self, key: str) -> bool:
        """True while ``key`` must not be fetched from several providers at once."""
        until = self._single.get(key)
        return until is not None and until > self._clock()

    def record_success(self, peer: Peer, key: str) -> None:
        """``peer`` served ``key`` correctly: forget an earlier miss, and that it was down."""
        self._misses.pop((self._peer_key(peer), key), None)
        self._down.pop(self._peer_key(peer), None)

    def record_disagreement(self, key: str, digests: list[str]) -> None:
        """Providers answered the tag ``key`` with different ``digests``; none is marked, as the
        mirror cannot tell which lied. A hook for observers (the debug page's outcomes)."""

    def usable(self, peer: Peer, key: str) -> bool:
        """False while ``peer`` is avoided, down, or recently missed ``key``."""
        now = self._clock()
        peer_key = self._peer_key(peer)
        for timed in (self._avoided, self._down):
            until = timed.get(peer_key)
            if until is not None:
                if until > now:
                    return False
                del timed[peer_key]
        until = self._misses.get((peer_key, key))
        if until is not None:
            if until > now:
                return False
            del self._misses[(peer_key, key)]
        return True

    def avoided(self, peer: Peer) -> bool:
        """True while ``peer`` is being avoided for having sent corrupt bytes."""
        return self._active(self._avoided, peer)


class PeerReporter:
    """Turns what happened with a peer into :class:`PeerHealth` updates, the same way everywhere.

    A failed dial (:class:`PeerDownError`) marks the peer down for every key; corrupt bytes
    (:class:`PeerCorruptError`) make it avoided; any other :class:`PeerError` (404, broke off,
    nonsense, a body below the throughput floor: :class:`~spegel_py.errors.PeerSlowError`)
    records a (peer, key) miss; a slow peer (:class:`PeerTimeoutError`) is only left behind,
    because slowness under load says nothing about whether it holds the content.
    """

    def __init__(self, health: PeerHealth) -> None:
        self._health = health

    def served(self, peer: Peer, key: str) -> None:
        """``peer`` answered well for ``key``."""
        self._health.record_success(peer, key)

    def failed(self, peer: Peer, key: str, exc: BaseException) -> None:
        """``peer`` failed ``key`` with ``exc``; anything but a :class:`PeerError` is raised again."""
        if isinstance(exc, PeerCorruptError):
            self._health.record_corruption(peer)
        elif isinstance(exc, PeerTimeoutError):
            pass
        elif isinstance(exc, PeerDownError):
            self._health.record_down(peer)
        elif isinstance(exc, PeerError):
            self._health.record_miss(peer, key)
        else:
            raise exc

    def corrupted(self, peers: Iterable[Peer]) -> None:
        """Bytes from ``peers`` (together) did not match their digest: avoid each of them."""
        for peer in peers:
            self._health.record_corruption(peer)

    def corrupted_together(self, key: str, peers: list[Peer]) -> None:
        """A multi-provider fetch of ``key`` from ``peers`` did not match its digest: avoid the
        sender if there was only one, else fetch ``key`` one provider at a time for a while."""
        if len(peers) == 1:
            self.corrupted(peers)
        else:
            self._health.record_mixed_corruption(key)

    def one_at_a_time(self, key: str) -> bool:
        """True while ``key`` must be fetched from one provider at a time (:meth:`corrupted_together`)."""
        return self._health.one_at_a_time(key)
