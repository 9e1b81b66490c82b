"""One row's world: an upstream registry with the test images, and a cluster of real nodes.

:func:`lab` starts Debian's docker-registry (the upstream, ``tests/harness/upstream.py``) with
``test/small`` and ``test/multi`` pushed (``test/big`` too if asked), and a
:class:`~harness.cluster.Cluster` of ``size`` nodes (containerd + ``spegel-py registry`` with
the DHT, ``certs.d`` written by ``spegel-py configuration``). Everything runs under one
:class:`~harness.ProcessGroup` and is stopped by pid when the ``with`` block ends, whatever
happened; the working directory (short: containerd's socket paths must fit in ``sun_path``) is
removed unless ``keep``.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from harness import BuiltImage, ImageSet, ProcessGroup, UpstreamRegistry, cleanup_mounts
from harness.cluster import Cluster, ClusterNode

REPO_ROOT = Path(__file__).resolve().parents[2]


@dataclass
class Lab:
    workdir: Path
    processes: ProcessGroup
    upstream: UpstreamRegistry
    images: ImageSet
    cluster: Cluster

    def node(self, index: int) -> ClusterNode:
        return self.cluster.node(index)

    def ref(self, image: BuiltImage) -> str:
        return self.upstream.ref(image)


@contextmanager
def lab(
    *,
    size: int,
    big_layer_mib: int = 0,
    extra_args: Sequence[str] = (),
    before_start: Callable[[Cluster], None] | None = None,
    keep: bool = False,
) -> Iterator[Lab]:
    """A started upstream and cluster; ``big_layer_mib`` > 0 also pushes ``test/big`` with
    layers of that size. ``before_start`` may adjust the nodes (ports, flags) before they start."""
    workdir = Path(tempfile.mkdtemp(prefix="rel-"))
    processes = ProcessGroup()
    try:
        images = ImageSet(big_layer_mib=big_layer_mib or 1)
        upstream = UpstreamRegistry(workdir / "upstream", processes)
        upstream.start()
        upstream.push(images.small)
        upstream.push(images.multi)
        if big_layer_mib:
            upstream.push(images.big)
        cluster = Cluster(workdir, processes, upstream, size=size, extra_args=extra_args)
        if before_start is not None:
            before_start(cluster)
        cluster.start(timeout=120)  # generous: the machine may be shared
        yield Lab(workdir, processes, upstream, images, cluster)
    finally:
        processes.stop_all()
        cleanup_mounts(workdir)
        if not keep:
            shutil.rmtree(workdir, ignore_errors=True)
