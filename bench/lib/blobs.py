"""Deterministic benchmark blobs laid out as one OCI image layout.

Both servers read the very same files (nginx through an ``alias`` onto ``blobs/sha256``), so
they share inodes and therefore page-cache state. The content is pseudo-random but fixed by a
seed, so digests are stable across runs and the layout is generated once and reused.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
from dataclasses import asdict, dataclass, field

MiB = 1 << 20
_FORMAT = 1  # bump when the content recipe changes, so stale caches are regenerated
REPOSITORY = "spegel-bench/blobs"
TAG = "v1"
MANIFEST_MT = "application/vnd.oci.image.manifest.v1+json"
LAYER_MT = "application/vnd.oci.image.layer.v1.tar"
CONFIG_MT = "application/vnd.oci.image.config.v1+json"


@dataclass(frozen=True)
class BlobSpec:
    """What to generate: a role name, a size in MiB and the seed of its content."""

    role: str
    size_mib: int
    seed: str


@dataclass
class Blob:
    role: str
    digest: str  # "sha256:<hex>"
    size: int
    path: str

    def url_path(self, repository: str = REPOSITORY) -> str:
        return f"/v2/{repository}/blobs/{self.digest}"


@dataclass
class Layout:
    root: str
    blobs: list[Blob] = field(default_factory=list)
    manifest_digest: str = ""

    def by_role(self, role: str) -> list[Blob]:
        return [b for b in self.blobs if b.role == role]

    @property
    def blobs_dir(self) -> str:
        return os.path.join(self.root, "blobs", "sha256")


def _write_blob(blobs_dir: str, spec: BlobSpec) -> Blob:
    """Write ``size_mib`` MiB: one random MiB per blob, each MiB stamped with its index.

    ``random.randbytes`` runs at ~200 MB/s here; stamping a reused random block keeps
    generation disk-bound while every MiB (and every blob) stays distinct.
    """
    block = bytearray(random.Random(spec.seed).randbytes(MiB))
    tmp = os.path.join(blobs_dir, f".tmp-{spec.role}-{os.getpid()}")
    h = hashlib.sha256()
    with open(tmp, "wb") as f:
        for i in range(spec.size_mib):
            block[:32] = hashlib.sha256(f"{spec.seed}/{i}".encode()).digest()
            h.update(block)
            f.write(block)
        f.flush()
        os.fsync(f.fileno())  # dirty pages cannot be evicted: make the later "cold" runs cold
    path = os.path.join(blobs_dir, h.hexdigest())
    os.replace(tmp, path)
    return Blob(spec.role, f"sha256:{h.hexdigest()}", spec.size_mib * MiB, path)


def _write_json_blob(blobs_dir: str, obj: object) -> tuple[str, int]:
    data = json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()
    hexd = hashlib.sha256(data).hexdigest()
    with open(os.path.join(blobs_dir, hexd), "wb") as f:
        f.write(data)
    return f"sha256:{hexd}", len(data)


def ensure_layout(root: str, specs: list[BlobSpec], *, log: bool = True) -> Layout:
    """Return the layout at ``root``, (re)generating it unless its stamp matches ``specs``."""
    stamp_path = os.path.join(root, "bench-stamp.json")
    wanted = {"format": _FORMAT, "specs": [asdict(s) for s in specs]}
    try:
        with open(stamp_path) as f:
            stamp = json.load(f)
        if stamp["wanted"] == wanted and all(os.path.getsize(b["path"]) == b["size"] for b in stamp["blobs"]):
            return Layout(root, [Blob(**b) for b in stamp["blobs"]], stamp["manifest_digest"])
    except (OSError, ValueError, KeyError, TypeError):
        pass
    blobs_dir = os.path.join(root, "blobs", "sha256")
    os.makedirs(blobs_dir, exist_ok=True)
    for name in os.listdir(blobs_dir):  # drop blobs of an older recipe
        os.unlink(os.path.join(blobs_dir, name))
    blobs = []
    for spec in specs:
        if log:
            print(f"generating {spec.role} blob ({spec.size_mib} MiB) in {blobs_dir}", flush=True)
        blobs.append(_write_blob(blobs_dir, spec))
    config_digest, config_size = _write_json_blob(
        blobs_dir,
        {"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers", "diff_ids": []}},
    )
    manifest = {
        "schemaVersion": 2,
        "mediaType": MANIFEST_MT,
        "config": {"mediaType": CONFIG_MT, "digest": config_digest, "size": config_size},
        "layers": [{"mediaType": LAYER_MT, "digest": b.digest, "size": b.size} for b in blobs],
    }
    manifest_digest, manifest_size = _write_json_blob(blobs_dir, manifest)
    index = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [
            {
                "mediaType": MANIFEST_MT,
                "digest": manifest_digest,
                "size": manifest_size,
                "annotations": {
                    "org.opencontainers.image.ref.name": TAG,
                    "io.containerd.image.name": f"localhost/{REPOSITORY}:{TAG}",
                },
            }
        ],
    }
    with open(os.path.join(root, "index.json"), "w") as f:
        json.dump(index, f)
    with open(os.path.join(root, "oci-layout"), "w") as f:
        json.dump({"imageLayoutVersion": "1.0.0"}, f)
    with open(stamp_path, "w") as f:
        json.dump(
            {"wanted": wanted, "blobs": [asdict(b) for b in blobs], "manifest_digest": manifest_digest}, f
        )
    return Layout(root, blobs, manifest_digest)
