"""The provider lookup: local records first, then the closest peers, ``alpha`` at a time.

Kademlia's rule, as go-libp2p-kad-dht applies it: records of a key live at the ``k`` peers
closest to it (XOR of sha256), so the query asks those, nearest first, follows any closer peers
they name, and ends when ``limit`` providers are found or the ``k`` closest known peers have all
answered. With the whole cluster in the routing table (see :mod:`.table`) that is one round.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import trio
from libp2p.peer.id import ID

from spegel_py.errors import RoutingError
from spegel_py.routing.base import Peer
from spegel_py.routing.libp2p.keys import kad_id

if TYPE_CHECKING:
    from spegel_py.routing.libp2p.dht import DhtNode

log = logging.getLogger(__name__)


@dataclass(slots=True)
class LookupStats:
    found: int = 0
    queried: int = 0
    hops: int = 0  # rounds of queries until the last provider came (0: answered locally)


async def find_providers(
    node: DhtNode, key: bytes, limit: int, emit: Callable[[Peer], None], stats: LookupStats
) -> LookupStats:
    """Call ``emit`` for up to ``limit`` providers of ``key`` (never ``node`` itself) as they are found.

    The caller bounds the whole lookup with a deadline (cancellation).
    """
    st = stats
    seen = {node.self_id}

    def offer(pid: bytes, addrs: Iterable[bytes] = ()) -> None:
        if pid in seen or st.found >= limit:
            return
        peer = node.to_peer(pid, addrs)
        if peer is not None:
            seen.add(pid)
            st.found += 1
            emit(peer)

    for pid in node.store.get(key):
        offer(pid)
    if st.found >= limit or limit <= 0:
        return st
    target = kad_id(key)
    k = node.options.k
    candidates = {e.id: (e.kad ^ target, 1) for e in node.table.closest(target, k)}
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
                reply = await node.ask_providers(pid, key)
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
                    if info.id != node.self_id and info.id not in candidates:
                        node.note_addrs(info.id, info.addrs)
                        candidates[info.id] = (kad_id(info.id) ^ target, depth + 1)
            changed.set()
            changed = trio.Event()
        nursery.cancel_scope.cancel()  # limit reached: stop the other workers

    async with trio.open_nursery() as nursery:
        for _ in range(node.options.alpha):
            nursery.start_soon(worker)
    return st
