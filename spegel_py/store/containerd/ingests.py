"""containerd's active ingests: what its content service lists, and the files they are written to.

The content service's ``ListStatuses`` gives, per namespace, each write in progress: its ref,
offset and total, but (measured with containerd 1.6) an empty expected digest. Pulls name each
write after the descriptor it fetches (``layer-sha256:<hex>``, ``config-...``, ``manifest-...``),
so the expected digest is read from the ref when the status has none.

The bytes are in ``<content root>/ingest/<dir>/data``. The directory is named after containerd's
internal key of the write (``<namespace>/<sequence>/<ref>``, hashed), which the API does not
give, so the ingest directories are scanned for a ``ref`` file holding that key: there are as
many as there are writes in progress, a handful.

The listing is polled (``routing/inprogress.py``), and one ``ListStatuses`` costs about 1.2 ms
of CPU in this process (measured: 4 calls a second would more than double an idle node's CPU,
docs/benchmarks.md "Idle cost"), so the ingest directory is looked at first: with no write in
progress in any namespace it is empty and nothing is asked of containerd.
"""

from __future__ import annotations

import os
import re

from spegel_py.errors import InvalidInputError
from spegel_py.oci.digest import Digest

_REF_DIGEST = re.compile(r"(?:^|-)(sha256:[0-9a-f]{64})\Z")
_REF_FILE_LIMIT = 4096  # bytes: a ref file holds one key (a namespace, a number and a ref)


def expected_digest(ref: str, expected: str) -> Digest | None:
    """The digest a write is expected to commit as: the status's, else the one its ref ends with."""
    for candidate in (expected, *(m.group(1) for m in [_REF_DIGEST.search(ref)] if m)):
        if candidate:
            try:
                return Digest.parse(candidate)
            except InvalidInputError:
                continue
    return None


def writing(content_path: str) -> bool:
    """True when containerd has any write in progress (in any namespace): ``ingest/`` is not empty."""
    try:
        with os.scandir(os.path.join(content_path, "ingest")) as entries:
            return next(entries, None) is not None
    except OSError:
        return False  # no ingest directory yet: containerd has never written anything


def data_path(content_path: str, namespace: str, ref: str) -> str | None:
    """The ``data`` file of the write named ``ref`` in ``namespace``, or ``None`` if there is none."""
    root = os.path.join(content_path, "ingest")
    try:
        entries = list(os.scandir(root))
    except OSError:
        return None
    for entry in entries:
        try:
            with open(os.path.join(entry.path, "ref"), "rb") as f:
                key = f.read(_REF_FILE_LIMIT).decode("utf-8", "replace")
        except OSError:
            continue  # not an ingest directory, or ended since the scan
        parts = key.split("/", 2)
        if len(parts) == 3 and parts[0] == namespace and parts[1].isdigit() and parts[2] == ref:
            return os.path.join(entry.path, "data")
    return None
