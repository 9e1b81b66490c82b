"""Malformed and hostile requests: never a 500, always an OCI error, never a byte from outside.

A secret file sits next to the blobs directory (and one level up); a symlink inside the blobs
directory points at it under a valid-looking digest. No request may return any of its bytes.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest
from regsupport import SECRET, FileStore, RawClient, start_server

from spegel_py.oci.digest import Digest

LINKED = Digest("sha256", hashlib.sha256(b"symlinked").hexdigest())
Z = "0" * 64

TARGETS: list[bytes] = [
    b"/v2/../secret",
    b"/v2/../../secret",
    b"/v2/x/blobs/../../secret",
    b"/v2/x/blobs/sha256/../../secret",
    b"/v2/x/blobs/sha256:" + Z.encode() + b"/../../../secret",
    b"/v2/x/blobs/..%2f..%2fsecret",
    b"/v2/x/blobs/%2e%2e%2f%2e%2e%2fsecret",
    b"/v2/x/blobs/%252e%252e%252fsecret",
    b"/v2/x/blobs/sha256%3a" + Z.encode(),
    b"/v2/x/blobs/sha256:" + Z.encode() + b"%00",
    b"/v2/x/blobs/sha256:" + Z.encode() + b"%2f..%2fsecret",
    b"/v2/x/blobs/sha256:..%2f..%2f..%2fsecret",
    b"/v2/x/blobs/sha256:" + b"../" * 20 + b"secret",
    b"/v2/x/blobs/sha256:" + LINKED.hex.encode(),  # a symlink planted in the blobs dir
    b"/v2/x/manifests/sha256:" + LINKED.hex.encode(),
    b"/v2/x/manifests/..%2f..%2fsecret",
    b"/v2/x/manifests/../secret?ns=127.0.0.1%3A5000",
    b"/v2/x/manifests/v1?ns=..%2f..%2fsecret",
    b"/v2/x/manifests/v1?ns=%00",
    b"/v2/x/manifests/v1?ns=" + b"a" * 5000,
    b"/v2/%2e%2e/blobs/sha256:" + Z.encode(),
    b"/v2//blobs/sha256:" + Z.encode(),
    b"/v2/x//y/blobs/sha256:" + Z.encode(),
    b"/v2/" + b"a/" * 200 + b"blobs/sha256:" + Z.encode(),
    b"/v2/" + b"a" * 7000 + b"/blobs/sha256:" + Z.encode(),
    b"/v2/x/blobs/sha256:" + b"0" * 6000,
    b"/v2/x/blobs/sha512:" + b"0" * 128,
    b"/v2/x/blobs/SHA256:" + Z.encode(),
    b"/v2/x/blobs/sha256:" + Z.encode() + b"0",
    b"/v2/x/blobs/sha256:" + "\uff10".encode() * 64,  # fullwidth digit zero
    "/v2/x/blobs/sha256:\uff53\uff45\uff43".encode(),  # fullwidth letters
    b"/v2/\xc3\xa9/blobs/sha256:" + Z.encode(),
    b"/v2/x/blobs/\xff\xfe",
    b"/v2/x/blobs/%",
    b"/v2/x/blobs/%zz",
    b"/v2/x/blobs/sha256:" + Z.encode() + b"#frag",
    b"/v2/x/blobs/",
    b"/v2/x/blobs",
    b"/v2/x/manifests/",
    b"/v2/x/manifests/" + b"t" * 129,
    b"/v2/x/manifests/.hidden?ns=docker.io",
    b"/v2/x/blobs/sha256:" + Z.encode() + b"?ns=../../",
    b"//v2/x/blobs/sha256:" + Z.encode(),
    b"/V2/x/blobs/sha256:" + Z.encode(),
    b"/v2/x/blobs/sha256:" + Z.encode() + b";a=b",
    b"/v2/x/blobs/sha256:\\..\\..\\secret",
    b"/secret",
    b"/../secret",
    b"*",
    b"http://127.0.0.1/v2/../secret",
]


@pytest.fixture
async def hostile(tmp_path: Path):  # type: ignore[no-untyped-def]
    store = FileStore(tmp_path / "store")
    (tmp_path / "secret").write_bytes(SECRET)
    (tmp_path / "store" / "secret").write_bytes(SECRET)
    (tmp_path / "store" / "blobs" / "secret").write_bytes(SECRET)
    os.symlink(tmp_path / "secret", store.blobs / "sha256" / LINKED.hex)
    runner, client = await start_server(store)
    try:
        yield client
    finally:
        await runner.cleanup()


@pytest.mark.parametrize("target", TARGETS, ids=[t[:60].decode("latin-1") for t in TARGETS])
@pytest.mark.parametrize("method", ["GET", "HEAD"])
async def test_hostile_paths_are_refused_without_leaking(
    hostile: RawClient, target: bytes, method: str
) -> None:
    got = await hostile.request(method, target)
    assert got.status in {400, 404, 405, 414, 431}, (got.status, got.body[:200])
    assert SECRET[:16] not in got.body
    assert b"Traceback" not in got.body
    if (
        method == "GET"
        and got.status in {400, 404, 405}
        and got.headers.get("content-type", "").startswith("application/json")
    ):
        doc = json.loads(got.body)
        assert doc["errors"][0]["code"] in {
            "NAME_INVALID",
            "DIGEST_INVALID",
            "MANIFEST_UNKNOWN",
            "BLOB_UNKNOWN",
            "UNSUPPORTED",
            "NAME_UNKNOWN",
        }


@pytest.mark.parametrize(
    "headers",
    [
        {"Range": "bytes=" + "9" * 5000},
        {"Range": "bytes=0-0," * 2000},
        {"X-Spegel-Mirrored": "true" * 100},
        {"Accept": "*/*" * 1000},
    ],
    ids=["huge-range", "many-ranges", "odd-mirrored", "long-accept"],
)
async def test_hostile_headers_on_a_missing_blob(hostile: RawClient, headers: dict[str, str]) -> None:
    got = await hostile.request("GET", f"/v2/x/blobs/sha256:{Z}", headers)
    assert got.status in {400, 404, 431}
    assert SECRET[:16] not in got.body
