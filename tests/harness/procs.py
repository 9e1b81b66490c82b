"""Background processes of the local cluster, stopped by pid, always.

Every daemon the harness starts (docker-registry, containerd, spegel-py) goes through a
:class:`ProcessGroup`, which keeps the ``Popen`` handle of each one. Stopping signals exactly
that pid (never a name pattern, so other people's processes on the machine are safe), waits a
bounded time, then kills. The group also stops everything at interpreter exit, so a crashed test
run or an interrupted demo does not leave daemons behind.

Finalizers and atexit never run when the harness itself is SIGKILLed (an outer ``timeout``, the
OOM killer), so two more layers make sure nothing outlives it:

* every child is started with ``PR_SET_PDEATHSIG(SIGKILL)`` (:func:`with_pdeathsig`): the
  kernel kills it when its parent goes away. The kernel's "parent" is the *thread* that forked,
  so a group forks all its daemons from one thread of its own that lives until the group is
  stopped (see :class:`_Spawner`), never from the short-lived worker threads that start nodes
  in parallel;
* every daemon is recorded in a :class:`PidRegistry` (``<repo>/.work/harness-pids``) with its
  start time and its owner; the next test session sweeps records whose owner is dead and kills
  those processes, only if the pid still names the very process that was recorded.
"""

from __future__ import annotations

import atexit
import dataclasses
import json
import os
import select
import signal
import subprocess
import threading
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

DEFAULT_STOP_TIMEOUT = 10.0

T = TypeVar("T")


class HarnessError(RuntimeError):
    """A harness step failed; the message says which and carries the relevant log tail."""


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


# -- dying with the parent -----------------------------------------------------------------------
def with_pdeathsig(argv: Sequence[str]) -> list[str]:
    """``argv`` run through ``setpriv --pdeathsig KILL``: the kernel SIGKILLs it when the
    thread that forked it goes away.

    Why not a ``preexec_fn`` calling ``prctl``: a ``preexec_fn`` makes CPython fork (not vfork)
    and run the interpreter's at-fork handlers in the child, and grpcio's handler crashes that
    child with SIGSEGV while a ``grpc.aio`` channel is busy in the test process (the containerd
    store tests). ``setpriv`` (util-linux) sets the same ``PR_SET_PDEATHSIG`` from C and execs
    the command, so the pid is still the command's own and nothing of Python runs between fork
    and exec. The setting survives ``execve`` of non-setuid programs, which ``ip``,
    containerd, docker-registry, ctr and python are.
    """
    return ["setpriv", "--pdeathsig", "KILL", "--", *argv]


