"""What a directory tree holds, for comparing a tree before and after a write (or a crash).

A snapshot maps every path under a root (relative, POSIX) to what it is: a link and its target,
a directory and its mode, or a file with its bytes, mode and owner. Times are left out: faithful
copies keep them, but a rewrite of identical content need not.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

Node = tuple[object, ...]
Snapshot = dict[str, Node]


def snapshot(root: Path, *, skip_prefix: str = "") -> Snapshot:
    """Every node under ``root``; names starting with ``skip_prefix`` (and what is under them)
    are left out when it is given."""
    out: Snapshot = {}
    for dirpath, dirnames, filenames in os.walk(root):
        if skip_prefix:
            dirnames[:] = [d for d in dirnames if not d.startswith(skip_prefix)]
            filenames = [f for f in filenames if not f.startswith(skip_prefix)]
        for name in dirnames + filenames:
            path = Path(dirpath, name)
            rel = path.relative_to(root).as_posix()
            st = os.lstat(path)
            if stat.S_ISLNK(st.st_mode):
                out[rel] = ("link", os.readlink(path))
            elif stat.S_ISDIR(st.st_mode):
                out[rel] = ("dir", oct(stat.S_IMODE(st.st_mode)))
            else:
                out[rel] = ("file", path.read_bytes(), oct(stat.S_IMODE(st.st_mode)), st.st_uid, st.st_gid)
    return out


def entry(snap: Snapshot, name: str) -> Snapshot:
    """The part of ``snap`` at the top-level entry ``name`` (the entry and what is under it)."""
    return {k: v for k, v in snap.items() if k == name or k.startswith(name + "/")}


def top_level(snap: Snapshot) -> set[str]:
    """The names directly under the snapshot's root."""
    return {k.split("/", 1)[0] for k in snap}
