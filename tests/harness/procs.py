"""Background processes of the local cluster, stopped by pid, always.

Every daemon the harness starts (docker-registry, containerd, spegel-py) goes through a
:class:`ProcessGroup`, which keeps the ``Popen`` handle of each one. Stopping signals exactly
that pid (never a name pattern, so other people's processes on the machine are safe), waits a
bounded time, then kills. The group also stops everything at interpreter exit, so a crashed test
run or an interrupted demo does not leave daemons behind.
"""

from __future__ import annotations

import atexit
import os
import signal
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

DEFAULT_STOP_TIMEOUT = 10.0


class HarnessError(RuntimeError):
    """A harness step failed; the message says which and carries the relevant log tail."""


def wait_until(
    predicate: Callable[[], object],
    timeout: float,
    what: str,
    *,
    interval: float = 0.05,
    diagnose: Callable[[], str] | None = None,
) -> object:
    """Poll ``predicate`` until it returns something truthy; return that value.

    Raises :class:`TimeoutError` naming ``what`` (and the output of ``diagnose``, e.g. a log
    tail) after ``timeout`` seconds. The short sleep between polls is pacing, not
    synchronisation: the condition itself is what is waited for.
    """
    deadline = time.monotonic() + timeout
    last_exc: BaseException | None = None
    while True:
        try:
            value = predicate()
        except Exception as exc:  # a predicate may fail until the thing is up (connection refused)
            value, last_exc = None, exc
        if value:
            return value
        if time.monotonic() >= deadline:
            detail = f" (last error: {last_exc!r})" if last_exc is not None else ""
            extra = f"\n{diagnose()}" if diagnose is not None else ""
            raise TimeoutError(f"timed out after {timeout:.1f}s waiting for {what}{detail}{extra}")
        time.sleep(interval)


def log_tail(path: Path, lines: int = 30) -> str:
    """The last ``lines`` lines of a log file ('' if it does not exist), for failure messages."""
    try:
        with path.open("rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 64 * 1024))
            text = f.read().decode(errors="replace")
    except FileNotFoundError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


@dataclass
class Managed:
    """One started process: its handle, the command and where its output goes."""

    name: str
    argv: list[str]
    popen: subprocess.Popen[bytes]
    log_path: Path

    @property
    def pid(self) -> int:
        return self.popen.pid

    def running(self) -> bool:
        return self.popen.poll() is None

    def tail(self, lines: int = 30) -> str:
        return f"--- {self.name} (pid {self.pid}) {self.log_path} ---\n{log_tail(self.log_path, lines)}"


class ProcessGroup:
    """Starts named background processes and stops them by pid (SIGTERM, wait, SIGKILL).

    ``stop_all`` is idempotent and also runs at interpreter exit. Names are unique while a
    process is registered; stopping a process unregisters it, so a name can be started again
    (that is how "restart" works).
    """

    def __init__(self, *, stop_timeout: float = DEFAULT_STOP_TIMEOUT) -> None:
        self._stop_timeout = stop_timeout
        self._procs: dict[str, Managed] = {}
        self.started_pids: list[int] = []  # every pid ever started here, for leak checks
        atexit.register(self.stop_all)

    def start(
        self,
        name: str,
        argv: Sequence[str],
        *,
        log_path: Path,
        netns: str | None = None,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
    ) -> subprocess.Popen[bytes]:
        """Start ``argv`` in the background (inside network namespace ``netns`` if given).

        Output (stdout and stderr) is appended to ``log_path``. The process gets its own session
        so a Ctrl-C in the terminal reaches only the harness, which then stops it in order.
        ``ip netns exec`` execs the command, so the recorded pid is the command's own.
        """
        if name in self._procs and self._procs[name].running():
            raise HarnessError(f"process {name!r} is already running (pid {self._procs[name].pid})")
        full = [*(["ip", "netns", "exec", netns] if netns else []), *argv]
        log_path.parent.mkdir(parents=True, exist_ok=True)
        merged_env = {**os.environ, **(env or {})}
        with log_path.open("ab") as log:
            log.write(f"\n=== start {name}: {' '.join(full)}\n".encode())
            log.flush()
            popen = subprocess.Popen(
                full,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=merged_env,
                cwd=cwd,
                start_new_session=True,
            )
        self._procs[name] = Managed(name, list(full), popen, log_path)
        self.started_pids.append(popen.pid)
        return popen

    def get(self, name: str) -> Managed:
        return self._procs[name]

    def __contains__(self, name: str) -> bool:
        return name in self._procs

    @property
    def pids(self) -> dict[str, int]:
        """Pids of the processes currently registered (running or exited, not yet stopped)."""
        return {name: m.pid for name, m in self._procs.items()}

    def stop(self, name: str, *, timeout: float | None = None) -> int | None:
        """Stop one process by pid; return its exit status (None if it was not registered)."""
        managed = self._procs.pop(name, None)
        if managed is None:
            return None
        return _terminate(managed.popen, self._stop_timeout if timeout is None else timeout)

    def stop_all(self) -> None:
        """Stop every registered process, newest first (clients before the daemons they use)."""
        for name in reversed(list(self._procs)):
            self.stop(name)

    def check_running(self, name: str) -> None:
        """Raise with the log tail if a process exited unexpectedly."""
        managed = self._procs[name]
        if not managed.running():
            raise HarnessError(f"{name} exited with status {managed.popen.returncode}\n{managed.tail()}")

    def tails(self, lines: int = 30) -> str:
        """Log tails of every registered process (for a failure report)."""
        return "\n".join(m.tail(lines) for m in self._procs.values())


def _terminate(popen: subprocess.Popen[bytes], timeout: float) -> int:
    if popen.poll() is None:
        try:
            popen.send_signal(signal.SIGTERM)
            return popen.wait(timeout)
        except subprocess.TimeoutExpired:
            popen.kill()
    return popen.wait(timeout)


def pid_alive(pid: int) -> bool:
    """True if a process with this pid exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False
    return state not in ("Z", "X")
