"""HTTP bootstrap: ask a known node (``--http-bootstrap-url``) for its address.

The node being asked serves ``/id`` on ``--http-bootstrap-addr``; :func:`id_document` builds the
body and the app mounts it (HTTP serving lives in the app layer). Go Spegel has used three body
formats, and all three are read here, so a mixed cluster bootstraps whichever a node sends:

- ``text`` (Spegel up to v0.5): one multiaddr ending in ``/p2p/<id>``;
- ``object`` (Spegel v0.6 to v0.7.4, the released versions): ``{"ID": "<peer id>", "Addrs":
  ["/ip4/.../tcp/..."]}``, which those versions also require when they read a peer's ``/id``;
- ``json`` (Spegel main after v0.7.4): a list of such objects.

spegel-py serves ``object`` by default (``?format=text`` and ``?format=json`` give the others),
the format the released Go Spegel reads. Released Spegel names the peer with
``--http-bootstrap-peer`` (a base URL, ``/id`` appended); :func:`bootstrap_url` accepts either.
An ``https`` URL is checked against the CAs of ``--http-bootstrap-cert-dir`` (``ca.crt``), which
may also hold a client certificate (``tls.crt`` and ``tls.key``), as in Spegel main:
:func:`client_tls`.
"""

from __future__ import annotations

import json
import os
import ssl
from collections.abc import Sequence
from typing import Literal

import aiohttp

from spegel_py.errors import ConfigurationError, RoutingError
from spegel_py.routing.bootstrap._addr import check_multiaddr

_MAX_BODY = 64 * 1024  # an /id answer is a few hundred bytes; refuse to buffer anything big
_MAX_PEERS = 3  # Spegel takes at most three entries of a JSON answer


def _with_peer_id(addr: str, peer_id: str) -> str:
    return addr if "/p2p/" in addr or not peer_id else f"{addr}/p2p/{peer_id}"


IdFormat = Literal["text", "object", "json"]


def id_document(peer_id: str, addrs: Sequence[str], *, fmt: IdFormat = "object") -> str:
    """The ``/id`` body for this node: ``addrs`` in order of preference, unspecified ones skipped."""
    usable = [a.split("/p2p/", 1)[0] for a in addrs if not a.startswith(("/ip4/0.0.0.0/", "/ip6/::/"))]
    if not usable:
        raise RoutingError("no dialable router address to publish on /id")
    if fmt == "text":
        return _with_peer_id(usable[0], peer_id)
    info = {"ID": peer_id, "Addrs": usable}
    return json.dumps(info if fmt == "object" else [info])


def bootstrap_url(*, url: str = "", peer: str = "") -> str:
    """The URL to GET: ``--http-bootstrap-url`` as given, or ``--http-bootstrap-peer`` (released
    Spegel's flag, a base URL) with ``/id`` appended; ``""`` when neither is set."""
    if url and peer:
        raise ConfigurationError("set --http-bootstrap-url or --http-bootstrap-peer, not both")
    return url or (f"{peer.rstrip('/')}/id" if peer else "")


def parse_id_document(body: str) -> list[str]:
    """Multiaddrs from an ``/id`` body in any of the three formats; raises ``RoutingError`` if it
    is malformed or names no address."""
    body = body.strip()
    try:
        if not body.startswith(("[", "{")):
            return [check_multiaddr(body)]
        infos = json.loads(body)
        if isinstance(infos, dict):  # Spegel v0.6 to v0.7.4: one object
            infos = [infos]
        if not isinstance(infos, list):
            raise RoutingError("an /id JSON answer must be a list or an object")
        out: list[str] = []
        for info in infos[:_MAX_PEERS]:
            peer_id = info.get("ID") or ""
            out.extend(_with_peer_id(check_multiaddr(a), peer_id) for a in info.get("Addrs") or [])
        if not out:
            raise RoutingError("the /id answer names no address")
        return out
    except RoutingError:
        raise
    except (ConfigurationError, ValueError, AttributeError, TypeError) as exc:  # bad JSON, shape, multiaddr
        raise RoutingError(f"malformed /id answer {body[:200]!r}: {exc}") from exc


def client_tls(cert_dir: str) -> ssl.SSLContext | None:
    """The TLS settings of ``--http-bootstrap-cert-dir``: ``ca.crt`` (when present, the only CAs
    trusted), ``tls.crt`` with ``tls.key`` (a client certificate: both or neither). ``None`` (the
    system's CAs, no client certificate) when ``cert_dir`` is empty or holds none of them.

    Raises :class:`ConfigurationError` for an unreadable or malformed file, or half a key pair.
    """
    if not cert_dir:
        return None
    ca, cert, key = (os.path.join(cert_dir, name) for name in ("ca.crt", "tls.crt", "tls.key"))
    has_ca, has_cert, has_key = (os.path.exists(path) for path in (ca, cert, key))
    if has_cert != has_key:
        raise ConfigurationError(f"--http-bootstrap-cert-dir {cert_dir}: tls.crt and tls.key go together")
    if not (has_ca or has_cert):
        return None
    try:
        context = ssl.create_default_context(cafile=ca if has_ca else None)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        if has_cert:
            context.load_cert_chain(cert, key)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigurationError(f"--http-bootstrap-cert-dir {cert_dir}: {exc}") from exc
    return context


class HTTPBootstrapper:
    """GETs ``url`` on every call, with a ``timeout`` in seconds; ``tls`` for an https URL (see
    :func:`client_tls`; ``None``: the system's CAs)."""

    def __init__(self, url: str, *, timeout: float = 5.0, tls: ssl.SSLContext | None = None) -> None:
        self._url = url
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._tls: ssl.SSLContext | bool = tls if tls is not None else True

    async def peers(self) -> list[str]:
        try:
            async with (
                aiohttp.ClientSession(timeout=self._timeout) as session,
                session.get(self._url, ssl=self._tls) as response,
            ):
                if response.status != 200:
                    raise RoutingError(f"bootstrap {self._url} answered HTTP {response.status}")
                raw = await response.content.read(_MAX_BODY + 1)
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise RoutingError(f"cannot reach bootstrap {self._url}: {exc!r}") from exc
        if len(raw) > _MAX_BODY:
            raise RoutingError(f"bootstrap {self._url} answered more than {_MAX_BODY} bytes")
        return parse_id_document(raw.decode("utf-8", errors="replace"))
