"""The mirror's miss path when several nodes miss a blob at once: one goes upstream, the rest wait.

Without coordination every mirror that misses a blob answers 404 and every containerd fetches
it from upstream: N nodes starting a rollout together pull N copies (issue 12). With a
:class:`~spegel_py.routing.claims.Rendezvous`, a mirror whose lookup found no provider for a
blob GET claims the blob's key:

- **won**: this node fetches it. The mirror answers 404 at once and containerd goes upstream;
  while it downloads, the node's in-progress record and serving of the growing blob let the
  others stream from it.
- **wait**: another node won. The mirror probes the winner's registry (``HEAD`` with
  ``X-Spegel-Mirrored: true``, every ``poll_interval``) until it serves the blob, in progress or
  complete, then relays it from the winner (the winner first, the key's other providers after it,
  with the relay's usual resume and digest check). If the winner refuses connections it is
  named ``failed`` in a second claim, which hands the blob to this node (or to whoever asked
  first); if the winner's lease ends first, the mirror claims again too. If nothing is served
  within ``wait`` seconds the mirror answers 404 and containerd goes upstream: **timed_out**.

Every step is bounded: a claim by ``claim_timeout`` (no answer: 404, counted as won since this
node then goes upstream on its own), the wait by ``wait``, and the relay from the winner by the
mirror's own ``deadline`` for a head. So a stalled or dead winner costs a waiting pull at most
``claim_timeout + wait + deadline`` before containerd goes upstream. Only whole blob GETs are
coordinated: manifests and HEADs are small and answered at once.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Literal, NoReturn, TypeVar

from spegel_py.errors import ContentNotFoundError, NotFoundError, PeerDownError, PeerError, RoutingError
from spegel_py.httpx.headers import MIRRORED_HEADER
from spegel_py.relay.peerclient import PeerClient
from spegel_py.routing.base import Peer, Router, RouterView
from spegel_py.routing.claims import Rendezvous

log = logging.getLogger(__name__)

T = TypeVar("T")
Outcome = Literal["won", "waited", "timed_out"]


@dataclass(frozen=True, slots=True)
class CoordinationSettings:
    """Bounds of a coordinated miss; every time is in seconds."""

    # How long a mirror waits for the winner to start serving the blob before it answers 404.
    # It covers the winner's containerd reaching upstream and its first bytes (an in-progress
    # blob is served as soon as it exists), and is what a dead winner costs each waiting pull.
    wait: float = 5.0
    poll_interval: float = 0.1  # between probes of the winner's registry
    claim_timeout: float = 2.0  # for the rendezvous's verdict (lookup of the rendezvous included)
    probe_timeout: float = 1.0  # for one probe's answer head (a dial: the mirror's dial_timeout)
    dial_timeout: float = 0.2  # TCP connect to the winner's registry


class PullCoordinator:
    """Decides, after a miss, whether this node goes upstream or relays from the winner."""

    def __init__(
        self,
        rendezvous: Rendezvous,
        client: PeerClient,
        settings: CoordinationSettings | None = None,
        *,
        on_outcome: Callable[[Outcome], None] | None = None,
    ) -> None:
        """``on_outcome``: called once per coordinated miss (``spegel_pull_coordination_total``)."""
        self._rendezvous = rendezvous
        self._client = client
        self.settings = settings if settings is not None else CoordinationSettings()
        self._on_outcome = on_outcome

    async def settle(self, key: str, target: str, fetch_from: Callable[[Peer], Awaitable[T]]) -> T:
        """After a miss of blob ``key`` (``target``: its path for a peer): return what
        ``fetch_from(winner)`` returns once the winner serves it, or raise
        :class:`NotFoundError` (answer 404: this node goes upstream)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.settings.wait
        failed: str | None = None
        while True:
            try:
                async with asyncio.timeout(self.settings.claim_timeout):
                    verdict = await self._rendezvous.claim(key, failed=failed)
            except (RoutingError, TimeoutError) as exc:
                log.info("no claim verdict for %s: %r; going upstream", key, exc)
                self._end("won", key, exc)
            if verdict.won or verdict.winner is None:
                self._end("won" if verdict.won else "timed_out", key)
            winner = verdict.winner
            lease = max(verdict.expires_in, self.settings.poll_interval)  # never a tight loop
            state = await self._await_winner(winner, target, min(deadline, loop.time() + lease))
            if state == "gone" and loop.time() < deadline:
                failed = winner.peer_id  # claim again: the blob passes to this node or another
                continue
            if state == "timeout" and loop.time() < deadline:
                continue  # the lease ended first: claim again (won, or the winner renewed it)
            if state != "ready":
                self._end("timed_out", key)
            try:
                result = await fetch_from(winner)
            except NotFoundError as exc:
                self._end("timed_out", key, exc)
            self._count("waited")
            return result

    def _end(self, outcome: Outcome, key: str, cause: BaseException | None = None) -> NoReturn:
        self._count(outcome)
        why = "this node fetches it" if outcome == "won" else "the winner did not serve it in time"
        raise ContentNotFoundError(f"{key}: {why}") from cause

    def _count(self, outcome: Outcome) -> None:
        if self._on_outcome is not None:
            self._on_outcome(outcome)

    async def _await_winner(
        self, winner: Peer, target: str, until: float
    ) -> Literal["ready", "gone", "timeout"]:
        """Probe ``winner`` until it serves ``target`` (ready), refuses connections (gone), or
        ``until`` (loop time) passes (timeout)."""
        loop = asyncio.get_running_loop()
        settings = self.settings
        while (left := until - loop.time()) > 0:
            try:
                async with asyncio.timeout(left):
                    response = await self._client.request(
                        winner, "HEAD", target, {MIRRORED_HEADER: "true"},
                        dial_timeout=settings.dial_timeout,
                        first_byte_timeout=min(settings.probe_timeout, left),
                    )
                    response.release()
                    if response.status == 200:
                        return "ready"
            except PeerDownError:
                return "gone"
            except (PeerError, TimeoutError):
                pass  # busy or answering oddly: probe again while time is left
            await asyncio.sleep(min(settings.poll_interval, max(0.0, until - loop.time())))
        return "timeout"


class WinnerFirst(RouterView):
    """A view of ``router`` that offers ``winner`` before the router's providers of a key (the
    winner's in-progress record may not have reached the DHT yet)."""

    def __init__(self, router: Router, winner: Peer) -> None:
        super().__init__(router)
        self._winner = winner

    async def lookup(self, key: str, *, limit: int = 3) -> AsyncIterator[Peer]:
        yield self._winner
        if limit > 1:
            async for peer in self._router.lookup(key, limit=limit - 1):
                if peer != self._winner:
                    yield peer
