"""Deterministic test images as OCI image layouts (what ``skopeo copy ... oci:DIR`` reads).

Bytes come from a seeded PRNG, tar and gzip headers carry mtime 0, JSON is written with sorted
keys: the same parameters always give the same digests, on any machine. Layouts are built once
and cached on disk under a key derived from their parameters (and :data:`GENERATOR_VERSION`), so
repeated test runs and demos reuse them. Layers are streamed to disk while hashing, so the big
image never sits in memory.

- ``small``: one linux/amd64 manifest, a config and three gzip layers (64 KiB, 1 MiB, 4 MiB).
- ``multi``: an image index pointing at linux/amd64 and linux/arm64/v8 manifests.
- ``big``: three layers of ``big_layer_mib`` MiB (default 110, so > 300 MiB in all), gzip level
  0 (stored blocks: a real tar+gzip layer that costs almost no CPU to write or unpack).
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import random
import shutil
import tarfile
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

GENERATOR_VERSION = 1  # bump when the bytes produced for the same parameters change
KIND_NAMES = ("small", "multi", "big")
TAG = "v1"
DEFAULT_BIG_LAYER_MIB = 110

MT_INDEX = "application/vnd.oci.image.index.v1+json"
MT_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MT_CONFIG = "application/vnd.oci.image.config.v1+json"
MT_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
REF_NAME = "org.opencontainers.image.ref.name"

_CHUNK = 1 << 20
KIB, MIB = 1 << 10, 1 << 20


def repo_root() -> Path:
    return Path(__file__).resolve().parents[2]


def default_cache_dir() -> Path:
    """``$SPEGEL_TEST_CACHE/images`` if set, else ``<repo>/.work/cache/images`` (git-ignored)."""
    base = os.environ.get("SPEGEL_TEST_CACHE")
    return Path(base) / "images" if base else repo_root() / ".work" / "cache" / "images"


@dataclass(frozen=True)
class BuiltImage:
    """One image layout on disk and everything a test needs to check a pull of it."""

    kind: str
    layout: Path
    tag: str
    digest: str  # what the tag points at: the index (multi) or the manifest
    media_type: str
    blobs: dict[str, int]  # every blob of the image (all platforms): digest -> size
    platforms: dict[str, str] = field(default_factory=dict)  # "linux/arm64/v8" -> manifest digest

    @property
    def total_size(self) -> int:
        return sum(self.blobs.values())

    @property
    def oci_ref(self) -> str:
        """Source reference for skopeo: ``oci:DIR:TAG``."""
        return f"oci:{self.layout}:{self.tag}"

    def repository(self) -> str:
        """The repository it is pushed to upstream (``test/<kind>``)."""
        return f"test/{self.kind}"

    def blob_path(self, digest: str) -> Path:
        return self.layout / "blobs" / "sha256" / digest.removeprefix("sha256:")

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "tag": self.tag,
            "digest": self.digest,
            "media_type": self.media_type,
            "blobs": self.blobs,
            "platforms": self.platforms,
        }

    @classmethod
    def from_json(cls, layout: Path, data: dict[str, Any]) -> BuiltImage:
        return cls(
            kind=data["kind"],
            layout=layout,
            tag=data["tag"],
            digest=data["digest"],
            media_type=data["media_type"],
            blobs=dict(data["blobs"]),
            platforms=dict(data["platforms"]),
        )


class _HashingWriter:
    """File-like sink that hashes and counts what passes through to ``target`` (if any)."""

    def __init__(self, target: Any) -> None:
        self.target = target
        self.sha = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes) -> int:
        self.sha.update(data)
        self.size += len(data)
        if self.target is not None:
            self.target.write(data)
        return len(data)

    def flush(self) -> None:
        if self.target is not None:
            self.target.flush()


class _RandomReader:
    """``size`` bytes from a seeded PRNG, generated in fixed 1 MiB steps so reads of any size
    yield the same stream."""

    def __init__(self, rnd: random.Random, size: int) -> None:
        self._rnd, self._left = rnd, size
        self._buf, self._pos = b"", 0

    def read(self, n: int = -1) -> bytes:
        parts = []
        while n != 0:
            if self._pos == len(self._buf):
                if self._left == 0:
                    break
                step = min(_CHUNK, self._left)
                self._buf, self._pos = self._rnd.randbytes(step), 0
                self._left -= step
            take = len(self._buf) - self._pos if n < 0 else min(n, len(self._buf) - self._pos)
            parts.append(self._buf[self._pos : self._pos + take])
            self._pos += take
            n -= take if n > 0 else 0
        return b"".join(parts)


class _LayoutWriter:
    """Writes blobs into ``<dir>/blobs/sha256`` and returns OCI descriptors for them."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.blobdir = path / "blobs" / "sha256"
        self.blobdir.mkdir(parents=True)
        (path / "oci-layout").write_text(json.dumps({"imageLayoutVersion": "1.0.0"}))
        self.blobs: dict[str, int] = {}

    def put(self, data: bytes, media_type: str, **extra: Any) -> dict[str, Any]:
        hexdigest = hashlib.sha256(data).hexdigest()
        (self.blobdir / hexdigest).write_bytes(data)
        return self._descriptor(hexdigest, len(data), media_type, extra)

    def put_json(self, obj: dict[str, Any], media_type: str, **extra: Any) -> dict[str, Any]:
        return self.put(json.dumps(obj, sort_keys=True, separators=(",", ":")).encode(), media_type, **extra)

    def put_layer(
        self, rnd: random.Random, path_in_tar: str, size: int, level: int
    ) -> tuple[dict[str, Any], str]:
        """Stream a one-file tar+gzip layer to disk; return (descriptor, diff id)."""
        tmp = self.blobdir / f".tmp-{os.getpid()}"
        with tmp.open("wb") as raw:
            compressed = _HashingWriter(raw)
            with gzip.GzipFile(fileobj=compressed, mode="wb", compresslevel=level, mtime=0) as gz:
                uncompressed = _HashingWriter(gz)
                with tarfile.open(fileobj=uncompressed, mode="w|", format=tarfile.PAX_FORMAT) as tar:  # type: ignore[call-overload]  # a write()-only sink is all stream mode needs
                    for directory in _parents(path_in_tar):
                        info = tarfile.TarInfo(directory)
                        info.type, info.mode, info.mtime = tarfile.DIRTYPE, 0o755, 0
                        tar.addfile(info)
                    info = tarfile.TarInfo(path_in_tar)
                    info.size, info.mode, info.mtime = size, 0o644, 0
                    tar.addfile(info, _RandomReader(rnd, size))
        hexdigest = compressed.sha.hexdigest()
        tmp.rename(self.blobdir / hexdigest)
        return self._descriptor(
            hexdigest, compressed.size, MT_LAYER_GZIP, {}
        ), "sha256:" + uncompressed.sha.hexdigest()

    def tag(self, descriptor: dict[str, Any], tag: str) -> None:
        entry = {k: v for k, v in descriptor.items() if k != "platform"}
        entry["annotations"] = {REF_NAME: tag}
        index = {"schemaVersion": 2, "mediaType": MT_INDEX, "manifests": [entry]}
        (self.path / "index.json").write_text(json.dumps(index, sort_keys=True, indent=1))

    def _descriptor(
        self, hexdigest: str, size: int, media_type: str, extra: dict[str, Any]
    ) -> dict[str, Any]:
        self.blobs["sha256:" + hexdigest] = size
        return {"mediaType": media_type, "digest": "sha256:" + hexdigest, "size": size, **extra}


