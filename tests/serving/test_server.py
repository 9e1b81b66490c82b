"""The registry's HTTP surface against real aiohttp servers, over memory and file-backed stores."""

from __future__ import annotations

import asyncio
import base64
import hashlib

import pytest
from regsupport import REGISTRY, Content, RawClient, start_server

from spegel_py.oci import mediatypes
from spegel_py.oci.digest import Digest
from spegel_py.oci.filters import RegistryFilter
from spegel_py.store.base import ContentStore

NS = "?ns=127.0.0.1%3A5000"


def _oci_code(body: bytes) -> str:
    import json

    doc = json.loads(body)
    return str(doc["errors"][0]["code"])


async def test_api_root(served: tuple[RawClient, Content, object]) -> None:
    client, _, _ = served
    for path in ("/v2/", "/v2"):
        got = await client.request("GET", path)
        assert (got.status, got.body) == (200, b"{}")
        assert got.headers["docker-distribution-api-version"] == "registry/2.0"
    head = await client.request("HEAD", "/v2/")
    assert head.status == 200 and head.body == b""


@pytest.mark.parametrize(
    ("target", "namespace"),
    [
        (f"/v2/test/small/manifests/v1{NS}", "127.0.0.1:5000"),
        ("/v2/test/small/blobs/{layer}?ns=docker.io", "docker.io"),
        ("/v2/test/small/blobs/{layer}", None),  # no ns: nothing to echo
        ("/v2/test/small/manifests/{manifest}", None),
    ],
)
@pytest.mark.parametrize("method", ["GET", "HEAD"])
async def test_oci_namespace_echoes_ns(
    served: tuple[RawClient, Content, object], target: str, namespace: str | None, method: str
) -> None:
    """The OCI distribution spec: a registry scoping by ``ns`` returns it in ``OCI-Namespace``."""
    client, content, _ = served
    got = await client.request(method, target.format(layer=content.layer, manifest=content.manifest))
    assert got.status == 200
    assert got.headers.get("oci-namespace") == namespace
    ranged = await client.request("GET", target.format(layer=content.layer, manifest=content.manifest),
                                  headers={"Range": "bytes=0-0"})  # fmt: skip
    assert ranged.headers.get("oci-namespace") == namespace


async def test_liveness_and_readiness(served: tuple[RawClient, Content, object]) -> None:
    client, _, _ = served
    assert (await client.request("GET", "/livez")).status == 200
    assert (await client.request("GET", "/readyz")).status == 200


@pytest.mark.parametrize(
    ("target", "role", "media_type"),
    [
        (f"/v2/test/small/manifests/v1{NS}", "manifest", mediatypes.OCI_MANIFEST),
        (f"/v2/test/multi/manifests/v1{NS}", "index", mediatypes.OCI_INDEX),
        ("/v2/library/busybox/manifests/latest?ns=docker.io", "manifest", mediatypes.OCI_MANIFEST),
        ("/v2/test/small/manifests/{manifest}", "manifest", mediatypes.OCI_MANIFEST),
        ("/v2/test/small/manifests/{index}?ns=docker.io", "index", mediatypes.OCI_INDEX),
        # a manifest request by digest serves any present content, with its sniffed type
        ("/v2/test/small/manifests/{config}", "config", mediatypes.OCI_CONFIG),
        ("/v2/test/small/manifests/{layer}", "layer", mediatypes.OCTET_STREAM),
        ("/v2/test/small/blobs/{config}", "config", mediatypes.OCI_CONFIG),
        ("/v2/test/small/blobs/{layer}", "layer", mediatypes.OCTET_STREAM),
        ("/v2/test/small/blobs/{small_layer}", "small_layer", mediatypes.OCTET_STREAM),
        ("/v2/any/other/repo/blobs/{json_no_type}", "json_no_type", mediatypes.OCTET_STREAM),
        ("/v2/test/small/blobs/{empty}", "empty", mediatypes.OCTET_STREAM),
    ],
)
@pytest.mark.parametrize("method", ["GET", "HEAD"])
async def test_content_routes(
    served: tuple[RawClient, Content, object], target: str, role: str, media_type: str, method: str
) -> None:
    client, content, _ = served
    digest: Digest = getattr(content, role)
    url = target.format(
        **{
            k: str(getattr(content, k))
            for k in ("manifest", "index", "config", "layer", "small_layer", "json_no_type", "empty")
        }
    )
    got = await client.request(method, url)
    assert got.status == 200
    assert got.headers["content-type"] == media_type
    assert got.headers["docker-content-digest"] == str(digest)
    assert int(got.headers["content-length"]) == len(content.data[digest])
    if "/blobs/" in url:
        assert got.headers["accept-ranges"] == "bytes"
    if method == "GET":
        assert hashlib.sha256(got.body).hexdigest() == digest.hex
    else:
        assert got.body == b""


