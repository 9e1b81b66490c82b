"""Settings: frozen dataclasses whose fields carry their flag, env var, default and help.

The CLI is generated from these fields (so ``--help``, env vars and defaults cannot drift apart)
and components receive plain values from them; nothing else reads argv or the environment.
Flags and env vars of ``registry`` are those of Spegel's ``registry`` command, so a DaemonSet
written for Spegel works unchanged; spegel-py's own additions are marked "(spegel-py)" in their help.
Precedence: command-line flag, then environment variable, then default.
"""

from __future__ import annotations

import csv
import dataclasses
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from spegel_py.errors import ConfigurationError
from spegel_py.routing.base import RECORD_LIFETIME, REPROVIDE_INTERVAL

S = TypeVar("S")

LOG_LEVELS = ("DEBUG", "INFO", "WARN", "ERROR")
BOOTSTRAP_KINDS = ("", "dns", "http", "static", "kubernetes")
CONTENT_STORES = ("containerd", "oci-layout")

_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")
_DURATION_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
_SIZE = re.compile(r"(\d+)\s*(|B|K|KB|KiB|M|MB|MiB|G|GB|GiB)", re.IGNORECASE)
_SIZE_UNITS = {"": 1, "b": 1, "k": 1024, "kb": 1000, "kib": 1024, "m": 1 << 20, "mb": 10**6, "mib": 1 << 20,
               "g": 1 << 30, "gb": 10**9, "gib": 1 << 30}
_ADDR = re.compile(r"(?:\[([0-9A-Fa-f:.]+)\]|([A-Za-z0-9.-]*)):(\d{1,5})")


def parse_duration(value: str) -> float:
    """Go-style duration (``20ms``, ``2s``, ``1m30s``, ``0``) in seconds."""
    text = value.strip()
    if text == "0":
        return 0.0
    pos, total = 0, 0.0
    for match in _DURATION_PART.finditer(text):
        if match.start() != pos:
            break
        total += float(match.group(1)) * _DURATION_UNITS[match.group(2)]
        pos = match.end()
    if pos == 0 or pos != len(text):
        raise ValueError(f"not a duration (use e.g. 20ms, 2s, 1m): {value!r}")
    return total


def parse_bool(value: str) -> bool:
    """``true``/``false`` (also 1/0, yes/no, on/off), case-insensitive."""
    lowered = value.strip().lower()
    if lowered in ("true", "1", "yes", "on"):
        return True
    if lowered in ("false", "0", "no", "off"):
        return False
    raise ValueError(f"not a boolean (true or false): {value!r}")


def parse_size(value: str) -> int:
    """A byte count, optionally with a unit (``8388608``, ``8MiB``, ``8M`` = 8 MiB, ``8MB`` = 8e6)."""
    match = _SIZE.fullmatch(value.strip())
    if match is None:
        raise ValueError(f"not a size in bytes (e.g. 8MiB): {value!r}")
    return int(match.group(1)) * _SIZE_UNITS[match.group(2).lower()]


def parse_int(value: str) -> int:
    """A non-negative integer."""
    number = int(value.strip())
    if number < 0:
        raise ValueError(f"must not be negative: {value!r}")
    return number


def parse_positive_int(value: str) -> int:
    """An integer of at least 1."""
    number = int(value.strip())
    if number < 1:
        raise ValueError(f"must be at least 1: {value!r}")
    return number


def parse_buffer_size(value: str) -> int:
    """A relay buffer size: a size (see :func:`parse_size`) of at least 64 KiB, so that per-chunk
    costs (one hash update and one socket write per buffer) stay small next to the bytes moved."""
    size = parse_size(value)
    if size < 64 << 10:
        raise ValueError(f"must be at least 64KiB: {value!r}")
    return size


def parse_reprovide_interval(value: str) -> float:
    """A duration (see :func:`parse_duration`) above zero and below :data:`RECORD_LIFETIME`, so
    that peers receive a node's records again before the previous copies expire."""
    seconds = parse_duration(value)
    if not 0 < seconds < RECORD_LIFETIME:
        raise ValueError(f"must be above 0 and below 19m (the record lifetime): {value!r}")
    return seconds


