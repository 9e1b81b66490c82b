"""HTTP bootstrap: ask a known node (``--http-bootstrap-url``) for its address.

The node being asked serves ``/id`` on ``--http-bootstrap-addr``; :func:`id_document` builds the
body and the app mounts it (HTTP serving lives in the app layer). Two body formats exist in Go
Spegel and both are read here, so a mixed cluster bootstraps either way:

- ``text`` (Spegel v0.7.x): one multiaddr ending in ``/p2p/<id>``;
- ``json`` (Spegel main): ``[{"ID": "<peer id>", "Addrs": ["/ip4/.../tcp/..."]}]``.

spegel-py serves ``text`` by default, the format the released Go Spegel expects.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Literal

import aiohttp

from spegel_py.errors import ConfigurationError, RoutingError
from spegel_py.routing.bootstrap._addr import check_multiaddr

_MAX_BODY = 64 * 1024  # an /id answer is a few hundred bytes; refuse to buffer anything big
_MAX_PEERS = 3  # Spegel takes at most three entries of a JSON answer


def _with_peer_id(addr: str, peer_id: str) -> str:
    return addr if "/p2p/" in addr or not peer_id else f"{addr}/p2p/{peer_id}"


def id_document(peer_id: str, addrs: Sequence[str], *, fmt: Literal["text", "json"] = "text") -> str:
    """The ``/id`` body for this node: ``addrs`` in order of preference, unspecified ones skipped."""
    usable = [a.split("/p2p/", 1)[0] for a in addrs if not a.startswith(("/ip4/0.0.0.0/", "/ip6/::/"))]
    if not usable:
        raise RoutingError("no dialable router address to publish on /id")
    if fmt == "json":
        return json.dumps([{"ID": peer_id, "Addrs": usable}])
    return _with_peer_id(usable[0], peer_id)


def parse_id_document(body: str) -> list[str]:
    """Multiaddrs from an ``/id`` body in either format; raises ``RoutingError`` if malformed."""
    body = body.strip()
    try:
        if not body.startswith("["):
            return [check_multiaddr(body)]
        infos = json.loads(body)
        if not isinstance(infos, list):
            raise RoutingError("an /id JSON answer must be a list")
        out: list[str] = []
        for info in infos[:_MAX_PEERS]:
            peer_id = info.get("ID") or ""
            out.extend(_with_peer_id(check_multiaddr(a), peer_id) for a in info.get("Addrs") or [])
        return out
    except RoutingError:
        raise
    except (ConfigurationError, ValueError, AttributeError, TypeError) as exc:  # bad JSON, shape, multiaddr
        raise RoutingError(f"malformed /id answer {body[:200]!r}: {exc}") from exc


class HTTPBootstrapper:
    """GETs ``url`` on every call, with a ``timeout`` in seconds."""

    def __init__(self, url: str, *, timeout: float = 5.0) -> None:
        self._url = url
        self._timeout = aiohttp.ClientTimeout(total=timeout)

    async def peers(self) -> list[str]:
        try:
            async with (
                aiohttp.ClientSession(timeout=self._timeout) as session,
                session.get(self._url) as response,
            ):
                if response.status != 200:
                    raise RoutingError(f"bootstrap {self._url} answered HTTP {response.status}")
                raw = await response.content.read(_MAX_BODY + 1)
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise RoutingError(f"cannot reach bootstrap {self._url}: {exc!r}") from exc
        if len(raw) > _MAX_BODY:
            raise RoutingError(f"bootstrap {self._url} answered more than {_MAX_BODY} bytes")
        return parse_id_document(raw.decode("utf-8", errors="replace"))
