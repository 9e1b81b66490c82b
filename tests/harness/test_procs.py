"""The harness leaves no daemon behind, not even when it is SIGKILLed itself.

Real processes throughout: a child Python plays "pytest", starts a daemon through a
:class:`ProcessGroup` from a short-lived thread (as ``cluster.parallel`` does), and is then
SIGKILLed, so no finalizer or atexit handler of it runs.
"""

from __future__ import annotations

import dataclasses
import json
import os
import select
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import pytest
from support.poll import wait_until

from harness.procs import PidRegistry, ProcessGroup, ProcessRecord, pid_alive, start_time

pytestmark = pytest.mark.process  # real child processes throughout

TESTS_DIR = Path(__file__).resolve().parents[1]
IDLE = [sys.executable, "-c", "import signal; signal.pause()"]  # a daemon stand-in: idles until signalled

CHILD = """
import os, sys, threading
from pathlib import Path
from harness.procs import PidRegistry, ProcessGroup
from support.poll import wait_until

workdir = Path(sys.argv[1])
group = ProcessGroup(pid_registry=PidRegistry(workdir / "pids"))
idle = [sys.executable, "-c", "import signal; signal.pause()"]
worker = threading.Thread(target=lambda: group.start("idle", idle, log_path=workdir / "idle.log"))
worker.start()
worker.join()
# until the worker thread is gone in the kernel too: had it forked the daemon, its exit would
# have sent the daemon its PDEATHSIG by now
wait_until(lambda: not os.path.exists(f"/proc/self/task/{worker.native_id}"), within=10, what="worker exit")
print(group.pids["idle"], flush=True)
sys.stdin.read()  # until killed
"""


def sigkill_pending(pid: int) -> bool:
    """SIGKILL queued for ``pid`` but not yet acted on (``SigPnd``/``ShdPnd`` of /proc/PID/status)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            masks = [int(line.split()[1], 16) for line in f if line.startswith(("SigPnd:", "ShdPnd:"))]
    except FileNotFoundError:
        return False
    return any(mask & (1 << (signal.SIGKILL - 1)) for mask in masks)


def read_line(stream: IO[str] | None, timeout: float) -> str:
    assert stream is not None
    ready, _, _ = select.select([stream], [], [], timeout)
    assert ready, f"no line within {timeout}s"
    return stream.readline()


@pytest.fixture
def idle_process() -> Iterator[subprocess.Popen[bytes]]:
    proc = subprocess.Popen(IDLE, start_new_session=True)
    try:
        yield proc
    finally:
        proc.kill()
        proc.wait(10)


def test_a_daemon_dies_with_its_sigkilled_harness(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(TESTS_DIR)}
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(tmp_path)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        env=env,
        text=True,
    )
    daemon = 0
    try:
        daemon = int(read_line(child.stdout, 30))
        # alive although the thread that asked for it is gone: the spawner thread forked it
        assert pid_alive(daemon) and not sigkill_pending(daemon)
        assert [p.name.split("-")[0] for p in (tmp_path / "pids").glob("*.json")] == [str(daemon)]

        child.kill()  # like an outer `timeout -s KILL`: no finalizer, no atexit
        child.wait(10)
        wait_until(lambda: not pid_alive(daemon), within=10, what=f"daemon {daemon} to die with its parent")
    finally:
        child.kill()
        child.wait(10)
        assert child.stdin is not None and child.stdout is not None
        child.stdin.close()
        child.stdout.close()
        PidRegistry(tmp_path / "pids").sweep(timeout=5)  # should the test fail: still no leak


def test_group_records_daemons_and_stops_its_spawner_thread(tmp_path: Path) -> None:
    registry = PidRegistry(tmp_path / "pids")
    group = ProcessGroup(pid_registry=registry)
    try:
        worker = threading.Thread(target=lambda: group.start("idle", IDLE, log_path=tmp_path / "idle.log"))
        worker.start()
        worker.join()
        pid = group.pids["idle"]
        [record] = registry.records()
        assert (record.pid, record.start, record.owner) == (pid, start_time(pid), os.getpid())
        assert record.argv == IDLE
    finally:
        group.stop_all()
    assert not pid_alive(pid)
    assert registry.records() == []
    # this group's spawner only: session fixtures' groups keep theirs until the session ends
    assert f"harness-spawner-{id(group):x}" not in [t.name for t in threading.enumerate()]


@pytest.mark.parametrize(
    ("owner_alive", "same_start", "killed"),
    [
        (False, True, True),  # an orphan we recorded: killed
        (True, True, False),  # another session, still running: not ours to touch
        (False, False, False),  # the pid now names another process: never killed
    ],
    ids=["orphan", "owner-alive", "pid-reused"],
)
def test_sweep_kills_only_the_orphans_it_recorded(
    tmp_path: Path, idle_process: subprocess.Popen[bytes], owner_alive: bool, same_start: bool, killed: bool
) -> None:
    gone = subprocess.Popen(["true"])
    gone.wait(10)  # a pid whose process has exited and been reaped
    me, my_start = os.getpid(), start_time(os.getpid())
    victim_start = start_time(idle_process.pid)
    assert my_start is not None and victim_start is not None
    record = ProcessRecord(
        pid=idle_process.pid,
        start=victim_start if same_start else victim_start - 1,
        argv=IDLE,
        owner=me if owner_alive else gone.pid,
        owner_start=my_start if owner_alive else 1,
    )
    path = tmp_path / f"{record.pid}-{record.start}.json"
    path.write_text(json.dumps(dataclasses.asdict(record)))

    swept = PidRegistry(tmp_path).sweep(timeout=5)

    assert [r.pid for r in swept] == ([idle_process.pid] if killed else [])
    if killed:
        assert idle_process.wait(5) == -signal.SIGTERM
    else:
        assert idle_process.poll() is None
    assert path.exists() == owner_alive  # records of dead owners are always cleared
