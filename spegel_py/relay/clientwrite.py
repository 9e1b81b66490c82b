"""The client side of a relayed whole blob: one ``write`` that goes straight into the client
socket where it can (:func:`spegel_py.relay.sockio.send_all`; that module says why), else through
aiohttp, both bounded by the body's floor (:mod:`.floor`: the write stall bound and the
deadline); and :func:`forward`, which sends the client's part of each chunk but holds back the
last bytes until the caller has checked the digest. Shared by the single-provider stream
(:mod:`.stream`) and the multi-provider one (:mod:`.multistream`).
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import asynccontextmanager
from typing import Any

from spegel_py.relay import sockio
from spegel_py.relay.floor import StreamFloor
from spegel_py.relay.sockio import ResponseSink

Write = Callable[[memoryview], Coroutine[Any, Any, None]]


@asynccontextmanager
async def client_writer(sink: ResponseSink, floor: StreamFloor, stall_timeout: float) -> AsyncIterator[Write]:
    """A ``write(data)`` into ``sink``'s client for the duration of the block (``sink.sent``
    counts the bytes); the duplicated socket is closed on exit."""
    fd = await sink.raw_fd()
    if fd is None:

        async def write_through(data: memoryview) -> None:
            await floor.write(sink.write, data)

        yield write_through
        return

    async def write(data: memoryview) -> None:
        await sockio.send_all(fd, data, stall_timeout=stall_timeout, deadline=floor.deadline)
        sink.sent += len(data)

    try:
        yield write
    finally:
        os.close(fd)


async def forward(write: Write, chunk: memoryview, pos: int, start: int, end: int) -> bytes | None:
    """Write the part of ``chunk`` (blob bytes ``[pos, pos + len(chunk))``) that lies in the
    client's ``[start, end)``, except when that part ends at ``end``: then it is returned, copied,
    to be written only once the whole blob's digest matched (``None`` otherwise)."""
    lo, hi = max(pos, start), min(pos + len(chunk), end)
    if lo >= hi:
        return None
    piece = chunk[lo - pos : hi - pos]
    if hi == end:
        return bytes(piece)  # the last bytes wait for the digest check
    await write(piece)
    return None
