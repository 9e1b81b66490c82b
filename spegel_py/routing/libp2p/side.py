"""What a protocol of spegel-py's own, beside the DHT on the same libp2p host, gets from the node.

spegel-py speaks protocols Go Spegel does not (the pull rendezvous, :mod:`.claim`); they share
the DHT node's host, routing table and address book instead of keeping their own, and reach
peers the way the DHT does. :meth:`.dht.DhtNode.side` hands them this bundle, so they never
import the node. Everything here is used in the trio thread.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from libp2p.abc import IHost

from spegel_py.routing.libp2p.addrs import AddressBook
from spegel_py.routing.libp2p.table import RoutingTable


@dataclass(frozen=True, slots=True)
class NodeSide:
    host: IHost
    table: RoutingTable  # the verified peers (k-buckets)
    book: AddressBook  # where peers listen, and the IP each one's connection vouched for
    closest: Callable[[bytes], Awaitable[list[bytes]]]  # iterative FIND_NODE: the k closest peer ids
    connect: Callable[[bytes], Awaitable[None]]  # dial a peer id unless connected (raises RoutingError)
    source_ip: Callable[[], str | None]  # the IP this node listens on (None: several or none)
