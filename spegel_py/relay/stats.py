"""The relay's counters, and the only code that changes them.

The metrics layer reads these plain attributes at scrape time (``app.py``), so this module
knows nothing about Prometheus; the mirror and its blob streams report events through the
methods, never by writing the attributes.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Literal


@dataclass(slots=True)
class RelayStats:
    """Counters of the relay (read, never reset); changed only through the methods below."""

    requests: int = 0
    served: int = 0
    not_found: int = 0
    hedged: int = 0  # extra parallel attempts started beyond the first
    resumed: int = 0
    corrupt: int = 0
    aborted: int = 0  # client responses cut mid-body (no provider left, corruption, range cut, deadline)
    bytes_relayed: int = 0  # body bytes sent to clients from peers (the served bytes, source=peer)
    tag_disagreements: int = 0  # tags not resolved because providers answered different digests
    last_success: float = 0.0  # wall-clock time of the last request served from a peer
    # Multi-provider fetches (relay/multistream.py) by outcome: complete, failed (client cut).
    multi_fetches: dict[str, int] = field(default_factory=lambda: {"complete": 0, "failed": 0})
    # Their ranges: ok (fetched whole by the first provider that took it), retried (continued
    # by another provider after one failed, stalled, fell below the floor or was too slow).
    multi_ranges: dict[str, int] = field(default_factory=lambda: {"ok": 0, "retried": 0})

    def request_started(self) -> None:
        self.requests += 1

    def request_finished(self, *, served: bool) -> None:
        """A request found a peer's answer (``served``) or ended in a 404."""
        if served:
            self.served += 1
            self.last_success = time.time()
        else:
            self.not_found += 1

    def attempts_raced(self, *, started: int, corrupt: int) -> None:
        """One race over providers ended: ``started`` attempts, ``corrupt`` of them caught lying."""
        self.hedged += max(0, started - 1)
        self.corrupt += corrupt

    def relayed(self, nbytes: int) -> None:
        """``nbytes`` of body went to a client (once per response, never per chunk)."""
        self.bytes_relayed += nbytes

    def stream_resumed(self) -> None:
        self.resumed += 1

    def resume_failed(self) -> None:
        """No provider could continue a broken stream: the client response was cut."""
        self.aborted += 1

    def range_cut(self) -> None:
        """A peer broke off a ranged body (ranges are not resumed): the client response was cut."""
        self.aborted += 1

    def deadline_cut(self) -> None:
        """A body outlived its size-derived deadline (relay/floor.py): the client response was cut."""
        self.aborted += 1

    def stream_corrupt(self) -> None:
        """A stream's bytes did not match its digest: the client response was cut."""
        self.corrupt += 1
        self.aborted += 1

    def tag_disagreement(self) -> None:
        """Providers answered a tag with different digests: the client got a 404."""
        self.tag_disagreements += 1

    def multi_fetch(self, outcome: Literal["complete", "failed"]) -> None:
        """A multi-provider fetch ended: the client got the whole verified body, or was cut."""
        self.multi_fetches[outcome] += 1

    def multi_range(self, outcome: Literal["ok", "retried"]) -> None:
        """A range of a multi-provider fetch was fetched whole, or was asked of another provider."""
        self.multi_ranges[outcome] += 1
