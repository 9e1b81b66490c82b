"""MemoryRouter specifics (the shared contract is in tests/conformance/test_router.py)."""

from __future__ import annotations

import pytest

from spegel_py.errors import RoutingError
from spegel_py.routing.memory import MemoryNetwork, MemoryRouter


async def test_a_peer_id_joins_a_network_once() -> None:
    net = MemoryNetwork()
    MemoryRouter(net, peer_id="a")
    with pytest.raises(RoutingError):
        MemoryRouter(net, peer_id="a")


async def test_closing_removes_the_nodes_advertisements() -> None:
    net = MemoryNetwork()
    a, b = MemoryRouter(net, peer_id="a"), MemoryRouter(net, peer_id="b")
    await a.advertise(["k"])
    assert [p.peer_id async for p in b.lookup("k")] == ["a"]
    await a.close()
    assert [p async for p in b.lookup("k")] == []
    assert not b.ready()  # alone again, and not configured to be