@pytest.mark.parametrize(
    ("range_header", "status", "span"),
    [
        ("bytes=0-0", 206, (0, 1)),
        ("bytes=10-19", 206, (10, 20)),
        ("bytes=100-", 206, (100, None)),
        ("bytes=-5", 206, (-5, None)),
        ("bytes=0-999999999999", 206, (0, None)),  # end clamped to the size
        ("bytes=-999999999999", 206, (0, None)),  # suffix longer than the blob: everything
        ("bytes=999999999-", 416, None),
        ("bytes=-0", 416, None),
        ("bytes=0-1,5-6", 200, (0, None)),  # several ranges: ignored
        ("bytes=5-1", 200, (0, None)),  # last < first: invalid, ignored
        ("bytes=abc", 200, (0, None)),
        ("items=0-1", 200, (0, None)),
        ("bytes=", 200, (0, None)),
        ("bytes=1" + "0" * 40 + "-", 200, (0, None)),  # absurd number: malformed, ignored
    ],
)
async def test_ranges(
    served: tuple[RawClient, Content, object],
    range_header: str,
    status: int,
    span: tuple[int, int | None] | None,
) -> None:
    client, content, _ = served
    data = content.data[content.layer]
    got = await client.request("GET", f"/v2/test/small/blobs/{content.layer}", {"Range": range_header})
    assert got.status == status
    if span is None:
        assert got.headers["content-range"] == f"bytes */{len(data)}"
        assert _oci_code(got.body)
        return
    expected = data[span[0] : span[1]]
    assert got.body == expected
    assert int(got.headers["content-length"]) == len(expected)
    if status == 206:
        start = len(data) - len(expected) if span[0] < 0 else span[0]
        assert got.headers["content-range"] == f"bytes {start}-{start + len(expected) - 1}/{len(data)}"
    else:
        assert "content-range" not in got.headers


@pytest.mark.parametrize(
    ("first", "last", "status"), [(0, "", 416), (0, 5, 416), (-1, "", 206), (-1, -1, 206)]
)
async def test_a_range_starting_at_the_size_is_416(
    served: tuple[RawClient, Content, object], first: int, last: int | str, status: int
) -> None:
    """Spegel v0.7 (#1422) and RFC 9110: a first byte at or past the end selects nothing."""
    client, content, _ = served
    size = len(content.data[content.layer])
    end = "" if last == "" else size + int(last)
    header = {"Range": f"bytes={size + first}-{end}"}
    got = await client.request("GET", f"/v2/test/small/blobs/{content.layer}", header)
    assert got.status == status
    whole = f"bytes */{size}" if status == 416 else f"bytes {size - 1}-{size - 1}/{size}"
    assert got.headers["content-range"] == whole


async def test_head_with_range_sends_no_body(served: tuple[RawClient, Content, object]) -> None:
    client, content, _ = served
    got = await client.request("HEAD", f"/v2/test/small/blobs/{content.layer}", {"Range": "bytes=0-9"})
    assert (got.status, got.headers["content-length"], got.body) == (206, "10", b"")


