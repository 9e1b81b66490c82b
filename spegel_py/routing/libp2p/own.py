"""This node's own provider records: the keys it advertises and how it names itself in them.

Both sides of the DHT read them: the publisher (:mod:`.publish`) sends a framed ADD_PROVIDER per
key to the peers that should store it, and the server (:mod:`.server`) adds this node to its
GET_PROVIDERS answers for these keys. The ADD_PROVIDER bytes around the key are built once per
address change (see :func:`.wire.add_provider_prefix`), so a key costs two concatenations.
"""

from __future__ import annotations

from collections.abc import Iterable

from spegel_py.routing.libp2p import wire


class OwnRecords:
    """Advertised multihashes in the order advertised, and this node's :class:`wire.PeerInfo`."""

    def __init__(self, self_id: bytes) -> None:
        self._keys: dict[bytes, None] = {}
        self.info = wire.PeerInfo(self_id, ())
        self.head, self.tail = wire.add_provider_prefix(wire.encode_peer(self.info))

    def __contains__(self, key: bytes) -> bool:
        return key in self._keys

    def __len__(self) -> int:
        return len(self._keys)

    def keys(self) -> list[bytes]:
        """A snapshot of the advertised keys, oldest first."""
        return list(self._keys)

    def add(self, keys: Iterable[bytes]) -> list[bytes]:
        """Remember ``keys``; returns those that were not advertised yet, in order."""
        new = [k for k in keys if k not in self._keys]
        for k in new:
            self._keys[k] = None
        return new

    def remove(self, key: bytes) -> None:
        self._keys.pop(key, None)

    def set_addrs(self, addrs: tuple[bytes, ...]) -> None:
        """This node's listen addresses changed: name them in every record from now on."""
        self.info = wire.PeerInfo(self.info.id, addrs)
        self.head, self.tail = wire.add_provider_prefix(wire.encode_peer(self.info))
