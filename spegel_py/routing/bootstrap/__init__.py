"""Bootstrap: where a starting node finds its first DHT peers.

Every kind answers one question, :meth:`~spegel_py.routing.base.Bootstrapper.peers`: a few
multiaddrs to dial (the Protocol lives in :mod:`spegel_py.routing.base`, beside the router). A
multiaddr may lack ``/p2p/<id>`` (DNS and Kubernetes only know IPs): the DHT learns the peer id
during the Noise handshake when it dials. Kinds, chosen by ``--bootstrap-kind``:

- ``static`` (:class:`StaticBootstrapper`): ``--static-bootstrap-peers``;
- ``dns`` (:class:`DNSBootstrapper`): the A/AAAA records of a headless service
  (``--dns-bootstrap-domain``);
- ``http`` (:class:`HTTPBootstrapper`): GET ``--http-bootstrap-url`` (or released Spegel's
  ``--http-bootstrap-peer`` + ``/id``, :func:`bootstrap_url`), served by another node's ``/id`` on
  ``--http-bootstrap-addr`` (:func:`id_document` builds its body);
- ``kubernetes`` (:class:`KubernetesBootstrapper`, spegel-py only): the Running pods of this
  DaemonSet, found through the API server by label selector.

The ``kubernetes`` client is imported lazily inside :mod:`.kubernetes`, so other kinds never
pay for it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from spegel_py.errors import ConfigurationError
from spegel_py.routing.base import Bootstrapper
from spegel_py.routing.bootstrap.dns import DNSBootstrapper
from spegel_py.routing.bootstrap.http import (
    HTTPBootstrapper,
    bootstrap_url,
    client_tls,
    id_document,
    parse_id_document,
)
from spegel_py.routing.bootstrap.kubernetes import KubernetesBootstrapper
from spegel_py.routing.bootstrap.static import StaticBootstrapper

KINDS = ("", "static", "dns", "http", "kubernetes")


def build_bootstrapper(
    kind: str,
    *,
    router_port: int,
    static_peers: Sequence[str] = (),
    dns_domain: str = "",
    http_url: str = "",
    http_cert_dir: str = "",
    kubernetes_namespace: str = "",
    kubernetes_selector: str = "",
    kubernetes_configuration: Any | None = None,
    pod_name: str | None = None,
) -> Bootstrapper | None:
    """The bootstrapper ``--bootstrap-kind`` names (``""``: none, the node waits to be dialled).

    Checks that the options the kind needs are set; raises :class:`ConfigurationError` if not.
    """
    if kind == "":
        return None
    if kind == "static":
        if not static_peers:
            raise ConfigurationError("--bootstrap-kind=static needs --static-bootstrap-peers")
        return StaticBootstrapper(static_peers)
    if kind == "dns":
        if not dns_domain:
            raise ConfigurationError("--bootstrap-kind=dns needs --dns-bootstrap-domain")
        return DNSBootstrapper(dns_domain, port=router_port)
    if kind == "http":
        if not http_url:
            raise ConfigurationError(
                "--bootstrap-kind=http needs --http-bootstrap-url or --http-bootstrap-peer"
            )
        return HTTPBootstrapper(http_url, tls=client_tls(http_cert_dir))
    if kind == "kubernetes":
        if not kubernetes_namespace or not kubernetes_selector:
            raise ConfigurationError("--bootstrap-kind=kubernetes needs a namespace and a label selector")
        return KubernetesBootstrapper(
            namespace=kubernetes_namespace,
            label_selector=kubernetes_selector,
            port=router_port,
            configuration=kubernetes_configuration,
            self_name=pod_name,
        )
    raise ConfigurationError(f"unknown bootstrap kind {kind!r}; expected one of {', '.join(KINDS[1:])}")


__all__ = [
    "KINDS",
    "Bootstrapper",
    "DNSBootstrapper",
    "HTTPBootstrapper",
    "KubernetesBootstrapper",
    "StaticBootstrapper",
    "bootstrap_url",
    "build_bootstrapper",
    "client_tls",
    "id_document",
    "parse_id_document",
]
