"""hosts.toml contents: upstream server, mirror hosts, capabilities, dial timeout, prepending, and
the strict URL grammar that keeps flags from escaping certs.d or injecting TOML."""

from __future__ import annotations

import tomllib
from typing import Any

import pytest

from spegel_py.errors import ConfigurationError
from spegel_py.hosts.render import (
    MirroredRegistry,
    RegistryURL,
    hosts_document,
    parse_mirrored,
    parse_targets,
    validate_duration,
)
from spegel_py.hosts.toml import dumps

PULL_RESOLVE = {"capabilities": ["pull", "resolve"], "dial_timeout": "200ms"}


@pytest.mark.parametrize(
    ("raw", "scheme", "host"),
    [
        ("https://docker.io", "https", "docker.io"),
        ("http://127.0.0.1:5000", "http", "127.0.0.1:5000"),
        ("https://ghcr.io/", "https", "ghcr.io"),
        ("  https://quay.io  ", "https", "quay.io"),
        ("http://[::1]:5000", "http", "[::1]:5000"),
        ("https://my-registry.example.com:443", "https", "my-registry.example.com:443"),
        ("http://localhost:30020", "http", "localhost:30020"),
    ],
)
def test_valid_urls(raw: str, scheme: str, host: str) -> None:
    assert RegistryURL.parse(raw) == RegistryURL(scheme, host)


MALICIOUS = [
    "docker.io",  # no scheme
    "ftp://docker.io",
    "https://",
    "https://../../etc",
    "https://..",
    "https://.",
    "https://a/../../etc",
    "https://docker.io/v2/library",
    "https://docker.io?x=1",
    "https://docker.io#frag",
    "https://user:pass@docker.io",
    "https://docker.io:0",
    "https://docker.io:65536",
    "https://docker.io:99999",
    "https://dock er.io",
    "https://docker.io'\n[host.'http://evil']",
    'https://docker.io"]',
    "https://docker\n.io",
    "https://-bad.io",
    "https://bad_.io",
    "https://[::1",
    "https://[zz::1]:5000",
    "https://[::1%eth0]",
    "https://a\\b",
    "https://%2e%2e",
    "http://127.0.0.1:5000/\x00",
    "https://" + "a" * 300,
]


@pytest.mark.parametrize("raw", MALICIOUS)
def test_malicious_or_malformed_urls_are_refused_in_one_line(raw: str) -> None:
    with pytest.raises(ConfigurationError) as info:
        RegistryURL.parse(raw)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("raw", ["200ms", "1s", "1.5s", "2m30s", "500us", "1h"])
def test_valid_durations(raw: str) -> None:
    assert validate_duration(raw) == raw


@pytest.mark.parametrize(
    ("seconds", "text"), [(0.2, "200ms"), (1, "1000ms"), (1.5, "1500ms"), (0.0005, "500us")]
)
def test_seconds_become_go_durations(seconds: float, text: str) -> None:
    assert validate_duration(seconds) == text


@pytest.mark.parametrize("raw", ["", "200", "ms", "1 s", "-1s", "1d", "200ms'\nx = 1", "1s1", 0, -1.0, 1e9])
def test_invalid_durations(raw: str | float) -> None:
    with pytest.raises(ConfigurationError):
        validate_duration(raw)


def _doc(registries: list[str], targets: list[str], **kwargs: Any) -> list[dict[str, Any]]:
    """Render each mirrored registry and parse it back, as containerd would read it."""
    return [
        tomllib.loads(dumps(hosts_document(m, parse_targets(targets), **kwargs)))
        for m in parse_mirrored(registries)
    ]