def parse_address(value: str) -> str:
    """``host:port``, ``:port`` (all interfaces) or ``[v6]:port``; returned unchanged when valid."""
    match = _ADDR.fullmatch(value.strip())
    if match is None or not 0 < int(match.group(3)) < 65536:
        raise ValueError(f"not an address of the form host:port or :port: {value!r}")
    return value.strip()


def split_address(value: str) -> tuple[str | None, int]:
    """``(host, port)`` of an address; host ``None`` means every interface."""
    match = _ADDR.fullmatch(value.strip())
    if match is None:
        raise ConfigurationError(f"invalid address {value!r}")
    host = match.group(1) or match.group(2) or None
    return host, int(match.group(3))


def _choice(choices: Sequence[str], *, upper: bool = False) -> Callable[[str], str]:
    def parse(value: str) -> str:
        normalized = value.strip().upper() if upper else value.strip()
        if normalized == "WARNING" and upper:
            normalized = "WARN"
        if normalized not in choices:
            raise ValueError(f"must be one of {', '.join(c or '(empty)' for c in choices)}: {value!r}")
        return normalized

    return parse


@dataclass(frozen=True, slots=True)
class Option:
    """How one settings field is set from outside: flag, env var, parser of one string value."""

    flag: str
    env: str
    help: str
    parse: Callable[[str], Any] = str
    many: bool = False  # a list: repeated values after the flag, comma-separated (CSV) in the env
    boolean: bool = False  # a bare flag means true, like Go's flag packages


def option(
    flag: str, env: str, default: Any, help: str, parse: Callable[[str], Any] = str, **kw: bool
) -> Any:
    """A dataclass field carrying its :class:`Option` in ``metadata["option"]``."""
    meta = {"option": Option(flag, env, help, parse, **kw)}
    return field(default=default, metadata=meta)


@dataclass(frozen=True, slots=True)
class GlobalSettings:
    """Settings of every subcommand."""

    log_level: str = option("--log-level", "LOG_LEVEL", "INFO", "Minimum level of the JSON logs on stderr.",
                            _choice(LOG_LEVELS, upper=True))


