"""ContainerdStore against a real containerd 1.6: what the conformance suite cannot express.

A namespace that appears later, a daemon that is killed and restarted, a socket whose owner never
answers, and namespace scoping of content (a blob on disk is not "present" in another namespace).
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Iterator
from contextlib import aclosing
from pathlib import Path

import pytest
from conformance.store_images import small_image, write_archive
from harness import ContainerdNode
from support.poll import eventually

from spegel_py.errors import ContentNotFoundError, ImageNotFoundError, StoreUnavailableError
from spegel_py.oci.digest import Digest
from spegel_py.store.base import Event, EventKind
from spegel_py.store.containerd import ContainerdStore

pytestmark = pytest.mark.integration

DEADLINE = 15.0  # seconds for anything that should take well under one


def ctr(node: ContainerdNode, namespace: str, *args: str) -> None:
    subprocess.run(
        ["ctr", "-a", str(node.socket), "-n", namespace, "--connect-timeout", "5s", *args],
        check=True,
        capture_output=True,
        timeout=60,
    )


def import_small(node: ContainerdNode, namespace: str, workdir: Path) -> str:
    image = small_image()
    archive = workdir / "small.tar"
    write_archive(archive, image)
    ctr(node, namespace, "images", "import", "--no-unpack", str(archive))
    return image.name


@pytest.fixture
def node(containerd_node: Callable[..., ContainerdNode]) -> ContainerdNode:
    return containerd_node(1)


@pytest.fixture
async def store(node: ContainerdNode) -> AsyncIterator[ContainerdStore]:
    made = ContainerdStore(
        str(node.socket), "spegel-test", str(node.content_path), rpc_timeout=2.0, reconnect_max=0.5
    )
    try:
        yield made
    finally:
        await made.close()


async def next_event(events: AsyncGenerator[Event, None], wanted: Callable[[Event], bool]) -> Event:
    async with asyncio.timeout(DEADLINE):
        async for event in events:
            if wanted(event):
                return event
    raise AssertionError("subscription ended")


def answers(probe: Callable[[], Awaitable[object]]) -> Callable[[], Awaitable[bool]]:
    """A check for :func:`eventually`: ``probe()`` no longer raises StoreUnavailableError."""

    async def check() -> bool:
        try:
            await probe()
        except StoreUnavailableError:
            return False
        return True

    return check


async def test_namespace_missing_then_appears(
    node: ContainerdNode, store: ContainerdStore, tmp_path: Path
) -> None:
    image = small_image()
    assert await store.list_images() == []
    with pytest.raises(ContentNotFoundError):
        await store.stat(image.root)
    with pytest.raises(ImageNotFoundError):
        await store.resolve(image.reference)
    async with aclosing(store.subscribe()) as events:
        assert (await next_event(events, lambda e: True)).kind is EventKind.RESYNC
        await asyncio.to_thread(import_small, node, "spegel-test", tmp_path)
        created = await next_event(events, lambda e: e.kind is EventKind.IMAGE_CREATE)
    assert created.key == image.name
    assert [i.name for i in await store.list_images()] == [image.name]
    assert await store.resolve(image.reference) == image.root
    assert (await store.stat(image.root)).size == len(image.blobs[image.root])


async def test_content_is_scoped_to_the_namespace(
    node: ContainerdNode, store: ContainerdStore, tmp_path: Path
) -> None:
    """A blob file on disk that belongs to another namespace is absent for this store."""
    image = small_image()
    await asyncio.to_thread(import_small, node, "elsewhere", tmp_path)
    assert node.has_blob(str(image.root))
    with pytest.raises(ContentNotFoundError):
        await store.stat(image.root)
    with pytest.raises(ContentNotFoundError):
        await store.open(image.root)


async def test_recovers_after_containerd_is_killed_and_restarted(
    node: ContainerdNode, store: ContainerdStore, tmp_path: Path
) -> None:
    await asyncio.to_thread(import_small, node, "spegel-test", tmp_path)
    assert len(await store.list_images()) == 1
    async with aclosing(store.subscribe()) as events:
        assert (await next_event(events, lambda e: True)).kind is EventKind.RESYNC
        os.kill(node.pid, signal.SIGKILL)
        await asyncio.to_thread(node.stop)  # reaps it
        started = time.monotonic()
        with pytest.raises(StoreUnavailableError):
            await store.list_images()
        with pytest.raises(StoreUnavailableError):
            await store.stat(small_image().root)
        assert time.monotonic() - started < 5.0  # fails fast, well within the deadline
        await asyncio.to_thread(node.start)
        await eventually(answers(store.list_images), within=DEADLINE, interval=0.05)
        assert [i.name for i in await store.list_images()] == [small_image().name]
        # the subscription survived: it re-subscribed and says events may have been lost
        resync = await next_event(events, lambda e: True)
        assert resync.kind is EventKind.RESYNC
        await asyncio.to_thread(
            ctr, node, "spegel-test", "images", "tag", small_image().name, "example.com/test/small:again"
        )
        created = await next_event(events, lambda e: e.kind is EventKind.IMAGE_CREATE)
        assert created.key == "example.com/test/small:again"


async def test_containerd_not_running_yet(node: ContainerdNode, tmp_path: Path) -> None:
    await asyncio.to_thread(node.stop)
    store = ContainerdStore(str(node.socket), "spegel-test", str(node.content_path), rpc_timeout=2.0)
    try:
        with pytest.raises(StoreUnavailableError):
            await store.list_images()
        async with aclosing(store.subscribe()) as events:
            await asyncio.to_thread(node.start)
            assert (await next_event(events, lambda e: True)).kind is EventKind.RESYNC
        assert await store.list_images() == []
    finally:
        await store.close()


@pytest.fixture
def silent_server() -> Iterator[tuple[str, socket.socket]]:
    """A unix socket that accepts connections (the kernel's backlog) but never answers."""
    with tempfile.TemporaryDirectory(prefix="sp-") as directory:  # short: sun_path is 108 bytes
        path = os.path.join(directory, "silent.sock")
        server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            server.bind(path)
            server.listen(16)
            server.setblocking(False)
            yield path, server
        finally:
            server.close()


@pytest.fixture
def silent_socket(silent_server: tuple[str, socket.socket]) -> str:
    return silent_server[0]


@pytest.mark.parametrize("call", ["list_images", "resolve", "stat", "open"])
async def test_every_call_has_a_deadline(silent_socket: str, tmp_path: Path, call: str) -> None:
    store = ContainerdStore(silent_socket, "k8s.io", str(tmp_path), rpc_timeout=0.5)
    image = small_image()
    calls = {
        "list_images": store.list_images,
        "resolve": lambda: store.resolve(image.reference),
        "stat": lambda: store.stat(image.root),
        "open": lambda: store.open(image.root),
    }
    started = time.monotonic()
    try:
        with pytest.raises(StoreUnavailableError):
            await calls[call]()
    finally:
        await store.close()
    assert time.monotonic() - started < 3.0


async def test_subscription_to_a_silent_socket_ends_on_close(silent_socket: str, tmp_path: Path) -> None:
    store = ContainerdStore(silent_socket, "k8s.io", str(tmp_path), rpc_timeout=0.3, reconnect_max=0.2)

    async def consume() -> list[Event]:
        async with aclosing(store.subscribe()) as events:
            return [event async for event in events]

    task = asyncio.create_task(consume(), name="silent-subscriber")
    await asyncio.sleep(1.0)  # let it fail and retry a few times: it must neither crash nor yield
    assert not task.done()
    await store.close()
    async with asyncio.timeout(DEADLINE):
        assert await task == []


async def test_closed_store_refuses_calls(node: ContainerdNode) -> None:
    store = ContainerdStore(str(node.socket), "k8s.io", str(node.content_path))
    await store.close()
    await store.close()  # idempotent
    with pytest.raises(StoreUnavailableError):
        await store.stat(Digest.of(b"x"))
    assert [e async for e in store.subscribe()] == []


async def test_names_by_digest_and_image_ids(
    node: ContainerdNode, store: ContainerdStore, tmp_path: Path
) -> None:
    """``repo@sha256:..`` names are images with tag None; CRI-style ``sha256:<id>`` names are not images."""
    image = small_image()
    await asyncio.to_thread(import_small, node, "spegel-test", tmp_path)
    by_digest = f"example.com/test/small@{image.root}"
    await asyncio.to_thread(ctr, node, "spegel-test", "images", "tag", image.name, by_digest)
    await asyncio.to_thread(ctr, node, "spegel-test", "images", "tag", image.name, f"sha256:{'c' * 64}")
    images = {i.name: i for i in await store.list_images()}
    assert set(images) == {image.name, by_digest}
    assert images[by_digest].reference.tag is None
    assert images[by_digest].reference.digest == image.root
    assert images[by_digest].digest == image.root


async def test_wrong_content_path_gives_not_found(node: ContainerdNode, tmp_path: Path) -> None:
    """containerd knows the blob, the configured directory does not hold it: a 404, never a crash."""
    image = small_image()
    await asyncio.to_thread(import_small, node, "spegel-test", tmp_path)
    store = ContainerdStore(str(node.socket), "spegel-test", str(tmp_path / "elsewhere"))
    try:
        assert (await store.stat(image.root)).size == len(image.blobs[image.root])
        with pytest.raises(ContentNotFoundError):
            await store.open(image.root)
    finally:
        await store.close()


async def test_close_during_a_call_is_unavailable_not_cancelled(
    silent_server: tuple[str, socket.socket], tmp_path: Path
) -> None:
    """A request in flight at shutdown gets a store error it can answer with, not a CancelledError."""
    path, server = silent_server
    store = ContainerdStore(path, "k8s.io", str(tmp_path), rpc_timeout=30.0)
    call = asyncio.create_task(store.stat(Digest.of(b"x")), name="stat-in-flight")
    async with asyncio.timeout(DEADLINE):  # grpc has connected: the call waits for an answer
        connection, _ = await asyncio.get_running_loop().sock_accept(server)
    with connection:
        await store.close()
        async with asyncio.timeout(DEADLINE):
            with pytest.raises(StoreUnavailableError):
                await call
