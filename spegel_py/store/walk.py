"""Walk an image's content graph (index -> manifests -> config + layers) within one store.

The advertiser must announce exactly what this node can serve. A multi-arch index pulled for one
platform names manifests and layers that were never fetched, and garbage collection removes
blobs without telling anyone, so every node of the graph is checked with ``stat`` and whatever
is absent is skipped, never treated as an error.
"""

from __future__ import annotations

import json
from typing import Any

from spegel_py.errors import ContentNotFoundError, ContentTooLargeError, InvalidDigestError
from spegel_py.oci.digest import Digest
from spegel_py.store.base import ContentStore, Descriptor, read_blob

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


async def _parse(store: ContentStore, digest: Digest, limit: int) -> dict[str, Any] | None:
    try:
        doc = json.loads(await read_blob(store, digest, limit=limit))
    except (ContentTooLargeError, ValueError):  # a layer, or not JSON: a leaf
        return None
    return doc if isinstance(doc, dict) else None


async def image_content(
    store: ContentStore, digest: Digest, *, limit: int = DEFAULT_LIMIT
) -> list[Descriptor]:
    """Every present blob of the image rooted at ``digest``: the root first, then depth first.

    Each blob appears once. Media types come from the parent's descriptor (or the document's own
    ``mediaType``), since stores such as containerd do not record them. Returns ``[]`` if the
    root itself is absent. Blobs larger than ``limit`` bytes are never read, only stat'ed.
    """
    found: dict[Digest, Descriptor] = {}

    async def visit(digest: Digest, declared: str | None, depth: int, *, parse: bool) -> None:
        if digest in found:
            return
        try:
            desc = await store.stat(digest)
            # Config and layer blobs (a manifest's children) are leaves: never read them.
            doc = await _parse(store, digest, limit) if parse and depth < _MAX_DEPTH else None
        except ContentNotFoundError:  # not pulled for this platform, or collected meanwhile
            return
        kind = _kind(doc, declared) if doc is not None else None
        media_type = declared or desc.media_type
        if doc is not None and isinstance(doc.get("mediaType"), str):
            media_type = doc["mediaType"]
        found[digest] = Descriptor(digest, desc.size, media_type)
        if doc is not None and kind is not None:
            try:
                children = _children(doc, kind)
            except (KeyError, TypeError):  # shape check passed on mediaType alone: malformed body
                return
            for child, child_type in children:
                await visit(child, child_type, depth + 1, parse=kind == "index")

    await visit(digest, None, 0, parse=True)
    return list(found.values())
