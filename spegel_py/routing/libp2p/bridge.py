"""A trio event loop in its own thread, awaited from asyncio without ever blocking the loop.

py-libp2p runs only on trio; the rest of spegel-py (aiohttp, containerd gRPC) is asyncio. Calls
cross over an anyio blocking portal: ``start_task_soon`` hands a coroutine to the trio thread and
returns a ``concurrent.futures.Future`` that asyncio wraps. Starting and stopping the thread are
done in a short-lived helper thread and awaited, so they do not block the loop either (joining
the trio thread can take a few hundred milliseconds while py-libp2p winds down).

The thread is ours rather than anyio's ``start_blocking_portal``, which drops the exception that
ends its loop: :meth:`TrioThread.ended` reports how the trio loop ended, so the router can tell
that its thread died (a task raising a ``BaseException`` such as ``SystemExit`` brings the
portal's task group, and with it the loop, down).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable
from concurrent.futures import Future
from typing import Any, TypeVar

import anyio
from anyio.from_thread import BlockingPortal

from spegel_py.errors import RoutingError

T = TypeVar("T")


class TrioThread:
    """Owns the trio thread; ``await call(fn, ...)`` runs ``fn`` there and returns its result."""

    def __init__(self, *, name: str = "spegel-libp2p") -> None:
        self._name = name
        self._portal: BlockingPortal | None = None
        self._thread: threading.Thread | None = None
        self._ended: Future[None] = Future()

    def start(self) -> None:
        """Start the thread, blocking until trio runs (a few milliseconds; see :meth:`astart`)."""
        ready: Future[BlockingPortal] = Future()
        ended: Future[None] = Future()
        ended.set_running_or_notify_cancel()  # only the thread completes it; nobody may cancel it

        async def serve_portal() -> None:
            async with BlockingPortal() as portal:
                ready.set_result(portal)
                await portal.sleep_until_stopped()

        def run() -> None:
            try:
                anyio.run(serve_portal, backend="trio")
            except BaseException as exc:  # reported through `ended`; the thread itself just ends
                if not ready.done():
                    ready.set_exception(exc)
                ended.set_exception(exc)
            else:
                if not ready.done():
                    ready.set_exception(RoutingError("the trio loop ended before it started"))
                ended.set_result(None)

        thread = threading.Thread(target=run, name=self._name, daemon=True)
        thread.start()
        try:
            self._portal = ready.result()
        except BaseException:
            thread.join()
            raise
        self._thread, self._ended = thread, ended

    async def astart(self) -> None:
        await _off_loop(self.start, f"{self._name}-start")

    @property
    def portal(self) -> BlockingPortal:
        if self._portal is None:
            raise RoutingError("libp2p thread is not running")
        return self._portal

    def ended(self) -> Future[None]:
        """Done when the trio loop has ended: with None after :meth:`stop`, else with the exception
        that ended it. Pending until the thread starts and while it runs."""
        return self._ended

    def submit(self, fn: Callable[..., Awaitable[T]], *args: Any) -> asyncio.Future[T]:
        """Start ``fn(*args)`` in the trio thread; the asyncio future cancels the trio task."""
        return asyncio.wrap_future(self.portal.start_task_soon(fn, *args))

    async def call(self, fn: Callable[..., Awaitable[T]], *args: Any) -> T:
        return await self.submit(fn, *args)

    def stop(self) -> None:
        """Stop the portal (its running tasks may finish) and join the thread (blocking; see
        :meth:`astop`). Also joins a thread whose loop already ended on its own."""
        portal, thread = self._portal, self._thread
        self._portal = self._thread = None
        if portal is not None:
            try:
                portal.call(portal.stop, False)
            except RuntimeError:  # the loop has already ended (trio.RunFinishedError included)
                pass
        if thread is not None:
            thread.join()

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
