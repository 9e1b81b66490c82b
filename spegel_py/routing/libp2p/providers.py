"""Provider records this node stores for others: key -> providers, each valid until a deadline.

Records are hints with a validity (Spegel: 19 min, reprovided every 15 min). A record is
refreshed by the next ADD_PROVIDER for the same key and provider, and dropped once expired, so a
node that stops advertising (or dies) disappears from answers within one validity period.
Memory matters (50,000 records per node is normal): the common case, one provider per key, is a
bare tuple; only keys with several providers get a dict.

Any host that reaches the router port can send records, so the store is bounded (what by, and why,
:class:`~.limits.RecordLimits` says): keys must be sha2-256 multihashes (34 bytes), a providing peer holds at
most ``per_peer`` records (more are refused), a key has at most ``per_key`` providers (more are
refused), and past ``total`` records the most prolific
peer's oldest records make room. Refusals and evictions are counted for the metrics.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from time import monotonic

from spegel_py.routing.libp2p.limits import RecordLimits

# key -> (provider id, expiry) for one provider, or {provider id: expiry} for several
_Entry = tuple[bytes, float] | dict[bytes, float]

KEY_LENGTH = 34  # a sha2-256 multihash: 0x12 (sha2-256), 0x20 (32 bytes), the digest
# the reasons ProviderStore.refusals() counts
REFUSALS = ("invalid_key", "peer_limit", "key_limit", "evicted")


class ProviderStore:
    """Provider records by multihash; a plain data structure, used from one thread only.

    Counters (plain ints, read by the metrics thread without locks): :attr:`records`,
    :attr:`invalid_keys`, :attr:`over_peer_limit`, :attr:`evicted`.
    """

    def __init__(
        self, *, ttl: float, clock: Callable[[], float] = monotonic, limits: RecordLimits | None = None
    ) -> None:
        """``ttl``: seconds a record stays valid. ``limits``: the defaults of :class:`RecordLimits`."""
        self._ttl = ttl
        self._clock = clock
        self._limits = limits if limits is not None else RecordLimits()
        self._records: dict[bytes, _Entry] = {}
        self._held: dict[bytes, int] = {}  # provider -> records it holds (expired ones until expire())
        # (key, provider) records held, expired ones included until expire() drops them; kept
        # as a plain int so the metrics thread reads it without walking the dict
        self.records = 0
        self.invalid_keys = 0  # records refused: the key is not a 34-byte sha2-256 multihash
        self.over_peer_limit = 0  # records refused: their provider holds limits.per_peer already
        self.over_key_limit = 0  # records refused: their key has limits.per_key providers already
        self.evicted = 0  # records dropped before their expiry to stay within limits.total

    def __len__(self) -> int:
        """Keys with at least one record."""
        return len(self._records)

    def add(self, key: bytes, provider: bytes) -> bool:
        """Record (or refresh) one record; False if it was refused."""
        return self.add_many((key,), provider) == 0

    def add_many(self, keys: Iterable[bytes], provider: bytes) -> int:
        """Record (or refresh) ``provider`` for every key: valid for ``ttl`` seconds from now.

        Returns how many keys were refused (not a multihash, the provider or the key at its limit).
        """
        expiry = self._clock() + self._ttl
        records = self._records
        room = self._limits.per_peer - self._held.get(provider, 0)
        per_key = self._limits.per_key
        new = bad = over = crowded = 0
        for key in keys:
            if len(key) != KEY_LENGTH or key[0] != 0x12 or key[1] != 0x20:
                bad += 1
                continue
            entry = records.get(key)
            if isinstance(entry, dict):
                if provider not in entry:
                    if new >= room:
                        over += 1
                        continue
                    if len(entry) >= per_key:
                        crowded += 1
                        continue
                    new += 1
                entry[provider] = expiry
            elif entry is not None and entry[0] == provider:
                records[key] = (provider, expiry)
            elif new >= room:
                over += 1
            else:
                new += 1
                records[key] = (provider, expiry) if entry is None else {entry[0]: entry[1], provider: expiry}
        if new:
            self._held[provider] = self._held.get(provider, 0) + new
            self.records += new
            if self.records > self._limits.total:
                self._make_room()
        self.invalid_keys += bad
        self.over_peer_limit += over
        self.over_key_limit += crowded
        return bad + over + crowded

    def get(self, key: bytes) -> list[bytes]:
        """Providers of ``key`` whose records have not expired."""
        entry = self._records.get(key)
        if entry is None:
            return []
        now = self._clock()
        if isinstance(entry, tuple):
            return [entry[0]] if entry[1] > now else []
        return [p for p, exp in entry.items() if exp > now]

    def refusals(self) -> dict[str, int]:
        """Records refused, by reason: ``invalid_key`` (not a 34-byte sha2-256 multihash),
        ``peer_limit`` (the provider holds ``per_peer`` already), ``key_limit`` (the key has
        ``per_key`` providers already), ``evicted`` (dropped before expiry to stay within ``total``)."""
        return {
            "invalid_key": self.invalid_keys,
            "peer_limit": self.over_peer_limit,
            "key_limit": self.over_key_limit,
            "evicted": self.evicted,
        }

    def held_by(self, provider: bytes) -> int:
        """Records ``provider`` holds here (expired ones included until :meth:`expire`)."""
        return self._held.get(provider, 0)

    def expire(self) -> int:
        """Drop expired records; returns how many (provider, key) records went."""
        now = self._clock()
        return self._drop(now=now)

    def _make_room(self) -> None:
        """Past ``total``: drop expired records, then the most prolific peer's oldest records,
        until ``evict`` records are free (so this runs once per ``evict`` new records). If no
        peer holds that many (records spread over thousands of peer ids), the oldest records of
        any peer go instead: one pass either way, never one pass per peer."""
        target = self._limits.total - self._limits.evict
        self.expire()
        need = self.records - target
        if need <= 0:
            return
        victim = max(self._held, key=self._held.__getitem__)
        if self._held[victim] >= need:
            self.evicted += self._drop(provider=victim, limit=need)
        else:
            self.evicted += self._drop(now=float("inf"), limit=need)  # all "expired": oldest first

    def _drop(
        self, *, now: float = float("-inf"), provider: bytes | None = None, limit: int | None = None
    ) -> int:
        """Drop the records expired at ``now`` or of ``provider``, oldest keys first, at most
        ``limit`` (None: all); keeps the counters right. One pass over the keys."""
        records, held = self._records, self._held
        dropped = 0
        for key in list(records):
            if (limit is not None and dropped >= limit) or (provider is not None and provider not in held):
                break
            entry = records[key]
            if isinstance(entry, tuple):
                if entry[1] > now and entry[0] != provider:
                    continue  # the common case: a live record of another peer
                del records[key]
                gone = [entry[0]]
            else:
                gone = [p for p, exp in entry.items() if exp <= now or p == provider]
                for p in gone:
                    del entry[p]
                if not entry:
                    del records[key]
                elif len(entry) == 1:
                    ((p, exp),) = entry.items()
                    records[key] = (p, exp)
            for p in gone:
                left = held[p] - 1
                if left:
                    held[p] = left
                else:
                    del held[p]
            dropped += len(gone)
        self.records -= dropped
        return dropped
