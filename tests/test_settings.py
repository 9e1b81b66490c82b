"""Settings: value parsers, precedence (flag > env > default), and cross-field rules."""

from __future__ import annotations

import dataclasses

import pytest

from spegel_py.errors import ConfigurationError
from spegel_py.flagvalues import parse_address, parse_bool, parse_duration, parse_size, split_address
from spegel_py.settings import GlobalSettings, RegistrySettings, load, options


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("20ms", 0.02),
        ("2s", 2.0),
        ("1m", 60.0),
        ("1h", 3600.0),
        ("1m30s", 90.0),
        ("1.5s", 1.5),
        ("500us", 5e-4),
        ("0", 0.0),
        ("100ns", 1e-7),
        (".5s", 0.5),
    ],
)
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "5", "s", "1x", "1s2", "-1s", "1 s", "1s ms", "ten seconds"])
def test_bad_durations(text: str) -> None:
    with pytest.raises(ValueError):
        parse_duration(text)


@pytest.mark.parametrize(("text", "value"), [("true", True), ("FALSE", False), ("1", True), ("no", False)])
def test_bools(text: str, value: bool) -> None:
    assert parse_bool(text) is value


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("8388608", 8 << 20),
        ("8MiB", 8 << 20),
        ("8M", 8 << 20),
        ("8MB", 8_000_000),
        ("0", 0),
        ("1GiB", 1 << 30),
        ("4k", 4096),
    ],
)
def test_sizes(text: str, value: int) -> None:
    assert parse_size(text) == value


@pytest.mark.parametrize("text", ["", "-1", "8 parsecs", "MiB", "1.5MiB"])
def test_bad_sizes(text: str) -> None:
    with pytest.raises(ValueError):
        parse_size(text)


@pytest.mark.parametrize(
    ("text", "split"),
    [
        (":5000", (None, 5000)),
        ("127.0.0.11:5000", ("127.0.0.11", 5000)),
        ("[::1]:9090", ("::1", 9090)),
        ("localhost:1", ("localhost", 1)),
    ],
)
def test_addresses(text: str, split: tuple[str | None, int]) -> None:
    assert parse_address(text) == text
    assert split_address(text) == split


@pytest.mark.parametrize("text", ["5000", "host:", ":0", ":65536", "a b:1", "::1:5000", "http://x:1"])
def test_bad_addresses(text: str) -> None:
    with pytest.raises(ValueError):
        parse_address(text)


def test_defaults_are_spegels() -> None:
    s = load(RegistrySettings, {}, {})
    assert (s.registry_addr, s.router_addr, s.metrics_addr) == (":5000", ":5001", ":9090")
    assert s.containerd_sock == "/run/containerd/containerd.sock"
    assert s.containerd_namespace == "k8s.io"
    assert s.containerd_content_path == "/var/lib/containerd/io.containerd.content.v1.content"
    assert s.mirror_resolve_timeout == pytest.approx(0.02)
    assert s.mirror_resolve_retries == 3
    assert s.debug_web_enabled is True
    assert s.mirrored_registries == () and s.registry_filters == ()
    assert s.page_cache_eviction is True and s.page_cache_eviction_lag == 4 << 20
    assert (s.relay_buffers, s.relay_buffer_size, s.relay_hash_threads) == (64, 768 << 10, 1)
    assert s.reprovide_interval == 15 * 60.0
    assert load(GlobalSettings, {}, {}).log_level == "INFO"


def test_multi_peer_fetch_flags() -> None:
    s = load(RegistrySettings, {}, {})
    assert (s.multi_peer_fetch, s.multi_peer_min_size, s.multi_peer_providers) == (True, 64 << 20, 4)
    assert (s.multi_peer_range_size, s.multi_peer_buffers) == (4 << 20, 32)
    s = load(RegistrySettings, {"multi_peer_fetch": "false"}, {"MULTI_PEER_RANGE_SIZE": "8MiB"})
    assert (s.multi_peer_fetch, s.multi_peer_range_size) == (False, 8 << 20)


def test_relay_pool_is_sized_from_flags_and_env() -> None:
    s = load(RegistrySettings, {"relay_buffers": "8"}, {"RELAY_BUFFER_SIZE": "1MiB"})
    assert (s.relay_buffers, s.relay_buffer_size) == (8, 1 << 20)


@pytest.mark.parametrize(
    ("flags", "env", "threads"),
    [
        ({}, {}, 1),
        ({}, {"RELAY_HASH_THREADS": "4"}, 4),
        ({"relay_hash_threads": "0"}, {}, 0),  # hash on the event loop
        ({"relay_hash_threads": "2"}, {"RELAY_HASH_THREADS": "0"}, 2),  # the flag wins
    ],
)
def test_relay_hash_threads(flags: dict[str, str], env: dict[str, str], threads: int) -> None:
    assert load(RegistrySettings, flags, env).relay_hash_threads == threads


@pytest.mark.parametrize(("text", "seconds"), [("1s", 1.0), ("250ms", 0.25), ("18m59s", 18 * 60.0 + 59)])
def test_reprovide_interval(text: str, seconds: float) -> None:
    settings = load(RegistrySettings, {}, {"REPROVIDE_INTERVAL": text})
    assert settings.reprovide_interval == pytest.approx(seconds)


