"""The relay's tuning, in one frozen dataclass that the mirror, its attempts and streams share.

``app.py`` fills it from the command line (``spegel_py/settings.py`` holds the flags); tests and
benchmarks build it directly. Every time is in seconds, every size in bytes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class MirrorSettings:
    """Mirror tuning; every time is in seconds."""

    resolve_tags: bool = True  # let peers resolve tags at all
    resolve_latest: bool = False  # ... including ``:latest`` (off: it moves the most)
    lookup_limit: int = 4  # providers asked from the router per key
    # Wait this long for the router's first (or, once all failed, next) provider; Go Spegel's
    # --mirror-resolve-timeout defaults to 20ms too.
    first_provider_timeout: float = 0.02
    hedge_delay: float = 0.03  # start another peer if none answered within this (~p80 on a LAN)
    dial_timeout: float = 0.2  # TCP connect to a peer
    # From request sent to response head, per peer. Slow peers are hedged around, not dropped:
    # by default an attempt may take the whole deadline (a busy peer is still a good peer).
    first_byte_timeout: float = 2.5
    deadline: float = 2.5  # whole answer for a manifest/HEAD, head of a blob (containerd: 3 s cap)
    # A tag is asked of every provider and used only if their answers agree (relay/tags.py);
    # answers later than this do not count (capped at ``deadline``), so a silent provider costs
    # at most this much. Honest peers answer a manifest in milliseconds on a LAN.
    tag_vote_window: float = 2.0
    stall_timeout: float = 3.0  # a blob stream silent this long is resumed elsewhere
    # The floor under a relayed body (relay/floor.py; 0 turns floor and deadline off): each
    # ``throughput_window`` seconds spent waiting for a peer must bring min_throughput x window
    # bytes, else the stream resumes elsewhere (or the client is cut). 256 KiB/s (~2 Mbit/s) is
    # far above a peer that drips (issue 11: a byte every 2.5 s) and far below an honest stream
    # sharing a link or a loaded relay: at 1 MiB/s, 32 relayed streams on this 2-core machine
    # under a load average of 40-70 fell below the floor and were cut (bench/relay_bench.py).
    min_throughput: int = 256 << 10  # bytes per second
    throughput_window: float = 5.0
    # The whole response must end within deadline_allowance + size / min_throughput (wall time,
    # client writes and resumes included); past it the client is cut and retries.
    deadline_allowance: float = 10.0
    resume_deadline: float = 3.0  # bound on finding a provider to resume from
    max_buffered: int = 4 * 1024 * 1024  # manifests larger than this are refused
    small_blob: int = 64 * 1024  # blobs up to this size are verified before anything is sent
    buffer_timeout: float = 1.0  # wait for a relay buffer before refusing (404 -> upstream)
    # Threads hashing relayed blobs next to the event loop (0: hash on the loop). sha256 is two
    # thirds of the relay's CPU (py-spy), so one thread lets a relay use a second core: with a
    # peer behind a 10 Gbit/s link, relay 0.87-0.92x a direct GET (0.72-0.77x hashing on the
    # loop; bench/relay_bench.py --peer-rate 10gbit, docs/benchmarks.md). It costs ~10 % more
    # CPU per GiB (hand-offs), so a node short of CPU can set 0 (--relay-hash-threads).
    hash_threads: int = 1
    # One large blob from several providers at once (relay/multistream.py; issue 12). A blob of at
    # least ``multi_peer_min_size`` bytes, fetched whole while a second provider is known within
    # ``multi_peer_wait``, is cut into ranges of ``multi_peer_range_size`` bytes (rounded up to whole
    # relay buffers) asked of up to ``multi_peer_providers`` providers in parallel. The ranges
    # fetched ahead of the client wait in at most ``multi_peer_buffers`` buffers of the relay
    # pool, taken only while a quarter of the pool stays free for other streams.
    multi_peer_fetch: bool = True
    multi_peer_min_size: int = 64 << 20
    multi_peer_providers: int = 4
    multi_peer_range_size: int = 4 << 20
    multi_peer_buffers: int = 32
    multi_peer_wait: float = 0.05

    @property
    def providers_wanted(self) -> int:
        """Providers asked of the router per key: ``lookup_limit``, or as many as one
        multi-provider fetch reads from, if more."""
        return max(self.lookup_limit, self.multi_peer_providers if self.multi_peer_fetch else 0)


def multi_peer_flags(source: object) -> dict[str, Any]:
    """The multi-peer fields, read from ``source`` (the command line's settings: same names)."""
    return {name: getattr(source, name) for name in MULTI_PEER_FLAGS}


MULTI_PEER_FLAGS = (
    "multi_peer_fetch",
    "multi_peer_min_size",
    "multi_peer_providers",
    "multi_peer_range_size",
    "multi_peer_buffers",
)