@pytest.mark.parametrize(
    ("method", "target", "statuses", "code"),
    [
        ("GET", "/v2/test/small/manifests/v1", {404}, "MANIFEST_UNKNOWN"),  # tag without ns (skopeo)
        ("GET", "/v2/test/small/manifests/v2" + NS, {404}, "MANIFEST_UNKNOWN"),
        ("GET", "/v2/test/other/manifests/v1" + NS, {404}, "MANIFEST_UNKNOWN"),
        ("GET", "/v2/test/small/manifests/v1?ns=docker.io", {404}, "MANIFEST_UNKNOWN"),
        ("GET", "/v2/test/small/blobs/sha256:" + "0" * 64, {404}, "BLOB_UNKNOWN"),
        ("GET", "/v2/test/small/manifests/sha256:" + "0" * 64, {404}, "MANIFEST_UNKNOWN"),
        ("HEAD", "/v2/test/small/blobs/sha256:" + "0" * 64, {404}, None),
        ("GET", "/v2/test/small/blobs/v1", {400}, "DIGEST_INVALID"),
        ("GET", "/v2/test/small/blobs/sha256:abc", {400}, "DIGEST_INVALID"),
        ("GET", "/v2/test/small/blobs/md5:" + "0" * 32, {400}, "DIGEST_INVALID"),
        ("GET", "/v2/test/small/blobs/sha256:" + "A" * 64, {400}, "DIGEST_INVALID"),
        ("GET", "/v2/Test/small/blobs/sha256:" + "0" * 64, {400}, "NAME_INVALID"),
        ("GET", "/v2/test/small/manifests/-bad" + NS, {404}, "MANIFEST_UNKNOWN"),
        ("GET", "/v2/test/small/manifests/v1?ns=bad/host", {400}, "NAME_INVALID"),
        ("GET", "/v2/test/small/manifests/v1?ns=a&ns=b", {400}, "NAME_INVALID"),
        ("GET", "/v2/_catalog", {404}, "UNSUPPORTED"),
        ("GET", "/v2/test/small/tags/list", {404}, "UNSUPPORTED"),
        ("GET", "/", {404}, "UNSUPPORTED"),
        ("GET", "/metrics", {404}, "UNSUPPORTED"),
        ("POST", "/v2/test/small/blobs/uploads/", {405}, "UNSUPPORTED"),
        ("PUT", "/v2/test/small/manifests/v1", {405}, "UNSUPPORTED"),
        ("DELETE", "/v2/test/small/blobs/sha256:" + "0" * 64, {405}, "UNSUPPORTED"),
    ],
)
async def test_errors(
    served: tuple[RawClient, Content, object], method: str, target: str, statuses: set[int], code: str | None
) -> None:
    client, _, _ = served
    got = await client.request(method, target)
    assert got.status in statuses
    if code is not None:
        assert got.headers["content-type"].startswith("application/json")
        assert _oci_code(got.body) == code
    if got.status == 405:
        assert got.headers["allow"] == "GET, HEAD"


async def test_many_requests_on_one_server_stay_correct(served: tuple[RawClient, Content, object]) -> None:
    """Concurrent GETs of one blob (shared pages, coordinator bookkeeping) all get exact bytes."""
    client, content, _ = served
    results = await asyncio.gather(*(client.request("GET", f"/v2/x/blobs/{content.layer}") for _ in range(8)))
    assert all(r.status == 200 and hashlib.sha256(r.body).hexdigest() == content.layer.hex for r in results)


async def test_registry_constant_matches_tags() -> None:
    assert REGISTRY == "127.0.0.1:5000"


async def test_keep_alive_connection_serves_many_responses(served: tuple[RawClient, Content, object]) -> None:
    """containerd reuses connections: a sendfile body must leave the connection clean for the next."""
    import aiohttp

    client, content, _ = served
    base = f"http://{client.host}:{client.port}"
    created: list[object] = []
    trace = aiohttp.TraceConfig()

    async def on_create(*_: object) -> None:
        created.append(1)

    trace.on_connection_create_end.append(on_create)
    connector = aiohttp.TCPConnector(limit=1)
    async with aiohttp.ClientSession(connector=connector, trace_configs=[trace]) as session:
        for _ in range(2):
            async with session.get(f"{base}/v2/x/blobs/{content.layer}") as resp:
                assert resp.status == 200
                assert hashlib.sha256(await resp.read()).hexdigest() == content.layer.hex
            async with session.get(f"{base}/v2/test/small/manifests/v1{NS}") as resp:
                assert resp.status == 200 and await resp.read() == content.data[content.manifest]
            async with session.head(f"{base}/v2/x/blobs/{content.layer}") as resp:
                assert resp.status == 200
            ranged = {"Range": "bytes=-3"}
            async with session.get(f"{base}/v2/x/blobs/{content.layer}", headers=ranged) as resp:
                assert resp.status == 206 and await resp.read() == content.data[content.layer][-3:]
            async with session.get(f"{base}/v2/x/blobs/sha256:{'0' * 64}") as resp:
                assert resp.status == 404
    assert len(created) == 1  # everything above went over one connection


