"""Crash-safe filesystem steps under certs.d: atomic writes, faithful copies, swaps, what is ours.

containerd reads certs.d on every pull, so at no moment may it see a half-written hosts.toml:
files are written to a temporary name, fsynced and renamed into place, and the directory is
fsynced after the rename; new directories are built under a temporary name and renamed in whole.
Temporary names start with :data:`TEMP_PREFIX`; containerd looks directories up by exact
registry host, which can never start with a dot, so it never reads them, and a later run removes
any that a crash left behind.

Copies (backups, restores, ``--prepend-existing``) are faithful: a symlink is copied as the link,
never as its target; a file keeps its mode, owner (where the process may set it) and times.

Every writing function takes ``steps``, called with a step name after each step of the write
sequence. Production passes nothing; crash tests pass a callback that kills the process at a
chosen step and then check what is on disk.
"""

from __future__ import annotations

import ctypes
import errno as E
import os
import re
import secrets
import stat
from collections.abc import Callable, Collection, Iterator, Mapping
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
# How Go Spegel's template starts (a server line, then its first mirror host): its own output.
_GO_SPEGEL_HOSTS = re.compile(r"\s*(?:server = '[^'\n]*'\s*)?\[host\.'[^'\n]+'\]\ncapabilities = \[")

Steps = Callable[[str], None]


def no_steps(step: str) -> None:
    """The default ``steps`` callback: nobody is told."""


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
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:  # os.write may write less than asked
        view = view[os.write(fd, view) :]


_NEW_FILE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


def write_file(path: Path, data: bytes, *, mode: int = 0o644, steps: Steps = no_steps) -> None:
    """Write ``data`` to ``path`` atomically: readers see the old file or the new one, whole."""
    tmp = temp_name(path.parent, "file")
    try:
        fd = os.open(tmp, _NEW_FILE, 0o600)
        try:
            steps("file.created")
            _write_all(fd, data)
            steps("file.written")
            os.fchmod(fd, mode)  # O_CREAT's mode is filtered by the umask
            os.fsync(fd)
        finally:
            os.close(fd)
        steps("file.synced")
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    steps("file.renamed")
    _fsync_dir(path.parent)
    steps("file.done")


def write_directory(
    target: Path,
    files: Mapping[str, bytes],
    *,
    copy_from: Path | None = None,
    steps: Steps = no_steps,
    mode: int = 0o644,
) -> None:
    """Make ``target`` a directory holding exactly ``files`` (relative path -> content, each with
    ``mode``), plus a faithful copy of what ``copy_from`` holds under other names
    (:func:`copy_entry`'s rules).

    The directory is built aside and swapped in whole (:func:`swap_in`): nothing is ever written
    into the directory being replaced, which may be an operator's, with links we must not follow.
    """
    staging = temp_name(target.parent, "dir")
    try:
        staging.mkdir()
        os.chmod(staging, 0o755)
        if copy_from is not None:
            for name in sorted(os.listdir(copy_from)):
                if name not in files:
                    _copy_node(copy_from / name, staging / name)
            steps("dir.copied")
        for rel, data in files.items():
            (staging / rel).parent.mkdir(parents=True, exist_ok=True)
            write_file(staging / rel, data, mode=mode, steps=steps)
        _fsync_dir(staging)
        steps("dir.staged")
        swap_in(staging, target, steps=steps)
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


def swap_in(staged: Path, target: Path, *, steps: Steps = no_steps) -> None:
    """Put ``staged`` in place of ``target`` and remove what was there.

    containerd looks the directory up on every pull. An atomic exchange means it always finds the
    old entry or the new one; where the kernel cannot exchange, two renames leave it missing for
    an instant, and a pull in that instant goes to the upstream as if unmirrored.
    """
    if present(target) and _exchange(staged, target):
        steps("swap.exchanged")
        remove(staged, steps=steps)  # now holds the old entry
    else:
        remove(target, steps=steps)
        os.rename(staged, target)
        steps("swap.renamed")
    _fsync_dir(target.parent)
    steps("swap.done")


def remove(path: Path, *, steps: Steps = no_steps) -> None:
    """Remove a file, link or directory tree; first renamed aside so it disappears at once."""
    if not present(path):
        return
    if path.is_dir() and not path.is_symlink():
        aside = temp_name(path.parent, "old")
        os.rename(path, aside)
        steps("remove.aside")
        _rmtree(aside)
    else:
        path.unlink()
    _fsync_dir(path.parent)
    steps("remove.done")


def _rmtree(path: Path) -> None:
    for child in os.listdir(path):
        node = path / child
        if node.is_dir() and not node.is_symlink():
            _rmtree(node)
        else:
            node.unlink()
    path.rmdir()


def copy_entry(source: Path, destination: Path, *, steps: Steps = no_steps) -> None:
    """Copy a certs.d entry (directory tree, file or link) faithfully to a fresh ``destination``
    via a temporary name, so a crash never leaves a partial copy under the real name."""
    staging = temp_name(destination.parent, "copy")
    try:
        _copy_node(source, staging)
        steps("copy.staged")
        rename_into_place(staging, destination, steps=steps)
    except BaseException:
        remove(staging)
        raise


