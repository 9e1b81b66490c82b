"""The DHT's tuning, apart from the node (:mod:`.dht`) that runs with it and the router that
builds it (:mod:`.router`)."""

from __future__ import annotations

from dataclasses import dataclass, field

from spegel_py.routing.base import RECORD_LIFETIME, REPROVIDE_INTERVAL
from spegel_py.routing.libp2p.conns import ConnLimits
from spegel_py.routing.libp2p.limits import Limits


@dataclass(frozen=True, slots=True)
class DhtOptions:
    """Tuning of the exchange; the defaults are Spegel's (go-libp2p-kad-dht) where it has one."""

    k: int = 20  # peers that store each record (Kademlia's bucket size)
    alpha: int = 3  # requests in flight per lookup
    record_ttl: float = RECORD_LIFETIME  # seconds a received record stays valid
    reprovide_interval: float = REPROVIDE_INTERVAL  # seconds between re-sends of our records
    refresh_interval: float = 30.0  # seconds between maintenance ticks (expiry, idle connections)
    bucket_refresh: float = 600.0  # seconds between lookups that refresh every bucket
    request_timeout: float = 2.0  # seconds one GET_PROVIDERS / FIND_NODE may take
    streams_per_peer: int = 4  # long-lived request streams per peer
    dial_concurrency: int = 16  # peers dialled at once when many are learned
    dial_timeout: float = 10.0  # seconds a dial may take (also the longest a close waits for one)
    limits: Limits = field(default_factory=Limits)  # what peers may take of this node (limits.py)
    conns: ConnLimits = field(default_factory=ConnLimits)  # connections kept open (conns.py)
