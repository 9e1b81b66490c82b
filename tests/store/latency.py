"""Measure ContainerdStore call latency against a running containerd (a measurement, not a test).

    .venv/bin/python tests/store/latency.py SOCKET CONTENT_PATH IMAGE_REF [--namespace k8s.io] [-n 100]

Prints p50/p99/min per call (list_images, stat, resolve, open+close, a full walk of IMAGE_REF)
and the wall time of 1,000 concurrent stats on one channel.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from collections.abc import Awaitable, Callable

from spegel_py.oci.reference import Reference
from spegel_py.store.containerd import ContainerdStore
from spegel_py.store.walk import image_content


async def timed(call: Callable[[], Awaitable[object]], n: int) -> list[float]:
    out = []
    for _ in range(n):
        start = time.perf_counter()
        await call()
        out.append((time.perf_counter() - start) * 1000)
    return sorted(out)


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("socket")
    ap.add_argument("content_path")
    ap.add_argument("image")
    ap.add_argument("--namespace", default="k8s.io")
    ap.add_argument("-n", type=int, default=100)
    args = ap.parse_args()
    store = ContainerdStore(args.socket, args.namespace, args.content_path)
    ref = Reference.parse(args.image)
    try:
        images = await store.list_images()
        root = await store.resolve(ref)

        async def open_close() -> None:
            await (await store.open(root)).aclose()

        calls: list[tuple[str, Callable[[], Awaitable[object]]]] = [
            (f"list_images ({len(images)} images)", store.list_images),
            ("stat", lambda: store.stat(root)),
            ("resolve", lambda: store.resolve(ref)),
            ("open+close", open_close),
            (f"walk ({len(await image_content(store, root))} blobs)", lambda: image_content(store, root)),
        ]
        for name, call in calls:
            ms = await timed(call, args.n)
            p99 = ms[min(len(ms) - 1, int(0.99 * len(ms)))]
            print(f"{name:28s} p50 {statistics.median(ms):7.3f} ms  p99 {p99:7.3f} ms  min {ms[0]:7.3f} ms")
        start = time.perf_counter()
        await asyncio.gather(*(store.stat(root) for _ in range(1000)))
        print(f"1000 concurrent stats        {(time.perf_counter() - start) * 1000:7.0f} ms")
    finally:
        await store.close()


if __name__ == "__main__":
    asyncio.run(main())
