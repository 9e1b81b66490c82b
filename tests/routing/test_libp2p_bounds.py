"""Unit tests of the bounds against hostile peers: the record store's limits, the decoder's
entry bounds, the inbound stream gate (issue 10, item 3; real hosts in test_libp2p_hostile.py)."""

from __future__ import annotations

import time
import tracemalloc

import pytest

from spegel_py.routing.libp2p import wire
from spegel_py.routing.libp2p.keys import multihash
from spegel_py.routing.libp2p.limits import RecordLimits, StreamGate, StreamLimits
from spegel_py.routing.libp2p.providers import ProviderStore


def keys(n: int, prefix: str = "") -> list[bytes]:
    return [multihash(f"{prefix}{i}") for i in range(n)]


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.mark.parametrize(
    ("key", "accepted"),
    [
        (multihash("a"), True),
        (multihash("a")[:33], False),  # short
        (multihash("a") + b"\x00", False),  # long
        (b"\x13\x20" + multihash("a")[2:], False),  # sha2-512's code with a 32-byte digest
        (b"\x12\x21" + multihash("a")[2:], False),  # a length that does not match
        (b"", False),
        (b"\x12\x20" + b"x" * (4 << 10), False),  # keys up to the frame size were stored once
    ],
    ids=["multihash", "short", "long", "other-code", "wrong-length", "empty", "huge"],
)
def test_only_sha256_multihash_keys_are_stored(key: bytes, accepted: bool) -> None:
    store = ProviderStore(ttl=10)
    assert store.add(key, b"p") is accepted
    assert store.records == int(accepted) == len(store.get(key))
    want = {"invalid_key": int(not accepted), "peer_limit": 0, "key_limit": 0, "evicted": 0}
    assert store.refusals() == want


@pytest.mark.parametrize(
    ("batches", "per_peer", "held", "refused"),
    [
        ([("a", 5)], 5, {"a": 5}, 0),
        ([("a", 8)], 5, {"a": 5}, 3),
        ([("a", 3), ("a", 3)], 5, {"a": 5}, 1),  # the same keys again: refreshes, but one is new
        ([("a", 5), ("b", 5)], 5, {"a": 5, "b": 5}, 0),  # the limit is per peer
        ([("a", 9), ("b", 2)], 5, {"a": 5, "b": 2}, 4),
    ],
    ids=["at-limit", "over", "refresh-then-new", "two-peers", "one-over-one-under"],
)
def test_a_peer_holds_at_most_its_limit(
    batches: list[tuple[str, int]], per_peer: int, held: dict[str, int], refused: int
) -> None:
    store = ProviderStore(ttl=10, limits=RecordLimits(total=1000, per_peer=per_peer))
    for i, (peer, n) in enumerate(batches):
        store.add_many(keys(n, prefix=f"{i}-" if peer == "a" and i else ""), peer.encode())
    assert {p: store.held_by(p.encode()) for p in held} == held
    assert store.refusals()["peer_limit"] == refused
    assert store.records == sum(held.values())


def test_a_refresh_at_the_peer_limit_is_accepted() -> None:
    store = ProviderStore(ttl=10, limits=RecordLimits(total=100, per_peer=3))
    assert store.add_many(keys(3), b"a") == 0
    assert store.add_many(keys(3), b"a") == 0  # the same three, refreshed
    assert store.add(multihash("new"), b"a") is False


def test_past_the_total_the_most_prolific_peers_oldest_records_go() -> None:
    store = ProviderStore(ttl=10, limits=RecordLimits(total=160, per_peer=100))
    honest = keys(20, prefix="honest")
    store.add_many(honest, b"honest")
    flood = keys(100, prefix="flood")
    store.add_many(flood, b"flood")
    store.add_many(keys(40, prefix="other"), b"other")  # 160: at the total, nothing dropped yet
    assert store.records == 160 and store.refusals()["evicted"] == 0
    store.add(multihash("one more"), b"other")  # past it: evict = 10 records are freed
    assert store.records == 150 and store.refusals()["evicted"] == 11
    assert store.held_by(b"flood") == 89 and store.held_by(b"honest") == 20
    assert all(store.get(k) == [] for k in flood[:11])  # the flood's oldest went
    assert all(store.get(k) == [b"flood"] for k in flood[11:])
    assert all(store.get(k) == [b"honest"] for k in honest)


def test_expired_records_make_room_before_any_live_one() -> None:
    clock = Clock()
    store = ProviderStore(ttl=10, clock=clock, limits=RecordLimits(total=32, per_peer=32))
    store.add_many(keys(16, prefix="old"), b"a")
    clock.now += 11
    store.add_many(keys(16, prefix="new"), b"b")
    store.add(multihash("x"), b"b")
    assert store.records == 17 and store.refusals()["evicted"] == 0 and store.held_by(b"a") == 0


def test_records_stay_within_the_total_under_a_flood_of_many_peers() -> None:
    limits = RecordLimits(total=2000, per_peer=600)
    store = ProviderStore(ttl=10, limits=limits)
    store.add_many(keys(50, prefix="honest"), b"honest")
    for peer in range(20):
        for i in range(0, 1000, 100):
            store.add_many(keys(100, prefix=f"{peer}-{i}-"), f"sybil{peer}".encode())
            assert store.records <= limits.total
    assert store.held_by(b"honest") == 50  # never the most prolific: never evicted
    assert sum(store.refusals().values()) > 0


