"""Which images a node shares: ``--mirrored-registries`` and ``--registry-filters``.

Both flags keep Spegel's meaning (main branch, ``pkg/oci/filter.go``), so an operator's values
carry over unchanged:

- ``--mirrored-registries``: registry URLs (``https://docker.io``, ``http://127.0.0.1:5000``).
  Empty, or containing the wildcard ``_default`` / ``*``, means every registry. Otherwise only
  images whose registry host is listed are shared.
- ``--registry-filters``: regular expressions searched (unanchored, like Go's ``MatchString``)
  in ``registry/repository[:tag]``; an image that matches any of them is EXCLUDED. For example
  ``:latest$`` keeps mutable ``latest`` tags off the network, ``^docker\\.io/`` a whole registry.
  Python's ``re`` reads the RE2 subset operators write in practice the same way.

The advertiser applies the filter to whole images (tag and content); the registry server and the
mirror refuse a request for a filtered image with :meth:`RegistryFilter.allows` (404), as
Spegel's registry does, so a filtered image is not shared by any path.
"""

from __future__ import annotations

import re
import urllib.parse
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from spegel_py.errors import ConfigurationError, InvalidReferenceError
from spegel_py.oci.reference import validate_registry

WILDCARD_REGISTRIES = frozenset({"_default", "*"})


def parse_registry_hosts(values: Iterable[str]) -> frozenset[str] | None:
    """Hosts (``host[:port]``) of ``--mirrored-registries`` values; ``None`` means every registry.

    Each value is an ``http``/``https`` URL without path, query or user, as Spegel requires, or
    one of the wildcards. Raises :class:`ConfigurationError` for anything else.
    """
    hosts: set[str] = set()
    values = [v.strip() for v in values if v.strip()]
    if not values:
        return None
    wildcards = [v for v in values if v in WILDCARD_REGISTRIES]
    if len(wildcards) > 1:
        raise ConfigurationError("mirrored registries contain two wildcards")
    if wildcards:
        return None
    for value in values:
        url = urllib.parse.urlsplit(value)
        problems = []
        if url.scheme not in ("http", "https"):
            problems.append("scheme must be http or https")
        if url.path not in ("", "/") or url.query or url.fragment:
            problems.append("it must have no path, query or fragment")
        if url.username is not None or url.password is not None:
            problems.append("it must have no user")
        if problems:
            raise ConfigurationError(f"invalid mirrored registry {value!r}: {'; '.join(problems)}")
        try:
            hosts.add(validate_registry(url.netloc))
        except InvalidReferenceError as exc:
            raise ConfigurationError(f"invalid mirrored registry host in {value!r}") from exc
    return frozenset(hosts)


def compile_filters(patterns: Iterable[str]) -> tuple[re.Pattern[str], ...]:
    """Compile ``--registry-filters``; a bad expression is a :class:`ConfigurationError`."""
    compiled = []
    for pattern in patterns:
        if not pattern:
            continue
        try:
            compiled.append(re.compile(pattern))
        except re.error as exc:
            raise ConfigurationError(f"invalid registry filter {pattern!r}: {exc}") from exc
    return tuple(compiled)


@dataclass(frozen=True, slots=True)
class RegistryFilter:
    """Decides whether an image (registry, repository, tag) may be shared with peers.

    ``registries`` is ``None`` for "every registry"; ``excludes`` are compiled regexes.
    The default instance allows everything.
    """

    registries: frozenset[str] | None = None
    excludes: tuple[re.Pattern[str], ...] = ()

    @classmethod
    def from_flags(
        cls, *, mirrored_registries: Sequence[str] = (), registry_filters: Sequence[str] = ()
    ) -> RegistryFilter:
        """Build from the raw flag values; raises :class:`ConfigurationError` on bad input."""
        return cls(parse_registry_hosts(mirrored_registries), compile_filters(registry_filters))

    def mirrors(self, registry: str) -> bool:
        """True when images of ``registry`` (``host[:port]``) are shared at all."""
        return self.registries is None or registry in self.registries

    def allows(self, registry: str, repository: str, tag: str | None = None) -> bool:
        """True when the image may be advertised and served: mirrored and matching no filter."""
        if not self.mirrors(registry):
            return False
        subject = f"{registry}/{repository}" if tag is None else f"{registry}/{repository}:{tag}"
        return not any(pattern.search(subject) for pattern in self.excludes)