def run_command(
    argv: Sequence[str], *, timeout: float, check: bool = False, env: Mapping[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """``subprocess.run`` (output captured as text) for short-lived commands, dying with us.

    A ``ctr pull`` waiting on a silent socket would otherwise outlive a SIGKILLed harness.
    The calling thread waits for the command, so the forking thread outlives it.
    """
    return subprocess.run(
        with_pdeathsig(argv),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=check,
        env=None if env is None else {**os.environ, **env},
    )


class _Spawner:
    """One thread that forks every process of a group and lives until the group is stopped.

    ``PR_SET_PDEATHSIG`` fires when the thread that forked the child exits, not the process.
    Nodes are started from short-lived threads (``cluster.parallel``); a daemon forked there
    would be killed the moment that thread finished. Forking on this thread instead ties the
    children to a thread that ends only in :meth:`close` (after the group stopped them all) or
    with the whole process. It is a daemon thread so that at interpreter exit it is still
    there while ``atexit`` stops the children gently.
    """

    def __init__(self, name: str) -> None:
        self._lock = threading.Lock()
        self._jobs: list[tuple[Callable[[], object], Future[object]] | None] = []
        self._wakeup = threading.Condition(self._lock)
        self._thread = threading.Thread(target=self._serve, name=name, daemon=True)
        self._thread.start()

    def call(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` on the spawner thread and return its result (or raise its exception)."""
        if threading.current_thread() is self._thread:
            return fn()
        future: Future[object] = Future()
        with self._wakeup:
            self._jobs.append((fn, future))
            self._wakeup.notify()
        return future.result()  # type: ignore[return-value]  # the job is fn itself

    def close(self) -> None:
        with self._wakeup:
            self._jobs.append(None)
            self._wakeup.notify()
        self._thread.join()

    def _serve(self) -> None:
        while True:
            with self._wakeup:
                self._wakeup.wait_for(lambda: bool(self._jobs))
                job = self._jobs.pop(0)
            if job is None:
                return
            fn, future = job
            try:
                future.set_result(fn())
            except BaseException as exc:  # handed to the caller's thread by Future.result
                future.set_exception(exc)


# -- the pid-file registry -----------------------------------------------------------------------
def start_time(pid: int) -> int | None:
    """Start time of ``pid`` in clock ticks since boot (``/proc/PID/stat`` field 22), or None.

    Fixed at fork and unchanged by exec, so (pid, start time) names one process for good: a
    reused pid has a later start time.
    """
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return None
    return int(fields[19])  # fields[0] is field 3 (state)


def default_pid_dir() -> Path:
    """``<repo>/.work/harness-pids`` (git-ignored)."""
    return Path(__file__).resolve().parents[2] / ".work" / "harness-pids"


@dataclass(frozen=True)
class ProcessRecord:
    """One daemon as recorded on disk: which process, which command, started by whom."""

    pid: int
    start: int
    argv: list[str]
    owner: int
    owner_start: int

    def owner_alive(self) -> bool:
        return start_time(self.owner) == self.owner_start

    def same_process(self) -> bool:
        return pid_alive(self.pid) and start_time(self.pid) == self.start


class PidRegistry:
    """A directory of pid files: one JSON file per running daemon, removed when it is stopped.

    :meth:`sweep` (at the start of a test session) kills what a SIGKILLed harness left behind
    should ``PR_SET_PDEATHSIG`` not have (a setuid program in between, a kernel without it):
    only processes whose recorded owner is gone (other sessions run in the same tree at the
    same time) and only if the pid still has the recorded start time (never a reused pid).
    """

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._paths: dict[int, Path] = {}

    def record(self, pid: int, argv: Sequence[str]) -> None:
        start, owner_start = start_time(pid), start_time(os.getpid())
        if start is None or owner_start is None:  # already gone (and reaped): nothing to sweep
            return
        rec = ProcessRecord(pid, start, list(argv), os.getpid(), owner_start)
        self.directory.mkdir(parents=True, exist_ok=True)
        path = self.directory / f"{pid}-{start}.json"
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(dataclasses.asdict(rec)))
        tmp.rename(path)  # a sweep never reads half a record
        self._paths[pid] = path

    def forget(self, pid: int) -> None:
        path = self._paths.pop(pid, None)
        if path is not None:
            path.unlink(missing_ok=True)

    def records(self) -> list[ProcessRecord]:
        out = []
        for path in sorted(self.directory.glob("*.json")):
            try:
                out.append(ProcessRecord(**json.loads(path.read_text())))
            except (OSError, ValueError, TypeError):  # unreadable: not ours to judge
                continue
        return out

    def sweep(self, *, timeout: float = DEFAULT_STOP_TIMEOUT) -> list[ProcessRecord]:
        """Kill the recorded processes of dead owners; return those that were killed.

        Records of live owners are left alone; records of processes that are gone (or whose
        pid now names another process) are deleted.
        """
        killed = []
        for rec in self.records():
            if rec.owner_alive():
                continue
            if _kill_exact(rec.pid, rec.start, timeout):
                killed.append(rec)
            (self.directory / f"{rec.pid}-{rec.start}.json").unlink(missing_ok=True)
        return killed


def _kill_exact(pid: int, start: int, timeout: float) -> bool:
    """SIGTERM, then SIGKILL, the process ``pid`` only if it started at ``start``.

    A pidfd pins the process: once the start time is checked through it, a signal cannot reach
    a process that took the pid over in between. Exit is awaited by polling the pidfd (it turns
    readable when the process exits), with a deadline.
    """
    try:
        fd = os.pidfd_open(pid)
    except (ProcessLookupError, OSError):
        return False
    try:
        if start_time(pid) != start or not pid_alive(pid):
            return False
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                signal.pidfd_send_signal(fd, sig)
            except ProcessLookupError:
                return True
            poller = select.poll()
            poller.register(fd, select.POLLIN)
            if poller.poll(int(timeout * 1000)):
                return True
        return True
    finally:
        os.close(fd)


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

    def __init__(
        self, *, stop_timeout: float = DEFAULT_STOP_TIMEOUT, pid_registry: PidRegistry | None = None
    ) -> None:
        self._stop_timeout = stop_timeout
        self._registry = pid_registry if pid_registry is not None else PidRegistry(default_pid_dir())
        self._spawner: _Spawner | None = None
        self._spawner_lock = threading.Lock()  # nodes start in parallel threads: one spawner
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
        ``ip netns exec`` execs the command, so the recorded pid is the command's own. It is
        forked on the group's spawner thread with ``PR_SET_PDEATHSIG`` and recorded in the pid
        registry (module docstring), whichever thread calls this.
        """
        if name in self._procs and self._procs[name].running():
            raise HarnessError(f"process {name!r} is already running (pid {self._procs[name].pid})")
        full = [*(["ip", "netns", "exec", netns] if netns else []), *argv]
        log_path.parent.mkdir(parents=True, exist_ok=True)
        merged_env = {**os.environ, **(env or {})}

        def spawn() -> subprocess.Popen[bytes]:
            with log_path.open("ab") as log:
                log.write(f"\n=== start {name}: {' '.join(full)}\n".encode())
                log.flush()
                popen = subprocess.Popen(
                    with_pdeathsig(full),
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    env=merged_env,
                    cwd=cwd,
                    start_new_session=True,
                )
            self._registry.record(popen.pid, full)
            return popen

        with self._spawner_lock:
            if self._spawner is None:
                self._spawner = _Spawner(f"harness-spawner-{id(self):x}")
            spawner = self._spawner
        popen = spawner.call(spawn)
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
        status = _terminate(managed.popen, self._stop_timeout if timeout is None else timeout)
        self._registry.forget(managed.pid)
        return status

    def stop_all(self) -> None:
        """Stop every registered process, newest first (clients before the daemons they use),
        then the spawner thread (a later :meth:`start` makes a new one)."""
        for name in reversed(list(self._procs)):
            self.stop(name)
        with self._spawner_lock:
            spawner = self._spawner if not self._procs else None
            if spawner is not None:
                self._spawner = None
        if spawner is not None:
            spawner.close()

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
