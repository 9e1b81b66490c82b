"""A :class:`~spegel_py.store.base.GrowingBlob` over the file a store is still writing.

File-based stores (containerd's content store) write an ingest into a file of its own and, on
commit, rename that file to the blob's path; an abort deletes it. An open descriptor follows the
inode through both, so the state of the ingest is read from the descriptor and the two paths,
never from a cache: the inode's link count drops to 0 on abort; it sits at the blob's path once
committed, at the ingest's path while written; anywhere else it was committed as another blob.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from types import TracebackType

from spegel_py.errors import ContentNotFoundError
from spegel_py.oci.digest import Digest
from spegel_py.store.base import IngestProgress, IngestState
from spegel_py.store.files import FileBlob


class FileGrowingBlob:
    """An open ingest file: ``data_path`` while written, ``blob_path`` once committed."""

    def __init__(self, blob: FileBlob, digest: Digest, data_path: str, blob_path: str) -> None:
        self._blob = blob
        self._digest = digest
        self._data_path = data_path
        self._blob_path = blob_path

    @classmethod
    def open(cls, data_path: str, digest: Digest, total: int, blob_path: str) -> FileGrowingBlob:
        """Open the ingest file ``data_path`` of a blob expected to be ``digest``, ``total`` bytes.

        Raises ``ContentNotFoundError`` when it is gone (committed or aborted meanwhile).
        """
        opened = FileBlob.open(data_path, digest)
        fd = opened.fileno()
        assert fd is not None
        return cls(FileBlob(fd, total), digest, data_path, blob_path)

    @property
    def size(self) -> int:
        return self._blob.size

    @property
    def digest(self) -> Digest:
        return self._digest

    def progress(self) -> IngestProgress:
        fd = self._blob.fileno()
        if fd is None:
            raise ContentNotFoundError("ingest closed")
        st = os.fstat(fd)
        if st.st_nlink == 0:
            return IngestProgress(st.st_size, IngestState.ABORTED, st.st_mtime)
        inode = (st.st_dev, st.st_ino)
        if _inode(self._blob_path) == inode:
            state = IngestState.COMMITTED if st.st_size == self.size else IngestState.MISMATCH
            return IngestProgress(st.st_size, state, st.st_mtime)
        if _inode(self._data_path) == inode:
            return IngestProgress(st.st_size, IngestState.WRITING, st.st_mtime)
        # Renamed, but not to the expected blob's path: the writer committed another digest.
        return IngestProgress(st.st_size, IngestState.MISMATCH, st.st_mtime)

    def fileno(self) -> int | None:
        return self._blob.fileno()

    def chunks(self, offset: int, length: int) -> AsyncIterator[bytes]:
        return self._blob.chunks(offset, length)

    async def aclose(self) -> None:
        await self._blob.aclose()

    async def __aenter__(self) -> FileGrowingBlob:
        return self

    async def __aexit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()


def _inode(path: str) -> tuple[int, int] | None:
    try:
        st = os.stat(path, follow_symlinks=False)
    except OSError:
        return None
    return (st.st_dev, st.st_ino)
