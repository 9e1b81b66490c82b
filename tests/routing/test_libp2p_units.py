"""Unit tests of the libp2p router's pure parts: key derivation, wire codec, record store, identity."""

from __future__ import annotations

import base64
import hashlib
import stat
from pathlib import Path

import pytest

from spegel_py.errors import ConfigurationError
from spegel_py.routing.libp2p import wire
from spegel_py.routing.libp2p.addrs import addr_ip, addr_port, tcp_addr
from spegel_py.routing.libp2p.host import peer_id_of
from spegel_py.routing.libp2p.identity import load_or_create_seed
from spegel_py.routing.libp2p.keys import cid, kad_id, multihash
from spegel_py.routing.libp2p.providers import ProviderStore
from spegel_py.routing.libp2p.table import RoutingTable

KEYS = [
    "sha256:b5b2b2c507a0944348e0303114d8d93aaaa081732b86451d9bce1f432a537bc7",
    "docker.io/library/nginx:1.25",
    "127.0.0.1:5000/team/app:v1",
    "ghcr.io/ünïcode/x:y",
]


@pytest.mark.parametrize("key", KEYS)
def test_key_derivation_matches_an_independent_computation(key: str) -> None:
    digest = hashlib.sha256(key.encode("utf-8")).digest()
    assert multihash(key) == bytes([0x12, 0x20]) + digest
    raw_cid = bytes([0x01, 0x55]) + bytes([0x12, 0x20]) + digest
    assert cid(key) == "b" + base64.b32encode(raw_cid).decode().lower().rstrip("=")


def test_key_derivation_fixed_vector() -> None:
    # sha256("a") is the well-known ca9781...; the CID text was computed once with python's base64
    assert multihash("a").hex() == "1220ca978112ca1bbdcafac231b39a23dc4da786eff8147c4e72b9807785afee48bb"
    assert cid("a") == "bafkreigks6arfsq3xxfpvqrrwonchxcnu6do76auprhhfomao6c273sixm"


def test_kad_id_is_sha256_of_the_bytes() -> None:
    assert kad_id(b"x") == int(hashlib.sha256(b"x").hexdigest(), 16)


MESSAGES = [
    wire.Message(wire.FIND_NODE, key=b"\x00\x24" + b"k" * 36),
    wire.Message(wire.PING),
    wire.Message(
        wire.GET_PROVIDERS,
        key=multihash("a"),
        providers=[wire.PeerInfo(b"p1", (tcp_addr("10.1.2.3", 4001),))],
        closer=[wire.PeerInfo(b"p2", (tcp_addr("::1", 5), tcp_addr("10.0.0.1", 1)), wire.CONNECTED)],
    ),
]


@pytest.mark.parametrize("msg", MESSAGES)
def test_wire_roundtrip(msg: wire.Message) -> None:
    assert wire.decode(wire.encode(msg)) == msg


def test_add_provider_fast_path_equals_generic_encoding() -> None:
    me = wire.PeerInfo(b"\x00\x24" + b"i" * 36, (tcp_addr("127.0.0.5", 5001),))
    head, tail = wire.add_provider_prefix(wire.encode_peer(me))
    key = multihash("sha256:x")
    assert head + key + tail == wire.frame(
        wire.encode(wire.Message(wire.ADD_PROVIDER, key=key, providers=[me]))
    )


def test_decode_skips_unknown_fields() -> None:
    body = (
        wire.encode(wire.Message(wire.GET_PROVIDERS, key=b"k")) + b"\x1a\x03abc" + b"\x50\x07"
    )  # record, cluster level
    assert wire.decode(body) == wire.Message(wire.GET_PROVIDERS, key=b"k")


@pytest.mark.parametrize("bad", [b"\x12\x05ab", b"\x08", b"\x0b"])
def test_decode_rejects_garbage(bad: bytes) -> None:
    with pytest.raises(wire.WireError):
        wire.decode(bad)


@pytest.mark.parametrize("split", [1, 2, 3, 7, 100])
def test_deframer_reassembles_any_split(split: int) -> None:
    bodies = [wire.encode(m) for m in MESSAGES] * 3
    stream = b"".join(wire.frame(b) for b in bodies)
    deframer = wire.Deframer()
    out: list[bytes] = []
    for i in range(0, len(stream), split):
        out.extend(deframer.feed(stream[i : i + split]))
    assert out == bodies


