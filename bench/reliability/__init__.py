"""The reliability suite of issue 11 (docs/reliability.md): hostile clients, hostile peers and
crashes against real ``spegel-py registry`` processes, real containerd and a real upstream.

Each row of the table is one module with a ``run(scale)`` function that returns a
:class:`~bench.reliability.common.Row` (the measured figure, the bound, pass or fail);
``python -m bench.reliability <row>|all`` runs them and rewrites the table in
docs/reliability.md. ``tests/reliability`` runs the same functions at CI size and asserts the
same invariants.

The local-cluster harness lives with the tests (``tests/harness``, ``tests/support``), so the
``tests`` directory is put on ``sys.path`` here, once, as ``bench/pull_bench.py`` does.
"""

from __future__ import annotations

import sys
from pathlib import Path

_TESTS = str(Path(__file__).resolve().parents[2] / "tests")
if _TESTS not in sys.path:
    sys.path.insert(0, _TESTS)
