"""Resolving a tag through peers by agreement, so that one lying or stale peer cannot decide it.

Why: a digest is self-verifying, a tag is not. A peer that answers ``nginx:1.25`` with a forged,
self-consistent manifest (its bytes match the digest it reports) passes every check of
:mod:`.attempt`. So a tag is never taken from the first peer that answers: :class:`TagVote` asks
every provider the lookup yields (up to ``lookup_limit``, in parallel: manifests are small) and
decides on the answers that came within the vote window.

The rule (docs/operations.md, "Trust model"):

- a vote is an answer that passed :class:`~spegel_py.relay.attempt.PeerAttempt`: status 200, a
  ``Docker-Content-Digest`` that parses, and (GET) the manifest bytes matching it;
- a 404, a refused or broken connection, a timeout or corrupt bytes is not a vote (the peer does
  not hold the tag, or is unusable); such peers are reported to :class:`PeerHealth` as usual;
- two votes for different digests: :class:`TagDisagreementError` at once (a 404; containerd
  resolves upstream). The peers are not marked as failed, as the mirror cannot tell who lied;
- otherwise, at least one vote and every vote for the same digest: that digest is used. With one
  provider (or one that holds the tag while the others answer 404) this is Spegel's behaviour,
  since no second opinion exists;
- the vote closes when every started attempt ended and the lookup ended, or yielded nothing new
  for ``first_provider_timeout`` (the bound Spegel itself uses to wait for a provider: a DHT
  lookup yields the records of one query in quick succession, and waiting longer would delay every
  single-provider tag), or at ``tag_vote_window`` (under the mirror's ``deadline``): an attempt
  still running then is cancelled and does not count, so a silent provider cannot hold a pull.

So a tag that two providers answer differently within the window is never resolved through
peers.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any

from spegel_py.errors import ImageNotFoundError, NoProviderError, PeerCorruptError
from spegel_py.httpx.headers import DIGEST_HEADER
from spegel_py.relay.attempt import Answer
from spegel_py.relay.hedging import Providers, cancel_attempts, wait_any
from spegel_py.relay.peerhealth import PeerReporter
from spegel_py.routing.base import Peer


class TagDisagreementError(ImageNotFoundError):
    """Providers answered a tag with different digests; the client gets a 404 (go upstream)."""

    def __init__(self, key: str, digests: list[str]) -> None:
        # the client's 404 names no digest: a forged one is not worth repeating to anyone
        super().__init__(f"providers disagree on {key}")
        self.key = key
        self.digests = digests


class TagVote:
    """Asks every provider of a tag and returns an answer only if all answers agree.

    ``started`` and ``corrupt`` count attempts, as :class:`~spegel_py.relay.hedging.Hedger` does.
    """

    def __init__(
        self,
        attempt: Callable[[Peer], Coroutine[Any, Any, Answer]],
        reporter: PeerReporter,
        *,
        first_provider_timeout: float,
        window: float,
    ) -> None:
        self._attempt = attempt
        self._reporter = reporter
        self._first_provider_timeout = first_provider_timeout
        self._window = window
        self.started = 0
        self.corrupt = 0

    async def run(self, providers: Providers) -> tuple[Peer, Answer]:
        """The agreed answer; :class:`TagDisagreementError` or :class:`NoProviderError` otherwise."""
        loop = asyncio.get_running_loop()
        closes_at = loop.time() + self._window
        running: dict[asyncio.Task[Answer], Peer] = {}
        votes: list[tuple[Peer, Answer]] = []
        idle_until: float | None = None
        try:
            while True:
                while (peer := providers.take()) is not None:
                    task = asyncio.create_task(self._attempt(peer), name=f"tag peer {peer.host}:{peer.port}")
                    running[task] = peer
                    self.started += 1
                now = loop.time()
                if now >= closes_at:
                    break
                if running:
                    idle_until = None
                elif providers.exhausted:
                    break
                else:
                    idle_until = idle_until if idle_until is not None else now + self._first_provider_timeout
                    if now >= idle_until:
                        break
                until = closes_at if idle_until is None else min(closes_at, idle_until)
                done = await wait_any(
                    running, providers, for_provider=not providers.done, within=max(0.0, until - now)
                )
                for task in done:
                    peer = running.pop(task)
                    exc = task.exception()
                    if exc is None:
                        votes.append((peer, task.result()))
                        digests = _digests(votes)
                        if len(digests) > 1:
                            raise TagDisagreementError(providers.key, digests)
                        continue
                    if isinstance(exc, PeerCorruptError):
                        self.corrupt += 1
                    self._reporter.failed(peer, providers.key, exc)
        finally:
            # attempts still running when the vote closed do not count
            await cancel_attempts(running, Answer.discard)
        if not votes:
            raise NoProviderError(f"no peer resolved {providers.key}")
        for peer, _ in votes:
            self._reporter.served(peer, providers.key)
        return votes[0]


def _digests(votes: list[tuple[Peer, Answer]]) -> list[str]:
    """The distinct digests voted for, in order of arrival."""
    seen: dict[str, None] = {}
    for _, answer in votes:
        seen.setdefault(answer.headers[DIGEST_HEADER], None)
    return list(seen)
