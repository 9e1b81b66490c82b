"""spegel-py: a node-local, peer-to-peer OCI image mirror, wire-compatible with Spegel."""

__version__ = "0.1.0"
