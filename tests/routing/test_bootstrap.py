"""Static, DNS and HTTP bootstrap (Kubernetes: test_bootstrap_kubernetes.py)."""

from __future__ import annotations

import json
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
from aiohttp import web
from support.tlscerts import make_pki

from spegel_py.errors import ConfigurationError, RoutingError
from spegel_py.routing.bootstrap import (
    Bootstrapper,
    DNSBootstrapper,
    HTTPBootstrapper,
    KubernetesBootstrapper,
    StaticBootstrapper,
    bootstrap_url,
    build_bootstrapper,
    client_tls,
    id_document,
    parse_id_document,
)

PEER = "12D3KooWJJRYfcGUSbXJV446hkkarXd2GeNHDQb7DfcMMr86c79i"


# -- static ---------------------------------------------------------------------------------------
async def test_static_answers_its_list() -> None:
    peers = ["/ip4/10.0.0.1/tcp/5001/p2p/" + PEER, "/ip6/fd00::1/tcp/5001", " "]
    boot = StaticBootstrapper(peers)
    assert isinstance(boot, Bootstrapper)
    assert await boot.peers() == peers[:2]


@pytest.mark.parametrize(
    "bad", ["10.0.0.1:5001", "/ip4/10.0.0.1/udp/5001", "/ip4/10.0.0.1", "ip4/1.2.3.4/tcp/1"]
)
def test_static_rejects_typos(bad: str) -> None:
    with pytest.raises(ConfigurationError):
        StaticBootstrapper([bad])


# -- dns ------------------------------------------------------------------------------------------
def resolver_of(answers: dict[str, list[str]]) -> Callable[[str], object]:
    async def resolve(host: str) -> list[str]:
        if host not in answers:
            raise RoutingError(f"NXDOMAIN {host}")
        return answers[host]

    return resolve


@pytest.mark.parametrize(
    ("answer", "limit", "expected"),
    [
        ([], 3, []),
        (
            ["10.0.0.3", "10.0.0.1", "10.0.0.2"],
            3,
            ["/ip4/10.0.0.1/tcp/5001", "/ip4/10.0.0.2/tcp/5001", "/ip4/10.0.0.3/tcp/5001"],
        ),
        # sorted numerically (10.0.0.9 < 10.0.0.10), at most `limit` per family, duplicates once
        (
            ["10.0.0.10", "10.0.0.9", "10.0.0.9", "10.0.0.11", "fd00::2", "fd00::1", "fd00::3"],
            2,
            [
                "/ip4/10.0.0.9/tcp/5001",
                "/ip4/10.0.0.10/tcp/5001",
                "/ip6/fd00::1/tcp/5001",
                "/ip6/fd00::2/tcp/5001",
            ],
        ),
        (["fe80::1%eth0"], 3, ["/ip6/fe80::1/tcp/5001"]),
    ],
)
async def test_dns_records_to_multiaddrs(answer: list[str], limit: int, expected: list[str]) -> None:
    boot = DNSBootstrapper(
        "spegel-bootstrap.spegel.svc.cluster.local.",
        port=5001,
        limit=limit,
        resolver=resolver_of({"spegel-bootstrap.spegel.svc.cluster.local.": answer}),  # type: ignore[arg-type]
    )
    assert await boot.peers() == expected


async def test_dns_failure_is_a_routing_error() -> None:
    boot = DNSBootstrapper("missing.", port=5001, resolver=resolver_of({}))  # type: ignore[arg-type]
    with pytest.raises(RoutingError):
        await boot.peers()


async def test_dns_system_resolver_reads_etc_hosts() -> None:
    # `localhost` is answered from /etc/hosts by getaddrinfo: the real resolution path, no network.
    peers = await DNSBootstrapper("localhost", port=5001).peers()
    assert "/ip4/127.0.0.1/tcp/5001" in peers
    assert all(p.endswith("/tcp/5001") for p in peers)


# -- http -----------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("fmt", "addrs", "expected"),
    [
        ("text", ["/ip4/0.0.0.0/tcp/5001", "/ip4/10.0.0.1/tcp/5001"], f"/ip4/10.0.0.1/tcp/5001/p2p/{PEER}"),
        ("text", [f"/ip4/10.0.0.1/tcp/5001/p2p/{PEER}"], f"/ip4/10.0.0.1/tcp/5001/p2p/{PEER}"),
        # Spegel v0.6 to v0.7.4 serve, and require, one libp2p AddrInfo object
        ("object", [f"/ip4/10.0.0.1/tcp/5001/p2p/{PEER}"],
         json.dumps({"ID": PEER, "Addrs": ["/ip4/10.0.0.1/tcp/5001"]})),
        (
            "json",
            ["/ip4/10.0.0.1/tcp/5001", "/ip6/fd00::1/tcp/5001"],
            json.dumps([{"ID": PEER, "Addrs": ["/ip4/10.0.0.1/tcp/5001", "/ip6/fd00::1/tcp/5001"]}]),
        ),
    ],
)
def test_id_document(fmt: str, addrs: list[str], expected: str) -> None:
    assert id_document(PEER, addrs, fmt=fmt) == expected  # type: ignore[arg-type]