@dataclass(frozen=True, slots=True)
class RegistrySettings:
    """``spegel-py registry``: serve this node's content, and relay its peers' on a local miss."""

    registry_addr: str = option("--registry-addr", "REGISTRY_ADDR", ":5000",
                                "Address the OCI registry listens on.", parse_address)
    router_addr: str = option("--router-addr", "ROUTER_ADDR", ":5001",
                              "Address the P2P (libp2p) router listens on.", parse_address)
    metrics_addr: str = option("--metrics-addr", "METRICS_ADDR", ":9090",
                               "Address the Prometheus /metrics endpoint listens on.", parse_address)
    containerd_sock: str = option("--containerd-sock", "CONTAINERD_SOCK", "/run/containerd/containerd.sock",
                                  "containerd's gRPC socket.")
    containerd_namespace: str = option("--containerd-namespace", "CONTAINERD_NAMESPACE", "k8s.io",
                                       "containerd namespace whose images are served.")
    containerd_content_path: str = option(
        "--containerd-content-path", "CONTAINERD_CONTENT_PATH",
        "/var/lib/containerd/io.containerd.content.v1.content",
        "containerd's content store directory (blobs are sent from its files).")
    data_dir: str = option("--data-dir", "DATA_DIR", "/var/lib/spegel",
                           "Directory for state that survives restarts (the router's private.key).")
    mirrored_registries: tuple[str, ...] = option(
        "--mirrored-registries", "MIRRORED_REGISTRIES", (),
        "Registries advertised and mirrored, as URLs or hosts (empty: all).", many=True)
    registry_filters: tuple[str, ...] = option(
        "--registry-filters", "REGISTRY_FILTERS", (),
        "Regexes over registry/repo[:tag]; matching images are neither advertised nor mirrored.",
        many=True)
    mirror_resolve_timeout: float = option(
        "--mirror-resolve-timeout", "MIRROR_RESOLVE_TIMEOUT", 0.02,
        "How long to wait for the first peer of a lookup (Go duration).",
        parse_duration)
    mirror_resolve_retries: int = option(
        "--mirror-resolve-retries", "MIRROR_RESOLVE_RETRIES", 3,
        "Peers asked from the router (and tried) for one request.", parse_int)
    resolve_latest_tag: bool = option(
        "--resolve-latest-tag", "RESOLVE_LATEST_TAG", False,
        "Resolve :latest tags through peers. Default false (Spegel: true): :latest moves most often, "
        "so a peer's copy is the likeliest to be stale.", parse_bool, boolean=True)
    debug_web_enabled: bool = option("--debug-web-enabled", "DEBUG_WEB_ENABLED", True,
                                     "Serve the /debug/web page.", parse_bool, boolean=True)
    bootstrap_kind: str = option("--bootstrap-kind", "BOOTSTRAP_KIND", "",
                                 "How peers are found: dns, http, static or kubernetes (empty: alone, "
                                 "ready at once).", _choice(BOOTSTRAP_KINDS))
    dns_bootstrap_domain: str = option("--dns-bootstrap-domain", "DNS_BOOTSTRAP_DOMAIN", "",
                                       "DNS name (headless service) listing peers, for --bootstrap-kind=dns.")
    http_bootstrap_addr: str = option("--http-bootstrap-addr", "HTTP_BOOTSTRAP_ADDR", "",
                                      "Address serving this node's id to peers, for --bootstrap-kind=http.")
    http_bootstrap_url: str = option("--http-bootstrap-url", "HTTP_BOOTSTRAP_URL", "",
                                     "URL of a peer's id, for --bootstrap-kind=http.")
    static_bootstrap_peers: tuple[str, ...] = option(
        "--static-bootstrap-peers", "STATIC_BOOTSTRAP_PEERS", (),
        "Peer multiaddrs, for --bootstrap-kind=static.", many=True)
    # -- spegel-py additions ---------------------------------------------------------------------
    kubernetes_bootstrap_selector: str = option(
        "--kubernetes-bootstrap-selector", "KUBERNETES_BOOTSTRAP_SELECTOR", "",
        "(spegel-py) Label selector of this DaemonSet's pods, for --bootstrap-kind=kubernetes.")
    pod_ip: str = option("--pod-ip", "POD_IP", "",
                         "(spegel-py) This pod's IP (downward API): the address the router advertises.")
    pod_name: str = option("--pod-name", "POD_NAME", "",
                           "(spegel-py) This pod's name (downward API): the kubernetes bootstrap skips it.")
    pod_namespace: str = option("--pod-namespace", "POD_NAMESPACE", "",
                                "(spegel-py) This pod's namespace (downward API), searched by the kubernetes "
                                "bootstrap.")
    content_store: str = option("--content-store", "CONTENT_STORE", "containerd",
                                "(spegel-py) Where content comes from: containerd or oci-layout.",
                                _choice(CONTENT_STORES))
    oci_layout_path: str = option("--oci-layout-path", "OCI_LAYOUT_PATH", "",
                                  "(spegel-py) Directory of OCI image layouts (--content-store=oci-layout).")
    oci_layout_registry: str = option(
        "--oci-layout-registry", "OCI_LAYOUT_REGISTRY", "localhost",
        "(spegel-py) Registry (the ns a client sends) of layout images tagged without one.")
    page_cache_eviction: bool = option(
        "--page-cache-eviction", "PAGE_CACHE_EVICTION", True,
        "(spegel-py) Drop served blob pages from the page cache behind each stream (bounds memory).",
        parse_bool, boolean=True)
    page_cache_eviction_lag: int = option(
        "--page-cache-eviction-lag", "PAGE_CACHE_EVICTION_LAG", 4 << 20,
        "(spegel-py) Bytes kept cached behind the send offset (socket buffers still hold them).", parse_size)
    relay_buffers: int = option(
        "--relay-buffers", "RELAY_BUFFERS", 64,
        "(spegel-py) Buffers in the relay pool: one per relayed stream; when all are in use for 1s a "
        "request gets 404 (containerd falls back to upstream) instead of memory growing.",
        parse_positive_int)
    relay_buffer_size: int = option(
        "--relay-buffer-size", "RELAY_BUFFER_SIZE", 768 << 10,
        "(spegel-py) Size of each relay buffer; the pool holds at most buffers x size bytes.",
        parse_buffer_size)
    relay_hash_threads: int = option(
        "--relay-hash-threads", "RELAY_HASH_THREADS", 1,
        "(spegel-py) Threads hashing relayed bytes next to the event loop; 0 hashes on the loop (less "
        "CPU per GiB, about 20 % lower relay throughput, see docs/benchmarks.md).", parse_int)
    reprovide_interval: float = option(
        "--reprovide-interval", "REPROVIDE_INTERVAL", REPROVIDE_INTERVAL,
        "(spegel-py) Time between re-sends of this node's provider records (Go duration; Spegel's is a "
        "fixed 15m). Must stay below the 19m the records are valid.", parse_reprovide_interval)
    store_timeout: float = option("--store-timeout", "STORE_TIMEOUT", 2.0,
                                  "(spegel-py) Bound on each content-store call; past it: 503.",
                                  parse_duration)
    max_connections: int = option(
        "--max-connections", "MAX_CONNECTIONS", 1024,
        "(spegel-py) Open connections on the registry listener; one accepted beyond it is closed at "
        "once (/metrics and /id have their own cap of 16).", parse_positive_int)
    header_timeout: float = option(
        "--header-timeout", "HEADER_TIMEOUT", 10.0,
        "(spegel-py) A connection's first request head must arrive within this (slowloris bound).",
        parse_duration)
    keepalive_timeout: float = option(
        "--keepalive-timeout", "KEEPALIVE_TIMEOUT", 30.0,
        "(spegel-py) An idle keep-alive connection is closed after this.", parse_duration)
    write_timeout: float = option(
        "--write-timeout", "WRITE_TIMEOUT", 30.0,
        "(spegel-py) A response the client stops reading (socket buffers full) is aborted after this.",
        parse_duration)
    shutdown_timeout: float = option(
        "--shutdown-timeout", "SHUTDOWN_TIMEOUT", 10.0,
        "(spegel-py) How long in-flight requests may finish after SIGTERM (a 2nd signal forces exit).",
        parse_duration)


