"""Deterministic test images, written the same way into every store the conformance suite covers.

Each image knows all of its blobs and the subset a store should hold: the multi-arch image is
"pulled for one platform" (index + amd64 only), so walkers must skip what is absent. Bytes come
from a seeded PRNG and tar/gzip headers carry mtime 0, so digests are stable across runs.
"""

from __future__ import annotations

import gzip
import io
import json
import random
import tarfile
from dataclasses import dataclass, field
from pathlib import Path

from spegel_py.oci.digest import Digest
from spegel_py.oci.reference import Reference

OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"
REF_NAME = "org.opencontainers.image.ref.name"
CTRD_NAME = "io.containerd.image.name"


@dataclass
class StoreImage:
    """``name`` (full reference) -> ``root``; ``blobs`` holds every blob, ``present`` what a store has."""

    name: str
    root: Digest
    root_media_type: str
    blobs: dict[Digest, bytes] = field(default_factory=dict)
    media_types: dict[Digest, str] = field(default_factory=dict)
    present: set[Digest] = field(default_factory=set)

    @property
    def reference(self) -> Reference:
        return Reference.parse(self.name)

    @property
    def layers(self) -> list[Digest]:
        return [d for d in self.present if self.media_types[d] == OCI_LAYER]

    def put(
        self, data: bytes, media_type: str, *, present: bool = True, **extra: object
    ) -> dict[str, object]:
        digest = Digest.of(data)
        self.blobs[digest] = data
        self.media_types[digest] = media_type
        if present:
            self.present.add(digest)
        return {"mediaType": media_type, "digest": str(digest), "size": len(data), **extra}


def _layer(rnd: random.Random, name: str, size: int) -> tuple[bytes, str]:
    """A gzip layer and its diff id (sha256 of the uncompressed tar), so containerd can unpack it."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        info = tarfile.TarInfo(name)
        info.size, info.mode, info.mtime = size, 0o644, 0
        tar.addfile(info, io.BytesIO(rnd.randbytes(size)))
    out = io.BytesIO()
    with gzip.GzipFile(fileobj=out, mode="wb", compresslevel=1, mtime=0) as gz:
        gz.write(raw.getvalue())
    return out.getvalue(), str(Digest.of(raw.getvalue()))


def _manifest(
    image: StoreImage, arch: str, sizes: list[int], seed: int, *, present: bool
) -> dict[str, object]:
    rnd = random.Random(seed)
    blobs = [_layer(rnd, f"{arch}/l{i}", n) for i, n in enumerate(sizes)]
    layers = [image.put(blob, OCI_LAYER, present=present) for blob, _ in blobs]
    config = {
        "architecture": arch,
        "os": "linux",
        "rootfs": {"type": "layers", "diff_ids": [diff_id for _, diff_id in blobs]},
    }
    cfg = image.put(json.dumps(config, sort_keys=True).encode(), OCI_CONFIG, present=present)
    manifest = {"schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": cfg, "layers": layers}
    platform = {"architecture": arch, "os": "linux"}
    body = json.dumps(manifest, sort_keys=True).encode()
    return image.put(body, OCI_MANIFEST, present=present, platform=platform)


def small_image(name: str = "example.com/test/small:v1", *, seed: int = 1) -> StoreImage:
    """One manifest, a config and two gzip layers (4 KiB and 300 KiB of random data)."""
    image = StoreImage(name, Digest.of(b""), OCI_MANIFEST)
    desc = _manifest(image, "amd64", [4 << 10, 300 << 10], seed, present=True)
    image.root = Digest.parse(str(desc["digest"]))
    return image


def multi_arch_image(name: str = "example.com/test/multi:v1", *, seed: int = 10) -> StoreImage:
    """An index of amd64 + arm64 manifests, as pulled on amd64: the arm64 half is absent."""
    image = StoreImage(name, Digest.of(b""), OCI_INDEX)
    amd = _manifest(image, "amd64", [8 << 10, 100 << 10], seed, present=True)
    arm = _manifest(image, "arm64", [8 << 10, 100 << 10], seed + 1, present=False)
    index = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [amd, arm]}
    desc = image.put(json.dumps(index, sort_keys=True).encode(), OCI_INDEX)
    image.root = Digest.parse(str(desc["digest"]))
    return image


def write_layout(directory: Path, images: list[StoreImage], *, ref_names: str = "full") -> None:
    """Write (or extend) an OCI layout holding each image's present blobs.

    ``ref_names``: ``"full"`` annotates the full reference, ``"tag"`` only the tag (as skopeo does
    for ``oci:DIR:TAG``).
    """
    blobs = directory / "blobs" / "sha256"
    blobs.mkdir(parents=True, exist_ok=True)
    (directory / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
    index_path = directory / "index.json"
    entries = json.loads(index_path.read_text())["manifests"] if index_path.exists() else []
    for image in images:
        for digest in image.present:
            (blobs / digest.hex).write_bytes(image.blobs[digest])
        ref = image.name if ref_names == "full" else str(image.reference.tag)
        annotations = {REF_NAME: ref, CTRD_NAME: image.name}
        entries = [e for e in entries if e["annotations"][REF_NAME] != ref]
        entries.append(
            {
                "mediaType": image.root_media_type,
                "digest": str(image.root),
                "size": len(image.blobs[image.root]),
                "annotations": annotations,
            }
        )
    tmp = index_path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": entries}))
    tmp.replace(index_path)  # atomic, like skopeo: a poller never sees half a file


def write_archive(path: Path, image: StoreImage) -> None:
    """An OCI archive (tar of a layout) of one image, for ``ctr images import``."""

    def add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
        info = tarfile.TarInfo(name)
        info.size, info.mode, info.mtime = len(data), 0o644, 0
        tar.addfile(info, io.BytesIO(data))

    index = {
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": [
            {
                "mediaType": image.root_media_type,
                "digest": str(image.root),
                "size": len(image.blobs[image.root]),
                "annotations": {REF_NAME: str(image.reference.tag), CTRD_NAME: image.name},
            }
        ],
    }
    with tarfile.open(path, "w") as tar:
        add(tar, "oci-layout", b'{"imageLayoutVersion": "1.0.0"}')
        add(tar, "index.json", json.dumps(index).encode())
        for digest in sorted(image.present, key=str):
            add(tar, f"blobs/sha256/{digest.hex}", image.blobs[digest])
