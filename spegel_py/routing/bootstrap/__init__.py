"""Bootstrap: where a starting node finds its first DHT peers.

Every kind answers one question, :meth:`Bootstrapper.peers`: a few multiaddrs to dial. A
multiaddr may lack ``/p2p/<id>`` (DNS and Kubernetes only know IPs): the DHT learns the peer id
during the Noise handshake when it dials. Kinds, chosen by ``--bootstrap-kind``:

- ``static`` (:class:`StaticBootstrapper`): ``--static-bootstrap-peers``;
- ``dns`` (:class:`DNSBootstrapper`): the A/AAAA records of a headless service
  (``--dns-bootstrap-domain``);
- ``http`` (:class:`HTTPBootstrapper`): GET ``--http-bootstrap-url``, served by another node's
  ``/id`` on ``--http-bootstrap-addr`` (:func:`id_document` builds its body);
- ``kubernetes`` (:class:`KubernetesBootstrapper`, spegel-py only): the Running pods of this
  DaemonSet, found through the API server by label selector.

The ``kubernetes`` client is imported lazily inside :mod:`.kubernetes`, so other kinds never
pay for it.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from spegel_py.routing.bootstrap.dns import DNSBootstrapper
from spegel_py.routing.bootstrap.http import HTTPBootstrapper, id_document, parse_id_document
from spegel_py.routing.bootstrap.kubernetes import KubernetesBootstrapper
from spegel_py.routing.bootstrap.static import StaticBootstrapper


@runtime_checkable
class Bootstrapper(Protocol):
    """Finds peers for a node that is joining the DHT."""

    async def peers(self) -> list[str]:
        """Multiaddr strings to dial (``/p2p/<id>`` optional). May be empty; raises ``RoutingError``
        when the source cannot be asked (the router retries later)."""
        ...


__all__ = [
    "Bootstrapper",
    "DNSBootstrapper",
    "HTTPBootstrapper",
    "KubernetesBootstrapper",
    "StaticBootstrapper",
    "id_document",
    "parse_id_document",
]