def _parents(path: str) -> Iterable[str]:
    parts = path.split("/")[:-1]
    return ("/".join(parts[: i + 1]) for i in range(len(parts)))


def _image(
    out: _LayoutWriter,
    *,
    arch: str,
    variant: str | None,
    layer_sizes: list[int],
    seed: int,
    level: int,
    label: str,
) -> dict[str, Any]:
    """Write one platform's layers, config and manifest; return the manifest descriptor."""
    rnd = random.Random(seed)
    layers, diff_ids = [], []
    for i, size in enumerate(layer_sizes):
        desc, diff_id = out.put_layer(rnd, f"spegel-test/{label}/{arch}/layer{i}.bin", size, level)
        layers.append(desc)
        diff_ids.append(diff_id)
    platform = {"architecture": arch, "os": "linux", **({"variant": variant} if variant else {})}
    config = {
        **platform,
        "created": "1970-01-01T00:00:00Z",
        "config": {
            "Cmd": ["/bin/true"],
            "Env": ["PATH=/usr/bin:/bin"],
            "Labels": {"org.opencontainers.image.title": f"spegel-py test image {label}"},
        },
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
        "history": [
            {"created": "1970-01-01T00:00:00Z", "created_by": f"spegel-py harness layer {i}"}
            for i in range(len(diff_ids))
        ],
    }
    config_desc = out.put_json(config, MT_CONFIG)
    manifest = {"schemaVersion": 2, "mediaType": MT_MANIFEST, "config": config_desc, "layers": layers}
    return out.put_json(manifest, MT_MANIFEST, platform=platform)


