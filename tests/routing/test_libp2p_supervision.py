"""Supervision of the libp2p router: what ends it unexpectedly is reported, and it stops being ready.

``Libp2pRouter.wait_failed`` returns the exception as soon as the DHT's main task in the trio
thread fails, the trio thread itself dies, or the bootstrap task fails; from then on ``ready()``
is False and lookups find nothing. Each failure is caused for real on started routers: a fault
injected where the main task runs its maintenance, a ``BaseException`` that brings the trio loop
down from a lookup, a bootstrapper that raises something other than the project's errors.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
from routingsupport import ScriptedBootstrap, leaves
from support.poll import eventually

from spegel_py.errors import ConfigurationError, RoutingError
from spegel_py.routing.libp2p.providers import ProviderStore
from spegel_py.routing.libp2p.query import ProviderQuery
from spegel_py.routing.libp2p.router import Libp2pRouter

DEADLINE = 10.0  # seconds a failure may take to be reported before the test fails
KEY = "sha256:" + "5a" * 32


class Injected(Exception):
    """The fault these tests inject."""


class InjectedBase(BaseException):
    """A fault that is not an Exception: the trio loop's task group does not contain it."""


Factory = Callable[..., Libp2pRouter]


@pytest.fixture
async def make(tmp_path: Path) -> AsyncIterator[Factory]:
    """``make(name, ip, **options)``: an unstarted router, closed at the end of the test."""
    routers: list[Libp2pRouter] = []

    def factory(name: str, ip: str, **options: object) -> Libp2pRouter:
        router = Libp2pRouter(
            listen_addrs=[f"/ip4/{ip}/tcp/0"],
            data_dir=tmp_path / name,
            registry_port=5000,
            refresh_interval=0.05,  # the maintenance loop (where faults are injected) runs often
            bootstrap_interval=0.05,
            lookup_timeout=1.0,
            **options,  # type: ignore[arg-type]  # alone / bootstrap
        )
        routers.append(router)
        return router

    yield factory
    for router in routers:
        await router.close()


async def failure_of(router: Libp2pRouter) -> BaseException:
    return await asyncio.wait_for(router.wait_failed(), DEADLINE)


async def test_a_failing_main_task_stops_the_router(make: Factory, monkeypatch: pytest.MonkeyPatch) -> None:
    router = make("a", "127.0.0.110", alone=True)
    await router.start()
    assert router.ready()

    def expire(self: ProviderStore) -> int:
        raise Injected("record store broke")

    monkeypatch.setattr(ProviderStore, "expire", expire)  # the main task's maintenance calls it

    exc = await failure_of(router)
    assert [type(e) for e in leaves(exc)] == [Injected]
    assert not router.ready()
    assert [p async for p in router.lookup(KEY)] == []
    with pytest.raises(RoutingError, match="router stopped"):
        await router.advertise([KEY])
    await router.close()  # still closes cleanly: the trio thread outlived its main task
    assert await failure_of(router) is exc  # the first failure stays the answer


async def test_a_dead_trio_thread_stops_the_router(make: Factory, monkeypatch: pytest.MonkeyPatch) -> None:
    router = make("a", "127.0.0.111", alone=True)
    await router.start()
    thread = f"libp2p-{router.peer_id[-6:]}"
    assert router.ready() and thread in {t.name for t in threading.enumerate()}

    async def run(self: ProviderQuery, *args: object) -> object:
        raise InjectedBase("lookup broke the loop")

    monkeypatch.setattr(ProviderQuery, "run", run)  # a lookup runs it as a task of the trio thread
    assert [p async for p in router.lookup(KEY)] == []

    exc = await failure_of(router)
    assert InjectedBase in [type(e) for e in leaves(exc)]
    assert not router.ready()
    await eventually(lambda: thread not in {t.name for t in threading.enumerate()}, what="thread gone")
    await router.close()


@pytest.mark.parametrize(
    ("error", "fails"),
    [
        (lambda: TypeError("a bug in the bootstrapper"), True),
        (lambda: RoutingError("bootstrap source unreachable"), False),
        (lambda: ConfigurationError("no in-cluster configuration"), False),
    ],
    ids=["unexpected-error-fails", "routing-error-retried", "configuration-error-retried"],
)
async def test_a_bootstrapper_failing_unexpectedly_stops_the_router(
    make: Factory, error: Callable[[], BaseException], fails: bool
) -> None:
    seed = make("seed", "127.0.0.112", alone=True)
    await seed.start()
    seeds = seed.listen_multiaddrs()
    boot = ScriptedBootstrap(lambda call: seeds if call == 1 else error())
    router = make("a", "127.0.0.113", bootstrap=boot)
    await router.start()
    await eventually(router.ready, what="ready through the seed")
    waiter = asyncio.create_task(router.wait_failed())
    try:
        if fails:
            exc = await asyncio.wait_for(waiter, DEADLINE)
            assert type(exc) is TypeError and boot.calls == 2
            assert not router.ready()
        else:
            await eventually(lambda: boot.calls >= 4, what="bootstrap rounds go on after errors")
            assert router.ready() and not waiter.done()
    finally:
        waiter.cancel()


async def test_wait_failed_does_not_return_on_close(make: Factory) -> None:
    seed = make("seed", "127.0.0.114", alone=True)
    await seed.start()
    router = make("a", "127.0.0.115", bootstrap=ScriptedBootstrap(lambda call: seed.listen_multiaddrs()))
    await router.start()
    await eventually(router.ready, what="ready through the seed")
    waiter = asyncio.create_task(router.wait_failed())
    await router.close()  # stops the bootstrap task, the main task and the thread: all expected
    for _ in range(5):
        await asyncio.sleep(0)  # let any callback the close left behind run (no time passes)
    assert not waiter.done()
    waiter.cancel()