def test_id_document_needs_a_dialable_address() -> None:
    with pytest.raises(RoutingError):
        id_document(PEER, ["/ip4/0.0.0.0/tcp/5001"])


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (f"/ip4/10.0.0.1/tcp/5001/p2p/{PEER}\n", [f"/ip4/10.0.0.1/tcp/5001/p2p/{PEER}"]),
        (
            json.dumps([{"ID": PEER, "Addrs": ["/ip4/10.0.0.1/tcp/5001"]}]),
            [f"/ip4/10.0.0.1/tcp/5001/p2p/{PEER}"],
        ),
        (json.dumps([{"ID": "", "Addrs": ["/ip4/10.0.0.1/tcp/5001"]}]), ["/ip4/10.0.0.1/tcp/5001"]),
        # Spegel v0.6 to v0.7.4: one object, as Go's peer.AddrInfo marshals it
        (
            f'{{"ID":"{PEER}","Addrs":["/ip4/10.0.0.1/tcp/5001","/ip6/fd00::1/tcp/5001"]}}',
            [f"/ip4/10.0.0.1/tcp/5001/p2p/{PEER}", f"/ip6/fd00::1/tcp/5001/p2p/{PEER}"],
        ),
        (
            json.dumps([{"Addrs": [f"/ip4/10.0.0.{i}/tcp/1"]} for i in range(5)]),
            ["/ip4/10.0.0.0/tcp/1", "/ip4/10.0.0.1/tcp/1", "/ip4/10.0.0.2/tcp/1"],
        ),  # at most three entries
    ],
)
def test_parse_id_document(body: str, expected: list[str]) -> None:
    assert parse_id_document(body) == expected


@pytest.mark.parametrize(
    "body",
    ["", "hello", "[1, 2]", "{}", "[]", '{"ID": "x", "Addrs": []}', '[{"Addrs": ["10.0.0.1:5001"]}]', "[{"],
)
def test_parse_id_document_rejects(body: str) -> None:
    with pytest.raises(RoutingError):
        parse_id_document(body)


