"""A trio event loop in its own thread, awaited from asyncio without ever blocking the loop.

py-libp2p runs only on trio; the rest of spegel-py (aiohttp, containerd gRPC) is asyncio. Calls
cross over an anyio blocking portal: ``start_task_soon`` hands a coroutine to the trio thread and
returns a ``concurrent.futures.Future`` that asyncio wraps. Starting and stopping the thread are
the only blocking steps (a few milliseconds: a thread start or join, once per process life).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from contextlib import AbstractContextManager
from typing import Any, TypeVar

from anyio.from_thread import BlockingPortal, start_blocking_portal

from spegel_py.errors import RoutingError

T = TypeVar("T")


class TrioThread:
    """Owns the trio thread; ``await call(fn, ...)`` runs ``fn`` there and returns its result."""

    def __init__(self, *, name: str = "spegel-libp2p") -> None:
        self._name = name
        self._cm: AbstractContextManager[BlockingPortal] | None = None
        self._portal: BlockingPortal | None = None

    def start(self) -> None:
        self._cm = start_blocking_portal(backend="trio", name=self._name)
        self._portal = self._cm.__enter__()

    @property
    def portal(self) -> BlockingPortal:
        if self._portal is None:
            raise RoutingError("libp2p thread is not running")
        return self._portal

    def submit(self, fn: Callable[..., Awaitable[T]], *args: Any) -> asyncio.Future[T]:
        """Start ``fn(*args)`` in the trio thread; the asyncio future cancels the trio task."""
        return asyncio.wrap_future(self.portal.start_task_soon(fn, *args))

    async def call(self, fn: Callable[..., Awaitable[T]], *args: Any) -> T:
        return await self.submit(fn, *args)

    def stop(self) -> None:
        """Stop the portal and join the thread; tasks still running there are cancelled."""
        cm, self._cm, self._portal = self._cm, None, None
        if cm is not None:
            cm.__exit__(None, None, None)
