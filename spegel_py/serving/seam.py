"""The seams the registry server exposes to what plugs in later (mirroring from peers).

The server answers from local content; when content is missing locally and the request did not
come from a peer (no ``X-Spegel-Mirrored: true``), it hands the request to a :class:`Mirror` if
one is configured. Keeping this a Protocol keeps the server free of routing and relay code.
"""

from __future__ import annotations

from typing import Protocol

from aiohttp import web

from spegel_py.oci.paths import DistributionPath

MIRRORED_HEADER = "X-Spegel-Mirrored"


class Mirror(Protocol):
    """Serves a request for content this node lacks, from peers."""

    async def serve(self, request: web.Request, path: DistributionPath, ns: str | None) -> web.StreamResponse:
        """Answer ``request`` from peers, or return an OCI 404 promptly (within ~3 s) if none can.

        ``path`` is validated; ``ns`` is the upstream registry (``None`` when the client sent none).
        """
        ...