def test_records_spread_over_many_peer_ids_make_room_oldest_first_in_one_pass() -> None:
    """No peer holds a batch's worth (evict = 100): the oldest records of anyone go, and the
    cost stays one pass per batch (20,000 peer ids would be 20,000 passes otherwise)."""
    store = ProviderStore(ttl=10, limits=RecordLimits(total=1600, per_peer=10))
    first = keys(5, prefix="first")
    store.add_many(first, b"first")
    started = time.perf_counter()
    for peer in range(20_000):
        store.add(multihash(f"sybil{peer}"), f"sybil{peer}".encode())
        assert store.records <= 1600
    assert time.perf_counter() - started < 2.0
    assert all(store.get(k) == [] for k in first)
    assert store.get(multihash("sybil19999")) == [b"sybil19999"]
    assert store.refusals()["evicted"] == 20_005 - store.records


# -- the decoder ----------------------------------------------------------------------------


def _peer_field(tag: int, peer: wire.PeerInfo) -> bytes:
    return wire.uvarint(tag) + wire.frame(wire.encode_peer(peer))


PEER = wire.PeerInfo(b"\x00\x24" + b"p" * 36, (b"\x04\x7f\x00\x00\x01\x06\x13\x89",))
FOUR_MIB = 4 << 20


@pytest.mark.parametrize(
    ("body", "closer", "providers", "addrs"),
    [
        # 4 MiB of empty provider entries: two million, were they all decoded
        (b"\x08\x03" + b"\x4a\x00" * ((FOUR_MIB - 2) // 2), 0, wire.MAX_PROVIDERS, 0),
        (b"\x08\x03" + b"\x42\x00" * ((FOUR_MIB - 2) // 2), wire.MAX_CLOSER, 0, 0),
        # many real peers: the first k closer, then the first providers
        (b"\x08\x03" + _peer_field(0x42, PEER) * 500 + _peer_field(0x4A, PEER) * 500, wire.MAX_CLOSER, 0, 1),
        (b"\x08\x03" + _peer_field(0x4A, PEER) * 5000, 0, wire.MAX_PROVIDERS, 1),
        # one peer with a million empty addresses
        (b"\x08\x03\x4a" + wire.frame(b"\x0a\x01p" + b"\x12\x00" * (1 << 20)), 0, 1, wire.MAX_ADDRS),
        # two million unknown varint fields
        (b"\x08\x03" + b"\x50\x00" * ((FOUR_MIB - 2) // 2), 0, 0, 0),
    ],
    ids=["empty-providers", "empty-closer", "closer-then-providers", "providers", "empty-addrs", "unknown"],
)
def test_decoding_a_hostile_body_keeps_a_bounded_number_of_entries(
    body: bytes, closer: int, providers: int, addrs: int
) -> None:
    tracemalloc.start()
    try:
        started = time.perf_counter()
        msg = wire.decode(body)
        elapsed = time.perf_counter() - started
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert msg.type == wire.GET_PROVIDERS
    assert (len(msg.closer), len(msg.providers)) == (closer, providers)
    assert max((len(p.addrs) for p in msg.closer + msg.providers), default=0) == addrs
    assert elapsed < 0.05  # all of it: two million entries took seconds
    assert peak < 256 << 10  # a few dozen objects, not millions (the body itself is not counted)


def test_an_honest_reply_decodes_whole() -> None:
    msg = wire.Message(
        wire.GET_PROVIDERS, key=multihash("a"), closer=[PEER] * wire.MAX_CLOSER, providers=[PEER] * 5
    )
    assert wire.decode(wire.encode(msg)) == msg


def test_a_truncated_body_is_still_an_error() -> None:
    body = wire.encode(wire.Message(wire.GET_PROVIDERS, key=multihash("a"), providers=[PEER]))
    with pytest.raises(wire.WireError):
        wire.decode(body[:-3])


@pytest.mark.parametrize(
    ("max_message", "length", "ok"),
    [(wire.MAX_REQUEST, wire.MAX_REQUEST, True), (wire.MAX_REQUEST, wire.MAX_REQUEST + 1, False),
     (wire.MAX_MESSAGE, wire.MAX_MESSAGE, True), (wire.MAX_MESSAGE, wire.MAX_MESSAGE + 1, False)],
)  # fmt: skip
def test_the_deframer_refuses_a_length_over_its_bound_before_buffering(
    max_message: int, length: int, ok: bool
) -> None:
    deframer = wire.Deframer(max_message)
    if ok:
        assert deframer.feed(wire.uvarint(length) + b"x" * 10) == []
    else:
        with pytest.raises(wire.WireError):
            deframer.feed(wire.uvarint(length))


# -- the stream gate -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("opens", "admitted"),
    [
        (["a"] * 3, [True] * 3),
        (["a"] * 4, [True, True, True, False]),  # per peer: 3
        (["a", "b", "c", "d", "e", "f"], [True] * 5 + [False]),  # in total: 5
        (["a", "a", "a", "a", "b"], [True, True, True, False, True]),  # another peer still served
    ],
    ids=["within", "per-peer", "total", "other-peer"],
)
def test_the_stream_gate_admits_within_its_limits(opens: list[str], admitted: list[bool]) -> None:
    gate = StreamGate(StreamLimits(per_peer=3, total=5))
    assert [gate.enter(p.encode()) for p in opens] == admitted
    assert gate.refused == admitted.count(False)
    for p, ok in zip(opens, admitted, strict=True):
        if ok:
            gate.leave(p.encode())
    assert gate.open() == 0 and gate.enter(b"a")


def test_a_key_holds_at_most_its_limit_of_providers() -> None:
    store = ProviderStore(ttl=10, limits=RecordLimits(total=1000, per_peer=100, per_key=3))
    key = multihash("popular")
    assert [store.add(key, f"p{i}".encode()) for i in range(5)] == [True, True, True, False, False]
    assert store.add(key, b"p0")  # a provider already there refreshes its record
    assert sorted(store.get(key)) == [b"p0", b"p1", b"p2"]
    assert store.refusals()["key_limit"] == 2 and store.records == 3
