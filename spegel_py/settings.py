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
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

from spegel_py.errors import ConfigurationError
from spegel_py.flagvalues import (
    choice,
    parse_address,
    parse_bool,
    parse_buffer_size,
    parse_duration,
    parse_int,
    parse_positive_int,
    parse_reprovide_interval,
    parse_size,
)
from spegel_py.routing.base import REPROVIDE_INTERVAL

S = TypeVar("S")

LOG_LEVELS = ("DEBUG", "INFO", "WARN", "ERROR")
BOOTSTRAP_KINDS = ("", "dns", "http", "static", "kubernetes")
CONTENT_STORES = ("containerd", "oci-layout")

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
                            choice(LOG_LEVELS, upper=True))


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
                                 "ready at once).", choice(BOOTSTRAP_KINDS))
    dns_bootstrap_domain: str = option("--dns-bootstrap-domain", "DNS_BOOTSTRAP_DOMAIN", "",
                                       "DNS name (headless service) listing peers, for --bootstrap-kind=dns.")
    http_bootstrap_addr: str = option("--http-bootstrap-addr", "HTTP_BOOTSTRAP_ADDR", "",
                                      "Address serving this node's id to peers, for --bootstrap-kind=http.")
    http_bootstrap_url: str = option("--http-bootstrap-url", "HTTP_BOOTSTRAP_URL", "",
                                     "URL of a peer's id, for --bootstrap-kind=http.")
    http_bootstrap_peer: str = option(
        "--http-bootstrap-peer", "HTTP_BOOTSTRAP_PEER", "",
        "Base URL of a peer whose /id is read, for --bootstrap-kind=http (released Spegel's name; "
        "give this or --http-bootstrap-url).")
    http_bootstrap_cert_dir: str = option(
        "--http-bootstrap-cert-dir", "HTTP_BOOTSTRAP_CERT_DIR", "",
        "Directory with ca.crt (the CAs trusted for an https bootstrap URL) and optionally tls.crt and "
        "tls.key (a client certificate), for --bootstrap-kind=http.")
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
                                choice(CONTENT_STORES))
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
    mirror_min_throughput: int = option(
        "--mirror-min-throughput", "MIRROR_MIN_THROUGHPUT", 256 << 10,
        "(spegel-py) Floor under a relayed blob, in bytes/s (e.g. 256KiB): a peer below it over "
        "--mirror-throughput-window is left for another provider (resumed with Range), else the "
        "client is cut and retries. 0 turns the floor and the relay deadline off.", parse_size)
    mirror_throughput_window: float = option(
        "--mirror-throughput-window", "MIRROR_THROUGHPUT_WINDOW", 5.0,
        "(spegel-py) Time spent waiting for a peer over which --mirror-min-throughput is measured.",
        parse_duration)
    mirror_deadline_allowance: float = option(
        "--mirror-deadline-allowance", "MIRROR_DEADLINE_ALLOWANCE", 10.0,
        "(spegel-py) A relayed response must end within this plus its size / --mirror-min-throughput, "
        "else the client is cut and retries.", parse_duration)
    multi_peer_fetch: bool = option(
        "--multi-peer-fetch", "MULTI_PEER_FETCH", True,
        "(spegel-py) Relay a large blob from several providers at once, in ranges (issue 12; false: one "
        "provider per blob, as Spegel). Also asks the router for at least --multi-peer-providers.",
        parse_bool)
    multi_peer_min_size: int = option(
        "--multi-peer-min-size", "MULTI_PEER_MIN_SIZE", 64 << 20,
        "(spegel-py) Smallest blob fetched from several providers (e.g. 64MiB).", parse_size)
    multi_peer_providers: int = option(
        "--multi-peer-providers", "MULTI_PEER_PROVIDERS", 4,
        "(spegel-py) Providers one multi-provider fetch reads from in parallel (2 or more).",
        parse_positive_int)
    multi_peer_range_size: int = option(
        "--multi-peer-range-size", "MULTI_PEER_RANGE_SIZE", 4 << 20,
        "(spegel-py) Bytes asked of a provider per range (rounded up to whole relay buffers).", parse_size)
    multi_peer_buffers: int = option(
        "--multi-peer-buffers", "MULTI_PEER_BUFFERS", 32,
        "(spegel-py) Relay buffers one multi-provider fetch may hold (ranges fetched ahead of the client); "
        "taken only while a quarter of --relay-buffers stays free, else the blob comes from one provider.",
        parse_positive_int)
    reprovide_interval: float = option(
        "--reprovide-interval", "REPROVIDE_INTERVAL", REPROVIDE_INTERVAL,
        "(spegel-py) Time between re-sends of this node's provider records (Go duration; Spegel's is a "
        "fixed 15m). Must stay below the 19m the records are valid.", parse_reprovide_interval)
    store_timeout: float = option("--store-timeout", "STORE_TIMEOUT", 2.0,
                                  "(spegel-py) Bound on each content-store call; past it: 503.",
                                  parse_duration)
    max_connections: int = option(
        "--max-connections", "MAX_CONNECTIONS", 4096,
        "(spegel-py) Open connections on the registry listener (about 9 KiB each); at the cap a newcomer "
        "takes an idle one's slot, else waits up to 1s (/metrics and /id have their own cap of 16).",
        parse_positive_int)
    header_timeout: float = option(
        "--header-timeout", "HEADER_TIMEOUT", 10.0,
        "(spegel-py) A connection's first request head must arrive within this (slowloris bound).",
        parse_duration)
    keepalive_timeout: float = option(
        "--keepalive-timeout", "KEEPALIVE_TIMEOUT", 30.0,
        "(spegel-py) An idle keep-alive connection is closed after this.", parse_duration)
    write_timeout: float = option(
        "--write-timeout", "WRITE_TIMEOUT", 30.0,
        "(spegel-py) A response the client stops reading (socket buffers full, or a local blob taking no "
        "byte) is aborted after this.",
        parse_duration)
    serve_min_throughput: int = option(
        "--serve-min-throughput", "SERVE_MIN_THROUGHPUT", 256 << 10,
        "(spegel-py) A local body must be read within --write-timeout plus its size / this (bytes/s, "
        "e.g. 256KiB), else the connection is cut; a client taking no byte for --write-timeout is "
        "cut too. 0: only the no-progress bound.", parse_size)
    serve_in_progress: bool = option(
        "--serve-in-progress", "SERVE_IN_PROGRESS", True,
        "(spegel-py) Serve blobs this node is still pulling to peers as they grow, advertise them "
        "under a key of their own, and look that key up when no peer holds a blob (swarm pulls).",
        parse_bool, boolean=True)
    in_progress_stall_timeout: float = option(
        "--in-progress-stall-timeout", "IN_PROGRESS_STALL_TIMEOUT", 10.0,
        "(spegel-py) A blob served while pulled is cut (the peer resumes elsewhere) when its pull "
        "writes nothing (or does not commit) for this long; containerd writes in 1 MiB steps, so keep "
        "it above 1 MiB / the slowest upstream rate of one blob.", parse_duration)
    in_progress_poll_interval: float = option(
        "--in-progress-poll-interval", "IN_PROGRESS_POLL_INTERVAL", 0.25,
        "(spegel-py) How often containerd's pulls in progress are listed for advertising.",
        parse_duration)
    in_progress_linger: float = option(
        "--in-progress-linger", "IN_PROGRESS_LINGER", 600.0,
        "(spegel-py) A pulled blob keeps its in-progress record until its image is advertised, at "
        "most this long.", parse_duration)
    router_psk_file: str = option(
        "--router-psk-file", "ROUTER_PSK_FILE", "",
        "(spegel-py) File with the libp2p private network key (pre-shared key, as go-libp2p and k3s "
        "write it): every router connection is encrypted with it, peers without it cannot connect. "
        "Empty: no private network (Go Spegel has none).")
    shutdown_timeout: float = option(
        "--shutdown-timeout", "SHUTDOWN_TIMEOUT", 10.0,
        "(spegel-py) How long in-flight requests may finish after SIGTERM (a 2nd signal forces exit).",
        parse_duration)
    coordinate_pulls: bool = option(
        "--coordinate-pulls", "COORDINATE_PULLS", True,
        "(spegel-py) When several nodes miss a blob at once, the node closest to its key tells one to "
        "fetch it upstream (its mirror answers 404) and the others to stream it from that node "
        "(docs/operations.md, Swarm pulls). False: every mirror that misses answers 404 (Spegel).",
        parse_bool, boolean=True)
    coordination_wait: float = option(
        "--coordination-wait", "COORDINATION_WAIT", 5.0,
        "(spegel-py) With --coordinate-pulls, how long a mirror waits for the node fetching a blob to "
        "serve it before answering 404 (so containerd goes upstream); what a dead fetcher costs.",
        parse_duration)
    claim_lease: float = option(
        "--claim-lease", "CLAIM_LEASE", 10.0,
        "(spegel-py) With --coordinate-pulls, how long this node, as the rendezvous of a blob, keeps "
        "another node from being told to fetch it too.", parse_duration)
    claim_timeout: float = option(
        "--claim-timeout", "CLAIM_TIMEOUT", 2.0,
        "(spegel-py) With --coordinate-pulls, how long a mirror may take to learn who fetches a blob "
        "(finding the blob's rendezvous included); past it, it answers 404 and fetches upstream itself.",
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
        if settings.content_store == "containerd" and not settings.containerd_content_path.strip():
            # Spegel main reads an empty path as "ask containerd"; spegel-py cannot, so say what to set.
            raise ConfigurationError("--containerd-content-path is empty: spegel-py does not detect it; set "
                                     "containerd's <root>/io.containerd.content.v1.content")
        if settings.store_timeout <= 0:
            raise ConfigurationError("--store-timeout must be positive")
        if settings.multi_peer_providers < 2 or settings.multi_peer_range_size <= 0:
            raise ConfigurationError("--multi-peer-providers must be >= 2, --multi-peer-range-size positive")
        if settings.mirror_min_throughput > 0 and settings.mirror_throughput_window <= 0:
            raise ConfigurationError("--mirror-throughput-window must be positive")
        for flag, value in (("--header-timeout", settings.header_timeout),
                            ("--keepalive-timeout", settings.keepalive_timeout),
                            ("--write-timeout", settings.write_timeout)):
            if value <= 0:
                raise ConfigurationError(f"{flag} must be positive")
