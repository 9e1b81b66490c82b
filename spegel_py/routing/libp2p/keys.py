"""Spegel's DHT key derivation, and the Kademlia distance that decides who stores a record.

Spegel (go-libp2p-kad-dht) turns a key string into a CIDv1 with the ``raw`` codec whose multihash
is sha2-256 of the UTF-8 string; provider records are stored and looked up under the multihash
bytes (``0x12 0x20`` + 32-byte digest). Distance is Kademlia's XOR, computed (as go-libp2p does)
between sha256 of the multihash and sha256 of the peer id bytes, so both implementations agree on
which peers are "closest" to a key and a Go Spegel node asks the same peers we store records at.
"""

from __future__ import annotations

import base64
import hashlib

SHA2_256 = 0x12
_MH_PREFIX = bytes((SHA2_256, 32))
_CIDV1_RAW = b"\x01\x55"  # CID version 1, multicodec raw


def multihash(key: str) -> bytes:
    """The 34-byte sha2-256 multihash of ``key``'s UTF-8 bytes: the provider-record key on the wire."""
    return _MH_PREFIX + hashlib.sha256(key.encode()).digest()


def cid(key: str) -> str:
    """The CIDv1 (raw) of ``key`` in its canonical base32 text form, as Spegel logs and js-libp2p prints."""
    raw = _CIDV1_RAW + multihash(key)
    return "b" + base64.b32encode(raw).decode().lower().rstrip("=")


def kad_id(data: bytes) -> int:
    """Position of a key or peer id in the XOR keyspace: sha256 of its bytes, as an integer."""
    return int.from_bytes(hashlib.sha256(data).digest(), "big")
