"""A peer's registry port that misbehaves on purpose, switchable while it runs.

It holds real blobs (digest -> bytes) and tags, and answers the OCI pull API over raw sockets,
so it can send what aiohttp's server never would (a superscript digit as Content-Length, a bare
LF inside a header value, fewer bytes than announced). :attr:`HostilePeer.mode` picks the
misbehaviour for every request from then on:

- ``honest``: correct answers;
- ``slow-drip``: the head, a first part of the body, then one byte every :data:`DRIP_EVERY`
  seconds (just under the relay's per-read stall bound);
- ``lying-length``: ``Content-Length`` 1 KiB more than the body, then the connection closes;
- ``wrong-bytes``: the right length, one byte flipped in the middle of the body;
- ``malformed-headers``: by turns a non-ASCII digit in ``Content-Length``, a bare LF in a
  header value, a status line that is not one;
- ``tag-disagrees``: tags answer a forged (self-consistent) manifest, everything else honest;
- ``silent``: accepts, reads the request, never answers.

It runs its own event loop in a thread, so a synchronous runner can drive containerd meanwhile.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import threading
from collections import Counter

MODES = ("honest", "slow-drip", "lying-length", "wrong-bytes", "malformed-headers", "tag-disagrees", "silent")
DRIP_EVERY = 2.0  # seconds between dripped bytes
DRIP_FIRST = 64 << 10  # body bytes sent at once before the drip


def forge(manifest: bytes) -> bytes:
    """A different manifest that is still valid JSON of the same shape (another digest)."""
    doc = json.loads(manifest)
    doc.setdefault("annotations", {})["forged-by"] = "hostile-peer"
    return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()


def _media_type(manifest: bytes) -> str:
    try:
        return str(json.loads(manifest)["mediaType"])
    except (ValueError, KeyError, TypeError):
        return "application/octet-stream"


def digest_of(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


class HostilePeer:
    """``start()``, set ``mode``, ``stop()``. ``tags``: ``"name:tag" -> digest``."""

    def __init__(self, host: str, port: int, blobs: dict[str, bytes], tags: dict[str, str]) -> None:
        self.host, self.port = host, port
        self.blobs = dict(blobs)
        self.tags = dict(tags)
        self.forged: dict[str, str] = {}  # "name:tag" -> forged digest
        for key, digest in tags.items():
            fake = forge(self.blobs[digest])
            self.blobs[digest_of(fake)] = fake
            self.forged[key] = digest_of(fake)
        self.mode = "honest"
        self.requests: Counter[str] = Counter()  # by mode
        self._turn = 0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name=f"hostile-{host}", daemon=True)
        self._server: asyncio.Server | None = None
        self._stop = asyncio.Event()
        self._writers: set[asyncio.StreamWriter] = set()

    def start(self) -> None:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(10)

    async def _start(self) -> None:
        self._server = await asyncio.start_server(self._serve, self.host, self.port)

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self._close(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()

    async def _close(self) -> None:
        self._stop.set()
        if self._server is not None:
            self._server.close()
        for writer in list(self._writers):
            writer.transport.abort()
        if self._server is not None:
            await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        try:
            while not self._stop.is_set():
                head = await reader.readuntil(b"\r\n\r\n")
                self.requests[self.mode] += 1
                if not await self._answer(head, writer):
                    break
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
            pass
        finally:
            self._writers.discard(writer)
            writer.transport.abort()

    async def _answer(self, head: bytes, writer: asyncio.StreamWriter) -> bool:
        """Answer one request; False when the connection must end."""
        method, target = head.split(b" ", 2)[:2]
        parts = target.decode("latin-1").split("?")[0].split("/")
        if len(parts) < 5 or parts[1] != "v2":
            writer.write(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")
            return True
        name, ref = "/".join(parts[2:-2]), parts[-1]
        is_tag = not ref.startswith("sha256:")
        mode = self.mode
        digest = ref if not is_tag else self.tags.get(f"{name}:{ref}")
        if is_tag and mode == "tag-disagrees" and f"{name}:{ref}" in self.forged:
            digest = self.forged[f"{name}:{ref}"]
        body = self.blobs.get(digest or "")
        if body is None or digest is None:
            writer.write(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")
            return True
        if mode == "silent":
            await self._stop.wait()
            return False
        kind = _media_type(body) if parts[-2] == "manifests" else "application/octet-stream"
        length = len(body) + (1024 if mode == "lying-length" else 0)
        if mode == "wrong-bytes":
            middle = len(body) // 2
            body = body[:middle] + bytes([body[middle] ^ 0xFF]) + body[middle + 1 :]
        lines = [
            b"HTTP/1.1 200 OK",
            f"Content-Type: {kind}".encode(),
            f"Docker-Content-Digest: {digest}".encode(),
            f"Content-Length: {length}".encode(),
        ]
        if mode == "malformed-headers":
            self._turn += 1
            bad = self._turn % 3
            if bad == 0:
                lines[3] = b"Content-Length: " + str(len(body))[:-1].encode() + "\u00b2".encode("latin-1")
            elif bad == 1:
                lines.append(b"X-Note: first\nsecond")
            else:
                lines[0] = b"HTTP/1.1 2OO OK"
        writer.write(b"\r\n".join(lines) + b"\r\n\r\n")
        if method == b"HEAD":
            await writer.drain()
            return True
        if mode == "slow-drip":
            first = min(DRIP_FIRST, len(body) // 2)
            writer.write(body[:first])
            for pos in range(first, len(body)):
                await writer.drain()
                try:
                    await asyncio.wait_for(self._stop.wait(), DRIP_EVERY)
                    return False
                except TimeoutError:
                    writer.write(body[pos : pos + 1])
            await writer.drain()
            return True
        writer.write(body)
        await writer.drain()
        return mode != "lying-length"
