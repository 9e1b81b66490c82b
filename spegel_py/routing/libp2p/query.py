"""Iterative Kademlia lookups: providers of a key, and the peers closest to a key.

Kademlia's rule, as go-libp2p-kad-dht applies it: records of a key live at the ``k`` peers
closest to it (XOR of sha256), so a lookup asks the closest peers it knows, ``alpha`` at a time,
follows the closer peers each reply names, and ends when the ``k`` closest peers it has heard of
have all answered (a peer that fails drops out and the next one moves up), or, for providers,
when ``limit`` providers are found. The routing table holds ``k`` peers per bucket (see
:mod:`.table`), so each round at least halves the distance: ~log2(N / k) rounds, one when the
table knows the whole cluster.

The query reads the routing table, the record store and the address book it is given, and
sends requests through the ``ask`` function of its node, which owns the transport (py-libp2p in
:mod:`.dht`, an in-memory network in ``bench/dht_sim.py``) and keeps the table current: a reply
admits the peer, a failure evicts it. ``ask`` raises :class:`~spegel_py.errors.RoutingError` or
``trio.TooSlowError`` when a peer cannot answer.

A provider is offered only with an IP that an authenticated connection vouched for
(:mod:`.addrs`); one that a reply names but no connection vouches for is dialled first through
``reach`` (:mod:`.reach`), at most as many per reply as providers are still wanted, or skipped.
Closer peers a reply names are only hints for dialling them.
"""

from __future__ import annotations

import bisect
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import trio

from spegel_py.errors import RoutingError
from spegel_py.routing.base import Peer
from spegel_py.routing.libp2p import wire
from spegel_py.routing.libp2p.addrs import AddressBook
from spegel_py.routing.libp2p.keys import kad_id
from spegel_py.routing.libp2p.providers import ProviderStore
from spegel_py.routing.libp2p.table import RoutingTable

log = logging.getLogger(__name__)

# ask(peer id, request): that peer's reply; raises RoutingError or trio.TooSlowError
Ask = Callable[[bytes, wire.Message], Awaitable[wire.Message]]
# on_reply(peer id, reply, round): True ends the lookup
OnReply = Callable[[bytes, wire.Message, int], bool]
# reach(peer id): connect through its hints; True once a connection vouches for an IP of it
Reach = Callable[[bytes], Awaitable[bool]]


@dataclass(slots=True)
class LookupStats:
    found: int = 0
    queried: int = 0
    hops: int = 0  # rounds of queries until the last provider came (0: answered locally)


