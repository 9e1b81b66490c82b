"""Tags resolved through peers only by agreement (relay/tags.py; issue 11 item 1)."""

from __future__ import annotations

import json
import logging
import time

import aiohttp
import pytest
from relaysupport import Cluster, FakeRouter, digest_of

from spegel_py.relay.stats import RelayStats

URL = "/v2/library/nginx/manifests/1.25?ns=docker.io"
KEY = "docker.io/library/nginx:1.25"
TAG = "library/nginx:1.25"


def manifest(marker: str) -> bytes:
    """A small, self-consistent manifest (its bytes are what its digest names)."""
    return json.dumps({"schemaVersion": 2, "annotations": {"m": marker}}).encode()


async def get(
    session: aiohttp.ClientSession, url: str, method: str = "GET"
) -> tuple[int, bytes, dict[str, str]]:
    async with session.request(method, url) as resp:
        return resp.status, await resp.read(), dict(resp.headers)


async def test_two_honest_providers_agree_and_the_tag_is_served(cluster: Cluster) -> None:
    data = manifest("honest")
    digest = digest_of(data)
    a = await cluster.peer({digest: data}, {TAG: digest})
    b = await cluster.peer({digest: data}, {TAG: digest})
    front, mirror = await cluster.mirror([a.peer, b.peer])
    for method in ("GET", "HEAD"):
        status, body, headers = await get(cluster.session(), front.url + URL, method)
        assert status == 200 and headers["Docker-Content-Digest"] == digest
        assert body == (data if method == "GET" else b"")
    # both were asked, each time, with the mirrored header
    assert [r[3] for r in a.requests] == ["true", "true"] and len(b.requests) == 2
    assert mirror.stats.tag_disagreements == 0


async def test_a_forging_provider_makes_the_tag_a_404_every_time(
    cluster: Cluster, caplog: pytest.LogCaptureFixture
) -> None:
    honest, forged = manifest("honest"), manifest("forged")
    good, bad = digest_of(honest), digest_of(forged)
    a = await cluster.peer({good: honest}, {TAG: good})
    liar = await cluster.peer({bad: forged}, {TAG: bad})  # self-consistent: bytes match its digest
    router = FakeRouter([a.peer, liar.peer])
    front, mirror = await cluster.mirror(router)
    session = cluster.session()
    with caplog.at_level(logging.WARNING, logger="spegel_py.relay.mirror"):
        for n in range(1, 11):
            for method in ("GET", "HEAD"):
                status, body, headers = await get(session, front.url + URL, method)
                assert status == 404, (n, method)
                assert bad.encode() not in body and "Docker-Content-Digest" not in headers
    assert mirror.stats.tag_disagreements == 20
    assert router.lookups == [KEY] * 20  # every request looked up anew: no cache decided it
    assert len(a.requests) == 20 and len(liar.requests) == 20  # and asked both, each time
    lines = [r.getMessage() for r in caplog.records if "disagree" in r.getMessage()]
    assert len(lines) == 20 and all(KEY in m and good in m and bad in m for m in lines)
    # the honest digest is still served: digests are self-verifying, only the tag is refused
    status, body, _ = await get(session, f"{front.url}/v2/library/nginx/manifests/{good}?ns=docker.io")
    assert status == 200 and body == honest


async def test_a_single_provider_is_used_as_spegel_does(cluster: Cluster) -> None:
    data = manifest("only")
    digest = digest_of(data)
    only = await cluster.peer({digest: data}, {TAG: digest})
    front, _ = await cluster.mirror(FakeRouter([only.peer]))
    status, body, headers = await get(cluster.session(), front.url + URL)
    assert status == 200 and body == data and headers["Docker-Content-Digest"] == digest


async def test_a_lookup_that_yields_one_provider_and_keeps_searching_is_not_held(cluster: Cluster) -> None:
    """The vote waits for a further provider only ``first_provider_timeout`` once all answered."""
    data = manifest("only")
    digest = digest_of(data)
    only = await cluster.peer({digest: data}, {TAG: digest})
    front, _ = await cluster.mirror(FakeRouter([only.peer], linger=True))
    status, body, _ = await get(cluster.session(), front.url + URL)
    assert status == 200 and body == data
    assert front.answer_times[-1] < 0.5


@pytest.mark.parametrize("other", ["missing", "dead", "corrupt"])
async def test_a_provider_without_the_tag_is_not_a_vote(cluster: Cluster, other: str) -> None:
    """A 404 (or a failure) says nothing about the digest: the one answer is used, as Spegel would."""
    data = manifest("honest")
    digest = digest_of(data)
    a = await cluster.peer({digest: data}, {TAG: digest})
    if other == "dead":
        second = cluster.dead_peer()
    else:
        forged = manifest("forged")
        knobs = {"missing": True} if other == "missing" else {"corrupt": True}
        second = (await cluster.peer({digest_of(forged): forged}, {TAG: digest_of(forged)}, **knobs)).peer
    front, mirror = await cluster.mirror([second, a.peer])
    status, body, _ = await get(cluster.session(), front.url + URL)
    assert status == 200 and body == data
    assert mirror.stats.tag_disagreements == 0


async def test_a_silent_second_provider_does_not_hold_the_request_past_the_deadline(cluster: Cluster) -> None:
    data = manifest("honest")
    digest = digest_of(data)
    a = await cluster.peer({digest: data}, {TAG: digest})
    silent = await cluster.peer({digest: data}, {TAG: digest}, silent=True)
    front, _ = await cluster.mirror([a.peer, silent.peer], deadline=1.0, tag_vote_window=0.4)
    started = time.perf_counter()
    status, body, _ = await get(cluster.session(), front.url + URL)
    assert status == 200 and body == data  # the answer within the window is used
    assert 0.4 <= front.answer_times[-1] < 1.0 and time.perf_counter() - started < 1.0


async def test_the_vote_window_is_capped_by_the_deadline(cluster: Cluster) -> None:
    data = manifest("honest")
    digest = digest_of(data)
    a = await cluster.peer({digest: data}, {TAG: digest})
    silent = await cluster.peer({digest: data}, {TAG: digest}, silent=True)
    front, _ = await cluster.mirror([a.peer, silent.peer], deadline=0.5, tag_vote_window=5.0)
    status, _, _ = await get(cluster.session(), front.url + URL)
    assert status in (200, 404)  # whichever closes first, the vote or the deadline: bounded either way
    assert front.answer_times[-1] < 0.8


def test_disagreements_are_counted_by_the_stats_method_only() -> None:
    stats = RelayStats()
    stats.tag_disagreement()
    assert stats.tag_disagreements == 1
