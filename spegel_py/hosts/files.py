"""Crash-safe filesystem steps under certs.d: atomic writes, copies, swaps, and what is ours.

containerd reads certs.d on every pull, so at no moment may it see a half-written hosts.toml:
files are written to a temporary name and renamed into place, new directories are built under a
temporary name and renamed in whole. Temporary names start with :data:`TEMP_PREFIX`; containerd
looks directories up by exact registry host, which can never start with a dot, so it never reads
them, and a later run removes any that a crash left behind.
"""

from __future__ import annotations

import ctypes
import errno as E
import os
import secrets
import shutil
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

from spegel_py.errors import ConfigurationError

HOSTS_FILE = "hosts.toml"
BACKUP_DIR = "_backup"
TEMP_PREFIX = ".spegel-py-"
# File inside _backup saying that spegel-py made the backup (Go Spegel's backups have none).
BACKUP_OWNER = ".spegel-py"
# First line of every hosts.toml we write: how cleanup tells our files from an operator's.
MARKER = "# Written by spegel-py configuration; `spegel-py cleanup` restores what was here before."


@contextmanager
def translated(action: str) -> Iterator[None]:
    """Turn an OSError into a one-line :class:`ConfigurationError` naming what we were doing."""
    try:
        yield
    except OSError as exc:
        raise ConfigurationError(f"{action}: {exc.strerror or exc}") from exc


def temp_name(parent: Path, purpose: str) -> Path:
    """A fresh temporary path in ``parent`` (same filesystem, so a rename is atomic)."""
    return parent / f"{TEMP_PREFIX}{purpose}-{secrets.token_hex(4)}"


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_file(path: Path, data: bytes, *, mode: int = 0o644) -> None:
    """Write ``data`` to ``path`` atomically: readers see the old file or the new one, whole."""
    tmp = temp_name(path.parent, "file")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
        try:
            view = memoryview(data)
            while view:  # os.write may write less than asked
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.chmod(tmp, mode)  # O_CREAT's mode is filtered by the umask
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def write_directory(target: Path, files: Mapping[str, bytes]) -> None:
    """Make ``target`` a directory holding exactly ``files`` (relative path -> content).

    The directory is built aside and swapped in whole (:func:`swap_in`): nothing is ever written
    into the directory being replaced, which may be an operator's, with links we must not follow.
    """
    staging = temp_name(target.parent, "dir")
    try:
        staging.mkdir()
        os.chmod(staging, 0o755)
        for rel, data in files.items():
            (staging / rel).parent.mkdir(parents=True, exist_ok=True)
            write_file(staging / rel, data)
        swap_in(staging, target)
    except BaseException:
        remove(staging)
        raise


def _exchange(a: Path, b: Path) -> bool:
    """Atomically exchange two paths (Linux renameat2 RENAME_EXCHANGE); False if unsupported."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    errno = ctypes.get_errno()
    if errno in (E.ENOSYS, E.EINVAL, E.EOPNOTSUPP):
        return False
    raise OSError(errno, os.strerror(errno), str(b))


def swap_in(staged: Path, target: Path) -> None:
    """Put ``staged`` in place of ``target`` and remove what was there.

    containerd looks the directory up on every pull. An atomic exchange means it always finds the
    old entry or the new one; where the kernel cannot exchange, two renames leave it missing for
    an instant, and a pull in that instant goes to the upstream as if unmirrored.
    """
    if present(target) and _exchange(staged, target):
        remove(staged)  # now holds the old entry
    else:
        remove(target)
        os.rename(staged, target)
    _fsync_dir(target.parent)


def remove(path: Path) -> None:
    """Remove a file, link or directory tree; first renamed aside so it disappears at once."""
    if not present(path):
        return
    if path.is_dir() and not path.is_symlink():
        aside = temp_name(path.parent, "old")
        os.rename(path, aside)
        shutil.rmtree(aside)
    else:
        path.unlink()


def copy_entry(source: Path, destination: Path) -> None:
    """Copy a certs.d entry (directory tree or file, links kept as links) to a fresh ``destination``
    via a temporary name, so a crash never leaves a partial copy under the real name."""
    staging = temp_name(destination.parent, "copy")
    try:
        if source.is_dir() and not source.is_symlink():
            shutil.copytree(source, staging, symlinks=True)
        else:
            shutil.copy2(source, staging, follow_symlinks=False)
        os.rename(staging, destination)
    except BaseException:
        if staging.is_dir() and not staging.is_symlink():
            shutil.rmtree(staging, ignore_errors=True)
        else:
            staging.unlink(missing_ok=True)
        raise


def present(path: Path) -> bool:
    """True if anything (also a dangling symlink) exists at ``path``."""
    return path.is_symlink() or path.exists()


def is_ours(entry: Path) -> bool:
    """True if ``entry`` is a registry directory whose hosts.toml we wrote (it starts with MARKER)."""
    hosts = entry / HOSTS_FILE
    if entry.is_symlink() or not hosts.is_file():
        return False
    try:
        with hosts.open("rb") as handle:
            first = handle.readline(len(MARKER) + 2)
    except OSError:
        return False
    return first.rstrip(b"\r\n") == MARKER.encode()


def entries(config_path: Path) -> list[Path]:
    """The entries of certs.d (or of its backup) that are configuration: not the backup itself,
    its owner file, or our temporaries."""
    return sorted(
        p
        for p in config_path.iterdir()
        if p.name not in (BACKUP_DIR, BACKUP_OWNER) and not p.name.startswith(TEMP_PREFIX)
    )


def remove_leftovers(config_path: Path) -> None:
    """Remove temporaries a crashed run left in certs.d or its backup."""
    for parent in (config_path, config_path / BACKUP_DIR):
        if not parent.is_dir():
            continue
        for path in parent.iterdir():
            if path.name.startswith(TEMP_PREFIX):
                if path.is_dir() and not path.is_symlink():
                    shutil.rmtree(path)
                else:
                    path.unlink()


def same_tree(a: Path, b: Path) -> bool:
    """True if two entries hold the same names, link targets and bytes."""
    if a.is_symlink() or b.is_symlink():
        return a.is_symlink() and b.is_symlink() and os.readlink(a) == os.readlink(b)
    if a.is_dir() != b.is_dir():
        return False
    if not a.is_dir():
        return a.read_bytes() == b.read_bytes()
    names_a = sorted(p.name for p in a.iterdir())
    names_b = sorted(p.name for p in b.iterdir())
    return names_a == names_b and all(same_tree(a / n, b / n) for n in names_a)
