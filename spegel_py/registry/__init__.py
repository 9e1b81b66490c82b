"""The registry: the OCI distribution pull API over the local content store (and, later, peers)."""
