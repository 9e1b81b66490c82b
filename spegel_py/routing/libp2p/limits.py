"""The bounds that keep one hostile peer from exhausting a node: records, streams, send buffers.

Any host that reaches the router port can open streams, send records, or stop reading what we
send. These dataclasses say how much of this node one peer, and all peers together, may take;
:class:`StreamGate` admits inbound DHT streams within them. The record bounds are enforced by
:mod:`.providers`, the wire bounds (entries per message, message sizes) by :mod:`.wire`, the
send bounds by :class:`~.streams.ProvideSender`, streams not yet negotiated by :mod:`.host`.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class RecordLimits:
    """Bounds of the record store. Measured (docs/benchmarks.md): 50,000 records take ~13 MiB,
    so ~270 bytes each.

    ``total``: records held at most (default 200,000, ~54 MiB: a fifth of the chart's 256 MiB
    memory limit, and 4x the 50,000 records a node of a 10-node cluster with 5,000 keys per node
    holds; records land on the k = 20 closest nodes, so a node holds ~20/N of a big cluster's).
    ``per_peer``: records one providing peer may hold (default 60,000: 12x the 5,000 keys of a
    node with many images, so an honest node is never refused; one peer fills at most 30 % of
    ``total``, so it takes four to reach it). Past ``total``, expired records go first, then the
    most prolific peer's oldest ones (a flood's, not an honest node's), ``total // 16`` at once
    so the O(records) pass that finds them runs once per 12,500 records received at the cap; if
    no peer holds that many (a flood spread over thousands of peer ids), the oldest records of
    any peer go. Oldest-first alone would let one flood push out every honest record.
    """

    total: int = 200_000
    per_peer: int = 60_000
    # providers kept per key (more are refused: key_limit). A key's records live on its k closest
    # nodes, and every node holding the blob provides it, so a popular layer in a big cluster has
    # hundreds of honest providers; a lookup needs a few (wire.MAX_PROVIDERS are read per reply),
    # and every reply we give stays small.
    per_key: int = 256

    @property
    def evict(self) -> int:
        """Records dropped at once when ``total`` is passed."""
        return max(1, self.total // 16)


@dataclass(frozen=True, slots=True)
class StreamLimits:
    """Concurrent inbound ``/spegel/kad/1.0.0`` streams; more are reset as they arrive.

    ``per_peer`` (default 8): a spegel-py peer keeps 5 open to each node (one provide stream,
    up to 4 request streams), Go Spegel one or two, js-libp2p one per request in flight.
    ``total`` (default 1024): 8 for each of 128 peers, twice the ~64 router connections a node
    keeps (conns.py; connections above it are closed within a maintenance tick). Each admitted
    stream buffers at most :data:`~.wire.MAX_REQUEST` bytes (16 KiB), 16 MiB for all.
    """

    per_peer: int = 8
    total: int = 1024


@dataclass(frozen=True, slots=True)
class SendLimits:
    """What a peer that stops reading may cost: our ADD_PROVIDER batches queued for it.

    ``max_pending`` (bytes, default 16 MiB: ~200,000 records, 40x the 5,000 keys of a node with
    many images): queued batches past it are dropped, and everything the peer should hold is
    queued again once it reads again. ``stall_timeout`` (seconds, default 30): a write that
    makes no progress for that long (the peer's receive window stays full) disconnects the peer
    and drops its queue; it gets our records again when it reconnects (or at the reprovide).
    """

    max_pending: int = 16 << 20
    stall_timeout: float = 30.0


@dataclass(frozen=True, slots=True)
class Limits:
    """Every bound the DHT node applies to what peers send it, or fail to read."""

    records: RecordLimits = field(default_factory=RecordLimits)
    streams: StreamLimits = field(default_factory=StreamLimits)
    sends: SendLimits = field(default_factory=SendLimits)


class StreamGate:
    """Counts the inbound streams being served, per peer and in total (one trio thread)."""

    def __init__(self, limits: StreamLimits) -> None:
        self._limits = limits
        self._open: dict[bytes, int] = {}
        self._total = 0
        self.refused = 0  # inbound streams reset because a bound was reached
        self.refused_total = 0  # ... of them, because the node's total was reached

    def enter(self, peer: bytes) -> bool:
        """Admit one more stream of ``peer`` (then :meth:`leave` when it ends), or count a refusal."""
        held = self._open.get(peer, 0)
        if held >= self._limits.per_peer or self._total >= self._limits.total:
            self.refused += 1
            self.refused_total += held < self._limits.per_peer
            return False
        self._open[peer] = held + 1
        self._total += 1
        return True

    def leave(self, peer: bytes) -> None:
        held = self._open[peer] - 1
        if held:
            self._open[peer] = held
        else:
            del self._open[peer]
        self._total -= 1

    def refusals(self) -> dict[str, int]:
        """Streams refused: ``peer_limit`` (the peer held its limit), ``node_limit`` (the node)."""
        return {"peer_limit": self.refused - self.refused_total, "node_limit": self.refused_total}

    def open(self, peer: bytes | None = None) -> int:
        """Streams being served: of ``peer``, or in total."""
        return self._total if peer is None else self._open.get(peer, 0)
