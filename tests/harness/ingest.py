"""A write in progress in a containerd node, fed at the test's own pace.

A real pull writes each blob as a containerd ingest, at the speed of its upstream; a test that
needs a blob "half pulled" for as long as it likes uses ``ctr content ingest`` instead, which
creates the same kind of ingest (a ``layer-<digest>`` ref, ``ingest/<dir>/data``, renamed to the
blob on commit) and takes its bytes from stdin. ctr forwards stdin to containerd in 1 MiB
pieces, so the ingest's offset lags what was written by up to 1 MiB until the next piece or EOF.
"""

from __future__ import annotations

import subprocess
from typing import IO

import grpc
from support.poll import wait_until

from spegel_py.store.containerd._api.services.content.v1 import content_pb2, content_pb2_grpc
from spegel_py.store.containerd._api.services.images.v1 import images_pb2, images_pb2_grpc
from spegel_py.store.containerd._api.types import descriptor_pb2

from .containerd import ContainerdNode
from .procs import HarnessError

PIECE = 1 << 20  # bytes ctr reads from stdin before it sends them on


class CtrIngest:
    """``ctr content ingest`` of ``digest`` (``total`` bytes) into ``node``; started by pid here."""

    def __init__(self, node: ContainerdNode, digest: str, total: int, *, protect: bool = False) -> None:
        """``protect``: name the blob in an image first, so containerd's garbage collector keeps it
        once committed (a pull holds a lease for that; ``ctr content ingest`` holds none, and a
        node started a moment ago runs its first collection about then)."""
        self.node = node
        self.ref = f"layer-{digest}"
        if protect:
            self._protect(digest, total)
        argv = ["ctr", "-a", str(node.socket), "-n", node.namespace, "content", "ingest",
                "--expected-size", str(total), "--expected-digest", digest, self.ref]  # fmt: skip
        pipe = subprocess.PIPE
        self.proc = subprocess.Popen(argv, stdin=pipe, stdout=subprocess.DEVNULL, stderr=pipe)

    @property
    def _stdin(self) -> IO[bytes]:
        assert self.proc.stdin is not None
        return self.proc.stdin

    def write(self, data: bytes) -> None:
        self._stdin.write(data)
        self._stdin.flush()

    def commit(self, *, timeout: float = 30.0) -> None:
        """End of input: ctr commits (containerd checks size and digest); raise if that failed."""
        self._stdin.close()
        if self.proc.wait(timeout=timeout) != 0:
            stderr = self.proc.stderr.read().decode() if self.proc.stderr else ""
            raise HarnessError(f"ctr content ingest {self.ref} failed: {stderr[-2000:]}")

    def abandon(self) -> None:
        """Kill the writer (as a pull whose process died): the ingest stays, and stops growing."""
        self.proc.kill()
        self.proc.wait(timeout=10)

    def _protect(self, digest: str, total: int) -> None:
        target = descriptor_pb2.Descriptor(media_type="application/octet-stream", digest=digest, size=total)
        name = f"ingest.test/protect/{digest.partition(':')[2][:12]}:v1"
        image = images_pb2.Image(name=name, target=target)
        with grpc.insecure_channel(f"unix://{self.node.socket}") as channel:
            metadata = (("containerd-namespace", self.node.namespace),)
            images_pb2_grpc.ImagesStub(channel).Create(
                images_pb2.CreateImageRequest(image=image), metadata=metadata, timeout=10
            )

    def abort(self) -> None:
        """Abandon, then delete the ingest through the content service (as a cancelled pull)."""
        self.abandon()
        with grpc.insecure_channel(f"unix://{self.node.socket}") as channel:
            stub = content_pb2_grpc.ContentStub(channel)
            metadata = (("containerd-namespace", self.node.namespace),)

            def aborted() -> bool:
                # Right after the writer died, containerd may still be closing its side of the
                # write; the abort then fails ("directory not empty") and is asked again.
                try:
                    stub.Abort(content_pb2.AbortRequest(ref=self.ref), metadata=metadata, timeout=10)
                except grpc.RpcError as exc:
                    if exc.code() is grpc.StatusCode.NOT_FOUND:  # type: ignore[attr-defined]  # a Call
                        return True
                    return False
                return True

            wait_until(aborted, within=10, what=f"containerd to abort {self.ref}")

    def close(self) -> None:
        """Stop the writer if it still runs (teardown)."""
        if self.proc.poll() is None:
            self.abandon()
        for stream in (self.proc.stdin, self.proc.stderr):
            if stream is not None:
                stream.close()
