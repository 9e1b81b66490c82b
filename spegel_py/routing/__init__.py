"""Peer-to-peer routing: who in the cluster holds a digest or a tag.

:mod:`.base` is the boundary (the ``Router`` and ``Bootstrapper`` Protocols, the record timing);
:mod:`.memory` and :mod:`.libp2p` (a Spegel-compatible Kademlia DHT) implement ``Router``;
:mod:`.bootstrap` finds a joining node's first peers; :mod:`.advertiser` keeps the router's
advertisements equal to what the content store can serve.
"""
