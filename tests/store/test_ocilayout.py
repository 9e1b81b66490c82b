"""OciLayoutStore specifics: naming rules, layout discovery, hostile files, polling for changes."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import subprocess
from collections.abc import AsyncGenerator, Callable
from contextlib import aclosing
from pathlib import Path

import pytest
from conformance.store_images import multi_arch_image, small_image, write_layout
from harness.require import require

from spegel_py.errors import ContentNotFoundError
from spegel_py.oci.digest import Digest
from spegel_py.oci.reference import Reference
from spegel_py.store.base import Event, EventKind
from spegel_py.store.ocilayout import OciLayoutStore, image_reference
from spegel_py.store.walk import image_content

DEADLINE = 10.0


@pytest.mark.parametrize(
    ("annotation", "expected"),
    [
        ("v1", "reg.example:5000/team/app:v1"),  # a bare tag, as `skopeo copy oci:DIR:v1` writes
        ("example.com/lib/x:2", "example.com/lib/x:2"),  # a full reference is kept
        ("localhost/x:2", "localhost/x:2"),
        ("127.0.0.1:5000/x/y:z", "127.0.0.1:5000/x/y:z"),
        ("library/nginx:1.25", "reg.example:5000/library/nginx:1.25"),  # repo:tag gets the registry
        ("example.com/lib/x@sha256:" + "a" * 64, "example.com/lib/x@sha256:" + "a" * 64),
        ("Not A Tag", None),
        ("../../etc:passwd", None),
        ("", None),
    ],
)
def test_image_reference(annotation: str, expected: str | None) -> None:
    ref = image_reference(annotation, registry="reg.example:5000", repository="team/app")
    assert (str(ref) if ref else None) == expected


def test_bare_tag_without_a_usable_repository_is_skipped() -> None:
    assert image_reference("v1", registry="localhost", repository=None) is None
    assert str(image_reference("a.io/b:c", registry="localhost", repository=None)) == "a.io/b:c"


async def test_root_that_is_a_layout(tmp_path: Path) -> None:
    image = small_image()
    root = tmp_path / "My-Images"
    write_layout(root, [image], ref_names="tag")
    named = OciLayoutStore(root, registry="example.com", repository="test/small")
    [listed] = await named.list_images()
    assert (listed.name, listed.digest) == ("example.com/test/small:v1", image.root)
    assert await named.resolve(Reference.parse("example.com/test/small:v1")) == image.root
    default = OciLayoutStore(root)  # repository: the directory's name, lower-cased
    assert [i.name for i in await default.list_images()] == ["localhost/my-images:v1"]


async def test_tree_of_layouts_named_by_path(tmp_path: Path) -> None:
    small, multi = small_image(), multi_arch_image()
    write_layout(tmp_path / "test" / "small", [small], ref_names="tag")
    write_layout(tmp_path / "multi", [multi], ref_names="full")
    write_layout(tmp_path / "Bad Name", [small_image(seed=5)], ref_names="tag")  # no valid default name
    (tmp_path / "loose-file").write_text("not a layout")
    store = OciLayoutStore(tmp_path, registry="reg.local:5000")
    names = sorted(i.name for i in await store.list_images())
    assert names == ["example.com/test/multi:v1", "reg.local:5000/test/small:v1"]
    for digest in small.present | multi.present:
        assert (await store.stat(digest)).size > 0


async def test_malformed_index_is_ignored(tmp_path: Path) -> None:
    write_layout(tmp_path / "good", [small_image()])
    for i, text in enumerate(["{", "[]", '{"manifests": 3}', '{"manifests": [{"digest": "nope"}, 1]}']):
        broken = tmp_path / f"broken{i}"
        broken.mkdir()
        (broken / "oci-layout").write_text("{}")
        (broken / "index.json").write_text(text)
    assert [i.name for i in await OciLayoutStore(tmp_path).list_images()] == [small_image().name]


@pytest.mark.parametrize("kind", ["symlink", "directory", "fifo"])
async def test_only_regular_blob_files_are_content(tmp_path: Path, kind: str) -> None:
    layout = tmp_path / "l"
    write_layout(layout, [small_image()])
    secret = tmp_path / "secret"
    secret.write_bytes(b"outside the blobs directory")
    digest = Digest.of(secret.read_bytes())
    target = layout / "blobs" / "sha256" / digest.hex
    {
        "symlink": lambda: target.symlink_to(secret),
        "directory": target.mkdir,
        "fifo": lambda: os.mkfifo(target),
    }[kind]()
    store = OciLayoutStore(tmp_path)
    with pytest.raises(ContentNotFoundError):
        await store.stat(digest)
    with pytest.raises(ContentNotFoundError):
        await store.open(digest)


async def test_presence_is_checked_on_every_call(tmp_path: Path) -> None:
    image = small_image()
    write_layout(tmp_path / "l", [image])
    store = OciLayoutStore(tmp_path)
    layer = image.layers[0]
    assert (await store.stat(layer)).size == len(image.blobs[layer])
    (tmp_path / "l" / "blobs" / "sha256" / layer.hex).unlink()
    with pytest.raises(ContentNotFoundError):
        await store.stat(layer)


async def next_event(events: AsyncGenerator[Event, None], wanted: Callable[[Event], bool]) -> Event:
    async with asyncio.timeout(DEADLINE):
        async for event in events:
            if wanted(event):
                return event
    raise AssertionError("subscription ended")


async def test_poller_reports_a_moved_tag_and_new_layouts(tmp_path: Path) -> None:
    first, second = small_image(seed=1), small_image(seed=2)  # same name, different content
    write_layout(tmp_path / "a", [first])
    store = OciLayoutStore(tmp_path, poll_interval=0.01)  # clamped to the 50 ms minimum
    async with aclosing(store.subscribe()) as events:
        assert (await next_event(events, lambda e: True)).kind is EventKind.RESYNC
        write_layout(tmp_path / "a", [second])  # the tag moves
        assert await next_event(events, lambda e: True) == Event(EventKind.IMAGE_UPDATE, first.name)
        assert await store.resolve(first.reference) == second.root
        write_layout(tmp_path / "b", [multi_arch_image()])
        assert await next_event(events, lambda e: True) == Event(
            EventKind.IMAGE_CREATE, multi_arch_image().name
        )
        (tmp_path / "b" / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": []}))
        assert await next_event(events, lambda e: True) == Event(
            EventKind.IMAGE_DELETE, multi_arch_image().name
        )
        await store.close()
        async with asyncio.timeout(DEADLINE):
            assert [e async for e in events] == []


@pytest.mark.integration
@pytest.mark.parametrize("image_kind", ["small", "multi"])
async def test_layouts_written_by_skopeo(tmp_path: Path, image_kind: str) -> None:
    """What ``skopeo copy ... oci:DIR:TAG`` really writes is served: names, blobs, the whole graph."""
    skopeo = require("skopeo")
    partial = small_image() if image_kind == "small" else multi_arch_image()
    image = dataclasses.replace(partial, present=set(partial.blobs))  # `copy --all` needs every platform
    source = tmp_path / "source"
    write_layout(source, [image], ref_names="tag")
    target = tmp_path / "served" / "team" / image_kind
    target.parent.mkdir(parents=True)  # skopeo creates the layout directory, not its parents
    for tag in ("v1", "latest"):
        argv = [skopeo, "copy", "--quiet", "--all", f"oci:{source}:v1", f"oci:{target}:{tag}"]
        await asyncio.to_thread(subprocess.run, argv, check=True, capture_output=True, timeout=120)
    store = OciLayoutStore(tmp_path / "served", registry="127.0.0.1:5000")
    names = sorted(i.name for i in await store.list_images())
    assert names == [f"127.0.0.1:5000/team/{image_kind}:latest", f"127.0.0.1:5000/team/{image_kind}:v1"]
    root = await store.resolve(Reference.parse(names[0]))
    assert root == image.root  # skopeo keeps the bytes (and so the digests) of an OCI source
    assert {d.digest for d in await image_content(store, root)} == image.present


async def test_reused_layout_list_never_means_cached_existence(tmp_path: Path) -> None:
    small, multi = small_image(), multi_arch_image()
    write_layout(tmp_path / "a", [small])
    store = OciLayoutStore(tmp_path, rescan_interval=3600)  # the list of layouts is reused...
    assert (await store.stat(small.root)).size > 0
    for path in (tmp_path / "a" / "blobs" / "sha256").iterdir():
        path.unlink()
    with pytest.raises(ContentNotFoundError):  # ...but every blob is looked up afresh
        await store.stat(small.root)
    write_layout(tmp_path / "b", [multi])
    assert sorted(i.name for i in await store.list_images()) == [multi.name, small.name]  # always rescans
    assert (await store.stat(multi.root)).size > 0  # and refreshes the reused list


async def test_without_reuse_a_new_layout_is_found_at_once(tmp_path: Path) -> None:
    small = small_image()
    store = OciLayoutStore(tmp_path, rescan_interval=0)
    with pytest.raises(ContentNotFoundError):
        await store.stat(small.root)
    write_layout(tmp_path / "a", [small])
    assert (await store.stat(small.root)).size == len(small.blobs[small.root])
