"""Header names both HTTP paths use, each spelled once.

``X-Spegel-Mirrored: true`` marks a request one node sends another: the receiver answers from
its local content only and never relays it onwards, so two nodes that both lack a blob cannot
bounce a request between them.

``Authorization: Basic ...`` is Spegel's optional registry basic auth (one username and password
for the whole cluster): :func:`basic_credentials` reads it the way Go's ``Request.BasicAuth`` does.

``OCI-Namespace`` echoes the ``ns`` query parameter on a served manifest or blob, as the OCI
distribution spec asks of a registry that scopes requests by ``ns`` (Spegel sets it too).
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping

MIRRORED_HEADER = "X-Spegel-Mirrored"
DIGEST_HEADER = "Docker-Content-Digest"  # the digest of the body (or of the whole blob, for a 206)
NAMESPACE_HEADER = "OCI-Namespace"  # the client's validated ns, on 200/206 content answers only


def from_peer(headers: Mapping[str, str]) -> bool:
    """True when the request came from a peer's relay (it must not be relayed again)."""
    return headers.get(MIRRORED_HEADER, "").lower() == "true"


def basic_credentials(value: str | None) -> bytes | None:
    """``username:password`` from an ``Authorization: Basic <base64>`` value (scheme matched
    case-insensitively); ``None`` when there is none or it is malformed."""
    scheme, _, token = (value or "").strip().partition(" ")
    if scheme.lower() != "basic" or not token.isascii():
        return None
    try:
        return base64.b64decode(token.strip(), validate=True)
    except (binascii.Error, ValueError):
        return None
