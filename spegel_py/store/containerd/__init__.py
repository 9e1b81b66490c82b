"""The containerd content store: images, content and events of one containerd namespace over gRPC.

``grpc`` is imported only inside this package (.importlinter); the generated stubs live
in the private :mod:`._api` (``scripts/gen_protos.sh``).
"""

from spegel_py.store.containerd.client import ContainerdStore

__all__ = ["ContainerdStore"]