CREDENTIALS = "Basic " + base64.b64encode(b"spegel:s3cret").decode()


@pytest.mark.parametrize(
    ("path", "authorization", "status"),
    [
        ("/v2/test/small/blobs/{layer}", CREDENTIALS, 200),
        ("/v2/test/small/blobs/{layer}", "basic " + CREDENTIALS.split()[1], 200),  # scheme: any case
        ("/v2/", CREDENTIALS, 200),
        ("/v2/test/small/blobs/{layer}", None, 401),
        ("/v2/", None, 401),
        ("/v2/test/small/manifests/v1" + NS, "Basic " + base64.b64encode(b"spegel:wrong").decode(), 401),
        ("/v2/test/small/blobs/{layer}", "Basic !!!", 401),  # not base64
        ("/v2/test/small/blobs/{layer}", "Bearer " + CREDENTIALS.split()[1], 401),
        ("/livez", None, 200),  # probes never need credentials (kubelet has none)
        ("/readyz", None, 200),
        ("/nothing/here", None, 404),  # outside /v2: an unknown path, as in Spegel
    ],
)
async def test_spegels_basic_auth(
    backend: tuple[ContentStore, Content], path: str, authorization: str | None, status: int
) -> None:
    """With Spegel's basic-auth secret mounted, every /v2 request needs its credentials (401
    UNAUTHORIZED otherwise, as in Spegel v0.7)."""
    store, content = backend
    runner, client = await start_server(store, authorization=CREDENTIALS)
    try:
        headers = {} if authorization is None else {"Authorization": authorization}
        got = await client.request("GET", path.format(layer=content.layer), headers)
        assert got.status == status
        if status == 401:
            assert _oci_code(got.body) == "UNAUTHORIZED"
    finally:
        await runner.cleanup()


@pytest.mark.parametrize(
    ("flags", "path", "status"),
    [
        # --registry-filters: the excluded repository is not served by tag nor by digest
        ({"registry_filters": [r"/test/small"]}, f"/v2/test/small/manifests/v1{NS}", 404),
        ({"registry_filters": [r"/test/small"]}, "/v2/test/small/blobs/{layer}" + NS, 404),
        ({"registry_filters": [r"/test/small"]}, f"/v2/test/multi/manifests/v1{NS}", 200),
        ({"registry_filters": [r":v1$"]}, f"/v2/test/small/manifests/v1{NS}", 404),
        ({"registry_filters": [r":v1$"]}, "/v2/test/small/blobs/{layer}" + NS, 200),  # no tag to match
        # --mirrored-registries: another registry's content is not served
        ({"mirrored_registries": ["https://docker.io"]}, f"/v2/test/small/manifests/v1{NS}", 404),
        ({"mirrored_registries": ["http://127.0.0.1:5000"]}, f"/v2/test/small/manifests/v1{NS}", 200),
        # without ns the registry is unknown: digests are served (skopeo, podman)
        ({"registry_filters": [r"/test/small"]}, "/v2/test/small/blobs/{layer}", 200),
    ],
)
async def test_filtered_images_are_not_served_even_from_local_content(
    backend: tuple[ContentStore, Content], flags: dict[str, list[str]], path: str, status: int
) -> None:
    """As in Spegel v0.7: the filters decide what a node shares at all, not only what it advertises
    (a filtered private image cannot be fetched from the node by anyone who knows its tag)."""
    store, content = backend
    runner, client = await start_server(store, filters=RegistryFilter.from_flags(**flags))
    try:
        got = await client.request("GET", path.format(layer=content.layer))
        assert got.status == status
    finally:
        await runner.cleanup()
