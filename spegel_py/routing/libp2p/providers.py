"""Provider records this node stores for others: key -> providers, each valid until a deadline.

Records are hints with a validity (Spegel: 19 min, reprovided every 15 min). A record is
refreshed by the next ADD_PROVIDER for the same key and provider, and dropped once expired, so a
node that stops advertising (or dies) disappears from answers within one validity period.
Memory matters (50,000 records per node is normal): the common case, one provider per key, is a
bare tuple; only keys with several providers get a dict.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from time import monotonic

# key -> (provider id, expiry) for one provider, or {provider id: expiry} for several
_Entry = tuple[bytes, float] | dict[bytes, float]


class ProviderStore:
    """Provider records by multihash; a plain data structure, used from one thread only."""

    def __init__(self, *, ttl: float, clock: Callable[[], float] = monotonic) -> None:
        self._ttl = ttl
        self._clock = clock
        self._records: dict[bytes, _Entry] = {}
        # (key, provider) records held, expired ones included until expire() drops them; kept
        # as a plain int so the metrics thread reads it without walking the dict
        self.records = 0

    def __len__(self) -> int:
        """Keys with at least one record."""
        return len(self._records)

    def add(self, key: bytes, provider: bytes) -> None:
        self.add_many((key,), provider)

    def add_many(self, keys: Iterable[bytes], provider: bytes) -> None:
        """Record (or refresh) ``provider`` for every key: valid for ``ttl`` seconds from now."""
        expiry = self._clock() + self._ttl
        records = self._records
        new = 0
        for key in keys:
            entry = records.get(key)
            if isinstance(entry, dict):
                new += provider not in entry
                entry[provider] = expiry
            elif entry is None or entry[0] == provider:
                new += entry is None
                records[key] = (provider, expiry)
            else:
                new += 1
                records[key] = {entry[0]: entry[1], provider: expiry}
        self.records += new

    def get(self, key: bytes) -> list[bytes]:
        """Providers of ``key`` whose records have not expired."""
        entry = self._records.get(key)
        if entry is None:
            return []
        now = self._clock()
        if isinstance(entry, tuple):
            return [entry[0]] if entry[1] > now else []
        return [p for p, exp in entry.items() if exp > now]

    def expire(self) -> int:
        """Drop expired records; returns how many (provider, key) records went."""
        now = self._clock()
        dropped = 0
        for key in list(self._records):
            entry = self._records[key]
            if isinstance(entry, tuple):
                if entry[1] <= now:
                    del self._records[key]
                    dropped += 1
                continue
            for p in [p for p, exp in entry.items() if exp <= now]:
                del entry[p]
                dropped += 1
            if not entry:
                del self._records[key]
            elif len(entry) == 1:
                ((p, exp),) = entry.items()
                self._records[key] = (p, exp)
        self.records -= dropped
        return dropped
