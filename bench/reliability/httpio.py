"""A minimal HTTP/1.1 client over raw asyncio streams, for requests no polite client would send.

Why not aiohttp's client: the suite sends malformed request lines, odd methods, traversal paths
and hostile headers byte for byte, and must see exactly what the server answers (or that it
closed the connection). One :class:`Conn` is one keep-alive connection; :meth:`Conn.send`
writes raw request bytes and reads one response (status, headers, body digest). A status of 0
means the server closed the connection without an answer, which is a legitimate answer to a
malformed request.
"""

from __future__ import annotations

import asyncio
import hashlib
from dataclasses import dataclass

HEAD_LIMIT = 64 << 10
_CHUNK = 256 << 10
BODY_KEEP = 1 << 20


@dataclass(frozen=True)
class Answer:
    status: int  # 0: the connection closed without an answer
    headers: dict[str, str]
    length: int  # body bytes received
    digest: str  # sha256 of the body (when hashed)
    keep_alive: bool
    body: bytes = b""  # the body itself, when kept (up to BODY_KEEP bytes)


def request(
    method: str, target: str, host: str, headers: dict[str, str] | None = None, body: bytes = b""
) -> bytes:
    """The bytes of a well-formed request (``Content-Length`` added when there is a body)."""
    lines = [f"{method} {target} HTTP/1.1", f"Host: {host}"]
    for key, value in (headers or {}).items():
        lines.append(f"{key}: {value}")
    if body:
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


class Conn:
    """One connection to ``host:port``, opened on first use and reopened after a close."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def send(
        self, data: bytes, *, head_only: bool = False, hash_body: bool = False, keep_body: bool = False
    ) -> Answer:
        """Write ``data`` and read one response. ``head_only``: the request was a HEAD."""
        if self._writer is None:
            self._reader, self._writer = await asyncio.open_connection(self.host, self.port)
        assert self._reader is not None
        try:
            self._writer.write(data)
            await self._writer.drain()
            answer = await _read_answer(
                self._reader, head_only=head_only, hash_body=hash_body, keep_body=keep_body
            )
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError):
            answer = Answer(0, {}, 0, "", False)
        if not answer.keep_alive:
            await self.close()
        return answer

    async def close(self) -> None:
        writer, self._writer, self._reader = self._writer, None, None
        if writer is not None:
            writer.close()
            try:
                await writer.wait_closed()
            except (ConnectionError, OSError):
                pass


async def _read_answer(
    reader: asyncio.StreamReader, *, head_only: bool, hash_body: bool, keep_body: bool
) -> Answer:
    raw = await reader.readuntil(b"\r\n\r\n")
    if len(raw) > HEAD_LIMIT:
        raise ValueError("response head too large")
    lines = raw.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if ":" in line:
            key, _, value = line.partition(":")
            headers[key.strip().lower()] = value.strip()
    keep_alive = headers.get("connection", "").lower() != "close"
    sha = hashlib.sha256() if hash_body else None
    length = 0
    kept = bytearray()
    if not head_only and status not in (204, 304) and status >= 200:
        if "content-length" in headers:
            left = int(headers["content-length"])
            while left:
                chunk = await reader.read(min(left, _CHUNK))
                if not chunk:
                    raise asyncio.IncompleteReadError(b"", left)
                left -= len(chunk)
                length += len(chunk)
                if sha is not None:
                    sha.update(chunk)
                if keep_body and len(kept) < BODY_KEEP:
                    kept += chunk
        else:  # no length: the body runs to the close
            while chunk := await reader.read(_CHUNK):
                length += len(chunk)
                if sha is not None:
                    sha.update(chunk)
                if keep_body and len(kept) < BODY_KEEP:
                    kept += chunk
            keep_alive = False
    digest = "sha256:" + sha.hexdigest() if sha else ""
    return Answer(status, headers, length, digest, keep_alive, bytes(kept))
