"""Measure the advertiser's own cost (not collected by pytest; run it directly).

    .venv/bin/python tests/routing/bench_advertiser.py [IMAGES] [LAYERS]

A MemoryStore holds IMAGES images of LAYERS small layers each (distinct content); a MemoryRouter
receives the keys, so the numbers are the advertiser's work: listing, walking (stat + manifest
reads), set differences. Prints wall and CPU time of the initial sync, of one new image among
them, and of a batch of created content alone (a pull in progress).
"""

from __future__ import annotations

import asyncio
import json
import sys
import time

from spegel_py.oci.digest import Digest
from spegel_py.routing.advertiser import Advertiser
from spegel_py.routing.memory import MemoryNetwork, MemoryRouter
from spegel_py.store.memory import MemoryStore

MANIFEST = "application/vnd.oci.image.manifest.v1+json"


def add_image(store: MemoryStore, i: int, layers: int) -> int:
    descs = []
    for j in range(layers):
        d = store.add_blob(f"layer {i} {j}".encode())
        descs.append(
            {
                "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                "digest": str(d.digest),
                "size": d.size,
            }
        )
    cfg = store.add_blob(json.dumps({"architecture": "amd64", "os": "linux", "n": i}).encode())
    manifest = {
        "schemaVersion": 2,
        "mediaType": MANIFEST,
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": str(cfg.digest),
            "size": cfg.size,
        },
        "layers": descs,
    }
    root = store.add_blob(json.dumps(manifest).encode(), MANIFEST)
    store.tag(f"example.com/bench/image{i}:v1", root.digest)
    return layers + 3  # layers, config, manifest, tag


async def until(advertiser: Advertiser, batches: int) -> None:
    while advertiser.batches < batches:  # noqa: ASYNC110  # polling a counter; 1 ms is noise here
        await asyncio.sleep(0.001)


async def main(images: int, layers: int) -> None:
    store = MemoryStore()
    keys = sum(add_image(store, i, layers) for i in range(images))
    network = MemoryNetwork()
    router = MemoryRouter(network, peer_id="a")
    advertiser = Advertiser(store, router, debounce=0.0, content_debounce=0.0)
    wall, cpu = time.perf_counter(), time.process_time()
    task = asyncio.create_task(advertiser.run())
    await until(advertiser, 1)
    assert len(advertiser.advertised()) == keys
    print(
        f"initial sync: {images} images, {keys} keys: {time.perf_counter() - wall:.3f} s wall, "
        f"{(time.process_time() - cpu) * 1e6 / keys:.1f} us CPU per key"
    )

    wall, cpu = time.perf_counter(), time.process_time()
    add_image(store, images, layers)
    await until(advertiser, 2)
    print(
        f"one new image among {images}: {(time.perf_counter() - wall) * 1e3:.2f} ms wall, "
        f"{(time.process_time() - cpu) * 1e3:.2f} ms CPU"
    )

    wall, cpu = time.perf_counter(), time.process_time()
    store.add_blob(b"a blob of a pull in progress")
    await until(advertiser, 3)
    print(
        f"batch of created content alone ({images + 1} images listed): "
        f"{(time.perf_counter() - wall) * 1e3:.1f} ms wall, "
        f"{(time.process_time() - cpu) * 1e3:.1f} ms CPU"
    )
    assert Digest.of(b"a blob of a pull in progress")
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    await router.close()


if __name__ == "__main__":
    args = [int(a) for a in sys.argv[1:3]]
    asyncio.run(main(*args) if args else main(1000, 5))
