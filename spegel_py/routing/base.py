"""The router boundary: advertise what this node holds, find peers that hold a key.

Keys are content digests (``sha256:<hex>``) and tag references (``registry/repository:tag``),
exactly the strings Spegel advertises. Implementations: :mod:`.memory` (tests) and
:mod:`.libp2p` (the Spegel-compatible Kademlia DHT). Both pass ``tests/conformance/test_router.py``.

Provider records are hints (DHT records cannot be deleted, only left to expire), so callers treat
every peer a lookup yields as possibly stale. Their lifetime and the reprovide interval that keeps
them alive are defined here once. The :class:`Bootstrapper` Protocol (how a joining node finds its
first peers) is here too, between its implementations in ``routing/bootstrap/`` and the libp2p
router that calls it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

# Spegel's provider-record timing, defined once here for the router, the settings and the tests.
RECORD_LIFETIME = 19 * 60.0  # seconds a provider record stays valid at the peers that store it
REPROVIDE_INTERVAL = 15 * 60.0  # seconds between re-sends of a node's records; below RECORD_LIFETIME

# Blobs that a node's containerd is still writing (an active ingest) are advertised under a key
# of their own, never under the digest itself: a Go Spegel node that found an in-progress
# provider under Spegel's key would relay a body that may be cut when the ingest aborts, and
# Spegel does not resume elsewhere, so its containerd would fail the pull instead of going
# upstream. spegel-py nodes look this key up after the digest's own key misses.
IN_PROGRESS_PREFIX = "spegel-py/in-progress/"


def in_progress_key(digest: str) -> str:
    """The router key under which a node advertises that it is still fetching ``digest``."""
    return IN_PROGRESS_PREFIX + digest


@dataclass(frozen=True, slots=True)
class Peer:
    """A node that claims to hold a key: its libp2p peer id and the host:port of its registry."""

    peer_id: str
    host: str
    port: int

    @property
    def base_url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"


@runtime_checkable
class Router(Protocol):
    """Advertises keys for this node and looks up other nodes' keys."""

    def ready(self) -> bool:
        """True once the node can route: it has at least one peer, or it is configured to be alone."""
        ...

    async def advertise(self, keys: Iterable[str]) -> None:
        """Announce that this node can serve ``keys``; kept announced (reprovided) until withdrawn."""
        ...

    async def withdraw(self, keys: Iterable[str]) -> None:
        """Stop announcing ``keys``. Remote records expire on their own; lookups skip this node."""
        ...

    def lookup(self, key: str, *, limit: int = 3) -> AsyncIterator[Peer]:
        """Yield up to ``limit`` other peers holding ``key`` as they are found, ending by a deadline.

        Never yields this node itself. An empty iteration means no provider is known.
        """
        ...

    async def close(self) -> None:
        """Stop reproviding, close connections and threads. Idempotent."""
        ...


class RouterView:
    """A :class:`Router` that hands every call to ``router``; a subclass changes only what it
    needs (a lookup that also finds in-progress providers, one that offers a known peer first)."""

    def __init__(self, router: Router) -> None:
        self._router = router

    def ready(self) -> bool:
        return self._router.ready()

    async def advertise(self, keys: Iterable[str]) -> None:
        await self._router.advertise(keys)

    async def withdraw(self, keys: Iterable[str]) -> None:
        await self._router.withdraw(keys)

    def lookup(self, key: str, *, limit: int = 3) -> AsyncIterator[Peer]:
        return self._router.lookup(key, limit=limit)

    async def close(self) -> None:
        await self._router.close()


@runtime_checkable
class Bootstrapper(Protocol):
    """Finds the first peers of a node that is joining the DHT (``routing/bootstrap/`` holds the
    kinds: static list, DNS, HTTP ``/id``, Kubernetes)."""

    async def peers(self) -> list[str]:
        """Multiaddr strings to dial, with or without ``/p2p/<id>`` (ids are learned on dial); may
        be empty.

        Raises a :class:`~spegel_py.errors.SpegelError` (``RoutingError`` when the source cannot
        be asked, ``ConfigurationError`` when it is set up wrong): the router logs it and asks
        again at its next round. Any other exception is a bug, and stops the router.
        """
        ...
