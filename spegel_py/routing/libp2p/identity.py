"""This node's persistent Ed25519 identity: ``private.key`` (PKCS8 PEM) in the data directory.

Spegel keeps its libp2p key there so a restarted pod keeps its peer id, and the peer ids other
nodes hold in their provider records stay valid. The file format is the one Go Spegel writes
(PKCS8 PEM), so a node keeps its identity when its image changes from Spegel to spegel-py.
"""

from __future__ import annotations

import os
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from spegel_py.errors import ConfigurationError

KEY_FILE = "private.key"


def load_or_create_seed(data_dir: Path) -> bytes:
    """The 32-byte Ed25519 seed from ``data_dir/private.key``, created (mode 0600) when missing."""
    path = data_dir / KEY_FILE
    try:
        pem = path.read_bytes()
    except FileNotFoundError:
        return _create(path)
    except OSError as exc:
        raise ConfigurationError(f"cannot read identity {path}: {exc}") from exc
    try:
        key = serialization.load_pem_private_key(pem, password=None)
    except ValueError as exc:
        raise ConfigurationError(f"identity {path} is not a PKCS8 PEM private key") from exc
    if not isinstance(key, ed25519.Ed25519PrivateKey):
        raise ConfigurationError(f"identity {path} is not an Ed25519 key")
    return key.private_bytes_raw()


def _create(path: Path) -> bytes:
    key = ed25519.Ed25519PrivateKey.generate()
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(pem)
        os.replace(tmp, path)  # atomic: a crash never leaves half a key behind
    except OSError as exc:
        raise ConfigurationError(f"cannot write identity {path}: {exc}") from exc
    return key.private_bytes_raw()
