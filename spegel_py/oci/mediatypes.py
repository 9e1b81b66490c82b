"""Media types, and sniffing them from content (containerd does not store them).

A registry must answer with the right ``Content-Type`` or clients refuse manifests. The content
store knows only bytes, so small blobs are parsed as JSON and classified by their fields, the
same rules Spegel applies; anything else is ``application/octet-stream``.
"""

from __future__ import annotations

import json

OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
DOCKER_MANIFEST_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
OCTET_STREAM = "application/octet-stream"
JSON = "application/json"

# Blobs above this size are layers in practice; parsing them would only waste memory.
SNIFF_LIMIT = 4 * 1024 * 1024

MANIFEST_TYPES = frozenset({OCI_INDEX, OCI_MANIFEST, DOCKER_MANIFEST_LIST, DOCKER_MANIFEST})


def sniff(data: bytes) -> str:
    """The media type of ``data``: its ``mediaType`` field, else guessed from its shape."""
    if len(data) > SNIFF_LIMIT or not data.lstrip()[:1] == b"{":
        return OCTET_STREAM
    try:
        doc = json.loads(data)
    except (ValueError, RecursionError):  # RecursionError: absurdly nested JSON
        return OCTET_STREAM
    if not isinstance(doc, dict):
        return OCTET_STREAM
    media_type = doc.get("mediaType")
    if isinstance(media_type, str) and media_type and _printable(media_type):
        return media_type
    if "manifests" in doc:
        return OCI_INDEX
    if "config" in doc and "layers" in doc:
        return OCI_MANIFEST
    if "architecture" in doc or "os" in doc or "rootfs" in doc:
        return OCI_CONFIG
    return OCTET_STREAM


def _printable(value: str) -> bool:
    """A header-safe media type: a field value with control characters would break the response."""
    return len(value) <= 255 and value.isascii() and value.isprintable()