class ProviderQuery:
    """Lookups of one node; any number may run at once (trio)."""

    def __init__(
        self,
        *,
        self_id: bytes,
        table: RoutingTable,
        store: ProviderStore,
        book: AddressBook,
        ask: Ask,
        reach: Reach | None = None,
        k: int,
        alpha: int,
    ) -> None:
        self._self_id = self_id
        self._table = table
        self._store = store
        self._book = book
        self._ask = ask
        self._reach = reach
        self._k = k
        self._alpha = alpha

    def local(self, key: bytes, limit: int) -> list[Peer]:
        """Providers from this node's own records, safe to call from the asyncio thread.

        Only reads: single dict lookups are atomic under the GIL, and if the trio thread changes
        the key's record set mid-read (RuntimeError), the caller just asks the trio thread. This
        skips two thread hand-offs when the answer is local (always, in clusters of <= k nodes).
        """
        try:
            pids = self._store.get(key)
        except RuntimeError:
            return []
        out = []
        for pid in pids:
            if pid != self._self_id and (peer := self._book.to_peer(pid)) is not None:
                out.append(peer)
                if len(out) >= limit:
                    break
        return out

    async def run(
        self, key: bytes, limit: int, emit: Callable[[Peer], None], stats: LookupStats
    ) -> LookupStats:
        """Call ``emit`` for up to ``limit`` providers of ``key`` (never this node) as they are found.

        The caller bounds the whole lookup with a deadline (cancellation).
        """
        st = stats
        book = self._book
        seen = {self._self_id}

        def offer(pid: bytes) -> None:
            if pid in seen or st.found >= limit:
                return
            peer = book.to_peer(pid)  # only an IP a connection vouched for (addrs.py)
            if peer is not None:
                seen.add(pid)
                st.found += 1
                emit(peer)

        async def reach_and_offer(pid: bytes) -> None:
            assert self._reach is not None
            if await self._reach(pid):
                seen.discard(pid)
                offer(pid)
                if st.found >= limit:
                    dials.cancel_scope.cancel()  # enough: the lookup is over too

        def offer_named(info: wire.PeerInfo, budget: int) -> int:
            """A provider a reply names: offered if vouched for, else dialled through the reply's
            addresses (hints) while ``budget`` lasts; returns the budget left."""
            if info.id in seen or info.id == self._self_id:
                return budget
            if book.vouched_ip(info.id) is not None:
                offer(info.id)
            elif self._reach is not None and budget > 0 and book.hint(info.id, info.addrs):
                seen.add(info.id)  # dialled once per lookup; offered when the dial proves it
                dials.start_soon(reach_and_offer, info.id)
                budget -= 1
            return budget

        for pid in self._store.get(key):
            offer(pid)
        if st.found >= limit or limit <= 0:
            return st

        def on_reply(pid: bytes, reply: wire.Message, depth: int) -> bool:
            before = st.found
            budget = limit - st.found  # dials this reply may start (at most wire.MAX_PROVIDERS)
            for info in reply.providers:
                budget = offer_named(info, budget)
            if st.found > before:
                st.hops = max(st.hops, depth)
            return st.found >= limit

        async with trio.open_nursery() as dials:  # the lookup, and the dials its replies start
            await self._iterate(key, wire.Message(wire.GET_PROVIDERS, key=key), on_reply, st)
            if st.found >= limit:
                dials.cancel_scope.cancel()
        return st

    async def closest(self, key: bytes, stats: LookupStats | None = None) -> list[bytes]:
        """The ``k`` peers closest to ``key`` that answered a FIND_NODE lookup, nearest first
        (where records of ``key`` go)."""
        st = stats if stats is not None else LookupStats()
        ranked = await self._iterate(key, wire.Message(wire.FIND_NODE, key=key), lambda *_: False, st)
        return [pid for _, pid in ranked[: self._k]]

    async def _iterate(
        self, key: bytes, request: wire.Message, on_reply: OnReply, st: LookupStats
    ) -> list[tuple[int, bytes]]:
        """Ask the closest known peers, ``alpha`` at a time, until the ``k`` closest heard of
        have answered or ``on_reply`` says stop; returns the peers that answered, by distance."""
        target = kad_id(key)
        k = self._k
        ranked = sorted((e.kad ^ target, e.id) for e in self._table.closest(target, k))
        dist_of = {pid: d for d, pid in ranked}
        dist_of[self._self_id] = -1
        depth_of = dict.fromkeys((pid for _, pid in ranked), 1)
        queried: set[bytes] = set()
        answered: list[tuple[int, bytes]] = []
        changed = trio.Event()
        inflight = 0

        def next_peer() -> bytes | None:
            for _, pid in ranked[:k]:
                if pid not in queried:
                    return pid
            return None

        async def worker() -> None:
            nonlocal inflight, changed
            while True:
                pid = next_peer()
                if pid is None:
                    if inflight == 0:
                        return
                    await changed.wait()
                    continue
                queried.add(pid)
                inflight += 1
                try:
                    reply = await self._ask(pid, request)
                except (RoutingError, trio.TooSlowError) as exc:
                    log.debug("%s at %s failed: %s", request.type, pid.hex()[-12:], exc)
                    reply = None
                finally:
                    inflight -= 1
                st.queried += 1
                if reply is None:
                    ranked.remove((dist_of[pid], pid))  # the next closest takes its place
                else:
                    depth = depth_of[pid]
                    bisect.insort(answered, (dist_of[pid], pid))
                    if on_reply(pid, reply, depth):
                        nursery.cancel_scope.cancel()  # enough: stop the other workers
                        return
                    for info in reply.closer:
                        if info.id not in dist_of:
                            d = dist_of[info.id] = kad_id(info.id) ^ target
                            self._book.hint(info.id, info.addrs)  # for dialling it; never its own address
                            depth_of[info.id] = depth + 1
                            bisect.insort(ranked, (d, info.id))
                changed.set()
                changed = trio.Event()

        async with trio.open_nursery() as nursery:
            for _ in range(self._alpha):
                nursery.start_soon(worker)
        return answered
