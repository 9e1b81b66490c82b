"""Where a running Python process spends its CPU: a py-spy recording and its top functions.

``py-spy record --format raw`` writes collapsed stacks (``frame;frame;...;leaf count``), one
line per distinct stack, counting samples taken while a thread was running (py-spy leaves idle
threads out unless ``--idle``), so the counts are the process's CPU, not its wall time.
:func:`top` adds them up per function, leaving out the event loops' waits: *self* (the function
was the leaf) and *inclusive* (it was anywhere on the stack, counted once per sample).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any


def binary() -> str | None:
    """The venv's py-spy (installed with ``pip install py-spy``), else one on PATH."""
    sibling = Path(sys.executable).parent / "py-spy"
    return str(sibling) if sibling.exists() else shutil.which("py-spy")


def record(pid: int, seconds: int, out: Path, *, rate: int = 250) -> subprocess.CompletedProcess[str]:
    """``py-spy record -d seconds -r rate -p pid --format raw -o out`` (raises if py-spy is missing)."""
    exe = binary()
    if exe is None:
        raise RuntimeError("py-spy not found: pip install py-spy")
    argv = [exe, "record", "-d", str(seconds), "-r", str(rate), "-p", str(pid), "--format", "raw",
            "--nonblocking", "-o", str(out)]  # fmt: skip
    return subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 60)


def _function(frame: str) -> str:
    """``name (path/to/file.py:123)`` -> ``name (file.py)``: lines of one function add up."""
    name, _, where = frame.partition(" (")
    path = where.rstrip(")").rsplit(":", 1)[0]
    parts = path.split(os.sep)
    if "site-packages" in parts:  # keep the package: trio/_core/_run.py, libp2p/...
        path = "/".join(parts[parts.index("site-packages") + 1 :])
    elif "spegel_py" in parts:
        path = "/".join(parts[parts.index("spegel_py") :])
    else:
        path = parts[-1]
    return f"{name} ({path})"


_PRODUCT = (" (spegel_py/", " (libp2p/")  # whose functions count in "busy_product"
# The event loops' waits (trio's epoll, asyncio's selector). py-spy's --nonblocking sampling does
# not always see that a thread sleeps in them and counts those samples as active: a process
# that measured 0.55 s of CPU in 120 s gave 2.5 s of samples, 68 % of them in get_events.
WAITS = ("EpollIOManager.get_events (", "EpollSelector.select (")


def top(raw: str, n: int = 5) -> dict[str, Any]:
    """The ``n`` functions with the most samples in a raw recording, once the waits are left out.

    ``wait_share``: samples whose leaf is an event loop's wait (:data:`WAITS`). Of the others
    (``busy``): ``self`` (the function was the leaf), ``inclusive`` (anywhere on the stack, once
    per sample) and ``busy_product`` (inclusive, spegel_py's and py-libp2p's functions only).
    """
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    product: Counter[str] = Counter()
    total = busy = 0
    for line in raw.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        total += count
        frames = [_function(f) for f in stack.split(";") if not f.startswith(("process ", "thread "))]
        if not frames or frames[-1].startswith(WAITS):
            continue
        busy += count
        own[frames[-1]] += count
        for fn in set(frames):
            inclusive[fn] += count
            if any(p in fn for p in _PRODUCT):
                product[fn] += count

    def share(counter: Counter[str]) -> list[dict[str, Any]]:
        return [{"function": fn, "samples": c, "share": c / busy} for fn, c in counter.most_common(n)]

    return {
        "samples": total,
        "busy_samples": busy,
        "wait_share": (total - busy) / total if total else None,
        "self": share(own),
        "inclusive": share(inclusive),
        "busy_product": share(product),
    }
