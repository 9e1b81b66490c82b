"""Run ``spegel-py`` with proposed changes monkeypatched in, so the benchmark can measure a fix
next to the product as it is, in the same run, before the module's owner adopts it.

Usage: ``python -m bench.experiments.spegel_patched --patches align[,cork] registry ...``
(everything after the patch list goes to spegel-py's own CLI). Not product code: each patch
names the module it stands in for.
"""

from __future__ import annotations

import os
import socket
import sys
from collections.abc import Callable
from typing import Any

# Largest page-cache folio on x86-64 with 4 KiB pages (PMD order): ext4 on this kernel caches
# file data in folios of up to 2 MiB, and fadvise(DONTNEED) skips any folio that is not wholly
# inside the advised range.
FOLIO = 2 << 20


def align_eviction() -> None:
    """spegel_py/serving/pagecache.py: advise whole 2 MiB-aligned blocks.

    The start is rounded down (the folio straddling the previous boundary is wholly behind the
    send offset by now) and the end is rounded down (the folio around the limit is not).
    """
    from spegel_py.serving import pagecache

    original = pagecache.PageCacheCoordinator.evict

    def evict(
        self: pagecache.PageCacheCoordinator, fd: int, offset: int, length: int, *args: Any, **kw: Any
    ) -> None:
        start = offset & ~(FOLIO - 1)
        end = (offset + length) & ~(FOLIO - 1)
        original(self, fd, start, end - start, *args, **kw)

    setattr(pagecache.PageCacheCoordinator, "evict", evict)  # noqa: B010 - replacing it is the experiment


def cork() -> None:
    """spegel_py/serving/content.py: TCP_CORK around the body, as nginx's ``tcp_nopush``."""
    from spegel_py.serving import content

    original = getattr(content, "send_range")  # noqa: B009 - an import of content's, not its API

    def setopt(fd: int, opt: int, value: int) -> None:
        s = socket.socket(fileno=os.dup(fd))
        try:
            s.setsockopt(socket.IPPROTO_TCP, opt, value)
        finally:
            s.close()

    async def send_range(sock_fd: int, fd: int, offset: int, count: int, stream: object = None) -> None:
        setopt(sock_fd, socket.TCP_CORK, 1)
        try:
            await original(sock_fd, fd, offset, count, stream)
        finally:
            try:
                setopt(sock_fd, socket.TCP_CORK, 0)
            except OSError:
                pass

    setattr(content, "send_range", send_range)  # noqa: B010 - replacing it is the experiment


# nginx's sendfile_max_chunk default: bytes one connection may send before others get a turn.
FAIR_CHUNK = 2 << 20


def fair() -> None:
    """spegel_py/serving/sendfile.py: at most FAIR_CHUNK per ``os.sendfile`` call, then back to
    the event loop.

    ``pump`` keeps calling sendfile while each call sends all it asked for, and asks for up to
    1 GiB. When the client drains as fast as the server sends (a fast client, loopback, a
    LAN), the socket never fills, so one call sends a whole blob while every other connection
    waits: 32 streams are served one after another at single-stream speed. Capping each call
    below what ``pump`` asked for makes it yield after every chunk; the level-triggered
    writability registration brings it back in the next loop iteration, after the others.
    """
    import types

    from spegel_py.serving import sendfile

    def capped(out_fd: int, in_fd: int, offset: int, count: int) -> int:
        return os.sendfile(out_fd, in_fd, offset, min(count, FAIR_CHUNK))

    shim = types.SimpleNamespace(sendfile=capped, dup=os.dup, close=os.close)
    setattr(sendfile, "os", shim)  # noqa: B010 - replacing it is the experiment


PATCHES: dict[str, Callable[[], None]] = {"align": align_eviction, "cork": cork, "fair": fair}


def main(argv: list[str]) -> int:
    if len(argv) < 2 or argv[0] != "--patches":
        print(__doc__, file=sys.stderr)
        return 2
    for name in filter(None, argv[1].split(",")):
        PATCHES[name]()
    from spegel_py.cli import main as spegel_main

    return spegel_main(argv[2:])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
