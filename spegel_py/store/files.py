"""A :class:`~spegel_py.store.base.Blob` backed by an open file: what file-based stores return.

The descriptor is opened once per request, so a blob deleted by garbage collection while it is
being sent stays readable to the end (the inode lives until the last descriptor closes) and
nothing is pinned after the request.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from types import TracebackType

from spegel_py.errors import ContentNotFoundError
from spegel_py.oci.digest import Digest

# Size of the pieces read for the streaming fallback (the registry uses sendfile instead).
CHUNK_SIZE = 1 << 20


class FileBlob:
    """An open, read-only blob file. ``fileno()`` is usable with ``os.sendfile``."""

    def __init__(self, fd: int, size: int) -> None:
        self._fd: int | None = fd
        self._size = size

    @classmethod
    def open(cls, path: str, digest: Digest) -> FileBlob:
        """Open ``path`` for reading; raise ``ContentNotFoundError`` if it is not a regular file."""
        try:
            # O_NOFOLLOW: a symlink planted in the blobs directory must not redirect reads.
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
        except (FileNotFoundError, NotADirectoryError) as exc:
            raise ContentNotFoundError(f"{digest} not found") from exc
        except OSError as exc:  # ELOOP (a symlink), EACCES, ...: absent as far as a client can tell
            raise ContentNotFoundError(f"{digest} not readable: {exc.strerror}") from exc
        try:
            st = os.fstat(fd)
        except OSError:
            os.close(fd)
            raise
        if not (st.st_mode & 0o170000) == 0o100000:  # S_ISREG
            os.close(fd)
            raise ContentNotFoundError(f"{digest} is not a regular file")
        return cls(fd, st.st_size)

    @property
    def size(self) -> int:
        return self._size

    def fileno(self) -> int | None:
        return self._fd

    async def chunks(self, offset: int = 0, length: int | None = None) -> AsyncIterator[bytes]:
        end = self._size if length is None else min(self._size, offset + length)
        loop = asyncio.get_running_loop()
        while offset < end:
            fd = self._fd
            if fd is None:
                raise ContentNotFoundError("blob closed while reading")
            data = await loop.run_in_executor(None, os.pread, fd, min(CHUNK_SIZE, end - offset), offset)
            if not data:  # truncated underneath us: never pad, never loop forever
                raise ContentNotFoundError("blob shrank while reading")
            offset += len(data)
            yield data

    async def aclose(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)

    async def __aenter__(self) -> FileBlob:
        return self

    async def __aexit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()


def blob_path(blobs_root: str, digest: Digest) -> str:
    """``<blobs_root>/<algorithm>/<hex>``; safe because :class:`Digest` admits only hex."""
    return os.path.join(blobs_root, digest.algorithm, digest.hex)
