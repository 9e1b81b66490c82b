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

Bounded against hostile peers: decoding keeps at most :data:`MAX_CLOSER` closer peers,
:data:`MAX_PROVIDERS` providers, :data:`MAX_ADDRS` addresses per peer and :data:`MAX_FIELDS`
fields of any one message or peer, and stops at the first field past a bound (the rest of the
body is not looked at), so a 4 MiB body of empty entries costs a few dozen objects, not two
million. Go and js-libp2p write fields in field-number order (type, key, closer peers,
providers), so stopping loses nothing an honest peer sends that a lookup would use.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from spegel_py.errors import RoutingError

PUT_VALUE, GET_VALUE, ADD_PROVIDER, GET_PROVIDERS, FIND_NODE, PING = range(6)
NOT_CONNECTED, CONNECTED, CAN_CONNECT, CANNOT_CONNECT = range(4)
MAX_MESSAGE = 4 << 20  # go-libp2p-kad-dht's limit; a longer length prefix is a protocol error
# Requests this node serves (GET_PROVIDERS, FIND_NODE, ADD_PROVIDER, PING) are a key and at
# most one peer's addresses: a few hundred bytes. 16 KiB bounds what an inbound stream buffers.
MAX_REQUEST = 16 << 10
MAX_CLOSER = 20  # closer peers kept from one message (k: an honest peer sends no more)
MAX_PROVIDERS = 20  # providers kept from one message (a lookup wants a few)
MAX_ADDRS = 16  # addresses kept per peer (Spegel nodes have one or two, go and js a handful)
MAX_FIELDS = 64  # fields read from one message or peer entry, at most (honest ones have < 45)


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


def _decode_peer(buf: bytes, pos: int, end: int) -> PeerInfo:
    """The peer entry in ``buf[pos:end]`` (not copied: it may be most of a 4 MiB body)."""
    pid = b""
    addrs: list[bytes] = []
    conn = 0
    for _ in range(MAX_FIELDS):
        if pos >= end:
            break
        tag, pos = _read_uvarint(buf, pos, end)
        num, wt = tag >> 3, tag & 7
        if wt == 2:
            n, pos = _read_uvarint(buf, pos, end)
            val = buf[pos : pos + n]
            pos += n
            if num == 1:
                pid = val
            elif num == 2:
                if len(addrs) >= MAX_ADDRS:
                    return PeerInfo(pid, tuple(addrs), conn)  # a bound: the rest is not read
                addrs.append(val)
        elif wt == 0:
            v, pos = _read_uvarint(buf, pos, end)
            if num == 3:
                conn = v
        else:
            pos = _skip(buf, pos, end, wt)
    if pos > end:
        raise WireError("truncated peer")
    return PeerInfo(pid, tuple(addrs), conn)


def _skip(buf: bytes, pos: int, end: int, wt: int) -> int:
    if wt == 1:
        return pos + 8
    if wt == 5:
        return pos + 4
    raise WireError(f"unsupported wire type {wt}")


def decode(buf: bytes) -> Message:
    """Parse one message body; unknown fields are skipped, and reading stops at the bounds
    (see the module docstring)."""
    try:
        msg = Message(type=PUT_VALUE)
        pos, end = 0, len(buf)
        for _ in range(MAX_FIELDS):
            if pos >= end:
                break
            tag, pos = _read_uvarint(buf, pos, end)
            num, wt = tag >> 3, tag & 7
            if wt == 0:
                v, pos = _read_uvarint(buf, pos, end)
                if num == 1:
                    msg.type = v
            elif wt == 2:
                n, start = _read_uvarint(buf, pos, end)
                pos = start + n
                if pos > end:
                    raise WireError("truncated field")
                if num == 2:
                    msg.key = buf[start:pos]
                elif num == 8:
                    if len(msg.closer) >= MAX_CLOSER:
                        break
                    msg.closer.append(_decode_peer(buf, start, pos))
                elif num == 9:
                    if len(msg.providers) >= MAX_PROVIDERS:
                        break
                    msg.providers.append(_decode_peer(buf, start, pos))
            else:
                pos = _skip(buf, pos, end, wt)
        if pos > end:
            raise WireError("truncated message")
        return msg
    except IndexError as exc:
        raise WireError("truncated message") from exc


class Deframer:
    """Splits a byte stream into message bodies; bytes of an incomplete message wait for more.

    A length prefix over ``max_message`` bytes is a :class:`WireError` at once, so a stream never
    buffers more than ``max_message`` bytes plus one read."""

    __slots__ = ("_buf", "_max")

    def __init__(self, max_message: int = MAX_MESSAGE) -> None:
        self._buf = bytearray()
        self._max = max_message

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
            if n > self._max:
                raise WireError(f"message of {n} bytes exceeds {self._max}")
            if start + n > end:
                break
            out.append(bytes(buf[start : start + n]))
            pos = start + n
        if pos:
            del buf[:pos]
        return out
