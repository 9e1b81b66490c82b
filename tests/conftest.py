"""What every test package shares: the leak check, the spawn guard and the harness fixtures.

Every test fails if it leaves asyncio tasks, threads or file descriptors behind
(``support/leaks.py``), and a test that starts a process must be marked ``process`` or
``integration`` (``support/spawnguard.py``), which keeps ``make test-fast`` free of them.

The fixtures of the local-cluster harness (``tests/harness``): expensive things are
session-scoped and lazy: test images are built (or taken from the on-disk cache) only when a
test asks for them, the big image only by tests that request ``big_image``, and one upstream
registry serves the whole session. Everything a fixture starts is stopped by
pid in its teardown, whatever the test's outcome.

Missing components: :func:`require` skips a test locally but fails it when ``CI=true``, so CI
can never go green by skipping.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest
import pytest_asyncio
from harness import (
    BuiltImage,
    ContainerdNode,
    ImageSet,
    Netns,
    NetnsNetwork,
    ProcessGroup,
    SpegelRegistry,
    UpstreamRegistry,
    cleanup_mounts,
)
from harness.procs import PidRegistry, ProcessRecord, default_pid_dir
from harness.require import require, require_cluster, require_root, require_spegel
from support import leaks, spawnguard

NodeFactory = Callable[..., ContainerdNode]
RegistryFactory = Callable[..., SpegelRegistry]
_SWEPT = pytest.StashKey[list[ProcessRecord]]()


@pytest.hookimpl(tryfirst=True)
def pytest_sessionstart(session: pytest.Session) -> None:
    """Kill the daemons an earlier, SIGKILLed session left behind (``harness.procs``).

    Only records whose owning pytest is dead, only pids that still are the recorded process:
    sessions of other people running in the same tree right now are left alone.
    """
    session.config.stash[_SWEPT] = PidRegistry(default_pid_dir()).sweep()


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--repeat",
        type=int,
        default=1,
        metavar="N",
        help="run every selected test N times in this session (scripts/repeat_e2e.sh)",
    )


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """``--repeat N``: each test N times, ids ``[rep1of20]``...; fixtures are per run as usual."""
    count = int(metafunc.config.getoption("repeat"))
    if count > 1:
        metafunc.fixturenames.append("_repeat_run")
        metafunc.parametrize("_repeat_run", range(1, count + 1), ids=lambda i: f"rep{i}of{count}")


@pytest.fixture
def _repeat_run(request: pytest.FixtureRequest) -> int:
    return int(request.param)


def pytest_report_header(config: pytest.Config) -> list[str]:
    swept = config.stash.get(_SWEPT, [])
    return [f"harness: killed leftover pid {r.pid}: {' '.join(r.argv)[:120]}" for r in swept]


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[pytest.TestReport]:
    """On a failed test, attach the log tails of the processes it started to the report."""
    report: pytest.TestReport = yield  # type: ignore[misc]  # pytest's wrapper protocol
    group = getattr(item, "funcargs", {}).get("processes")
    if report.when == "call" and report.failed and isinstance(group, ProcessGroup) and group.pids:
        report.sections.append(("harness process logs", group.tails()))
    return report


# -- the fast lane: unmarked tests may not start processes (support/spawnguard.py) ---------------
@pytest.hookimpl(wrapper=True)
def pytest_runtest_setup(item: pytest.Item) -> Iterator[None]:
    with spawnguard.guard(item):
        return (yield)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Iterator[None]:
    with spawnguard.guard(item):
        return (yield)


# -- leaks: no test leaves tasks, threads or fds behind (support/leaks.py) ----------------------
_LEAK_BASELINE = pytest.StashKey[leaks.Baseline]()


@pytest.fixture
async def _no_leaked_tasks() -> AsyncIterator[None]:
    before = asyncio.all_tasks()
    yield
    problem = await leaks.check_tasks(before)
    if problem:
        pytest.fail(problem)


@pytest.fixture(autouse=True)
def no_leaks(request: pytest.FixtureRequest) -> None:
    """Fail a test that leaves asyncio tasks, threads or file descriptors behind.

    The baseline is taken here, after the session- and module-scoped fixtures of the test are
    up (pytest sets up wider scopes first). The task check runs on the test's loop after the
    test's other fixtures are torn down and before pytest-asyncio closes that loop (which would
    cancel leftovers silently); threads and fds are checked by :func:`pytest_runtest_teardown`.
    """
    request.node.stash[_LEAK_BASELINE] = leaks.baseline()
    if pytest_asyncio.is_async_test(request.node):
        request.getfixturevalue("_no_leaked_tasks")


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_teardown(item: pytest.Item) -> Iterator[None]:
    """Threads and fds, once the whole teardown is done: every fixture of the test is finalized
    and its loop closed, and the logging plugin has dropped the test's captured records (a
    record's exception can hold a closed grpc channel, and with it grpc's poller thread)."""
    result = yield
    before = item.stash.get(_LEAK_BASELINE, None)
    if before is not None:
        problem = leaks.check_threads_and_fds(before)
        if problem:
            pytest.fail(problem)
    return result


# -- processes ---------------------------------------------------------------------------------
@pytest.fixture
def processes() -> Iterator[ProcessGroup]:
    """Processes of one test, stopped by pid afterwards (also when the test fails)."""
    group = ProcessGroup()
    try:
        yield group
    finally:
        group.stop_all()


@pytest.fixture(scope="session")
def session_processes() -> Iterator[ProcessGroup]:
    group = ProcessGroup()
    try:
        yield group
    finally:
        group.stop_all()


# -- images and upstream -----------------------------------------------------------------------
@pytest.fixture(scope="session")
def test_images() -> ImageSet:
    """Deterministic images (small, multi, big), built on first use and cached on disk."""
    return ImageSet()


@pytest.fixture(scope="session")
def _upstream_session(
    tmp_path_factory: pytest.TempPathFactory, session_processes: ProcessGroup, test_images: ImageSet
) -> UpstreamRegistry:
    for binary in ("docker-registry", "skopeo", "curl"):
        require(binary)
    registry = UpstreamRegistry(tmp_path_factory.mktemp("upstream"), session_processes)
    registry.start()
    registry.push(test_images.small)
    registry.push(test_images.multi)
    return registry


@pytest.fixture
def upstream(_upstream_session: UpstreamRegistry) -> Iterator[UpstreamRegistry]:
    """The session's upstream registry holding test/small:v1 and test/multi:v1, running.

    A test may stop it ("upstream down"); it is running again for the next test.
    """
    if not _upstream_session.running():
        _upstream_session.start()
    yield _upstream_session
    if not _upstream_session.running():
        _upstream_session.start()


@pytest.fixture(scope="session")
def _big_pushed(_upstream_session: UpstreamRegistry, test_images: ImageSet) -> BuiltImage:
    if not _upstream_session.running():
        _upstream_session.start()
    _upstream_session.push(test_images.big)
    return test_images.big


@pytest.fixture
def big_image(_big_pushed: BuiltImage, upstream: UpstreamRegistry) -> BuiltImage:
    """The >= 300 MiB image, built and pushed to ``upstream`` (only for tests that ask)."""
    return _big_pushed


# -- nodes ---------------------------------------------------------------------------------------
@pytest.fixture
def containerd_node(tmp_path: Path, processes: ProcessGroup) -> Iterator[NodeFactory]:
    """Factory: ``containerd_node(index, netns=None)`` -> a started :class:`ContainerdNode`."""
    require_cluster()
    nodes: list[ContainerdNode] = []

    def make(index: int, *, netns: Netns | None = None, ip: str | None = None) -> ContainerdNode:
        node = ContainerdNode(index, tmp_path / f"node{index}", processes, netns=netns, ip=ip)
        nodes.append(node)
        node.start()
        return node

    try:
        yield make
    finally:
        for node in reversed(nodes):
            node.stop()
        for node in nodes:
            cleanup_mounts(node.workdir)


@pytest.fixture
def spegel_registry(tmp_path: Path, processes: ProcessGroup) -> Iterator[RegistryFactory]:
    """Factory: ``spegel_registry(node, **options)`` -> a started, ready :class:`SpegelRegistry`."""
    require_spegel()
    started: list[SpegelRegistry] = []

    def make(node: ContainerdNode | None = None, **options: object) -> SpegelRegistry:
        registry = SpegelRegistry(tmp_path / "spegel", processes, node=node, **options)  # type: ignore[arg-type]
        started.append(registry)
        registry.start()
        return registry

    try:
        yield make
    finally:
        for registry in reversed(started):
            registry.stop()


@pytest.fixture
def netns_network(processes: ProcessGroup) -> Iterator[NetnsNetwork]:
    """A private bridge for namespaces (``.add(octet)``), removed after the test.

    Processes of the test are stopped first: a namespace lives on while a process uses it.
    """
    require("ip")
    require_root("network namespaces")
    network = NetnsNetwork()
    try:
        yield network
    finally:
        processes.stop_all()
        network.destroy()