def test_deframer_rejects_oversized_messages() -> None:
    with pytest.raises(wire.WireError):
        wire.Deframer().feed(wire.uvarint(wire.MAX_MESSAGE + 1))


K, J, H = multihash("k"), multihash("j"), multihash("h")  # records are kept only for multihashes


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_provider_records_expire_and_refresh() -> None:
    clock = Clock()
    store = ProviderStore(ttl=10, clock=clock)
    store.add(K, b"a")
    clock.now += 6
    store.add(K, b"b")
    assert sorted(store.get(K)) == [b"a", b"b"]
    clock.now += 5  # a expired, b still valid
    assert store.get(K) == [b"b"]
    store.add(K, b"b")  # refreshed
    clock.now += 9
    assert store.get(K) == [b"b"]
    assert store.expire() == 1 and len(store) == 1
    clock.now += 2
    assert store.get(K) == [] and store.expire() == 1 and len(store) == 0


def test_identity_is_created_once_and_kept(tmp_path: Path) -> None:
    seed = load_or_create_seed(tmp_path)
    key_file = tmp_path / "private.key"
    assert key_file.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert load_or_create_seed(tmp_path) == seed
    assert peer_id_of(seed).startswith("12D3KooW")


def test_identity_rejects_non_ed25519_keys(tmp_path: Path) -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    key = ec.generate_private_key(ec.SECP256R1())
    (tmp_path / "private.key").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    with pytest.raises(ConfigurationError):
        load_or_create_seed(tmp_path)


@pytest.mark.parametrize(("ip", "port"), [("10.0.0.7", 5001), ("127.0.0.42", 1), ("fd00::1", 65535)])
def test_binary_multiaddrs(ip: str, port: int) -> None:
    raw = tcp_addr(ip, port)
    assert (addr_ip(raw), addr_port(raw)) == (ip, port)


def test_unspecified_addresses_have_no_ip() -> None:
    assert addr_ip(tcp_addr("0.0.0.0", 1)) is None


def test_routing_table_orders_by_xor_distance() -> None:
    table = RoutingTable(b"self")
    for i in range(30):
        table.add(f"peer{i}".encode(), f"p{i}")
    target = kad_id(b"key")
    closest = table.closest(target, 20)
    want = sorted((kad_id(f"peer{i}".encode()) ^ target, f"peer{i}".encode()) for i in range(30))[:20]
    assert [e.id for e in closest] == [pid for _, pid in want]
    assert b"peer3" not in [e.id for e in table.closest(target, 40, exclude=b"peer3")]


@pytest.mark.parametrize(
    ("adds", "records"),
    [
        ([(K, b"a")], 1),
        ([(K, b"a"), (K, b"a")], 1),  # a refresh is not a new record
        ([(K, b"a"), (K, b"b")], 2),  # a second provider of the same key
        ([(K, b"a"), (K, b"b"), (K, b"b"), (K, b"c")], 3),
        ([(K, b"a"), (J, b"a"), (H, b"b")], 3),
    ],
    ids=["one", "refresh", "two-providers", "three-providers", "three-keys"],
)
def test_provider_records_are_counted_per_key_and_provider(
    adds: list[tuple[bytes, bytes]], records: int
) -> None:
    clock = Clock()
    store = ProviderStore(ttl=10, clock=clock)
    for key, provider in adds:
        store.add(key, provider)
    assert store.records == records == sum(len(store.get(k)) for k in {k for k, _ in adds})
    clock.now += 11
    assert store.expire() == records and store.records == 0


def test_provider_record_count_follows_partial_expiry_and_batches() -> None:
    clock = Clock()
    store = ProviderStore(ttl=10, clock=clock)
    store.add_many([K, J], b"a")
    clock.now += 6
    store.add_many([K, J, H], b"b")
    assert store.records == 5
    clock.now += 5  # a's two records expired, b's three are valid
    assert store.expire() == 2 and store.records == 3
    store.add_many([K], b"b")  # refreshed: still three
    assert store.records == 3
