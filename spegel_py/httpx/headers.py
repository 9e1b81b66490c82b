"""Header names both HTTP paths use, each spelled once.

``X-Spegel-Mirrored: true`` marks a request one node sends another: the receiver answers from
its local content only and never relays it onwards, so two nodes that both lack a blob cannot
bounce a request between them.
"""

from __future__ import annotations

from collections.abc import Mapping

MIRRORED_HEADER = "X-Spegel-Mirrored"
DIGEST_HEADER = "Docker-Content-Digest"  # the digest of the body (or of the whole blob, for a 206)


def from_peer(headers: Mapping[str, str]) -> bool:
    """True when the request came from a peer's relay (it must not be relayed again)."""
    return headers.get(MIRRORED_HEADER, "").lower() == "true"