def test_precedence_flag_over_env_over_default() -> None:
    env = {"REGISTRY_ADDR": "127.0.0.2:1", "METRICS_ADDR": "127.0.0.2:2"}
    s = load(RegistrySettings, {"registry_addr": "127.0.0.3:3"}, env)
    assert s.registry_addr == "127.0.0.3:3"  # flag wins
    assert s.metrics_addr == "127.0.0.2:2"  # env beats default
    assert s.router_addr == ":5001"


def test_lists_from_env_are_comma_separated_and_from_flags_repeated() -> None:
    env = {"MIRRORED_REGISTRIES": "https://docker.io, https://ghcr.io", "REGISTRY_FILTERS": '"a{1,2}",b'}
    s = load(RegistrySettings, {}, env)
    assert s.mirrored_registries == ("https://docker.io", "https://ghcr.io")
    assert s.registry_filters == ("a{1,2}", "b")  # CSV quoting keeps a comma inside a regex
    s = load(RegistrySettings, {"mirrored_registries": ["https://quay.io"]}, env)
    assert s.mirrored_registries == ("https://quay.io",)


@pytest.mark.parametrize(
    ("flags", "env", "mentions"),
    [
        ({"mirror_resolve_timeout": "soon"}, {}, "--mirror-resolve-timeout"),
        ({}, {"MIRROR_RESOLVE_TIMEOUT": "soon"}, "MIRROR_RESOLVE_TIMEOUT"),
        ({}, {"MIRROR_RESOLVE_RETRIES": "-1"}, "MIRROR_RESOLVE_RETRIES"),
        ({}, {"DEBUG_WEB_ENABLED": "maybe"}, "DEBUG_WEB_ENABLED"),
        ({"registry_addr": "nowhere"}, {}, "--registry-addr"),
        ({"content_store": "s3"}, {}, "--content-store"),
        ({"bootstrap_kind": "carrier-pigeon"}, {}, "--bootstrap-kind"),
        ({"content_store": "oci-layout"}, {}, "--oci-layout-path"),
        ({"store_timeout": "0"}, {}, "--store-timeout"),
        ({"max_connections": "0"}, {}, "--max-connections"),
        ({"header_timeout": "0"}, {}, "--header-timeout"),
        ({}, {"KEEPALIVE_TIMEOUT": "soon"}, "KEEPALIVE_TIMEOUT"),
        ({"keepalive_timeout": "0"}, {}, "--keepalive-timeout"),
        ({}, {"WRITE_TIMEOUT": "never"}, "WRITE_TIMEOUT"),
        ({"mirror_min_throughput": "fast"}, {}, "--mirror-min-throughput"),
        ({"mirror_throughput_window": "0"}, {}, "--mirror-throughput-window"),
        ({}, {"MIRROR_DEADLINE_ALLOWANCE": "ages"}, "MIRROR_DEADLINE_ALLOWANCE"),
        ({}, {"SERVE_MIN_THROUGHPUT": "lots"}, "SERVE_MIN_THROUGHPUT"),
        ({"relay_buffers": "0"}, {}, "--relay-buffers"),
        ({}, {"RELAY_BUFFER_SIZE": "4KiB"}, "RELAY_BUFFER_SIZE"),
        ({"relay_buffer_size": "lots"}, {}, "--relay-buffer-size"),
        ({"relay_hash_threads": "-1"}, {}, "--relay-hash-threads"),
        ({}, {"RELAY_HASH_THREADS": "two"}, "RELAY_HASH_THREADS"),
        ({"reprovide_interval": "0"}, {}, "--reprovide-interval"),
        ({"multi_peer_providers": "1"}, {}, "--multi-peer-providers"),
        ({}, {"MULTI_PEER_RANGE_SIZE": "0"}, "--multi-peer-range-size"),
        ({}, {"MULTI_PEER_FETCH": "maybe"}, "MULTI_PEER_FETCH"),
        ({}, {"REPROVIDE_INTERVAL": "19m"}, "REPROVIDE_INTERVAL"),  # records would expire first
        ({"reprovide_interval": "often"}, {}, "--reprovide-interval"),
        # Spegel main detects an empty path through containerd; spegel-py says what to set instead
        ({}, {"CONTAINERD_CONTENT_PATH": ""}, "--containerd-content-path is empty.*io.containerd.content.v1"),
    ],
)
def test_bad_values_name_their_source(flags: dict[str, str], env: dict[str, str], mentions: str) -> None:
    with pytest.raises(ConfigurationError, match=mentions):
        load(RegistrySettings, flags, env)


def test_log_levels() -> None:
    assert load(GlobalSettings, {"log_level": "warn"}, {}).log_level == "WARN"
    assert load(GlobalSettings, {}, {"LOG_LEVEL": "debug"}).log_level == "DEBUG"
    with pytest.raises(ConfigurationError):
        load(GlobalSettings, {"log_level": "chatty"}, {})


def test_every_field_is_documented_and_frozen() -> None:
    for cls in (GlobalSettings, RegistrySettings):
        assert dataclasses.fields(cls)
        for name, opt, _ in options(cls):
            assert opt.flag == "--" + name.replace("_", "-")
            assert opt.env == name.upper()
            assert opt.help
        settings = load(cls, {}, {})
        first = dataclasses.fields(cls)[0].name
        with pytest.raises(dataclasses.FrozenInstanceError):
            setattr(settings, first, "x")
