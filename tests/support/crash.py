"""Crash tests: run a real write in a child process and SIGKILL it at a chosen step.

The writing functions of spegel-py take a ``steps`` callback (called with a step name after each
step of a write: created, written, fsynced, renamed...). :func:`steps_of` records the sequence
in this process; :func:`run_killed` runs the same call in a fresh interpreter whose callback
SIGKILLs the process at the n-th step, as a crash or an OOM kill would, so no ``finally`` or
``except`` of the code under test runs. Tests then check what is on disk and run the write again.

Tests that use :func:`run_killed` start processes and must be marked ``process``.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

_REPO = Path(__file__).resolve().parents[2]

_CHILD = """
import os, signal, sys
from pathlib import Path
kill_at = int(sys.argv[1])
count = 0
def steps(name):
    global count
    count += 1
    if count == kill_at:
        os.kill(os.getpid(), signal.SIGKILL)
exec(sys.argv[2])
exec(sys.argv[3])
sys.exit(3)  # the step to kill at was never reached
"""


def steps_of(call: Callable[[Callable[[str], None]], object]) -> list[str]:
    """The step names ``call(steps)`` reports, in order (run here, to completion)."""
    seen: list[str] = []
    call(seen.append)
    return seen


def run_killed(imports: str, call: str, *, kill_at: int, timeout: float = 60.0) -> None:
    """Run ``imports`` then ``call`` (Python source using a ``steps`` name) in a child
    interpreter, SIGKILLed at the ``kill_at``-th (1-based) step; fails unless it died so."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(_REPO), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run(
        [sys.executable, "-c", _CHILD, str(kill_at), imports, call],
        env=env,
        capture_output=True,
        timeout=timeout,
        check=False,
    )
    if done.returncode != -signal.SIGKILL:
        raise AssertionError(
            f"child was not killed at step {kill_at} (exit {done.returncode}): {done.stderr.decode()[-2000:]}"
        )
