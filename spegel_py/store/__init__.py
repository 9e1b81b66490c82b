"""Content stores: where the bytes a node serves come from (containerd, an OCI layout, memory)."""
