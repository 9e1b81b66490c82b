"""libp2p private networks: every router connection encrypted with the cluster's pre-shared key.

The protocol (libp2p's pnet, "PSK v1", as go-libp2p, js-libp2p and k3s speak it) sits under
everything else on a connection: each side sends a random 24-byte nonce, then every byte it
writes is XORed with the XSalsa20 key stream of (pre-shared key, its nonce), and every byte it
reads with the stream of (key, the other side's nonce). Nothing authenticates the key: a host
with another key, or none, decrypts garbage, so the multistream-select that opens Noise fails
and the connection closes before either side has learnt anything, not even a peer id.

py-libp2p 0.8.1's ``libp2p.security.pnet`` cannot be used: it runs Salsa20 with an 8-byte
nonce where the protocol has XSalsa20 with 24 bytes (go-libp2p and js-libp2p read our first 24
bytes as the nonce), and it sends its nonce only with its first write, while a js-libp2p node
sends its own and waits for ours before anything else. Here the nonce is sent as soon as the
TCP connection is open, and the other side's is read with the first read (go-libp2p writes its
nonce with its first write), so no order of the two sides can leave both waiting.

Every libp2p implementation opens a TCP connection with multistream-select, whose first message
from each side is ``/multistream/1.0.0``; the first bytes read are checked against it, so that a
peer with another key is refused at once rather than when a handshake timeout (10 s and more)
ends the exchange of garbage. A peer with no key sends that message where the nonce belongs:
it is refused as soon as the message is complete.

XSalsa20 is HSalsa20 (a key derivation from the key and the nonce's first 16 bytes, done here
once per connection) followed by Salsa20 with the derived key and the nonce's last 8 bytes,
which pycryptodome (a py-libp2p dependency) provides.
"""

from __future__ import annotations

import logging
import os
import struct
from typing import Any

import multiaddr  # type: ignore[import-untyped]  # py-multiaddr ships no type information
import trio
from Crypto.Cipher import Salsa20
from libp2p.io.abc import ReadWriteCloser
from libp2p.io.exceptions import IOException
from libp2p.network.connection.raw_connection import RawConnection

from spegel_py.routing.libp2p.host import TrackedTCP
from spegel_py.routing.libp2p.psk import PreSharedKey

log = logging.getLogger(__name__)

NONCE_BYTES = 24
# multistream-select's first message on every libp2p connection: varint length, text, newline
HELLO = b"\x13/multistream/1.0.0\n"
READ_AHEAD = 65536  # bytes a read takes from the socket at most (what it has, not a wait for more)
SMALL_PIECE = 512  # bytes up to which XOR in Python beats a call into the cipher (measured: 1 KiB even)
KEY_STREAM_CHUNK = 16384  # key stream produced ahead per call into the cipher
_SIGMA = struct.unpack("<4I", b"expand 32-byte k")
_MASK = 0xFFFFFFFF


def _rotl(v: int, c: int) -> int:
    return ((v << c) & _MASK) | (v >> (32 - c))


def _quarter(x: list[int], a: int, b: int, c: int, d: int) -> None:
    x[b] ^= _rotl((x[a] + x[d]) & _MASK, 7)
    x[c] ^= _rotl((x[b] + x[a]) & _MASK, 9)
    x[d] ^= _rotl((x[c] + x[b]) & _MASK, 13)
    x[a] ^= _rotl((x[d] + x[c]) & _MASK, 18)


def hsalsa20(key: bytes, nonce16: bytes) -> bytes:
    """HSalsa20: 32 bytes derived from a 32-byte key and a 16-byte input (20 Salsa20 rounds,
    output words 0, 5, 10, 15, 6, 7, 8, 9 without the final addition)."""
    k = struct.unpack("<8I", key)
    n = struct.unpack("<4I", nonce16)
    x = [_SIGMA[0], *k[:4], _SIGMA[1], *n, _SIGMA[2], *k[4:], _SIGMA[3]]
    for _ in range(10):
        # a column round, then a row round
        _quarter(x, 0, 4, 8, 12)
        _quarter(x, 5, 9, 13, 1)
        _quarter(x, 10, 14, 2, 6)
        _quarter(x, 15, 3, 7, 11)
        _quarter(x, 0, 1, 2, 3)
        _quarter(x, 5, 6, 7, 4)
        _quarter(x, 10, 11, 8, 9)
        _quarter(x, 15, 12, 13, 14)
    return struct.pack("<8I", x[0], x[5], x[10], x[15], x[6], x[7], x[8], x[9])


def xsalsa20(key: bytes, nonce: bytes) -> Any:
    """An XSalsa20 key stream (``.encrypt(data)`` XORs the next ``len(data)`` bytes of it)."""
    if len(nonce) != NONCE_BYTES:
        raise ValueError(f"an XSalsa20 nonce is {NONCE_BYTES} bytes")
    return Salsa20.new(key=hsalsa20(key, nonce[:16]), nonce=nonce[16:])