@dataclass(frozen=True, slots=True)
class ConfigurationSettings:
    """``spegel-py configuration``: point this node's containerd at the mirror (certs.d hosts.toml)."""

    containerd_registry_config_path: str = option(
        "--containerd-registry-config-path", "CONTAINERD_REGISTRY_CONFIG_PATH", "/etc/containerd/certs.d",
        "containerd's config_path directory, where <registry>/hosts.toml is written.")
    mirrored_registries: tuple[str, ...] = option(
        "--mirrored-registries", "MIRRORED_REGISTRIES", (),
        "Registries to mirror, as URLs (empty: all, through _default).", many=True)
    mirror_targets: tuple[str, ...] = option(
        "--mirror-targets", "MIRROR_TARGETS", (), "Mirror URLs containerd tries first (required).", many=True)
    resolve_tags: bool = option("--resolve-tags", "RESOLVE_TAGS", True,
                                "Let the mirror resolve tags ('resolve' capability).", parse_bool,
                                boolean=True)
    prepend_existing: bool = option("--prepend-existing", "PREPEND_EXISTING", False,
                                    "Keep the existing hosts.toml entries after the mirror's.", parse_bool,
                                    boolean=True)
    dial_timeout: float = option("--dial-timeout", "DIAL_TIMEOUT", 0.2,
                                 "(spegel-py) dial_timeout written for each mirror (Go duration).",
                                 parse_duration)
    containerd_config: str = option(
        "--containerd-config", "CONTAINERD_CONFIG", "/etc/containerd/config.toml",
        "(spegel-py) containerd's config file, checked for config_path and discard_unpacked_layers.")


