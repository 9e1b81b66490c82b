"""The image-content walker on hand-made graphs: media-type and shape detection, absent nodes."""

from __future__ import annotations

import asyncio
import json

import pytest

from spegel_py.errors import StoreUnavailableError
from spegel_py.oci.digest import Digest
from spegel_py.store.base import Descriptor
from spegel_py.store.memory import MemoryStore
from spegel_py.store.walk import (
    DOCKER_LIST,
    DOCKER_MANIFEST,
    OCI_INDEX,
    OCI_MANIFEST,
    image_content,
)

CONFIG = "application/vnd.docker.container.image.v1+json"
LAYER = "application/vnd.docker.image.rootfs.diff.tar.gzip"


def desc(store: MemoryStore, data: bytes, media_type: str | None, *, add: bool = True) -> dict[str, object]:
    digest = Digest.of(data)
    if add:
        store.add_blob(data)
    out: dict[str, object] = {"digest": str(digest), "size": len(data)}
    if media_type is not None:
        out["mediaType"] = media_type
    return out


def manifest(
    store: MemoryStore,
    seed: str,
    manifest_type: str | None,
    *,
    present: tuple[bool, ...] = (True,) * 3,
    add: bool = True,
) -> tuple[dict[str, object], set[Digest]]:
    """A manifest whose config and two layers are present as told; returns (descriptor, present digests)."""
    parts = [
        desc(store, f"{seed}-{i}".encode(), CONFIG if i == 0 else LAYER, add=p) for i, p in enumerate(present)
    ]
    body: dict[str, object] = {"schemaVersion": 2, "config": parts[0], "layers": parts[1:]}
    if manifest_type is not None:
        body["mediaType"] = manifest_type
    d = desc(store, json.dumps(body).encode(), manifest_type, add=add)
    found = {Digest.parse(str(p["digest"])) for p, ok in zip(parts, present, strict=True) if ok}
    return d, (found | {Digest.parse(str(d["digest"]))}) if add else found


@pytest.mark.parametrize(
    "manifest_type", [OCI_MANIFEST, DOCKER_MANIFEST, None], ids=["oci", "docker", "by-shape"]
)
async def test_single_manifest(manifest_type: str | None) -> None:
    store = MemoryStore()
    root, present = manifest(store, "a", manifest_type)
    found = await image_content(store, Digest.parse(str(root["digest"])))
    assert {d.digest for d in found} == present
    assert found[0].media_type == manifest_type
    assert {d.media_type for d in found[1:]} == {CONFIG, LAYER}


@pytest.mark.parametrize(
    ("index_type", "manifest_type"),
    [(OCI_INDEX, OCI_MANIFEST), (DOCKER_LIST, DOCKER_MANIFEST), (None, None)],
    ids=["oci", "docker", "by-shape"],
)
async def test_index_pulled_for_one_platform(index_type: str | None, manifest_type: str | None) -> None:
    store = MemoryStore()
    amd, amd_present = manifest(store, "amd", manifest_type)
    arm, _ = manifest(store, "arm", manifest_type, present=(False, False, False), add=False)
    partial, partial_present = manifest(store, "s390x", manifest_type, present=(True, False, True))
    body: dict[str, object] = {"schemaVersion": 2, "manifests": [amd, arm, partial]}
    if index_type is not None:
        body["mediaType"] = index_type
    root = desc(store, json.dumps(body).encode(), index_type)
    root_digest = Digest.parse(str(root["digest"]))
    found = await image_content(store, root_digest)
    assert found[0].digest == root_digest
    assert [d.digest for d in found[1:]] != []
    assert {d.digest for d in found} == amd_present | partial_present | {root_digest}
    assert len(found) == len({d.digest for d in found})


async def test_shared_blobs_appear_once_and_nested_indexes_are_followed() -> None:
    store = MemoryStore()
    m, present = manifest(store, "shared", OCI_MANIFEST)
    inner = desc(store, json.dumps({"mediaType": OCI_INDEX, "manifests": [m]}).encode(), OCI_INDEX)
    outer = desc(store, json.dumps({"mediaType": OCI_INDEX, "manifests": [inner, m]}).encode(), OCI_INDEX)
    found = await image_content(store, Digest.parse(str(outer["digest"])))
    expected = present | {Digest.parse(str(inner["digest"])), Digest.parse(str(outer["digest"]))}
    assert [d.digest for d in found] == list(dict.fromkeys(d.digest for d in found))
    assert {d.digest for d in found} == expected


@pytest.mark.parametrize(
    "body",
    [
        b"\x1f\x8b not json at all",
        b"[1, 2, 3]",
        json.dumps({"mediaType": OCI_INDEX, "manifests": [{"digest": "sha256:short"}, 7]}).encode(),
        json.dumps({"mediaType": OCI_MANIFEST, "layers": "nope"}).encode(),
        json.dumps({"architecture": "amd64", "os": "linux"}).encode(),
    ],
    ids=["binary", "json-list", "bad-children", "malformed-manifest", "a-config"],
)
async def test_leaves_and_malformed_documents(body: bytes) -> None:
    store = MemoryStore()
    store.add_blob(body)
    found = await image_content(store, Digest.of(body))
    assert [d.digest for d in found] == [Digest.of(body)]


async def test_documents_over_the_limit_are_not_parsed() -> None:
    store = MemoryStore()
    m, _ = manifest(store, "big", OCI_MANIFEST)
    body = json.dumps({"mediaType": OCI_INDEX, "manifests": [m], "pad": "x" * 2000}).encode()
    store.add_blob(body)
    found = await image_content(store, Digest.of(body), limit=1000)
    assert [d.digest for d in found] == [Digest.of(body)]


class FailingStore(MemoryStore):
    """Answers like a memory store, except that one digest's lookup fails as if containerd were down."""

    def __init__(self, failing: Digest) -> None:
        super().__init__()
        self.failing = failing

    async def stat(self, digest: Digest) -> Descriptor:
        if digest == self.failing:
            raise StoreUnavailableError("containerd is restarting")
        return await super().stat(digest)


async def test_store_failure_propagates_as_itself() -> None:
    probe = MemoryStore()
    root, present = manifest(probe, "x", OCI_MANIFEST)
    leaf = next(d for d in present if d != Digest.parse(str(root["digest"])))  # a config or layer
    store = FailingStore(leaf)
    manifest(store, "x", OCI_MANIFEST)
    with pytest.raises(StoreUnavailableError):
        await image_content(store, Digest.parse(str(root["digest"])))
    assert {t for t in asyncio.all_tasks() if t is not asyncio.current_task()} == set()
