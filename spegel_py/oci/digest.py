"""Content digests (``sha256:<hex>``), validated strictly.

A digest names a file inside the content store (``blobs/<algorithm>/<hex>``), so parsing is the
first line of defence against path traversal: only known algorithms with exactly the right number
of lowercase hex characters are accepted.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

from spegel_py.errors import InvalidDigestError

# Hex length per supported algorithm. containerd and registries use sha256 (and rarely sha512).
_HEX_LENGTHS = {"sha256": 64, "sha512": 128}
_HEX = re.compile(r"[0-9a-f]+")


@dataclass(frozen=True, slots=True)
class Digest:
    """A validated content digest; ``str(d)`` is the canonical ``algorithm:hex`` form."""

    algorithm: str
    hex: str

    @classmethod
    def parse(cls, value: str) -> Digest:
        """Parse ``algorithm:hex``; raise :class:`InvalidDigestError` for anything else."""
        algorithm, sep, hexpart = value.partition(":")
        length = _HEX_LENGTHS.get(algorithm)
        if not sep or length is None:
            raise InvalidDigestError(f"unsupported digest algorithm in {value[:80]!r}")
        if len(hexpart) != length or not _HEX.fullmatch(hexpart):
            raise InvalidDigestError(f"malformed {algorithm} digest {value[:80]!r}")
        return cls(algorithm, hexpart)

    @classmethod
    def of(cls, data: bytes, algorithm: str = "sha256") -> Digest:
        """The digest of ``data``."""
        return cls(algorithm, hashlib.new(algorithm, data).hexdigest())

    def hasher(self) -> hashlib._Hash:
        """A fresh hash object of this digest's algorithm, for verifying streamed bytes."""
        return hashlib.new(self.algorithm)

    def __str__(self) -> str:
        return f"{self.algorithm}:{self.hex}"


def is_digest(value: str) -> bool:
    """True when ``value`` parses as a supported digest."""
    try:
        Digest.parse(value)
    except InvalidDigestError:
        return False
    return True
