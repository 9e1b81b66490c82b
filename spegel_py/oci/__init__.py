"""OCI vocabulary: digests, references, distribution paths, error codes and media types.

Pure functions and value types only: no I/O, so every other layer can depend on it.
"""
