"""The one seam between local serving and whatever serves a local miss (the peer relay).

The server answers from local content; when content is missing locally and the request did not
come from a peer (no ``X-Spegel-Mirrored: true``), it hands the request to a
:class:`MissHandler` if one is configured. The relay's ``Mirror`` implements it structurally, so
local serving never imports the relay; ``app.py`` plugs them together.
"""

from __future__ import annotations

from typing import Protocol

from aiohttp import web

from spegel_py.oci.paths import DistributionPath


class MissHandler(Protocol):
    """Serves a request for content this node lacks."""

    async def serve(self, request: web.Request, path: DistributionPath, ns: str | None) -> web.StreamResponse:
        """Answer ``request`` (GET or HEAD), or return an OCI 404 promptly (within ~3 s) if it cannot.

        ``path`` is validated and names a blob or manifest; ``ns`` is the upstream registry
        (``None`` when the client sent none).
        """
        ...
