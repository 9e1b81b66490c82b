"""The address book's trust rules (issue 10, item 3; docs/operations.md "Router address trust"):
own addresses come from authenticated connections, third-party addresses are dial hints only,
refused IP classes, bounds and pruning. Real hosts in test_libp2p_hostile_process.py."""

from __future__ import annotations

import pytest
from routingsupport import Clock

from spegel_py.routing.base import Peer
from spegel_py.routing.libp2p import addrs
from spegel_py.routing.libp2p.addrs import AddressBook, tcp_addr
from spegel_py.routing.libp2p.host import peer_id_of

PID = bytes.fromhex("0024080112208a88e3dd7409f195fd52db2d3cba5d72ca6709bf1d94121bf3748801b40f6f5c")
B58 = peer_id_of(b"\x01" * 32)


@pytest.mark.parametrize(
    ("announced", "conn_ip", "stored"),
    [
        ([tcp_addr("10.0.0.7", 5001)], "10.0.0.7", (tcp_addr("10.0.0.7", 5001),)),
        ([tcp_addr("10.0.0.7", 5001)], None, ()),  # no connection vouches for it: nothing stored
        ([tcp_addr("0.0.0.0", 5001)], "10.0.0.8", (tcp_addr("10.0.0.8", 5001),)),
        ([tcp_addr("192.0.2.1", 5001)], "10.0.0.8", (tcp_addr("10.0.0.8", 5001),)),  # its port, our IP
        ([b"\x2f\x00"], "10.0.0.8", ()),  # not an ip4/ip6 address
    ],
    ids=["ip", "no-connection", "unspecified", "other-ip", "garbage"],
)
def test_own_addresses_are_the_ports_a_peer_announces_on_its_connections_ip(
    announced: list[bytes], conn_ip: str | None, stored: tuple[bytes, ...]
) -> None:
    book = AddressBook(registry_port=5000)
    book.note(PID, announced, conn_ip)
    assert book.get(PID) == stored and (PID in book) == bool(stored)


def test_the_mirror_gets_only_an_ip_a_connection_vouched_for() -> None:
    book = AddressBook(registry_port=5000)
    assert not book.hint(PID, [b"\x2f\x00"])  # nothing dialable
    assert book.hint(PID, [tcp_addr("10.0.0.6", 5001)])
    assert book.to_peer(PID) is None  # a hint is not a vouch
    assert book.dialable(PID) == [tcp_addr("10.0.0.6", 5001)]
    book.connected(PID, "10.0.0.9")
    assert book.to_peer(PID) == Peer(B58, "10.0.0.9", 5000)
    book.note(PID, [tcp_addr("10.0.0.7", 5001)])  # its own claim of another IP: the port only
    assert book.to_peer(PID) == Peer(B58, "10.0.0.9", 5000)
    assert book.dialable(PID) == [tcp_addr("10.0.0.9", 5001)]
    assert book.hint(PID, [tcp_addr("10.6.6.6", 5001)])  # a third party cannot replace it
    assert book.get(PID) == (tcp_addr("10.0.0.9", 5001),) == tuple(book.dialable(PID))
    assert book.sizes()["hints"] == 0


@pytest.mark.parametrize(
    ("ip", "own_ip", "usable"),
    [
        ("10.0.0.1", "10.0.0.2", True),
        ("fd00::1", "10.0.0.2", True),
        ("127.0.0.1", "10.0.0.2", False),
        ("::1", "10.0.0.2", False),
        ("::ffff:127.0.0.1", "10.0.0.2", False),
        ("127.0.0.5", "127.0.0.2", True),  # a lab on one machine
        ("169.254.169.254", "127.0.0.2", False),  # cloud metadata: link-local
        ("fe80::1", "10.0.0.2", False),
        ("224.0.0.1", "10.0.0.2", False),
        ("ff02::1", "10.0.0.2", False),
        ("0.0.0.0", "127.0.0.2", False),
        ("::", "10.0.0.2", False),
    ],
)
def test_refused_address_classes(ip: str, own_ip: str, usable: bool) -> None:
    book = AddressBook(registry_port=5000)
    book.set_self([own_ip])
    assert book.usable(ip) is usable
    book.connected(PID, ip)
    assert (book.to_peer(PID) is not None) is usable
    assert book.hint(b"other", [tcp_addr(ip, 5001)]) is usable


def test_a_departed_peer_is_forgotten_after_a_while_and_the_maps_stay_bounded(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    clock = Clock()
    book = AddressBook(registry_port=5000, clock=clock)
    book.note(PID, [tcp_addr("10.0.0.9", 5001)], "10.0.0.9")
    book.forget(PID)
    assert book.sizes() == {"own": 0, "hints": 0, "departed": 1}
    assert book.to_peer(PID) == Peer(B58, "10.0.0.9", 5000)  # still reachable for a redial
    assert book.dialable(PID) == [tcp_addr("10.0.0.9", 5001)]
    clock.now += addrs.DEPARTED_TTL + 1
    assert book.to_peer(PID) is None and book.dialable(PID) == []

    monkeypatch.setattr(addrs, "MAX_HINTS", 10)
    monkeypatch.setattr(addrs, "MAX_DEPARTED", 5)
    for i in range(50):
        pid = i.to_bytes(4, "big")
        book.hint(pid, [tcp_addr("10.1.0.1", 4000 + j) for j in range(16)])
        book.connected(pid + b"c", "10.2.0.1")
        book.forget(pid + b"c")
    assert book.sizes() == {"own": 0, "hints": 10, "departed": 5}
    assert len(book.dialable((49).to_bytes(4, "big"))) == addrs.HINTS_PER_PEER
    assert book.dialable((0).to_bytes(4, "big")) == []  # the least recently named went first