def rename_into_place(staging: Path, target: Path, *, steps: Steps = no_steps) -> None:
    """Rename a finished ``staging`` (fsynced by whoever built it) to a free ``target`` name and
    make the rename durable."""
    if staging.is_dir() and not staging.is_symlink():
        _fsync_dir(staging)
    os.rename(staging, target)
    steps("rename.renamed")
    _fsync_dir(target.parent)
    steps("rename.done")


def _copy_node(source: Path, destination: Path) -> None:
    """Copy one node: a link as the same link, a directory recursively, a file with its bytes
    fsynced; each with the source's mode, owner (where permitted) and times. Other kinds (fifos,
    sockets, devices) are nothing containerd reads and are not copied."""
    st = os.lstat(source)
    if stat.S_ISLNK(st.st_mode):
        os.symlink(os.readlink(source), destination)
    elif stat.S_ISDIR(st.st_mode):
        os.mkdir(destination, 0o700)
        for name in sorted(os.listdir(source)):
            _copy_node(source / name, destination / name)
        _fsync_dir(destination)
    elif stat.S_ISREG(st.st_mode):
        _copy_file(source, destination)
    else:
        return
    _keep_metadata(destination, st)


def _copy_file(source: Path, destination: Path) -> None:
    src = os.open(source, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        dst = os.open(destination, _NEW_FILE, 0o600)  # opened to others only once it is complete
        try:
            while chunk := os.read(src, 1 << 20):
                _write_all(dst, chunk)
            os.fsync(dst)
        finally:
            os.close(dst)
    finally:
        os.close(src)


def _keep_metadata(destination: Path, st: os.stat_result) -> None:
    is_link = stat.S_ISLNK(st.st_mode)
    try:
        os.chown(destination, st.st_uid, st.st_gid, follow_symlinks=False)
    except PermissionError:
        pass  # not root: the copy stays ours, with the source's mode below
    if not is_link:  # Linux has no mode on a link; chmod after chown, which clears set-id bits
        os.chmod(destination, stat.S_IMODE(st.st_mode))
    os.utime(destination, ns=(st.st_atime_ns, st.st_mtime_ns), follow_symlinks=False)


def present(path: Path) -> bool:
    """True if anything (also a dangling symlink) exists at ``path``."""
    return path.is_symlink() or path.exists()


def _first_bytes(path: Path, size: int) -> bytes | None:
    """The first ``size`` bytes of a regular file that is not a link; None for anything else."""
    if path.is_symlink() or not path.is_file():
        return None
    try:
        with path.open("rb") as handle:
            return handle.read(size)
    except OSError:
        return None


def is_ours(entry: Path) -> bool:
    """True if ``entry`` is a registry directory whose hosts.toml we wrote (it starts with MARKER)."""
    if entry.is_symlink():
        return False
    first = _first_bytes(entry / HOSTS_FILE, len(MARKER) + 2)
    return first is not None and first.split(b"\n", 1)[0].rstrip(b"\r") == MARKER.encode()


def is_go_spegel_output(entry: Path) -> bool:
    """True if ``entry`` is what Go Spegel writes: a directory holding only a hosts.toml that
    starts as its template does (``server = '...'`` then ``[host.'...']`` and ``capabilities``)."""
    if entry.is_symlink() or not entry.is_dir() or os.listdir(entry) != [HOSTS_FILE]:
        return False
    head = _first_bytes(entry / HOSTS_FILE, 4096)
    return head is not None and _GO_SPEGEL_HOSTS.match(head.decode("utf-8", "replace")) is not None


def entries(config_path: Path, *, skip: Collection[str] = ()) -> list[Path]:
    """The entries of certs.d (or of its backup) that are configuration: not the backup itself,
    its owner file, our temporaries, or names in ``skip``."""
    return sorted(
        p
        for p in config_path.iterdir()
        if p.name not in (BACKUP_DIR, BACKUP_OWNER, *skip) and not p.name.startswith(TEMP_PREFIX)
    )


def remove_leftovers(config_path: Path) -> None:
    """Remove temporaries a crashed run left in certs.d or its backup."""
    for parent in (config_path, config_path / BACKUP_DIR):
        if parent.is_dir() and not parent.is_symlink():
            for path in parent.iterdir():
                if path.name.startswith(TEMP_PREFIX):
                    remove(path)


def same_tree(a: Path, b: Path) -> bool:
    """True if two entries hold the same names, link targets, file modes and bytes."""
    sa, sb = os.lstat(a), os.lstat(b)
    if stat.S_IFMT(sa.st_mode) != stat.S_IFMT(sb.st_mode):
        return False
    if stat.S_ISLNK(sa.st_mode):
        return os.readlink(a) == os.readlink(b)
    if stat.S_ISDIR(sa.st_mode):
        names = sorted(os.listdir(a))
        return names == sorted(os.listdir(b)) and all(same_tree(a / n, b / n) for n in names)
    if stat.S_ISREG(sa.st_mode):
        return stat.S_IMODE(sa.st_mode) == stat.S_IMODE(sb.st_mode) and a.read_bytes() == b.read_bytes()
    return True  # a fifo, socket or device: nothing to compare that containerd would read
