"""A manifest HEAD is answered with verified bytes: a peer's ``Content-Length`` is not taken on trust.

containerd takes a HEAD's size and digest as the manifest's descriptor; a peer that states a
longer ``Content-Length`` than its manifest made every pull of that tag fail ("failed to read
expected number of bytes"), even with an honest provider beside it and with no fallback
upstream (found by ``bench/reliability``, row "hostile", misbehaviour "lying-length"). The
mirror now asks a manifest HEAD as a GET and verifies the body against the digest; a lying peer
is a miss.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from nodesupport import RawPeer
from relaysupport import Cluster, FakeRouter, digest_of

MANIFEST = b'{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","layers":[]}'
DIGEST = digest_of(MANIFEST)


def lying(head: bytes) -> bytes:
    lines = [
        "HTTP/1.1 200 OK",
        f"Content-Length: {len(MANIFEST) + 1024}",
        f"Docker-Content-Digest: {DIGEST}",
        "Content-Type: application/vnd.oci.image.manifest.v1+json",
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + (b"" if head.startswith(b"HEAD") else MANIFEST)


@pytest.fixture
async def liar() -> AsyncIterator[RawPeer]:
    peer = RawPeer("127.0.0.71", lying)
    await peer.start()
    try:
        yield peer
    finally:
        await peer.stop()


@pytest.mark.parametrize("ref", ["v1", DIGEST])
@pytest.mark.parametrize("honest_too", [False, True])
async def test_a_lying_manifest_length_never_reaches_the_client(
    cluster: Cluster, liar: RawPeer, ref: str, honest_too: bool
) -> None:
    peers = [liar.peer]
    if honest_too:
        peers.append((await cluster.peer({DIGEST: MANIFEST}, {"a:v1": DIGEST})).peer)
    front, _ = await cluster.mirror(FakeRouter(peers))
    async with cluster.session().head(f"{front.url}/v2/a/manifests/{ref}") as resp:
        status, headers = resp.status, resp.headers
    assert liar.heads and liar.heads[0].startswith(b"GET ")  # asked for the bytes, not a head
    if honest_too:
        assert status == 200
        assert headers["Content-Length"] == str(len(MANIFEST))
        assert headers["Docker-Content-Digest"] == DIGEST
    else:
        assert status == 404