def _platform_key(desc: dict[str, Any]) -> str:
    p = desc["platform"]
    return "/".join(x for x in (p["os"], p["architecture"], p.get("variant")) if x)


def _build(kind: str, path: Path, big_layer_mib: int) -> BuiltImage:
    out = _LayoutWriter(path)
    platforms: dict[str, str] = {}
    if kind == "small":
        root = _image(
            out,
            arch="amd64",
            variant=None,
            layer_sizes=[64 * KIB, 1 * MIB, 4 * MIB],
            seed=1,
            level=1,
            label="small",
        )
    elif kind == "multi":
        manifests = [
            _image(
                out,
                arch="amd64",
                variant=None,
                layer_sizes=[256 * KIB, 2 * MIB],
                seed=2,
                level=1,
                label="multi",
            ),
            _image(
                out,
                arch="arm64",
                variant="v8",
                layer_sizes=[256 * KIB, 2 * MIB],
                seed=3,
                level=1,
                label="multi",
            ),
        ]
        platforms = {_platform_key(m): m["digest"] for m in manifests}
        root = out.put_json({"schemaVersion": 2, "mediaType": MT_INDEX, "manifests": manifests}, MT_INDEX)
    elif kind == "big":
        root = _image(
            out,
            arch="amd64",
            variant=None,
            layer_sizes=[big_layer_mib * MIB] * 3,
            seed=4,
            level=0,
            label="big",
        )
    else:
        raise ValueError(f"unknown test image kind {kind!r} (known: {', '.join(KIND_NAMES)})")
    if not platforms:
        platforms = {_platform_key(root): root["digest"]}
    out.tag(root, TAG)
    return BuiltImage(
        kind=kind,
        layout=path,
        tag=TAG,
        digest=root["digest"],
        media_type=root["mediaType"],
        blobs=dict(out.blobs),
        platforms=platforms,
    )


def build_image(
    kind: str, *, cache_dir: Path | None = None, big_layer_mib: int = DEFAULT_BIG_LAYER_MIB
) -> BuiltImage:
    """Return the cached layout of ``kind``, building it first if needed.

    Safe against concurrent builders: each builds in a private temporary directory and renames
    it into place; the loser of the race discards its copy.
    """
    params = {
        "kind": kind,
        "version": GENERATOR_VERSION,
        **({"big_layer_mib": big_layer_mib} if kind == "big" else {}),
    }
    key = hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()[:12]
    base = cache_dir or default_cache_dir()
    final = base / f"{kind}-{key}"
    meta = final / "image.json"
    if meta.exists():
        return BuiltImage.from_json(final, json.loads(meta.read_text()))
    base.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{kind}-", dir=base))
    try:
        image = _build(kind, tmp / "layout", big_layer_mib)
        (tmp / "layout" / "image.json").write_text(json.dumps(image.to_json(), indent=1))
        try:
            (tmp / "layout").rename(final)
        except OSError:
            if not meta.exists():  # not a lost race: a real failure
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return BuiltImage.from_json(final, json.loads(meta.read_text()))


def verify_layout(image: BuiltImage) -> list[str]:
    """Digests whose file is missing or whose bytes do not hash to the digest (empty: all good)."""
    bad = []
    for digest, size in image.blobs.items():
        path = image.blob_path(digest)
        sha = hashlib.sha256()
        try:
            with path.open("rb") as f:
                while chunk := f.read(_CHUNK):
                    sha.update(chunk)
        except FileNotFoundError:
            bad.append(digest)
            continue
        if "sha256:" + sha.hexdigest() != digest or path.stat().st_size != size:
            bad.append(digest)
    return bad


class ImageSet:
    """The test images of one run, each built (or loaded from the cache) on first use only."""

    def __init__(self, *, cache_dir: Path | None = None, big_layer_mib: int = DEFAULT_BIG_LAYER_MIB) -> None:
        self.cache_dir = cache_dir
        self.big_layer_mib = big_layer_mib
        self._built: dict[str, BuiltImage] = {}

    def get(self, kind: str) -> BuiltImage:
        if kind not in self._built:
            self._built[kind] = build_image(kind, cache_dir=self.cache_dir, big_layer_mib=self.big_layer_mib)
        return self._built[kind]

    @property
    def small(self) -> BuiltImage:
        return self.get("small")

    @property
    def multi(self) -> BuiltImage:
        return self.get("multi")

    @property
    def big(self) -> BuiltImage:
        return self.get("big")
