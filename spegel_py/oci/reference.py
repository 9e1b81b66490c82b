"""Repository names, tags and image references (``registry/repository[:tag][@digest]``).

Grammar from the OCI distribution specification. containerd names images fully qualified
(``docker.io/library/nginx:latest``); the registry part of a mirror request comes from the ``ns``
query parameter, so a :class:`Reference` is always built from explicit parts or a full name.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from spegel_py.errors import InvalidDigestError, InvalidNameError, InvalidReferenceError
from spegel_py.oci.digest import Digest

_COMPONENT = r"[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*"
_NAME = re.compile(rf"{_COMPONENT}(?:/{_COMPONENT})*")
_TAG = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,127}")
# host[:port]; a registry host is what containerd passes in ``ns`` (e.g. ``127.0.0.1:5000``).
_REGISTRY = re.compile(r"(?:[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)(?:\.[A-Za-z0-9-]+)*(?::[0-9]{1,5})?")
_MAX_NAME = 255


def validate_name(name: str) -> str:
    """Return ``name`` if it is a valid repository name, else raise :class:`InvalidNameError`."""
    if len(name) > _MAX_NAME or not _NAME.fullmatch(name):
        raise InvalidNameError(f"invalid repository name {name[:80]!r}")
    return name


def validate_tag(tag: str) -> str:
    """Return ``tag`` if it is a valid tag, else raise :class:`InvalidReferenceError`."""
    if not _TAG.fullmatch(tag):
        raise InvalidReferenceError(f"invalid tag {tag[:80]!r}")
    return tag


def validate_registry(registry: str) -> str:
    """Return ``registry`` (``host[:port]``) if well formed, else raise :class:`InvalidReferenceError`."""
    if len(registry) > _MAX_NAME or not _REGISTRY.fullmatch(registry):
        raise InvalidReferenceError(f"invalid registry host {registry[:80]!r}")
    return registry


@dataclass(frozen=True, slots=True)
class Reference:
    """A fully qualified image reference. At least one of ``tag`` and ``digest`` is set."""

    registry: str
    repository: str
    tag: str | None = None
    digest: Digest | None = None

    def __post_init__(self) -> None:
        validate_registry(self.registry)
        validate_name(self.repository)
        if self.tag is not None:
            validate_tag(self.tag)
        if self.tag is None and self.digest is None:
            raise InvalidReferenceError("a reference needs a tag or a digest")

    @classmethod
    def parse(cls, value: str) -> Reference:
        """Parse a full name such as ``docker.io/library/nginx:1.25`` or ``host:5000/a/b@sha256:...``."""
        rest, _, digest_part = value.partition("@")
        digest: Digest | None = None
        if digest_part:
            try:
                digest = Digest.parse(digest_part)
            except InvalidDigestError as exc:
                raise InvalidReferenceError(f"invalid digest in reference {value[:120]!r}") from exc
        registry, slash, path = rest.partition("/")
        if not slash or not path:
            raise InvalidReferenceError(f"reference {value[:120]!r} has no registry part")
        tag: str | None = None
        last_slash = path.rfind("/")
        colon = path.rfind(":")
        if colon > last_slash:
            path, tag = path[:colon], path[colon + 1 :]
        try:
            return cls(registry, path, tag, digest)
        except InvalidNameError as exc:
            raise InvalidReferenceError(str(exc)) from exc

    @property
    def name(self) -> str:
        """``registry/repository``."""
        return f"{self.registry}/{self.repository}"

    def __str__(self) -> str:
        out = self.name
        if self.tag is not None:
            out += f":{self.tag}"
        if self.digest is not None:
            out += f"@{self.digest}"
        return out
