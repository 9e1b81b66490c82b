"""This node's persistent Ed25519 identity: ``private.key`` (PKCS8 PEM) in the data directory.

Spegel keeps its libp2p key there so a restarted pod keeps its peer id, and the peer ids other
nodes hold in their provider records stay valid. The file format is the one Go Spegel writes
(PKCS8 PEM), so a node keeps its identity when its image changes from Spegel to spegel-py.

The policy (docs/operations.md, "The node's key"):

* a new key is written to a temporary file (``O_EXCL|O_NOFOLLOW``, mode 0600), fsynced, linked
  to ``private.key`` (which never replaces a key that appeared meanwhile) and the directory is
  fsynced: after a crash at any point the key is absent, the old one, or complete;
* a key that is empty, truncated, not PEM or unreadable is replaced by a new one with a warning:
  the mirror is stateless, a new peer id costs only the records peers hold for the old one
  (they expire), whereas refusing would make the pod crash-loop until someone deletes the file;
* a well-formed key of another type, a symbolic link, a directory or any other non-regular file
  at the key path is refused with a one-line error: someone put it there deliberately, and
  following a link means reading (and, when corrupt, replacing) a file chosen by whoever could
  write the directory.

An empty ``--data-dir`` means what it means in Spegel: no key on disk, a new peer id at every
start (:func:`load_or_create_seed` with ``None``), never a ``private.key`` in the working directory.

``steps`` is a crash-test hook: called with a step name after each step of the write.
"""

from __future__ import annotations

import errno
import logging
import os
import secrets
import stat
from collections.abc import Callable
from pathlib import Path

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from spegel_py.errors import ConfigurationError

log = logging.getLogger(__name__)

KEY_FILE = "private.key"
_TEMP_PREFIX = f".{KEY_FILE}."
_TEMP_SUFFIX = ".tmp"
_MAX_KEY_BYTES = 64 * 1024  # a PEM Ed25519 key is 119 bytes; anything this large is not one

Steps = Callable[[str], None]


def _no_steps(step: str) -> None:
    """The default ``steps``: nobody is told."""


class _Corrupt(Exception):
    """The key file exists but holds no usable key; it is replaced."""


def load_or_create_seed(data_dir: Path | None, *, steps: Steps = _no_steps) -> bytes:
    """The 32-byte Ed25519 seed from ``data_dir/private.key``: created (mode 0600) when missing,
    replaced with a warning when corrupt; see the module docstring for what is refused.
    ``None`` (an empty ``--data-dir``): a new seed, kept in memory only."""
    if data_dir is None:
        return secrets.token_bytes(32)
    path = data_dir / KEY_FILE
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
        _remove_temporaries(data_dir)
    except OSError as exc:
        reason = exc.strerror or exc
        raise ConfigurationError(f"cannot prepare identity directory {data_dir}: {reason}") from exc
    try:
        pem = _read(path)
    except _Corrupt as exc:
        log.warning(
            "identity key is unusable, replacing it with a new one (this node's peer id changes)",
            extra={"path": str(path), "reason": str(exc)},
        )
        return _create(path, replace=True, steps=steps)
    if pem is None:
        return _create(path, replace=False, steps=steps)
    try:
        key = serialization.load_pem_private_key(pem, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        log.warning(
            "identity key is unusable, replacing it with a new one (this node's peer id changes)",
            extra={"path": str(path), "reason": f"not a PKCS8 PEM private key: {exc}"},
        )
        return _create(path, replace=True, steps=steps)
    if not isinstance(key, ed25519.Ed25519PrivateKey):
        raise ConfigurationError(
            f"identity {path} is a key of another type, not Ed25519: move it away (a new key is then created)"
        )
    return key.private_bytes_raw()


def _read(path: Path) -> bytes | None:
    """The key file's bytes; None when there is none. A link or non-regular file is refused."""
    try:
        # O_NONBLOCK: a fifo planted at the path must not hang the start.
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise ConfigurationError(
                f"identity {path} is a symbolic link: spegel-py keeps its key only in a regular file "
                "there; replace the link with the key file itself, or delete it for a new identity"
            ) from exc
        raise _Corrupt(f"cannot open: {exc.strerror or exc}") from exc
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise ConfigurationError(
                f"identity {path} is not a regular file: move it away (a new key is then created)"
            )
        data = os.read(fd, _MAX_KEY_BYTES + 1)
    except OSError as exc:
        raise _Corrupt(f"cannot read: {exc.strerror or exc}") from exc
    finally:
        os.close(fd)
    if not data.strip():
        raise _Corrupt("empty")
    if len(data) > _MAX_KEY_BYTES:
        raise _Corrupt("too large to be a key")
    return data


def _create(path: Path, *, replace: bool, steps: Steps) -> bytes:
    """Write a new key to ``path``. ``replace``: over the unusable file there (a rename); else
    only where no file is (a link, which fails if a key appeared meanwhile: that one is used)."""
    key = ed25519.Ed25519PrivateKey.generate()
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    tmp = path.with_name(f"{_TEMP_PREFIX}{secrets.token_hex(4)}{_TEMP_SUFFIX}")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        try:
            steps("key.created")
            os.fchmod(fd, 0o600)  # O_CREAT's mode is filtered by the umask (never widened, but exact)
            view = memoryview(pem)
            while view:
                view = view[os.write(fd, view) :]
            steps("key.written")
            os.fsync(fd)
        finally:
            os.close(fd)
        steps("key.synced")
        if replace:
            os.replace(tmp, path)
        else:
            try:
                os.link(tmp, path)
            except FileExistsError:
                tmp.unlink()
                log.info("identity key appeared while creating one; using it", extra={"path": str(path)})
                return load_or_create_seed(path.parent, steps=steps)
            steps("key.linked")
            tmp.unlink()
        steps("key.renamed")
        _fsync_dir(path.parent)
        steps("key.done")
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise ConfigurationError(f"cannot write identity {path}: {exc.strerror or exc}") from exc
    return key.private_bytes_raw()


def _remove_temporaries(data_dir: Path) -> None:
    """Temporary key files a crashed write left behind (never read: they may be incomplete)."""
    for name in os.listdir(data_dir):
        if name.startswith(_TEMP_PREFIX) and name.endswith(_TEMP_SUFFIX):
            (data_dir / name).unlink(missing_ok=True)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
