"""Experiments: spegel-py with proposed changes patched in, to measure them before they land."""
