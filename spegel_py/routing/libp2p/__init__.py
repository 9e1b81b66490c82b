"""The libp2p router: Spegel's Kademlia DHT (``/spegel/kad/1.0.0``) on py-libp2p, in a trio thread.

The public entry point is :class:`spegel_py.routing.libp2p.router.Libp2pRouter`, the
:class:`spegel_py.routing.base.Router` that ``app.py`` builds; nothing else here is meant for use
outside this package. It is not re-exported here, so importing the package costs nothing until
the router module itself (with py-libp2p and trio) is imported.

Modules, from the asyncio face inwards:

- :mod:`.router` (``Libp2pRouter``), :mod:`.lookups` (shared lookups), :mod:`.bridge` (the trio
  thread), :mod:`.identity` (the persistent key), :mod:`.keys` (Spegel's key derivation);
- :mod:`.dht` (``DhtNode``: the host, dialling, peers, maintenance), which builds the state
  below and hands it to :mod:`.server` (the protocol's serving side), :mod:`.query` (provider
  lookups) and :mod:`.publish` (sending our records); none of these three imports :mod:`.dht`;
- the state: :mod:`.table` (routing table), :mod:`.addrs` (address book), :mod:`.providers`
  (records stored for others), :mod:`.own` (our own records);
- the transport: :mod:`.host` (py-libp2p host and dialling), :mod:`.pnet` (the private
  network's cipher on every connection) with :mod:`.psk` (its key file), :mod:`.streams`
  (long-lived streams), :mod:`.wire` (the message codec).
"""
