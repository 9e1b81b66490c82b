"""What goes into ``certs.d/<registry>/hosts.toml``: validated registry URLs and the document.

Registry and mirror-target URLs arrive from flags and environment variables and end up as a
directory name under certs.d and as TOML keys, so they are held to a strict grammar here
(``http(s)://host[:port]``, nothing else) before anything touches the disk: a value that could
climb out of certs.d or inject TOML is refused with a one-line error.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from spegel_py.errors import ConfigurationError

# Directory containerd falls back to for a registry that has no directory of its own.
DEFAULT_DIR = "_default"
# Go duration syntax (containerd parses dial_timeout with time.ParseDuration).
_DURATION_PART = r"(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:ns|us|µs|ms|s|m|h)"
_DURATION = re.compile(rf"(?:{_DURATION_PART})+")
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_URL = re.compile(
    rf"(?P<scheme>https?)://(?P<host>{_LABEL}(?:\.{_LABEL})*|\[(?P<ipv6>[0-9A-Fa-f:.]+)\])"
    r"(?::(?P<port>[0-9]{1,5}))?/?"
)
# What containerd calls Docker Hub's registry host, and where that registry really is.
_DOCKER_HUB = "https://docker.io"
_DOCKER_HUB_SERVER = "https://registry-1.docker.io"


@dataclass(frozen=True, slots=True)
class RegistryURL:
    """A registry or mirror address, ``scheme://host[:port]``, validated."""

    scheme: str
    host: str  # host[:port] as written (IPv6 in brackets); also the certs.d directory name

    @classmethod
    def parse(cls, raw: str, *, what: str = "registry") -> RegistryURL:
        """Parse ``http(s)://host[:port]`` (an optional trailing ``/`` is dropped)."""
        text = raw.strip()
        match = _URL.fullmatch(text)
        if match is None or len(match["host"]) > 253:
            raise ConfigurationError(
                f"invalid {what} {raw[:100]!r}: "
                "expected http(s)://host[:port] with no path, query or credentials"
            )
        if match["ipv6"] is not None:
            try:
                ipaddress.IPv6Address(match["ipv6"])
            except ValueError as exc:
                raise ConfigurationError(f"invalid {what} {raw[:100]!r}: bad IPv6 address") from exc
        port = match["port"]
        if port is not None and not 0 < int(port) < 65536:
            raise ConfigurationError(f"invalid {what} {raw[:100]!r}: port out of range")
        host = match["host"] + (f":{port}" if port is not None else "")
        return cls(match["scheme"], host)

    def __str__(self) -> str:
        return f"{self.scheme}://{self.host}"


@dataclass(frozen=True, slots=True)
class MirroredRegistry:
    """One directory to write: the registry it configures (``None`` for the ``_default`` wildcard)."""

    registry: RegistryURL | None

    @property
    def directory(self) -> str:
        """The certs.d directory name containerd looks up for this registry (``host[:port]``)."""
        return DEFAULT_DIR if self.registry is None else self.registry.host

    @property
    def server(self) -> str | None:
        """The upstream ``server``; none for the wildcard, which serves every registry."""
        if self.registry is None:
            return None
        url = str(self.registry)
        return _DOCKER_HUB_SERVER if url == _DOCKER_HUB else url


def parse_mirrored(registries: Iterable[str]) -> list[MirroredRegistry]:
    """The registries to configure; no registries means one ``_default`` entry for all of them."""
    parsed = [
        MirroredRegistry(RegistryURL.parse(r, what="mirrored registry")) for r in registries if r.strip()
    ]
    if not parsed:
        return [MirroredRegistry(None)]
    seen: dict[str, str] = {}
    for entry in parsed:
        previous = seen.setdefault(entry.directory, str(entry.registry))
        if previous != str(entry.registry):
            raise ConfigurationError(
                f"mirrored registries {previous} and {entry.registry} share the directory {entry.directory}"
            )
    return list({e.directory: e for e in parsed}.values())


def parse_targets(targets: Iterable[str]) -> list[RegistryURL]:
    """The mirror targets, in order, duplicates dropped; at least one is required."""
    parsed = [RegistryURL.parse(t, what="mirror target") for t in targets if t.strip()]
    if not parsed:
        raise ConfigurationError("at least one mirror target is required (--mirror-targets)")
    return list(dict.fromkeys(parsed))


def validate_duration(raw: str | float) -> str:
    """The Go duration containerd reads in ``dial_timeout``: ``raw`` itself if it is one (``200ms``),
    or seconds (as the CLI's settings parse durations) written in whole micro- or milliseconds."""
    if isinstance(raw, bool):
        raise ConfigurationError("invalid dial timeout: a duration, not a boolean")
    if isinstance(raw, int | float):
        if not 0 < raw < 86400:
            raise ConfigurationError(f"invalid dial timeout {raw}s: must be above 0 and below a day")
        micros = round(raw * 1_000_000)
        return f"{micros // 1000}ms" if micros % 1000 == 0 else f"{micros}us"
    if not _DURATION.fullmatch(raw):
        raise ConfigurationError(f"invalid dial timeout {raw[:40]!r}: expected a duration like 200ms or 1s")
    return raw


def hosts_document(
    mirrored: MirroredRegistry,
    targets: Iterable[RegistryURL],
    *,
    resolve_tags: bool,
    dial_timeout: str | float,
    existing: Mapping[str, Any] | None = None,
    authorization: str | None = None,
) -> dict[str, Any]:
    """The hosts.toml document: our mirror hosts first, then (``existing``) the host entries of the
    configuration we replaced, which containerd tries after ours, in their original order.
    ``authorization``: an ``Authorization`` header containerd sends to our mirror hosts (Spegel's
    registry basic auth).

    Only ``[host.*]`` tables are carried over from ``existing``: its ``server`` and server-level
    settings describe the upstream that we set ourselves.
    """
    capabilities = ["pull", "resolve"] if resolve_tags else ["pull"]
    timeout = validate_duration(dial_timeout)
    ours: dict[str, Any] = {"capabilities": capabilities, "dial_timeout": timeout}
    if authorization is not None:
        ours["header"] = {"Authorization": authorization}
    hosts: dict[str, Any] = {str(t): dict(ours) for t in targets}
    if existing is not None:
        theirs = existing.get("host")
        if isinstance(theirs, Mapping):
            for name, table in theirs.items():
                hosts.setdefault(name, table)
    document: dict[str, Any] = {}
    if mirrored.server is not None:
        document["server"] = mirrored.server
    document["host"] = hosts
    return document
