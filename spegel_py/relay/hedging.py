"""Finding a peer that answers: providers as the router finds them, and hedged attempts over them.

Why: provider records are hints (dead nodes stay listed for minutes) and the first peer may be
slow, so the mirror never waits on one peer alone. It starts on the first provider; if no answer
came within a short hedge delay, it also asks the next one; a peer that fails (refused, 404,
corrupt) makes room for the next at once. The first good answer wins and the others are
cancelled. Everything here is bounded by the caller's deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any, Generic, TypeVar

from spegel_py.errors import NoProviderError, PeerCorruptError, RoutingError
from spegel_py.relay.peerhealth import PeerHealth, PeerReporter
from spegel_py.routing.base import Peer, Router

T = TypeVar("T")


class Providers:
    """The peers a lookup yields, collected in the background so attempts can start on the first.

    ``take()`` hands out each usable peer once (skipping peers :class:`PeerHealth` advises
    against); ``wait()`` resolves when another peer may be available or the lookup ended.
    """

    def __init__(self, router: Router, key: str, health: PeerHealth, *, limit: int) -> None:
        self.key = key
        self._health = health
        self._peers: list[Peer] = []
        self._seen: set[Peer] = set()
        self._next = 0
        self._changed = asyncio.Event()
        self.done = False
        self.lookup_error: BaseException | None = None
        self._task = asyncio.create_task(self._collect(router.lookup(key, limit=limit)), name=f"lookup {key}")

    async def _collect(self, peers: AsyncIterator[Peer]) -> None:
        try:
            async for peer in peers:
                if peer not in self._seen:
                    self._seen.add(peer)
                    self._peers.append(peer)
                    self._changed.set()
        except (RoutingError, OSError) as exc:
            # A failed lookup is the same as no providers for the client: fall back to upstream.
            self.lookup_error = exc
        finally:
            self.done = True
            self._changed.set()
            close = getattr(peers, "aclose", None)
            if close is not None:
                with contextlib.suppress(Exception):
                    await close()

    def take(self) -> Peer | None:
        """The next untried usable peer found so far, or None."""
        while self._next < len(self._peers):
            peer = self._peers[self._next]
            self._next += 1
            if self._health.usable(peer, self.key):
                return peer
        return None

    def rewind(self, exclude: set[Peer]) -> None:
        """Offer again every peer found so far except ``exclude`` (used when resuming a stream)."""
        self._peers = [p for p in self._peers if p not in exclude]
        self._next = 0

    @property
    def exhausted(self) -> bool:
        """True when the lookup ended and every peer found was handed out."""
        return self.done and self._next >= len(self._peers)

    async def wait(self) -> None:
        """Return when a new peer arrived or the lookup ended (or at once if already so)."""
        if self._next < len(self._peers) or self.done:
            return
        self._changed.clear()
        await self._changed.wait()

    async def aclose(self) -> None:
        """Stop the lookup. Idempotent."""
        if not self._task.done():
            self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task


class Hedger(Generic[T]):
    """Runs ``attempt(peer)`` over providers with hedging; the first success is returned.

    ``attempt`` raises :class:`~spegel_py.errors.PeerError` subclasses for failures; each
    outcome goes to ``reporter`` (which says what a failure means for the peer's health).
    ``discard`` releases a result that lost the race (e.g. a second response head).
    ``started`` and ``corrupt`` count attempts, for the relay's stats.
    """

    def __init__(
        self,
        attempt: Callable[[Peer], Coroutine[Any, Any, T]],
        discard: Callable[[T], None],
        reporter: PeerReporter,
        *,
        hedge_delay: float,
        first_provider_timeout: float,
    ) -> None:
        self._attempt = attempt
        self._discard = discard
        self._reporter = reporter
        self._hedge_delay = hedge_delay
        self._first_provider_timeout = first_provider_timeout
        self.started = 0
        self.corrupt = 0

    async def run(self, providers: Providers) -> tuple[Peer, T]:
        """Race attempts until one succeeds; :class:`NoProviderError` when none can."""
        loop = asyncio.get_running_loop()
        running: dict[asyncio.Task[T], Peer] = {}
        hedge_at = loop.time()
        # While nothing runs and no untried provider is known, wait for the lookup to yield one
        # only until this time: a lookup that keeps searching must not hold a 404 back.
        idle_until: float | None = None
        try:
            while True:
                now = loop.time()
                if running:
                    idle_until = None
                if not running or now >= hedge_at:
                    peer = providers.take()
                    if peer is not None:
                        task = asyncio.create_task(self._attempt(peer), name=f"peer {peer.host}:{peer.port}")
                        running[task] = peer
                        self.started += 1
                        hedge_at = loop.time() + self._hedge_delay
                        continue
                    if not running and providers.exhausted:
                        raise NoProviderError(f"no peer could serve {providers.key}")
                    if not running:
                        idle_until = (
                            idle_until if idle_until is not None else now + self._first_provider_timeout
                        )
                        if now >= idle_until:
                            raise NoProviderError(f"no (further) provider of {providers.key} found in time")
                if running:
                    timeout = max(0.0, hedge_at - now) if now < hedge_at else None
                else:
                    assert idle_until is not None
                    timeout = max(0.0, idle_until - now)
                done = await wait_any(
                    running,
                    providers,
                    for_provider=not providers.exhausted and (not running or now >= hedge_at),
                    within=timeout,
                )
                for task in done:
                    peer = running.pop(task)
                    exc = task.exception()
                    if exc is None:
                        self._reporter.served(peer, providers.key)
                        return peer, task.result()
                    if isinstance(exc, PeerCorruptError):
                        self.corrupt += 1
                    self._reporter.failed(peer, providers.key, exc)
                    hedge_at = loop.time()  # a failure makes room for the next peer at once
        finally:
            await cancel_attempts(running, self._discard)


async def wait_any(
    running: dict[asyncio.Task[T], Peer], providers: Providers, *, for_provider: bool, within: float | None
) -> list[asyncio.Task[T]]:
    """Wait up to ``within`` seconds (``None``: no bound) until an attempt in ``running`` ends
    or, with ``for_provider``, the lookup yields another provider; returns the attempts that
    ended, in the order they were started.

    Shared by :class:`Hedger` and the tag vote (:mod:`.tags`), which race the same attempts.
    """
    waits: set[asyncio.Future[object]] = set(running)  # type: ignore[arg-type]  # Task[T] is a Future
    provider_wait: asyncio.Task[None] | None = None
    if for_provider:
        provider_wait = asyncio.create_task(providers.wait(), name="provider wait")
        waits.add(provider_wait)  # type: ignore[arg-type]  # Task[None] is a Future
    try:
        done, _ = await asyncio.wait(waits, timeout=within, return_when=asyncio.FIRST_COMPLETED)
    finally:
        if provider_wait is not None and not provider_wait.done():
            provider_wait.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await provider_wait
    return [task for task in running if task in done]


async def cancel_attempts(running: dict[asyncio.Task[T], Peer], discard: Callable[[T], None]) -> None:
    """Cancel the attempts still running and ``discard`` any result that arrived meanwhile."""
    if not running:
        return
    for task in running:
        task.cancel()
    # asyncio.wait never raises the tasks' exceptions; only our own cancellation propagates.
    await asyncio.wait(running)
    for task in running:
        if not task.cancelled() and task.exception() is None:
            discard(task.result())
