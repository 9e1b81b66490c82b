"""A content store over OCI image-layout directories (what ``skopeo copy ... oci:DIR:TAG`` writes).

It lets a directory of images be served without containerd. The root is either one layout
(``oci-layout``, ``index.json``, ``blobs/<alg>/<hex>``) or a tree whose subdirectories are
layouts; a subdirectory's path relative to the root is its default repository name
(``ROOT/test/small`` -> ``test/small``).

Nothing is cached: layouts are rediscovered and blob files stat'ed on every call, so a blob or a
layout removed on disk is gone for the very next request. Changes are found by polling each
``index.json`` (there is no portable file-watch API worth a dependency here). Layouts are
written whole by their tools, so there are never writes in progress to serve: the ingest
listing is always empty.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from stat import S_ISREG

from spegel_py.errors import ContentNotFoundError, ImageNotFoundError, InvalidInputError
from spegel_py.oci.digest import Digest
from spegel_py.oci.reference import Reference, validate_name, validate_tag
from spegel_py.store.base import Descriptor, Event, EventKind, GrowingBlob, Image, Ingest
from spegel_py.store.files import FileBlob, blob_path

REF_NAME = "org.opencontainers.image.ref.name"
_MAX_DEPTH = 4  # subdirectory levels searched for layouts; bounds the work of every scan
_MIN_POLL = 0.05  # seconds; a lower interval would just burn CPU re-reading index.json


def _is_host(component: str) -> bool:
    """Docker's rule: a first path component is a registry host if it has ``.``/``:`` or is localhost."""
    return "." in component or ":" in component or component == "localhost"


def image_reference(annotation: str, *, registry: str, repository: str | None) -> Reference | None:
    """The reference an ``index.json`` entry names, or ``None`` if it names none we can serve.

    A full reference (``registry/repo:tag``) is used as is; a bare tag is combined with the
    layout's default ``registry``/``repository`` (``None``: the layout has no usable default);
    ``repo:tag`` gets the default registry.
    """
    first, slash, _ = annotation.partition("/")
    try:
        if slash and _is_host(first):
            return Reference.parse(annotation)
        if repository is None:
            return None
        if not slash and ":" not in annotation and "@" not in annotation:
            return Reference(registry, repository, validate_tag(annotation))
        return Reference.parse(f"{registry}/{annotation}")
    except InvalidInputError:
        return None


@dataclass(frozen=True, slots=True)
class _Layout:
    """One layout directory, its blobs root, and its default repository (``None``: not usable)."""

    path: Path
    blobs: str
    repository: str | None


