"""Composition of the swarm-pull features of issue 12, for ``app.py``.

The composition root builds components from the settings; the pieces that make simultaneous
pulls share one upstream copy need the concrete libp2p router (a protocol of spegel-py's own on
its host), so they are built here, beside ``app.py`` and at its layer, rather than in it: only
these two modules name the concrete router. The flags that turn each piece off are in
``settings.py``; docs/operations.md ("Swarm pulls") explains them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from spegel_py.flagvalues import split_address
from spegel_py.metrics import Metrics
from spegel_py.routing.base import Router
from spegel_py.settings import RegistrySettings

if TYPE_CHECKING:
    from spegel_py.relay.coordinate import PullCoordinator
    from spegel_py.relay.peerclient import PeerClient


async def pull_coordinator(
    settings: RegistrySettings, node: Router, client: PeerClient, metrics: Metrics
) -> PullCoordinator | None:
    """The mirror's pull coordination on a started libp2p router (``--coordinate-pulls``); None
    when it is off or the router is not libp2p (tests that bring their own)."""
    from spegel_py.relay.coordinate import CoordinationSettings, PullCoordinator
    from spegel_py.routing.libp2p.claim import Libp2pRendezvous
    from spegel_py.routing.libp2p.router import Libp2pRouter

    if not settings.coordinate_pulls or not isinstance(node, Libp2pRouter):
        return None
    port = split_address(settings.registry_addr)[1]
    rendezvous = Libp2pRendezvous(
        node, registry_port=port, lease=settings.claim_lease, timeout=settings.claim_timeout
    )
    await rendezvous.start()
    return PullCoordinator(
        rendezvous,
        client,
        CoordinationSettings(wait=settings.coordination_wait, claim_timeout=settings.claim_timeout),
        on_outcome=lambda outcome: metrics.pull_coordination.labels(outcome).inc(),
    )
