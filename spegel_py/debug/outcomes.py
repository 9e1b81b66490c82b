"""Recent mirror outcomes for ``/debug/web``, composed around the mirror without changing it.

The mirror reports each request through ``on_result(registry, served)`` (the metrics hook), which
says nothing of the key, the peer that answered, the bytes or the time taken. Three wrappers
fill that in, tied together per request by a context variable that :class:`RecordingMirror`
sets around each ``serve`` call (what the mirror does for a request runs in the handler's task
or in tasks it starts, which inherit the variable):

- :func:`recording_hook` chains the metrics hook and notes whether the request was served;
- :class:`RecordingHealth`, the mirror's :class:`PeerHealth`, notes each peer the hedger
  accepted (``record_success``): the one that answered, and any a broken blob stream resumed from;
  and a tag the providers disagreed on (``record_disagreement``);
- :class:`RecordingMirror`, the server's :class:`~spegel_py.serving.seam.MissHandler`, times the
  request, reads the body size from its response and adds a :class:`MirrorOutcome`.

``app.py`` builds them only when ``--debug-web-enabled`` is set.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from contextvars import ContextVar
from dataclasses import dataclass, field

from aiohttp import web

from spegel_py.debug.web import MirrorOutcome, RecentOutcomes
from spegel_py.oci.paths import DistributionPath
from spegel_py.relay.peerhealth import PeerHealth
from spegel_py.routing.base import Peer
from spegel_py.serving.seam import MissHandler


@dataclass(slots=True)
class _Pending:
    """What is known so far of the request being mirrored."""

    served: bool | None = None  # the mirror's verdict; None until the hook ran
    peers: list[str] = field(default_factory=list)  # peer ids accepted, in order
    disagreed: bool = False  # providers answered the tag with different digests


_current: ContextVar[_Pending | None] = ContextVar("spegel_mirror_outcome", default=None)


def recording_hook(then: Callable[[str, bool], None] | None = None) -> Callable[[str, bool], None]:
    """An ``on_result`` hook for the Mirror that notes the verdict, then calls ``then``."""

    def hook(registry: str, served: bool) -> None:
        pending = _current.get()
        if pending is not None:
            pending.served = served
        if then is not None:
            then(registry, served)

    return hook


class RecordingHealth(PeerHealth):
    """:class:`PeerHealth` that also notes, for the request being recorded, who served it."""

    def record_success(self, peer: Peer, key: str) -> None:
        super().record_success(peer, key)
        pending = _current.get()
        if pending is not None and peer.peer_id not in pending.peers:
            pending.peers.append(peer.peer_id)

    def record_disagreement(self, key: str, digests: list[str]) -> None:
        super().record_disagreement(key, digests)
        pending = _current.get()
        if pending is not None:
            pending.disagreed = True


class RecordingMirror:
    """The server's MissHandler around ``mirror``: every request becomes a :class:`MirrorOutcome`.

    Results: ``hit`` (served by a peer), ``miss`` (no peer could: a 404), ``disagreement`` (a 404:
    providers answered the tag with different digests), ``aborted`` (served, but
    the client connection was dropped before the body ended: a peer broke off with no provider
    left, corrupt bytes, or the client left), ``error`` (the mirror raised before its verdict).
    ``bytes`` is the body promised to the client for a complete GET, else 0.
    """

    def __init__(
        self, mirror: MissHandler, outcomes: RecentOutcomes, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._mirror = mirror
        self._outcomes = outcomes
        self._clock = clock

    async def serve(self, request: web.Request, path: DistributionPath, ns: str | None) -> web.StreamResponse:
        pending = _Pending()
        token = _current.set(pending)
        started = self._clock()
        response: web.StreamResponse | None = None
        try:
            response = await self._mirror.serve(request, path, ns)
            return response
        finally:
            _current.reset(token)
            result = _result(request, pending, response)
            size = response.content_length if response is not None else None
            body = (size or 0) if result == "hit" and request.method == "GET" else 0
            key = str(path.digest) if path.digest is not None else f"{ns}/{path.name}:{path.tag}"
            peer = ", ".join(pending.peers)
            self._outcomes.add(MirrorOutcome(key, peer, result, body, self._clock() - started))


def _result(request: web.Request, pending: _Pending, response: web.StreamResponse | None) -> str:
    if pending.served is False:
        return "disagreement" if pending.disagreed else "miss"
    if response is None:
        return "aborted" if pending.served else "error"
    if pending.served is None:
        return "error"
    # A streamed body that ended early leaves the connection aborted (the mirror cuts it so the
    # client never mistakes a short body for a whole one); a complete one leaves it open.
    transport = request.transport
    if response.prepared and (transport is None or transport.is_closing()):
        return "aborted"
    return "hit"
