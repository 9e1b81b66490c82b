"""Benchmarks for spegel-py (run from the repository root; see bench/README.md)."""