class KeyStream:
    """XSalsa20 applied to a connection's bytes in order, cheaply for small pieces.

    A call into pycryptodome costs several microseconds whatever its size, and most pieces here
    are a few bytes (Yamux headers, Noise lengths, DHT messages). So the key stream is produced
    :data:`KEY_STREAM_CHUNK` bytes ahead and small pieces are XORed with it as Python integers;
    large pieces go to the cipher, after whatever was produced ahead.
    """

    def __init__(self, key: bytes, nonce: bytes) -> None:
        self._cipher = xsalsa20(key, nonce)
        self._ahead = b""  # key stream produced, not yet used from self._pos on
        self._pos = 0

    def xor(self, data: bytes) -> bytes:
        n = len(data)
        left = len(self._ahead) - self._pos
        if n > SMALL_PIECE:
            head = self._xor_ahead(data[:left]) if left else b""
            tail: bytes = self._cipher.encrypt(data[left:])
            return head + tail
        if n > left:
            self._ahead = self._ahead[self._pos :] + self._cipher.encrypt(bytes(KEY_STREAM_CHUNK))
            self._pos = 0
        return self._xor_ahead(data)

    def _xor_ahead(self, data: bytes) -> bytes:
        n, pos = len(data), self._pos
        stream = int.from_bytes(self._ahead[pos : pos + n], "little")
        self._pos = pos + n
        return (int.from_bytes(data, "little") ^ stream).to_bytes(n, "little")


class PskStream(ReadWriteCloser):
    """A TCP stream seen through the private network's encryption (see the module docstring).

    Reads and writes each hold a lock across the cipher and the socket: a key stream must meet
    the bytes in the order they cross the wire, whichever tasks read or write. Reads take what
    the socket has (up to :data:`READ_AHEAD`) and decrypt it at once: the layers above read a
    few bytes at a time (Noise a 2-byte length, Yamux a 12-byte header), and each call into the
    cipher costs more than the bytes it decrypts.
    """

    def __init__(self, inner: ReadWriteCloser, key: bytes, local_nonce: bytes) -> None:
        self.inner = inner
        self._key = key
        self._out = KeyStream(key, local_nonce)
        self._in: KeyStream | None = None  # from the other side's nonce, the first 24 bytes read
        self._nonce = b""  # the part of the other side's nonce read so far
        self._expect = HELLO  # what the next plaintext bytes must be
        self._plain = b""  # decrypted, not yet returned from self._pos on
        self._pos = 0
        self._read_lock = trio.Lock()
        self._write_lock = trio.Lock()

    async def write(self, data: bytes) -> None:
        async with self._write_lock:
            await self.inner.write(self._out.xor(data))

    async def read(self, n: int | None = None) -> bytes:
        async with self._read_lock:
            if n == 0:
                return b""
            if self._pos == len(self._plain):
                self._plain, self._pos = await self._receive(), 0
            end = len(self._plain) if n is None else min(len(self._plain), self._pos + n)
            out = self._plain[self._pos : end]
            self._pos = end
            return out

    async def _receive(self) -> bytes:
        """What the socket has next, decrypted (the nonce taken off first); b"" at its end."""
        data = await self.inner.read(READ_AHEAD)
        while self._in is None and data:
            self._nonce += data
            if self._nonce.startswith(HELLO):
                self._refuse("the peer has no pre-shared key")
            if len(self._nonce) >= NONCE_BYTES:
                self._in = KeyStream(self._key, self._nonce[:NONCE_BYTES])
                data, self._nonce = self._nonce[NONCE_BYTES:], b""
                if not data:
                    data = await self.inner.read(READ_AHEAD)
            else:
                data = await self.inner.read(READ_AHEAD)
        if self._in is None or not data:
            return b""  # closed (before a whole nonce: nothing to decrypt, ever)
        plain = self._in.xor(data)
        if self._expect:
            if not self._expect.startswith(plain[: len(self._expect)]):
                self._refuse("the peer has another pre-shared key")
            self._expect = self._expect[len(plain) :]
        return plain

    def _refuse(self, reason: str) -> None:
        log.debug("connection refused: %s", reason, extra={"remote": self.inner.get_remote_address()})
        raise IOException(reason)

    async def close(self) -> None:
        await self.inner.close()

    def get_remote_address(self) -> tuple[str, int] | None:
        return self.inner.get_remote_address()


async def protect(inner: ReadWriteCloser, psk: PreSharedKey) -> PskStream:
    """``inner`` encrypted with ``psk``; this side's nonce is sent before this returns."""
    nonce = os.urandom(NONCE_BYTES)
    await inner.write(nonce)
    return PskStream(inner, psk.key, nonce)


def transport(psk: PreSharedKey | None) -> TrackedTCP:
    """The router's TCP transport: protected by ``psk``, or plain when there is none."""
    return TrackedTCP() if psk is None else ProtectedTCP(psk)


class ProtectedTCP(TrackedTCP):
    """The router's TCP transport with every connection, dialled or accepted, protected by a
    pre-shared key before py-libp2p's swarm (and so Noise) sees it."""

    def __init__(self, psk: PreSharedKey) -> None:
        super().__init__()
        self._psk = psk

    async def _dial_resolved(self, maddr: multiaddr.Multiaddr, source: tuple[str, int] | None = None) -> Any:
        raw = await super()._dial_resolved(maddr, source=source)
        try:
            stream = await protect(raw.stream, self._psk)
        except BaseException:
            with trio.CancelScope(shield=True):
                await raw.close()
            raise
        return RawConnection(stream, raw.is_initiator)

    def create_listener(self, handler_function: Any) -> Any:
        async def protecting(conn: ReadWriteCloser) -> None:
            try:
                stream = await protect(conn, self._psk)
            except BaseException:
                with trio.CancelScope(shield=True):
                    await conn.close()
                raise
            await handler_function(stream)

        return super().create_listener(protecting)
