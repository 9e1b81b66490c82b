"""The provider lookup: local records first, then the closest peers, ``alpha`` at a time.

Kademlia's rule, as go-libp2p-kad-dht applies it: records of a key live at the ``k`` peers
closest to it (XOR of sha256), so the query asks those, nearest first, follows any closer peers
they name, and ends when ``limit`` providers are found or the ``k`` closest known peers have all
answered. With the whole cluster in the routing table (see :mod:`.table`) that is one round.

The query reads the routing table, the record store and the address book it is given, and asks
peers through the ``ask`` function of the node (:mod:`.dht`), which owns the connections.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass

import trio
from libp2p.peer.id import ID

from spegel_py.errors import RoutingError
from spegel_py.routing.base import Peer
from spegel_py.routing.libp2p import wire
from spegel_py.routing.libp2p.addrs import AddressBook
from spegel_py.routing.libp2p.keys import kad_id
from spegel_py.routing.libp2p.providers import ProviderStore
from spegel_py.routing.libp2p.table import RoutingTable

log = logging.getLogger(__name__)

# ask(peer id, key): that peer's GET_PROVIDERS reply; raises RoutingError or trio.TooSlowError
Ask = Callable[[bytes, bytes], Awaitable[wire.Message]]


@dataclass(slots=True)
class LookupStats:
    found: int = 0
    queried: int = 0
    hops: int = 0  # rounds of queries until the last provider came (0: answered locally)


class ProviderQuery:
    """Finds providers of a key; one instance per node, any number of lookups at once (trio)."""

    def __init__(
        self,
        *,
        self_id: bytes,
        table: RoutingTable,
        store: ProviderStore,
        book: AddressBook,
        ask: Ask,
        k: int,
        alpha: int,
    ) -> None:
        self._self_id = self_id
        self._table = table
        self._store = store
        self._book = book
        self._ask = ask
        self._k = k
        self._alpha = alpha

    async def run(
        self, key: bytes, limit: int, emit: Callable[[Peer], None], stats: LookupStats
    ) -> LookupStats:
        """Call ``emit`` for up to ``limit`` providers of ``key`` (never this node) as they are found.

        The caller bounds the whole lookup with a deadline (cancellation).
        """
        st = stats
        book = self._book
        seen = {self._self_id}

        def offer(pid: bytes, addrs: Iterable[bytes] = ()) -> None:
            if pid in seen or st.found >= limit:
                return
            peer = book.to_peer(pid, addrs)
            if peer is not None:
                seen.add(pid)
                st.found += 1
                emit(peer)

        for pid in self._store.get(key):
            offer(pid)
        if st.found >= limit or limit <= 0:
            return st
        target = kad_id(key)
        k = self._k
        candidates = {e.id: (e.kad ^ target, 1) for e in self._table.closest(target, k)}
        queried: set[bytes] = set()
        changed = trio.Event()
        inflight = 0

        def next_candidate() -> tuple[bytes, int] | None:
            ranked = sorted((d, pid) for pid, (d, _) in candidates.items())[:k]
            for _, pid in ranked:
                if pid not in queried:
                    return pid, candidates[pid][1]
            return None

        async def worker() -> None:
            nonlocal inflight, changed
            while st.found < limit:
                nxt = next_candidate()
                if nxt is None:
                    if inflight == 0:
                        return
                    ev = changed
                    await ev.wait()
                    continue
                pid, depth = nxt
                queried.add(pid)
                inflight += 1
                try:
                    reply = await self._ask(pid, key)
                except (RoutingError, trio.TooSlowError) as exc:
                    log.debug("GET_PROVIDERS at %s failed: %s", ID(pid), exc)
                    reply = None
                finally:
                    inflight -= 1
                st.queried += 1
                if reply is not None:
                    before = st.found
                    for info in reply.providers:
                        offer(info.id, info.addrs)
                    if st.found > before:
                        st.hops = max(st.hops, depth)
                    for info in reply.closer:
                        if info.id != self._self_id and info.id not in candidates:
                            book.note(info.id, info.addrs)
                            candidates[info.id] = (kad_id(info.id) ^ target, depth + 1)
                changed.set()
                changed = trio.Event()
            nursery.cancel_scope.cancel()  # limit reached: stop the other workers

        async with trio.open_nursery() as nursery:
            for _ in range(self._alpha):
                nursery.start_soon(worker)
        return st
