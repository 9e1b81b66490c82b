"""The project's local-cluster harness: upstream registry, containerd nodes, spegel-py, images.

Plain Python (no pytest imports), shared by the pytest fixtures in ``tests/conftest.py`` and by
``scripts/demo.py``. Every process is started through a :class:`ProcessGroup` and stopped by pid.
"""

from .containerd import ContainerdNode, PullResult, cleanup_mounts
from .images import BuiltImage, ImageSet, build_image, default_cache_dir
from .net import free_port, http_status
from .netns import Netns, NetnsNetwork, list_namespaces
from .procs import HarnessError, ProcessGroup, log_tail, pid_alive
from .spegel import SpegelRegistry, spegel_binary
from .upstream import UpstreamRegistry

__all__ = [
    "BuiltImage",
    "ContainerdNode",
    "HarnessError",
    "ImageSet",
    "Netns",
    "NetnsNetwork",
    "ProcessGroup",
    "PullResult",
    "SpegelRegistry",
    "UpstreamRegistry",
    "build_image",
    "cleanup_mounts",
    "default_cache_dir",
    "free_port",
    "http_status",
    "list_namespaces",
    "log_tail",
    "pid_alive",
    "spegel_binary",
]
