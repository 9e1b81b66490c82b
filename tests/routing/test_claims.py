"""The claim book (one winner per key, leases, hand-over) and the in-memory rendezvous."""

from __future__ import annotations

import pytest
from routingsupport import Clock

from spegel_py.errors import RoutingError
from spegel_py.routing.base import Peer
from spegel_py.routing.claims import ClaimBook, Rendezvous
from spegel_py.routing.memoryclaims import ClaimNetwork, distance

KEY = "sha256:" + "ab" * 32
A, B, C = (Peer(f"node-{n}", f"10.0.0.{i}", 5000) for i, n in enumerate("abc", 1))


def test_first_claimant_wins_and_the_others_are_told_who() -> None:
    clock = Clock()
    book = ClaimBook(lease=10.0, clock=clock)
    first = book.decide(KEY, A)
    clock.now += 4.0
    second = book.decide(KEY, B)
    assert first.won and first.winner == A
    assert not second.won and second.winner == A and second.expires_in == pytest.approx(6.0)
    assert book.decide("sha256:" + "cd" * 32, B).won  # claims are per key


@pytest.mark.parametrize(
    ("advance", "failed", "b_wins"),
    [
        (9.9, None, False),  # the lease still holds
        (10.0, None, True),  # the lease ended: the next claimant wins
        (1.0, "node-a", True),  # the winner was found gone: handed over at once
        (1.0, "node-c", False),  # naming someone else changes nothing
    ],
)
def test_lease_and_hand_over(advance: float, failed: str | None, b_wins: bool) -> None:
    clock = Clock()
    book = ClaimBook(lease=10.0, clock=clock)
    book.decide(KEY, A)
    clock.now += advance
    verdict = book.decide(KEY, B, failed=failed)
    assert verdict.won is b_wins
    assert verdict.winner == (B if b_wins else A)


def test_the_winner_asking_again_renews_its_lease() -> None:
    clock = Clock()
    book = ClaimBook(lease=10.0, clock=clock)
    book.decide(KEY, A)
    clock.now += 8.0
    assert book.decide(KEY, A).won  # containerd retried on the winner: still the winner
    clock.now += 8.0
    assert not book.decide(KEY, B).won  # 16 s after the first claim, the renewed lease holds


def test_the_book_is_bounded_and_sheds_expired_claims() -> None:
    clock = Clock()
    book = ClaimBook(lease=10.0, max_claims=3, clock=clock)
    for i in range(5):
        book.decide(f"k{i}", A)
    assert len(book) == 3
    assert book.decide("k0", B).won  # the oldest went first: its key is won again
    clock.now += 11.0
    book.decide("k9", B)
    assert len(book) == 1  # every other lease ended


async def test_memory_rendezvous_every_node_asks_the_closest_member() -> None:
    net = ClaimNetwork()
    nodes = [net.join(p) for p in (A, B, C)]
    assert all(isinstance(n, Rendezvous) for n in nodes)
    verdicts = [await n.claim(KEY) for n in nodes]
    closest = min((A, B, C), key=lambda p: distance(KEY, p.peer_id))
    assert {target for _, target in net.asked} == {closest.peer_id}
    assert [v.won for v in verdicts] == [True, False, False]
    assert all(v.winner == A for v in verdicts)


async def test_memory_rendezvous_nodes_that_disagree_may_both_win() -> None:
    """Two nodes that know different members ask different rendezvous: each wins (one more
    upstream copy), which is the documented cost of disagreement, never a hang."""
    net = ClaimNetwork()
    a, b, c = (net.join(p) for p in (A, B, C))
    closest = min((A, B, C), key=lambda p: distance(KEY, p.peer_id))
    others = [p.peer_id for p in (A, B, C) if p != closest]
    # a node that has not learned of the closest member yet
    blind = next(n for n in (a, b, c) if n.peer.peer_id != closest.peer_id)
    seeing = next(n for n in (a, b, c) if n is not blind and n.peer.peer_id != closest.peer_id)
    blind.knows = set(others)
    assert (await seeing.claim(KEY)).won
    assert (await blind.claim(KEY)).won
    assert len({target for _, target in net.asked}) == 2


async def test_memory_rendezvous_that_is_down_raises() -> None:
    net = ClaimNetwork()
    nodes = [net.join(p) for p in (A, B)]
    closest = min((A, B), key=lambda p: distance(KEY, p.peer_id))
    net.down.add(closest.peer_id)
    asker = next(n for n in nodes if n.peer != closest)
    with pytest.raises(RoutingError):
        await asker.claim(KEY)