RENDER_CASES = [
    pytest.param(
        ["http://127.0.0.1:5000"], ["http://127.0.0.1:30020"], {},
        [{"server": "http://127.0.0.1:5000", "host": {"http://127.0.0.1:30020": PULL_RESOLVE}}],
        id="single-registry",
    ),
    pytest.param(
        ["https://docker.io"], ["http://127.0.0.1:30020"], {},
        [{"server": "https://registry-1.docker.io", "host": {"http://127.0.0.1:30020": PULL_RESOLVE}}],
        id="docker-hub",
    ),
    pytest.param(
        [], ["http://127.0.0.1:30020"], {},
        [{"host": {"http://127.0.0.1:30020": PULL_RESOLVE}}],
        id="default-wildcard-has-no-server",
    ),
    pytest.param(
        ["https://ghcr.io"],
        ["http://127.0.0.1:30020", "http://10.0.0.5:30021", "http://127.0.0.1:30020"],
        {},
        [{"server": "https://ghcr.io",
          "host": {"http://127.0.0.1:30020": PULL_RESOLVE, "http://10.0.0.5:30021": PULL_RESOLVE}}],
        id="several-targets-in-order-deduplicated",
    ),
    pytest.param(
        ["https://ghcr.io"], ["http://127.0.0.1:30020"], {"resolve_tags": False},
        [{"server": "https://ghcr.io",
          "host": {"http://127.0.0.1:30020": {"capabilities": ["pull"], "dial_timeout": "200ms"}}}],
        id="resolve-tags-off",
    ),
    pytest.param(
        ["https://ghcr.io"], ["http://127.0.0.1:30020"], {"dial_timeout": "1.5s"},
        [{"server": "https://ghcr.io",
          "host": {"http://127.0.0.1:30020": {"capabilities": ["pull", "resolve"], "dial_timeout": "1.5s"}}}],
        id="dial-timeout",
    ),
    pytest.param(
        ["https://docker.io", "https://ghcr.io", "https://docker.io"], ["http://m:1"], {},
        [{"server": "https://registry-1.docker.io", "host": {"http://m:1": PULL_RESOLVE}},
         {"server": "https://ghcr.io", "host": {"http://m:1": PULL_RESOLVE}}],
        id="several-registries-deduplicated",
    ),
]


@pytest.mark.parametrize(("registries", "targets", "options", "expected"), RENDER_CASES)
def test_render(
    registries: list[str], targets: list[str], options: dict[str, Any], expected: list[dict[str, Any]]
) -> None:
    options = {"resolve_tags": True, "dial_timeout": "200ms", **options}
    assert _doc(registries, targets, **options) == expected


def test_rendered_text_looks_like_the_reference() -> None:
    text = dumps(hosts_document(
        MirroredRegistry(RegistryURL.parse("https://docker.io")), parse_targets(["http://10.0.0.5:30020"]),
        resolve_tags=True, dial_timeout="200ms",
    ))
    assert text == (
        "server = 'https://registry-1.docker.io'\n\n"
        "[host.'http://10.0.0.5:30020']\n"
        "capabilities = ['pull', 'resolve']\n"
        "dial_timeout = '200ms'\n"
    )


EXISTING = """
server = "https://registry-1.docker.io"
skip_verify = false

[host."https://mirror.corp.example"]
  capabilities = ["pull", "resolve"]
  ca = "corp-ca.pem"
  [host."https://mirror.corp.example".header]
    Authorization = ["Basic Zm9vOmJhcg=="]

[host."http://127.0.0.1:30020"]
  capabilities = ["pull"]

[host."https://second.corp.example"]
  capabilities = ["pull"]
  skip_verify = true
  client = [["client.crt", "client.key"]]
"""


def test_prepend_puts_our_hosts_first_then_theirs_in_their_order() -> None:
    document = hosts_document(
        MirroredRegistry(RegistryURL.parse("https://docker.io")), parse_targets(["http://127.0.0.1:30020"]),
        resolve_tags=True, dial_timeout="200ms", existing=tomllib.loads(EXISTING),
    )
    parsed = tomllib.loads(dumps(document))
    assert parsed["server"] == "https://registry-1.docker.io"
    assert "skip_verify" not in parsed  # server-level settings are ours to set
    assert list(parsed["host"]) == [
        "http://127.0.0.1:30020",  # ours, and ours wins over their entry of the same name
        "https://mirror.corp.example",
        "https://second.corp.example",
    ]
    assert parsed["host"]["http://127.0.0.1:30020"] == PULL_RESOLVE
    theirs = tomllib.loads(EXISTING)["host"]
    assert parsed["host"]["https://mirror.corp.example"] == theirs["https://mirror.corp.example"]
    assert parsed["host"]["https://second.corp.example"] == theirs["https://second.corp.example"]


def test_registries_sharing_a_directory_are_refused() -> None:
    with pytest.raises(ConfigurationError, match="share the directory"):
        parse_mirrored(["http://ghcr.io", "https://ghcr.io"])


def test_a_target_is_required() -> None:
    with pytest.raises(ConfigurationError, match="mirror target"):
        parse_targets(["", " "])
