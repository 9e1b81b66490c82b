"""The private network's pre-shared key: the file ``--router-psk-file`` names, read and checked.

The format is libp2p's "PSK v1" as go-libp2p, js-libp2p and k3s write it, three lines::

    /key/swarm/psk/1.0.0/
    /base16/
    <64 hex digits: the 32-byte key>

Lines end in ``\\n`` or ``\\r\\n`` and the last may have no end (go-libp2p trims both). Anything
else is refused with a reason, including go-libp2p's other encodings (``/base64/``, ``/bin/``),
which js-libp2p cannot read either. Only the standard library is used here: the CLI reads the
file as soon as the command line is parsed, so that a bad key is one line on stderr before
anything starts; the router reads it again as it starts (a file that changed in between is a
one-line error then).

The key is a secret: it never appears in an error, a log line or a ``repr``; what may be logged
is :attr:`PreSharedKey.fingerprint`, a hash that tells two keys apart without revealing either.

The file is read with the care ``identity.py`` takes with ``private.key`` (no hang on a fifo, no
unbounded read, a non-regular file refused), except that a symbolic link is followed: Kubernetes
mounts each key of a Secret volume as a link into a ``..data`` directory it swaps on update.
"""

from __future__ import annotations

import hashlib
import os
import re
import stat
from dataclasses import dataclass, field
from pathlib import Path

from spegel_py.errors import ConfigurationError

HEADER = b"/key/swarm/psk/1.0.0/"
ENCODING = b"/base16/"
KEY_BYTES = 32
_HEX_KEY = re.compile(rb"[0-9a-fA-F]{64}")
_MAX_FILE_BYTES = 4096  # a key file is 95 bytes (98 with CRLF); anything this large is not one


@dataclass(frozen=True, slots=True)
class PreSharedKey:
    """A private network's 32-byte key; its ``repr`` shows only the fingerprint."""

    key: bytes = field(repr=False)

    def __post_init__(self) -> None:
        if len(self.key) != KEY_BYTES:
            raise ValueError(f"a pre-shared key is {KEY_BYTES} bytes, not {len(self.key)}")

    @property
    def fingerprint(self) -> str:
        """16 hex digits of a hash of the key: equal on nodes that share a key, safe to log."""
        return hashlib.sha256(b"spegel-py psk fingerprint\0" + self.key).hexdigest()[:16]

    def __repr__(self) -> str:
        return f"PreSharedKey(fingerprint={self.fingerprint})"


def decode(data: bytes) -> PreSharedKey:
    """The key in ``data`` (a key file's bytes); ValueError saying what is wrong (never the key)."""
    text = data[:-1] if data.endswith(b"\n") else data
    lines = [line[:-1] if line.endswith(b"\r") else line for line in text.split(b"\n")]
    if lines[0] != HEADER:
        raise ValueError(f"the first line must be {HEADER.decode()}")
    if len(lines) < 2 or lines[1] != ENCODING:
        raise ValueError(f"the second line must be {ENCODING.decode()} (the only encoding supported)")
    if len(lines) < 3 or not _HEX_KEY.fullmatch(lines[2]):
        raise ValueError("the third line must be the key: 64 hex digits")
    if len(lines) > 3:
        raise ValueError("there must be nothing after the key's line")
    return PreSharedKey(bytes.fromhex(lines[2].decode("ascii")))


def read_file(path: str | Path) -> PreSharedKey:
    """The key in the file at ``path``; ValueError with a one-line reason (never the key)."""
    try:
        # O_NONBLOCK: a fifo at the path must not hang the start (it is refused below).
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        raise ValueError(f"cannot open {path}: {exc.strerror or exc}") from exc
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise ValueError(f"{path} is not a regular file")
        data = os.read(fd, _MAX_FILE_BYTES + 1)
    except OSError as exc:
        raise ValueError(f"cannot read {path}: {exc.strerror or exc}") from exc
    finally:
        os.close(fd)
    if len(data) > _MAX_FILE_BYTES:
        raise ValueError(f"{path} is too large to be a key file")
    try:
        return decode(data)
    except ValueError as exc:
        raise ValueError(f"{path} is not a libp2p pre-shared key file: {exc}") from exc


def load(path: str) -> PreSharedKey | None:
    """The key in the file ``--router-psk-file`` names; None for an empty path (no private
    network). A bad file raises :class:`ConfigurationError` with a one-line reason."""
    if not path.strip():
        return None
    try:
        return read_file(path.strip())
    except ValueError as exc:
        raise ConfigurationError(f"invalid --router-psk-file (ROUTER_PSK_FILE): {exc}") from exc
