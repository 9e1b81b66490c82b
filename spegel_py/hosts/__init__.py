"""containerd mirror configuration: ``certs.d/<registry>/hosts.toml`` written, backed up, restored.

``configuration`` calls :func:`configure_mirrors` (and :func:`check_containerd_config` to tell the
operator whether containerd will read what was written); ``cleanup`` calls :func:`cleanup_mirrors`.
Modules: ``render`` (validated URLs and the document), ``toml`` (writer), ``files`` (crash-safe
filesystem steps), ``configure`` (backup, write, restore), ``containerd_config`` (the check).
"""

from spegel_py.hosts.configure import cleanup_mirrors, configure_mirrors
from spegel_py.hosts.containerd_config import ConfigWarning, Problem, check_containerd_config
from spegel_py.hosts.render import DEFAULT_DIR, MirroredRegistry, RegistryURL

__all__ = [
    "DEFAULT_DIR",
    "ConfigWarning",
    "MirroredRegistry",
    "Problem",
    "RegistryURL",
    "check_containerd_config",
    "cleanup_mirrors",
    "configure_mirrors",
]
