"""A trio event loop in its own thread, awaited from asyncio without ever blocking the loop.

py-libp2p runs only on trio; the rest of spegel-py (aiohttp, containerd gRPC) is asyncio. Calls
cross over an anyio blocking portal: ``start_task_soon`` hands a coroutine to the trio thread and
returns a ``concurrent.futures.Future`` that asyncio wraps. Starting and stopping the thread are
done in a short-lived helper thread and awaited, so they do not block the loop either (joining
the trio thread can take a few hundred milliseconds while py-libp2p winds down).
"""

from __future__ import annotations

import asyncio
import threading
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
        """Start the thread, blocking until trio runs (a few milliseconds; see :meth:`astart`)."""
        cm = start_blocking_portal(backend="trio", name=self._name)
        self._portal = cm.__enter__()
        self._cm = cm

    async def astart(self) -> None:
        await _off_loop(self.start, f"{self._name}-start")

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
        """Stop the portal and join the thread (blocking; see :meth:`astop`)."""
        cm, self._cm, self._portal = self._cm, None, None
        if cm is not None:
            cm.__exit__(None, None, None)

    async def astop(self) -> None:
        await _off_loop(self.stop, f"{self._name}-stop")


async def _off_loop(fn: Callable[[], None], name: str) -> None:
    """Run a blocking ``fn`` in a dedicated thread that is joined when done (asyncio's default
    executor would keep its worker threads alive, which the leak checks rightly count)."""
    loop = asyncio.get_running_loop()
    done: asyncio.Future[None] = loop.create_future()

    def run() -> None:
        try:
            fn()
        except BaseException as exc:
            loop.call_soon_threadsafe(_fail, done, exc)
        else:
            loop.call_soon_threadsafe(_succeed, done)

    thread = threading.Thread(target=run, name=name, daemon=True)
    thread.start()
    try:
        await asyncio.shield(done)
    finally:
        if done.done():
            thread.join()  # it has finished: this returns at once


def _succeed(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


def _fail(fut: asyncio.Future[None], exc: BaseException) -> None:
    if not fut.done():
        fut.set_exception(exc)
