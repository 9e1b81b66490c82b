"""The shared test machinery can fail: the leak checks, the spawn guard and the poll helper.

A check that never fails proves nothing, so each is shown catching a deliberate fault: directly
(the functions of ``support.leaks`` and ``support.poll``) and through ``tests/conftest.py`` (a
pytest run in this process, with that conftest, of tests that leak or spawn on purpose).
"""

from __future__ import annotations

import ast
import asyncio
import os
import threading
from pathlib import Path

import pytest
from support import leaks
from support.poll import ConditionTimeout, eventually, wait_until

pytest_plugins = ["pytester"]

CONFTEST = Path(__file__).with_name("conftest.py")


def test_a_thread_left_running_is_reported() -> None:
    before = leaks.baseline()
    release = threading.Event()
    thread = threading.Thread(target=release.wait, name="deliberately-leaked", daemon=True)
    thread.start()
    try:
        problem = leaks.check_threads_and_fds(before, grace=0.05)
    finally:
        release.set()
        thread.join()
    assert problem is not None and "deliberately-leaked" in problem and "daemon=True" in problem
    assert leaks.check_threads_and_fds(before, grace=0.05) is None


def test_an_fd_left_open_is_reported() -> None:
    before = leaks.baseline()
    read_end, write_end = os.pipe()
    try:
        problem = leaks.check_threads_and_fds(before, grace=0.05)
    finally:
        os.close(read_end)
        os.close(write_end)
    assert problem is not None and f"{read_end} -> pipe:" in problem and f"{write_end} -> pipe:" in problem
    assert leaks.check_threads_and_fds(before, grace=0.05) is None


async def test_a_pending_task_is_reported() -> None:
    before = asyncio.all_tasks()
    task = asyncio.create_task(asyncio.Event().wait(), name="deliberately-pending")
    try:
        problem = await leaks.check_tasks(before, grace=0.05)
    finally:
        task.cancel()
    assert problem is not None and "deliberately-pending" in problem
    assert await leaks.check_tasks(before, grace=0.05) is None  # the cancelled task finished


async def test_eventually_fails_at_its_deadline_naming_the_condition() -> None:
    with pytest.raises(ConditionTimeout, match=r"within 0\.05s: never true"):
        await eventually(lambda: False, within=0.05, what="never true")
    assert await eventually(lambda: 7, within=0.05) == 7


def test_wait_until_fails_at_its_deadline_with_the_last_error_and_a_diagnosis() -> None:
    def refuses() -> bool:
        raise ConnectionRefusedError("not up")

    with pytest.raises(ConditionTimeout, match=r"(?s)refuses.*not up.*log tail"):
        wait_until(refuses, within=0.05, interval=0.01, diagnose=lambda: "log tail")
    assert wait_until(lambda: "ok", within=0.05) == "ok"


LEAKY_TESTS = '''
import asyncio, os, subprocess, threading

def test_leaks_a_thread():
    hold = int(os.environ["HOLD_FD"])  # the outer test writes to it once this run is over
    threading.Thread(target=os.read, args=(hold, 1), name="leaked-by-inner-test", daemon=True).start()

def test_leaks_an_fd():
    with open(os.environ["LEAKED_FDS"], "w") as record:
        record.write(" ".join(map(str, os.pipe())))

async def test_leaks_a_task():
    asyncio.create_task(asyncio.Event().wait(), name="leaked-by-inner-test")

def test_spawns_without_a_mark():
    subprocess.run(["true"], check=False)
'''


def test_the_conftest_fails_tests_that_leak_or_spawn_unmarked(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    pytester.makeconftest(CONFTEST.read_text())
    pytester.makepyprojecttoml(
        '[tool.pytest.ini_options]\nasyncio_mode = "auto"\nasyncio_default_fixture_loop_scope = "function"\n'
    )
    pytester.makepyfile(test_leaky=LEAKY_TESTS)
    monkeypatch.setattr(leaks, "GRACE", 0.05)  # the inner session shares this module
    leaked_fds = tmp_path / "leaked-fds"
    monkeypatch.setenv("LEAKED_FDS", str(leaked_fds))
    hold, release = os.pipe()
    monkeypatch.setenv("HOLD_FD", str(hold))
    try:
        result = pytester.runpytest_inprocess("-p", "no:cacheprovider")
    finally:
        os.write(release, b"x")
        for thread in threading.enumerate():
            if thread.name == "leaked-by-inner-test":
                thread.join()
        for fd in [hold, release, *map(int, leaked_fds.read_text().split() if leaked_fds.exists() else [])]:
            os.close(fd)
    result.assert_outcomes(passed=3, failed=1, errors=3)
    result.stdout.re_match_lines(
        [
            r".*ERROR at teardown of test_leaks_a_thread.*",
            r".*ERROR at teardown of test_leaks_an_fd.*",
            r".*ERROR at teardown of test_leaks_a_task.*",
        ],
        consecutive=False,
    )
    output = result.stdout.str()
    assert "left behind threads 'leaked-by-inner-test'" in output
    assert "-> pipe:" in output
    assert "left behind pending tasks" in output and "leaked-by-inner-test" in output
    assert "test_spawns_without_a_mark started a process (subprocess.Popen) but is not marked" in output




def test_no_test_module_imports_a_test_module_or_a_conftest() -> None:
    """Shared helpers live in non-test modules (tests/support/, ``<pkg>support.py``), so a test
    module can be moved, renamed or deleted without breaking another one."""
    tests = Path(__file__).parent
    offending = []
    for path in sorted(tests.rglob("*.py")):
        if "node_modules" in path.parts:
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            elif isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            else:
                continue
            for name in names:
                first, last = name.split(".")[0], name.rsplit(".", 1)[-1]
                ours = (tests / first).is_dir() or any(
                    (where / f"{first}.py").exists() for where in (tests, path.parent)
                )
                borrowed = ours and (last.startswith("test_") or last == "conftest")
                if borrowed:
                    offending.append(f"{path.relative_to(tests)} imports {name}")
    assert not offending, offending