class OciLayoutStore:
    """Read-only :class:`~spegel_py.store.base.ContentStore` over a directory of OCI layouts.

    ``registry`` is the registry host given to images whose ``ref.name`` is not a full reference;
    ``repository`` names a root that is itself a layout (default: the root directory's name);
    ``poll_interval`` (seconds) is how often subscriptions re-read the ``index.json`` files;
    ``rescan_interval`` (seconds) is how long ``stat``/``open`` reuse the list of layout
    directories (a layout added meanwhile may answer "not found" that long; 0: scan every call).
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        registry: str = "localhost",
        repository: str | None = None,
        poll_interval: float = 1.0,
        rescan_interval: float = 1.0,
    ) -> None:
        self._root = Path(path)
        self._registry = registry
        self._repository = repository
        self._poll_interval = max(_MIN_POLL, poll_interval)
        self._rescan_interval = rescan_interval
        self._scanned: tuple[float, list[_Layout]] | None = None
        self._closed = asyncio.Event()

    # -- layouts ---------------------------------------------------------------------------------
    def _layouts(self, *, fresh: bool = False) -> list[_Layout]:
        """Every layout under the root, sorted; rescanned when older than ``rescan_interval``.

        Only *where to look* is reused between calls, never whether a blob exists: a layout
        removed meanwhile just has no files left, one added meanwhile is found by the next scan.
        """
        cached = self._scanned
        now = time.monotonic()
        if not fresh and cached is not None and now - cached[0] < self._rescan_interval:
            return cached[1]
        layouts = list(self._scan(self._root, ()))
        self._scanned = (now, layouts)
        return layouts

    def _scan(self, directory: Path, parts: tuple[str, ...]) -> Iterator[_Layout]:
        if (directory / "oci-layout").is_file():
            default = "/".join(parts) if parts else (self._repository or _repo_name(directory))
            try:
                repository: str | None = validate_name(default)
            except InvalidInputError:
                repository = None  # such a layout only serves entries that carry a full reference
            yield _Layout(directory, str(directory / "blobs"), repository)
            return
        if len(parts) >= _MAX_DEPTH:
            return
        try:
            entries = sorted(os.scandir(directory), key=lambda e: e.name)
        except OSError:  # vanished or unreadable: nothing to serve from it
            return
        for entry in entries:
            if entry.is_dir(follow_symlinks=False):
                yield from self._scan(Path(entry.path), (*parts, entry.name))

    def _images_sync(self) -> dict[str, Image]:
        images: dict[str, Image] = {}
        for layout in self._layouts(fresh=True):
            for name, image in _read_index(
                layout.path, registry=self._registry, repository=layout.repository
            ):
                images[name] = image
        return images

    # -- ContentStore ----------------------------------------------------------------------------
    async def list_images(self) -> list[Image]:
        return list((await asyncio.to_thread(self._images_sync)).values())

    async def resolve(self, reference: Reference) -> Digest:
        if reference.tag is not None:
            key = (reference.registry, reference.repository, reference.tag)
            for image in await self.list_images():
                ref = image.reference
                if (ref.registry, ref.repository, ref.tag) == key:
                    return image.digest
        raise ImageNotFoundError(f"{reference} not found")

    def _find(self, digest: Digest) -> tuple[str, int]:
        """Path and size of the first layout's regular file for ``digest`` (symlinks never count)."""
        for layout in self._layouts():
            path = blob_path(layout.blobs, digest)
            try:
                st = os.lstat(path)
            except OSError:
                continue
            if S_ISREG(st.st_mode):
                return path, st.st_size
        raise ContentNotFoundError(f"{digest} not found")

    async def stat(self, digest: Digest) -> Descriptor:
        return Descriptor(digest, self._find(digest)[1])

    async def open(self, digest: Digest) -> FileBlob:
        return FileBlob.open(self._find(digest)[0], digest)

    async def ingests(self) -> list[Ingest]:
        return []

    async def open_ingest(self, digest: Digest) -> GrowingBlob:
        raise ContentNotFoundError(f"no ingest of {digest}: a layout has no writes in progress")

    async def subscribe(self) -> AsyncIterator[Event]:
        if self._closed.is_set():
            return
        stamps = await asyncio.to_thread(self._stamps)
        known = await asyncio.to_thread(self._images_sync)
        yield Event(EventKind.RESYNC)  # everything after `known` was taken is reported below
        while not await self._wait_closed(self._poll_interval):
            current_stamps = await asyncio.to_thread(self._stamps)
            if current_stamps == stamps:  # no index.json added, removed or rewritten: nothing to parse
                continue
            stamps = current_stamps
            current = await asyncio.to_thread(self._images_sync)
            for event in _diff(known, current):
                yield event
            known = current

    def _stamps(self) -> frozenset[tuple[str, int, int, int]]:
        """``(path, inode, size, mtime_ns)`` of every layout's ``index.json``: cheap change detection.

        Writers replace ``index.json`` (new inode) or rewrite it (new mtime); either shows here.
        """
        out = set()
        for layout in self._layouts(fresh=True):
            try:
                st = os.stat(layout.path / "index.json")
            except OSError:
                continue
            out.add((str(layout.path), st.st_ino, st.st_size, st.st_mtime_ns))
        return frozenset(out)

    async def _wait_closed(self, seconds: float) -> bool:
        try:
            async with asyncio.timeout(seconds):
                await self._closed.wait()
        except TimeoutError:
            return False
        return True

    async def close(self) -> None:
        self._closed.set()


def _repo_name(directory: Path) -> str:
    return directory.resolve().name.lower()


def _read_index(layout: Path, *, registry: str, repository: str | None) -> Iterator[tuple[str, Image]]:
    """Named images of one layout; unreadable or malformed files and entries are skipped."""
    try:
        index = json.loads((layout / "index.json").read_bytes())
        entries = index["manifests"]
    except (OSError, ValueError, KeyError, TypeError):
        return
    if not isinstance(entries, list):
        return
    for entry in entries:
        try:
            digest = Digest.parse(entry["digest"])
            annotation = entry["annotations"][REF_NAME]
        except (InvalidInputError, KeyError, TypeError):
            continue
        if not isinstance(annotation, str):
            continue
        ref = image_reference(annotation, registry=registry, repository=repository)
        if ref is not None:
            name = str(ref)
            yield name, Image(name, ref, digest)


def _diff(old: dict[str, Image], new: dict[str, Image]) -> Iterator[Event]:
    for name, image in new.items():
        before = old.get(name)
        if before is None:
            yield Event(EventKind.IMAGE_CREATE, name)
        elif before.digest != image.digest:
            yield Event(EventKind.IMAGE_UPDATE, name)
    for name in old.keys() - new.keys():
        yield Event(EventKind.IMAGE_DELETE, name)
