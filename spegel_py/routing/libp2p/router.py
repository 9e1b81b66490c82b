"""``Libp2pRouter``: the Router of spegel-py on a Spegel-compatible libp2p DHT.

The libp2p host and the DHT (:mod:`.dht`) live in a trio thread (:mod:`.bridge`); this class is
the asyncio face: it translates keys (:mod:`.keys`), shares lookups (:mod:`.lookups`), and runs
the bootstrap loop (a :class:`~spegel_py.routing.base.Bootstrapper` gives multiaddrs; peers found
there are dialled and walked for more). Lifecycle: ``await start()``, then use, then
``await close()``.

Supervision: the trio thread, the DHT's main task in it (which carries every background task of
the node) and the bootstrap task must run until :meth:`Libp2pRouter.close`. If one of them ends
first, the router stops being ready and :meth:`Libp2pRouter.wait_failed` returns the exception,
for the application to stop the process.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from concurrent.futures import Future
from pathlib import Path

import trio
from libp2p.peer.id import ID

from spegel_py.errors import RoutingError, SpegelError
from spegel_py.routing.base import RECORD_LIFETIME, REPROVIDE_INTERVAL, Bootstrapper, Peer
from spegel_py.routing.libp2p.bridge import TrioThread
from spegel_py.routing.libp2p.dht import DhtNode
from spegel_py.routing.libp2p.host import build_host, listen_addrs, peer_id_of
from spegel_py.routing.libp2p.identity import load_or_create_seed
from spegel_py.routing.libp2p.keys import multihash
from spegel_py.routing.libp2p.limits import Limits
from spegel_py.routing.libp2p.lookups import Flight, LookupCache
from spegel_py.routing.libp2p.muxer import StreamGuard
from spegel_py.routing.libp2p.options import DhtOptions
from spegel_py.routing.libp2p.pnet import transport
from spegel_py.routing.libp2p.providers import REFUSALS
from spegel_py.routing.libp2p.psk import PreSharedKey
from spegel_py.routing.libp2p.query import LookupStats

log = logging.getLogger(__name__)

CLOSE_TIMEOUT = 10.0  # seconds each shutdown step may take before it is forced


class Libp2pRouter:
    """Implements :class:`spegel_py.routing.base.Router` on libp2p Kademlia (``/spegel/kad/1.0.0``)."""

    def __init__(
        self,
        *,
        listen_addrs: Sequence[str],
        data_dir: Path | str,
        registry_port: int,
        bootstrap: Bootstrapper | None = None,
        alone: bool = False,
        record_ttl: float = RECORD_LIFETIME,
        reprovide_interval: float = REPROVIDE_INTERVAL,
        lookup_timeout: float = 2.0,
        cache_ttl: float = 5.0,
        bootstrap_interval: float = 10.0,
        refresh_interval: float = 30.0,
        k: int = 20,
        alpha: int = 3,
        on_reprovide: Callable[[int, float], None] | None = None,
        limits: Limits | None = None,
        psk: PreSharedKey | None = None,
    ) -> None:
        """
        ``listen_addrs``: multiaddrs like ``/ip4/10.0.0.5/tcp/5001``. ``data_dir``: holds
        ``private.key``. ``registry_port``: every peer's registry port (Spegel assumes one port
        cluster-wide). ``alone``: ready without peers (a single-node cluster).
        ``record_ttl`` / ``reprovide_interval``: seconds a record we store stays valid / between
        re-sends of ours (Spegel: 19 / 15 min). ``lookup_timeout``: seconds a lookup may run.
        ``cache_ttl``: seconds a lookup result is reused. ``bootstrap_interval``: seconds between
        bootstrap rounds while alone (6x that once the node has peers). ``refresh_interval``:
        seconds between maintenance ticks (bucket refresh every 20 ticks). ``k`` / ``alpha``:
        Kademlia bucket size and replication / parallelism. ``limits``: what peers may take of this
        node (default: ``limits.Limits()``). ``psk``: a private network's key (:mod:`.pnet`).
        ``on_reprovide(keys, seconds)``: called on the event loop that started the router after
        each periodic reprovide (keys re-sent, seconds it took), for the metrics layer.
        """
        if reprovide_interval >= record_ttl:
            raise RoutingError("reprovide_interval must be shorter than record_ttl")
        self._listen = list(listen_addrs)
        self._seed = load_or_create_seed(Path(data_dir) if str(data_dir) else None)  # "": not kept
        self.peer_id: str = peer_id_of(self._seed)
        self._port, self._psk = registry_port, psk
        self._bootstrap, self._alone = bootstrap, alone
        self._lookup_timeout, self._bootstrap_interval = lookup_timeout, bootstrap_interval
        self._on_reprovide = on_reprovide
        self._options = DhtOptions(
            k=k, alpha=alpha,
            record_ttl=record_ttl,
            reprovide_interval=reprovide_interval,
            refresh_interval=refresh_interval,
            bucket_refresh=20 * refresh_interval,
            limits=limits if limits is not None else Limits(),
        )
        self._thread = TrioThread(name=f"libp2p-{self.peer_id[-6:]}")
        self._node: DhtNode | None = None
        self._main: asyncio.Future[None] | None = None
        self._tasks: set[asyncio.Future[object]] = set()
        self._bootstrap_task: asyncio.Task[None] | None = None
        self._cache = LookupCache(self._start_flight, ttl=cache_ttl)
        self._state = "new"
        self._failure: BaseException | None = None  # why the router stopped running, if it did
        self._failed = asyncio.Event()  # set with _failure
        self._main_lost = False  # the main task was cancelled: the trio loop is going down
        self._guard = StreamGuard()  # resets (and counts) inbound streams past the per-connection bound

    # -- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        """Start the trio thread, listen, and begin bootstrapping. Raises RoutingError on failure."""
        if self._state != "new":
            raise RoutingError(f"router cannot start: it is {self._state}")
        self._state = "starting"
        addrs = listen_addrs(self._listen)
        await self._thread.astart()
        loop = asyncio.get_running_loop()

        def thread_ended(fut: Future[None]) -> None:  # in the trio thread, as it ends
            with contextlib.suppress(RuntimeError):  # the loop closed first: nobody is waiting
                loop.call_soon_threadsafe(self._thread_ended, fut)

        self._thread.ended().add_done_callback(thread_ended)
        started: asyncio.Future[None] = loop.create_future()

        on_reprovide = self._on_reprovide

        def reprovided(keys: int, seconds: float) -> None:  # in the trio thread
            if on_reprovide is not None:
                with contextlib.suppress(RuntimeError):  # the loop closed during shutdown
                    loop.call_soon_threadsafe(on_reprovide, keys, seconds)

        async def run() -> None:
            tcp = transport(self._psk)
            node = DhtNode(build_host(self._seed, tcp, self._guard), tcp, registry_port=self._port,
                           options=self._options, on_reprovide=reprovided)
            self._node = node
            try:
                async with trio.open_nursery() as nursery:
                    await nursery.start(node.serve, addrs)
                    loop.call_soon_threadsafe(_set_result, started)
            except BaseException as exc:
                loop.call_soon_threadsafe(_set_exception, started, exc)
                raise

        self._main = self._thread.submit(run)
        self._main.add_done_callback(self._main_ended)
        try:
            await started
        except BaseException as exc:
            await self.close()
            raise RoutingError(f"libp2p host failed to start on {self._listen}: {exc}") from exc
        self._state = "running"
        if self._bootstrap is not None:
            self._bootstrap_task = asyncio.create_task(self._bootstrap_loop(), name="libp2p-bootstrap")
            self._bootstrap_task.add_done_callback(self._bootstrap_ended)

    async def close(self) -> None:
        """Stop bootstrapping, lookups and the host; join the thread. Idempotent."""
        if self._state == "closed":
            return
        self._state = "closed"
        pending: list[asyncio.Future[object]] = list(self._tasks)
        if self._bootstrap_task is not None:
            pending.append(self._bootstrap_task)  # type: ignore[arg-type]  # Task[None] is a Future
        for fut in pending:
            fut.cancel()
        if pending:
            await asyncio.wait(pending, timeout=CLOSE_TIMEOUT)
        main, node = self._main, self._node
        if main is not None and not main.done():
            if node is not None:
                with contextlib.suppress(Exception):  # the thread may already be failing
                    await self._thread.call(node.stop)
            done, _ = await asyncio.wait([main], timeout=CLOSE_TIMEOUT)
            if not done:  # an orderly stop hung: cancel it (may leave sockets to the GC)
                main.cancel()
                await asyncio.wait([main], timeout=CLOSE_TIMEOUT)
        self._cache.clear()
        await self._thread.astop()

    async def __aenter__(self) -> Libp2pRouter:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def wait_failed(self) -> BaseException:
        """Wait until the router stops running unexpectedly, and return (not raise) why.

        That is: the trio thread ended, the DHT's main task in it ended or failed (any of the
        node's background tasks failing fails it), or the bootstrap task failed (a bootstrapper
        raising anything but a :class:`~spegel_py.errors.SpegelError`). From that moment
        :meth:`ready` is False. Never returns otherwise, :meth:`close` included: the caller
        cancels the wait at shutdown. The exception keeps its traceback for the caller's log.
        """
        await self._failed.wait()
        assert self._failure is not None  # set together with the event
        return self._failure

    # -- Router ----------------------------------------------------------------------------

    def ready(self) -> bool:
        """True while running, not failed, and with a peer (or configured to be alone)."""
        node = self._node
        if not self._usable() or node is None:
            return False
        return self._alone or len(node.table) > 0

    async def advertise(self, keys: Iterable[str]) -> None:
        node = self._running()
        await self._thread.call(node.provide, [multihash(k) for k in keys])

    async def withdraw(self, keys: Iterable[str]) -> None:
        node = self._running()
        await self._thread.call(node.withdraw, [multihash(k) for k in keys])

    async def lookup(self, key: str, *, limit: int = 3) -> AsyncIterator[Peer]:
        if not self._usable() or limit <= 0:
            return
        flight = self._cache.peek(key, limit)
        if flight is None:
            node = self._running()
            local = node.local_providers(multihash(key), limit)
            if len(local) >= limit:
                self._cache.put(key, local)
                for peer in local:
                    yield peer
                return
            flight = self._cache.get(key, limit)
        async for peer in flight.follow(limit):
            yield peer

    # -- extras for bootstrap (`/id`) and tests --------------------------------------------

    def listen_multiaddrs(self) -> list[str]:
        """This node's addresses as ``/ip4/<ip>/tcp/<port>/p2p/<id>`` strings."""
        return self._running().listen_multiaddrs()

    def peer_count(self) -> int:
        node = self._node
        return len(node.table) if node is not None and self._usable() else 0

    def peers(self) -> list[str]:
        """Peer ids in the routing table, sorted (a snapshot; empty unless running)."""
        node = self._node
        if node is None or not self._usable():
            return []
        return sorted(entry.b58 for entry in node.table.peers())  # one C-level copy: safe here

    def provider_records(self) -> int:
        """(key, provider) records this node stores for the cluster (its own keys not included)."""
        node = self._node
        return node.store.records if node is not None and self._usable() else 0

    def provider_refusals(self) -> dict[str, int]:
        """Records refused since start, by reason (see ``ProviderStore.refusals``); zeros unless running."""
        node = self._node
        return node.store.refusals() if node is not None and self._usable() else dict.fromkeys(REFUSALS, 0)

    def stream_refusals(self) -> dict[str, int]:
        """Inbound streams reset since start, by reason (limits.StreamGate.refusals, muxer.py)."""
        gate = self._node.gate.refusals() if self._node is not None else {"peer_limit": 0, "node_limit": 0}
        return {**gate, "connection_limit": self._guard.refused}

    async def connect(self, addr: str) -> str | None:
        """Dial one peer now (what a bootstrap round does for each address); returns its peer id."""
        node = self._running()
        pid = await self._thread.call(node.connect, addr)
        return None if pid is None else ID(pid).to_base58()

    async def in_node(self, fn: Callable[[DhtNode], Awaitable[None]]) -> None:
        """``await fn(node)`` in the trio thread: protocols of our own on this host (claim.py)."""
        await self._thread.call(fn, self._running())

    async def lookup_stats(self, key: str, *, limit: int = 3) -> tuple[list[Peer], LookupStats]:
        """An uncached lookup with its query statistics (benchmarks: hops, queries)."""
        found: list[Peer] = []
        stats = LookupStats()

        async def run(node: DhtNode) -> None:
            with trio.move_on_after(self._lookup_timeout):
                await node.find_providers(multihash(key), limit, found.append, stats)

        await self.in_node(run)
        return found, stats

    # -- internals -------------------------------------------------------------------------

    def _usable(self) -> bool:
        return self._state == "running" and self._failure is None and not self._main_lost

    def _running(self) -> DhtNode:
        if self._failure is not None or self._main_lost:
            why = repr(self._failure) if self._failure is not None else "its trio thread is ending"
            raise RoutingError(f"router stopped: {why}")
        if self._state != "running" or self._node is None:
            raise RoutingError(f"router is {self._state}")
        return self._node

    # -- supervision (callbacks on the event loop) -------------------------------------------

    def _fail(self, exc: BaseException) -> None:
        """Record the first unexpected end of the router (ignored once it is closing)."""
        if self._failure is not None or self._state == "closed":
            return
        log.debug("libp2p router stopped: %r", exc, exc_info=exc)
        self._failure = exc
        self._failed.set()

    def _main_ended(self, fut: asyncio.Future[None]) -> None:
        exc = None if fut.cancelled() else fut.exception()
        if fut.cancelled() or (exc is not None and _cancelled_only(exc)):
            # Only close() or the trio loop going down cancels it (py-libp2p's services raise
            # their cancellations in exception groups); the end of the loop says why it went down.
            self._main_lost = self._state != "closed"
            return
        self._fail(exc or RoutingError("the DHT's main task returned"))

    def _bootstrap_ended(self, task: asyncio.Task[None]) -> None:
        if not task.cancelled():  # only close() cancels it
            self._fail(task.exception() or RoutingError("the bootstrap task returned"))

    def _thread_ended(self, fut: Future[None]) -> None:
        self._fail(fut.exception() or RoutingError("the libp2p thread ended"))

    def _start_flight(self, key: str, flight: Flight) -> None:
        node = self._running()
        loop = asyncio.get_running_loop()
        timeout = self._lookup_timeout

        def emit(peer: Peer) -> None:
            loop.call_soon_threadsafe(flight.add, peer)

        async def run() -> None:
            with trio.move_on_after(timeout):
                await node.find_providers(multihash(key), flight.limit, emit)

        fut: asyncio.Future[object] = self._thread.submit(run)
        self._tasks.add(fut)

        def done(f: asyncio.Future[object]) -> None:
            self._tasks.discard(f)
            flight.finish()
            _consume(f)

        fut.add_done_callback(done)

    async def _bootstrap_loop(self) -> None:
        assert self._bootstrap is not None
        node = self._running()
        own = {a.split("/p2p/")[0] for a in node.listen_multiaddrs()}
        while True:
            try:
                addrs = [a for a in await self._bootstrap.peers() if a.split("/p2p/")[0] not in own]
            except SpegelError as exc:  # the source cannot be asked now: retried next round
                log.warning("bootstrap failed: %s", exc)
                addrs = []
            if addrs:
                results = await asyncio.gather(
                    *(self._thread.call(node.connect, a) for a in addrs), return_exceptions=True
                )
                for addr, res in zip(addrs, results, strict=True):
                    if isinstance(res, BaseException) and not isinstance(res, asyncio.CancelledError):
                        log.debug("bootstrap peer %s: %s", addr, res)
            await asyncio.sleep(self._bootstrap_interval * (6 if len(node.table) else 1))


def _set_result(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


def _set_exception(fut: asyncio.Future[None], exc: BaseException) -> None:
    if not fut.done():
        fut.set_exception(RoutingError(str(exc) or type(exc).__name__))


def _cancelled_only(exc: BaseException) -> bool:
    """True for trio's Cancelled, or an exception group of nothing else."""
    if isinstance(exc, BaseExceptionGroup):
        return all(_cancelled_only(inner) for inner in exc.exceptions)
    return isinstance(exc, trio.Cancelled)


def _consume(fut: asyncio.Future[object] | asyncio.Future[None]) -> None:
    """Retrieve a background future's outcome so asyncio never warns; unexpected errors are logged."""
    if fut.cancelled():
        return
    exc = fut.exception()
    if exc is not None:
        log.error("libp2p background task failed: %r", exc)