@asynccontextmanager
async def _serving_id(
    handle: Callable[[web.Request], Awaitable[web.Response]], tls: ssl.SSLContext | None = None
) -> AsyncIterator[str]:
    """``handle`` as ``/id`` on 127.0.0.42 (over TLS with ``tls``); yields the URL."""
    app = web.Application()
    app.router.add_get("/id", handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.42", 0, ssl_context=tls)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield f"{'https' if tls else 'http'}://127.0.0.42:{port}/id"
    finally:
        await runner.cleanup()


@pytest.fixture
async def id_server() -> AsyncIterator[tuple[str, dict[str, object]]]:
    """A node's /id endpoint on 127.0.0.42, mounted the way the app mounts it."""
    state: dict[str, object] = {"body": id_document(PEER, ["/ip4/127.0.0.42/tcp/5001"]), "status": 200}

    async def handle(request: web.Request) -> web.Response:
        return web.Response(text=str(state["body"]), status=int(state["status"]))  # type: ignore[call-overload]

    async with _serving_id(handle) as url:
        yield url, state


@pytest.mark.parametrize("fmt", ["object", "json", "text"])
async def test_http_reads_every_format(id_server: tuple[str, dict[str, object]], fmt: str) -> None:
    url, state = id_server
    state["body"] = id_document(PEER, ["/ip4/127.0.0.42/tcp/5001"], fmt=fmt)  # type: ignore[arg-type]
    assert await HTTPBootstrapper(url, timeout=5).peers() == [f"/ip4/127.0.0.42/tcp/5001/p2p/{PEER}"]


@pytest.mark.parametrize(
    ("url", "peer", "expected"),
    [
        ("http://10.0.0.1:5002/id", "", "http://10.0.0.1:5002/id"),
        ("", "http://10.0.0.1:5002", "http://10.0.0.1:5002/id"),  # released Spegel appends /id
        ("", "http://10.0.0.1:5002/", "http://10.0.0.1:5002/id"),
        ("", "", ""),
    ],
)
def test_bootstrap_url_takes_either_flag(url: str, peer: str, expected: str) -> None:
    assert bootstrap_url(url=url, peer=peer) == expected


def test_bootstrap_url_refuses_both_flags() -> None:
    with pytest.raises(ConfigurationError, match="not both"):
        bootstrap_url(url="http://a/id", peer="http://b")


# -- https: --http-bootstrap-cert-dir ----------------------------------------------------------
@pytest.fixture
async def tls_id_server(tmp_path: Path) -> AsyncIterator[tuple[str, Path]]:
    """/id over https on 127.0.0.42, requiring a client certificate of the test CA; and a cert dir
    laid out as a Kubernetes TLS secret mounts it (ca.crt, tls.crt, tls.key)."""
    pki = make_pki(tmp_path / "pki", ip="127.0.0.42")
    cert_dir = tmp_path / "certs"
    cert_dir.mkdir()
    for source, name in ((pki.ca, "ca.crt"), (pki.client_cert, "tls.crt"), (pki.client_key, "tls.key")):
        (cert_dir / name).write_bytes(source.read_bytes())

    async def handle(_: web.Request) -> web.Response:
        return web.Response(text=id_document(PEER, ["/ip4/127.0.0.42/tcp/5001"]))

    async with _serving_id(handle, pki.server_context()) as url:
        yield url, cert_dir


async def test_https_bootstrap_with_the_cert_dir(tls_id_server: tuple[str, Path]) -> None:
    url, cert_dir = tls_id_server
    boot = build_bootstrapper("http", router_port=5001, http_url=url, http_cert_dir=str(cert_dir))
    assert boot is not None
    assert await boot.peers() == [f"/ip4/127.0.0.42/tcp/5001/p2p/{PEER}"]


@pytest.mark.parametrize("keep", [(), ("ca.crt",)], ids=["no-cert-dir", "ca-only"])
async def test_https_bootstrap_fails_without_the_trust_or_the_client_cert(
    tls_id_server: tuple[str, Path], keep: tuple[str, ...]
) -> None:
    """Without ca.crt the server's certificate is not trusted; without tls.crt/tls.key the server
    refuses the handshake: either way a RoutingError (the bootstrap is retried), never a crash."""
    url, cert_dir = tls_id_server
    for path in cert_dir.iterdir():
        if path.name not in keep:
            path.unlink()
    with pytest.raises(RoutingError):
        await HTTPBootstrapper(url, timeout=5, tls=client_tls(str(cert_dir) if keep else "")).peers()


def test_client_tls_refuses_half_a_pair_and_garbage(tmp_path: Path) -> None:
    assert client_tls("") is None
    assert client_tls(str(tmp_path)) is None  # none of the files: the system's CAs
    (tmp_path / "tls.crt").write_text("x")
    with pytest.raises(ConfigurationError, match="go together"):
        client_tls(str(tmp_path))
    (tmp_path / "tls.crt").unlink()
    (tmp_path / "ca.crt").write_text("not a certificate")
    with pytest.raises(ConfigurationError, match="cert-dir"):
        client_tls(str(tmp_path))



async def test_http_error_status_is_a_routing_error(id_server: tuple[str, dict[str, object]]) -> None:
    url, state = id_server
    state["status"] = 503
    with pytest.raises(RoutingError, match="503"):
        await HTTPBootstrapper(url).peers()


async def test_http_unreachable_is_a_routing_error(id_server: tuple[str, dict[str, object]]) -> None:
    url, _ = id_server
    with pytest.raises(RoutingError):
        await HTTPBootstrapper(url.replace("/id", "/nothing-here")).peers()
    with pytest.raises(RoutingError):
        await HTTPBootstrapper("http://127.0.0.42:1/id", timeout=2).peers()


# -- selection by --bootstrap-kind -------------------------------------------------------------
@pytest.mark.parametrize(
    ("kind", "options", "expected"),
    [
        ("", {}, type(None)),
        ("static", {"static_peers": ["/ip4/10.0.0.1/tcp/5001"]}, StaticBootstrapper),
        ("dns", {"dns_domain": "spegel.spegel.svc"}, DNSBootstrapper),
        ("http", {"http_url": "http://10.0.0.1:5002/id"}, HTTPBootstrapper),
        (
            "kubernetes",
            {"kubernetes_namespace": "spegel", "kubernetes_selector": "app=spegel"},
            KubernetesBootstrapper,
        ),
    ],
)
def test_build_bootstrapper(kind: str, options: dict[str, object], expected: type) -> None:
    assert isinstance(build_bootstrapper(kind, router_port=5001, **options), expected)  # type: ignore[arg-type]


@pytest.mark.parametrize("kind", ["static", "dns", "http", "kubernetes", "consul"])
def test_build_bootstrapper_needs_its_options(kind: str) -> None:
    with pytest.raises(ConfigurationError):
        build_bootstrapper(kind, router_port=5001)