@dataclass(frozen=True, slots=True)
class CleanupSettings:
    """``spegel-py cleanup``: restore certs.d, then answer /healthz until stopped (Helm's hook)."""

    containerd_registry_config_path: str = option(
        "--containerd-registry-config-path", "CONTAINERD_REGISTRY_CONFIG_PATH", "/etc/containerd/certs.d",
        "containerd's config_path directory to restore.")
    addr: str = option("--addr", "ADDR", "", "Address of the /healthz endpoint (required), e.g. :8080.")


@dataclass(frozen=True, slots=True)
class CleanupWaitSettings:
    """``spegel-py cleanup-wait``: return once every cleanup pod has answered /healthz."""

    probe_endpoint: str = option("--probe-endpoint", "PROBE_ENDPOINT", "",
                                 "host:port of the cleanup pods' /healthz (required; a headless service).")
    threshold: int = option("--threshold", "THRESHOLD", 3, "Consecutive all-healthy rounds needed.",
                            parse_int)
    period: float = option("--period", "PERIOD", 2.0, "Time between rounds (Go duration).", parse_duration)


def options(cls: type[Any]) -> list[tuple[str, Option, Any]]:
    """``(field name, Option, default)`` of every field of a settings class, in order."""
    return [(f.name, f.metadata["option"], f.default) for f in dataclasses.fields(cls)]


def load(cls: type[S], flags: Mapping[str, Any], environ: Mapping[str, str]) -> S:
    """Build ``cls`` from parsed flags (raw strings, ``None`` when absent) then env, then defaults.

    Raises :class:`ConfigurationError` naming the flag and env var of a bad value.
    """
    values: dict[str, Any] = {}
    for name, opt, _default in options(cls):
        raw = flags.get(name)
        source = opt.flag
        if raw is None and opt.env in environ:
            raw = environ[opt.env]
            source = opt.env
            if opt.many:
                raw = [item.strip() for row in csv.reader([raw]) for item in row if item.strip()]
        if raw is None:
            continue
        try:
            values[name] = tuple(opt.parse(v) for v in raw) if opt.many else opt.parse(raw)
        except ValueError as exc:
            raise ConfigurationError(f"invalid {source}: {exc}") from exc
    settings = cls(**values)
    _check(settings)
    return settings


def _check(settings: Any) -> None:
    """Required values and cross-field rules."""
    if isinstance(settings, ConfigurationSettings) and not settings.mirror_targets:
        raise ConfigurationError("--mirror-targets (MIRROR_TARGETS) is required")
    if isinstance(settings, CleanupSettings) and not settings.addr:
        raise ConfigurationError("--addr (ADDR) is required")
    if isinstance(settings, CleanupWaitSettings):
        if not settings.probe_endpoint:
            raise ConfigurationError("--probe-endpoint (PROBE_ENDPOINT) is required")
        if settings.threshold < 1 or settings.period <= 0:
            raise ConfigurationError("--threshold must be >= 1 and --period positive")
    if isinstance(settings, RegistrySettings):
        if settings.content_store == "oci-layout" and not settings.oci_layout_path:
            raise ConfigurationError("--content-store=oci-layout needs --oci-layout-path (OCI_LAYOUT_PATH)")
        if settings.store_timeout <= 0:
            raise ConfigurationError("--store-timeout must be positive")
        for flag, value in (("--header-timeout", settings.header_timeout),
                            ("--keepalive-timeout", settings.keepalive_timeout),
                            ("--write-timeout", settings.write_timeout)):
            if value <= 0:
                raise ConfigurationError(f"{flag} must be positive")
