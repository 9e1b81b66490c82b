"""What the mirror is asked for: one blob or manifest, by digest or tag, as the client asked.

The mirror's own input, shared by the attempts that ask peers (:mod:`.attempt`) and by the
blob stream that asks them again with ``Range`` to resume (:mod:`.stream`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from spegel_py.httpx.ranges import RangeSpec, parse_range_spec


@dataclass(frozen=True, slots=True)
class MirrorRequest:
    """What the server asks the mirror for; ``registry`` is containerd's ``ns`` parameter."""

    registry: str | None  # None when the client sent no ns (skopeo, podman): digests only
    name: str
    reference: str  # a tag or a digest string
    kind: Literal["manifests", "blobs"]
    method: Literal["GET", "HEAD"] = "GET"
    range: str | None = None  # the client's Range header, verbatim
    accept: str | None = None  # the client's Accept header(s), combined

    @property
    def peer_range(self) -> RangeSpec | None:
        """The range to ask peers for: the client's single ``bytes=`` range of a blob GET, else
        ``None`` (the whole representation is fetched, and verified)."""
        if self.kind != "blobs" or self.method != "GET":
            return None
        return parse_range_spec(self.range)

    @property
    def target(self) -> str:
        """The request target to send a peer: the same path, with the same ``ns``."""
        ns = f"?ns={self.registry}" if self.registry else ""
        return f"/v2/{self.name}/{self.kind}/{self.reference}{ns}"
