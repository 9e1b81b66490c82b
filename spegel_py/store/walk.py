"""Walk an image's content graph (index -> manifests -> config + layers) within one store.

The advertiser must announce exactly what this node can serve. A multi-arch index pulled for one
platform names manifests and layers that were never fetched, and garbage collection removes
blobs without telling anyone, so every node of the graph is checked with ``stat`` and whatever
is absent is skipped, never treated as an error.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from spegel_py.errors import ContentNotFoundError, InvalidDigestError
from spegel_py.oci.digest import Digest
from spegel_py.store.base import ContentStore, Descriptor

DEFAULT_LIMIT = 4 << 20  # manifests and indexes are small; a bigger "manifest" is not parsed
_MAX_DEPTH = 8  # an index of indexes is legal; a cycle cannot be (digests), but stay bounded

OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
INDEX_TYPES = frozenset({OCI_INDEX, DOCKER_LIST})
MANIFEST_TYPES = frozenset({OCI_MANIFEST, DOCKER_MANIFEST})


def _kind(doc: dict[str, Any], declared: str | None) -> str | None:
    """``"index"``, ``"manifest"`` or ``None``: by ``mediaType`` when known, else by shape."""
    media_type = doc.get("mediaType") or declared
    if media_type in INDEX_TYPES:
        return "index"
    if media_type in MANIFEST_TYPES:
        return "manifest"
    if isinstance(doc.get("manifests"), list):
        return "index"
    if isinstance(doc.get("config"), dict) and isinstance(doc.get("layers"), list):
        return "manifest"
    return None


def _children(doc: dict[str, Any], kind: str) -> list[tuple[Digest, str | None]]:
    """Digests (and declared media types) a document points to; malformed entries are ignored."""
    raw: list[Any] = doc["manifests"] if kind == "index" else [doc["config"], *doc["layers"]]
    out = []
    for entry in raw:
        if not isinstance(entry, dict) or not isinstance(entry.get("digest"), str):
            continue
        try:
            digest = Digest.parse(entry["digest"])
        except InvalidDigestError:
            continue
        media_type = entry.get("mediaType")
        out.append((digest, media_type if isinstance(media_type, str) else None))
    return out


async def _read(store: ContentStore, digest: Digest, limit: int) -> tuple[int, dict[str, Any] | None]:
    """Size and parsed JSON object of a blob (``None`` if over ``limit`` or not a JSON object).

    One ``open`` answers both presence and size, so a document costs one store round trip.
    """
    async with await store.open(digest) as blob:
        if blob.size > limit:
            return blob.size, None
        data = b"".join([chunk async for chunk in blob.chunks()])
    try:
        doc = json.loads(data)
    except ValueError:  # a layer or other binary blob: a leaf
        return len(data), None
    return len(data), doc if isinstance(doc, dict) else None


async def image_content(
    store: ContentStore, digest: Digest, *, limit: int = DEFAULT_LIMIT
) -> list[Descriptor]:
    """Every present blob of the image rooted at ``digest``: the root first, then depth first.

    Each blob appears once. Media types come from the parent's descriptor (or the document's own
    ``mediaType``), since stores such as containerd do not record them. Returns ``[]`` if the
    root itself is absent. Blobs larger than ``limit`` bytes are never read, only stat'ed.
    Siblings are looked up concurrently (a manifest's layers are independent round trips); a
    store failure (``StoreUnavailableError``) cancels the rest of the walk and propagates.
    """
    seen: set[Digest] = set()

    async def visit(digest: Digest, declared: str | None, depth: int, *, parse: bool) -> list[Descriptor]:
        if digest in seen:
            return []
        seen.add(digest)
        doc: dict[str, Any] | None = None
        try:
            if parse and depth < _MAX_DEPTH:
                size, doc = await _read(store, digest, limit)
            else:  # config and layer blobs (a manifest's children) are leaves: never read them
                size = (await store.stat(digest)).size
        except ContentNotFoundError:  # not pulled for this platform, or collected meanwhile
            return []
        media_type = declared
        if doc is not None and isinstance(doc.get("mediaType"), str):
            media_type = doc["mediaType"]
        found = [Descriptor(digest, size, media_type)]
        kind = _kind(doc, declared) if doc is not None else None
        if doc is None or kind is None:
            return found
        try:
            children = _children(doc, kind)
        except (KeyError, TypeError):  # the mediaType said manifest/index but the body is malformed
            return found
        # gather rather than a TaskGroup: callers match StoreUnavailableError, not an ExceptionGroup
        tasks = [
            asyncio.create_task(
                visit(child, child_type, depth + 1, parse=kind == "index"), name=f"walk {child}"
            )
            for child, child_type in children
        ]
        try:
            for result in await asyncio.gather(*tasks):
                found.extend(result)
        finally:  # on failure, stop the siblings and wait for them: nothing outlives the walk
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        return found

    return await visit(digest, None, 0, parse=True)
