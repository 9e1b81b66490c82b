"""The Kademlia DHT wire format (go-libp2p-kad-dht ``dht.proto``), hand-written for speed.

Messages travel as protobuf, each prefixed by its unsigned-varint length, many per stream. Only
the fields Spegel's exchange uses are decoded (type, key, closerPeers, providerPeers); everything
else is skipped, as protobuf requires. A hand-written codec keeps the per-key cost of advertising
in the microseconds: an ADD_PROVIDER is the 34-byte key plus a provider-peer blob that is encoded
once per connection and reused for every key.

    message Message {
      MessageType type = 1; bytes key = 2; Record record = 3; int32 clusterLevelRaw = 10;
      repeated Peer closerPeers = 8; repeated Peer providerPeers = 9;
      message Peer { bytes id = 1; repeated bytes addrs = 2; ConnectionType connection = 3; }
    }
"""

from __future__ import annotations

from dataclasses import dataclass, field

from spegel_py.errors import RoutingError

PUT_VALUE, GET_VALUE, ADD_PROVIDER, GET_PROVIDERS, FIND_NODE, PING = range(6)
NOT_CONNECTED, CONNECTED, CAN_CONNECT, CANNOT_CONNECT = range(4)
MAX_MESSAGE = 4 << 20  # go-libp2p-kad-dht's limit; a longer length prefix is a protocol error


class WireError(RoutingError):
    """A peer sent bytes that are not a valid DHT message."""


@dataclass(frozen=True, slots=True)
class PeerInfo:
    """A peer as the DHT names it: raw peer id bytes and binary multiaddrs."""

    id: bytes
    addrs: tuple[bytes, ...] = ()
    connection: int = NOT_CONNECTED


@dataclass(slots=True)
class Message:
    type: int
    key: bytes = b""
    closer: list[PeerInfo] = field(default_factory=list)
    providers: list[PeerInfo] = field(default_factory=list)


def uvarint(n: int) -> bytes:
    if n < 0x80:
        return bytes((n,))
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _read_uvarint(buf: bytes | bytearray | memoryview, pos: int, end: int) -> tuple[int, int]:
    """(value, next position); raises IndexError when the varint is not complete before ``end``."""
    result = shift = 0
    while True:
        if pos >= end:
            raise IndexError("truncated varint")
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if b < 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise WireError("varint too long")


def _field(tag: int, data: bytes) -> bytes:
    return uvarint(tag) + uvarint(len(data)) + data


def encode_peer(peer: PeerInfo) -> bytes:
    out = _field(0x0A, peer.id) + b"".join(_field(0x12, a) for a in peer.addrs)
    if peer.connection:
        out += b"\x18" + uvarint(peer.connection)
    return out


def encode(msg: Message) -> bytes:
    """Serialise ``msg`` (without the length prefix)."""
    parts = [b"\x08" + uvarint(msg.type)] if msg.type else []
    if msg.key:
        parts.append(_field(0x12, msg.key))
    parts.extend(_field(0x42, encode_peer(p)) for p in msg.closer)
    parts.extend(_field(0x4A, encode_peer(p)) for p in msg.providers)
    return b"".join(parts)


def frame(body: bytes) -> bytes:
    """``body`` with its varint length prefix, ready for a stream."""
    return uvarint(len(body)) + body


def add_provider_prefix(provider_field: bytes) -> tuple[bytes, bytes]:
    """Pieces of a framed ADD_PROVIDER for a 34-byte key: ``head + key + tail``.

    ``provider_field`` is ``encode_peer(self)``; the body length does not depend on the key
    (multihashes are all 34 bytes), so one key costs two concatenations.
    """
    tail = _field(0x4A, provider_field)
    body_len = 2 + 2 + 34 + len(tail)
    return uvarint(body_len) + b"\x08\x02\x12\x22", tail


def _decode_peer(buf: bytes) -> PeerInfo:
    pid = b""
    addrs: list[bytes] = []
    conn = 0
    pos, end = 0, len(buf)
    while pos < end:
        tag, pos = _read_uvarint(buf, pos, end)
        num, wt = tag >> 3, tag & 7
        if wt == 2:
            n, pos = _read_uvarint(buf, pos, end)
            val = buf[pos : pos + n]
            pos += n
            if num == 1:
                pid = val
            elif num == 2:
                addrs.append(val)
        elif wt == 0:
            v, pos = _read_uvarint(buf, pos, end)
            if num == 3:
                conn = v
        else:
            pos = _skip(buf, pos, end, wt)
    if pos != end:
        raise WireError("truncated peer")
    return PeerInfo(pid, tuple(addrs), conn)


def _skip(buf: bytes, pos: int, end: int, wt: int) -> int:
    if wt == 1:
        return pos + 8
    if wt == 5:
        return pos + 4
    raise WireError(f"unsupported wire type {wt}")


def decode(buf: bytes) -> Message:
    """Parse one message body; unknown fields are skipped."""
    try:
        msg = Message(type=PUT_VALUE)
        pos, end = 0, len(buf)
        while pos < end:
            tag, pos = _read_uvarint(buf, pos, end)
            num, wt = tag >> 3, tag & 7
            if wt == 0:
                v, pos = _read_uvarint(buf, pos, end)
                if num == 1:
                    msg.type = v
            elif wt == 2:
                n, pos = _read_uvarint(buf, pos, end)
                val = buf[pos : pos + n]
                if len(val) != n:
                    raise WireError("truncated field")
                pos += n
                if num == 2:
                    msg.key = val
                elif num == 8:
                    msg.closer.append(_decode_peer(val))
                elif num == 9:
                    msg.providers.append(_decode_peer(val))
            else:
                pos = _skip(buf, pos, end, wt)
        if pos != end:
            raise WireError("truncated message")
        return msg
    except IndexError as exc:
        raise WireError("truncated message") from exc


class Deframer:
    """Splits a byte stream into message bodies; bytes of an incomplete message wait for more."""

    __slots__ = ("_buf",)

    def __init__(self) -> None:
        self._buf = bytearray()

    def feed(self, data: bytes) -> list[bytes]:
        buf = self._buf
        buf += data
        out: list[bytes] = []
        pos, end = 0, len(buf)
        while pos < end:
            try:
                n, start = _read_uvarint(buf, pos, end)
            except IndexError:
                break
            if n > MAX_MESSAGE:
                raise WireError(f"message of {n} bytes exceeds {MAX_MESSAGE}")
            if start + n > end:
                break
            out.append(bytes(buf[start : start + n]))
            pos = start + n
        if pos:
            del buf[:pos]
        return out
