"""Parsers of one flag or env var value (Go-style durations, sizes, addresses, choices).

They live apart from :mod:`spegel_py.settings` so that the settings module holds only the
settings themselves; each raises ``ValueError`` with the reason, which the CLI turns into its
one-line error.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence

from spegel_py.errors import ConfigurationError
from spegel_py.routing.base import RECORD_LIFETIME

_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")
_DURATION_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
_SIZE = re.compile(r"(\d+)\s*(|B|K|KB|KiB|M|MB|MiB|G|GB|GiB)", re.IGNORECASE)
_SIZE_UNITS = {"": 1, "b": 1, "k": 1024, "kb": 1000, "kib": 1024, "m": 1 << 20, "mb": 10**6, "mib": 1 << 20,
               "g": 1 << 30, "gb": 10**9, "gib": 1 << 30}
_ADDR = re.compile(r"(?:\[([0-9A-Fa-f:.]+)\]|([A-Za-z0-9.-]*)):(\d{1,5})")


def parse_duration(value: str) -> float:
    """Go-style duration (``20ms``, ``2s``, ``1m30s``, ``0``) in seconds."""
    text = value.strip()
    if text == "0":
        return 0.0
    pos, total = 0, 0.0
    for match in _DURATION_PART.finditer(text):
        if match.start() != pos:
            break
        total += float(match.group(1)) * _DURATION_UNITS[match.group(2)]
        pos = match.end()
    if pos == 0 or pos != len(text):
        raise ValueError(f"not a duration (use e.g. 20ms, 2s, 1m): {value!r}")
    return total


def parse_bool(value: str) -> bool:
    """``true``/``false`` (also 1/0, yes/no, on/off), case-insensitive."""
    lowered = value.strip().lower()
    if lowered in ("true", "1", "yes", "on"):
        return True
    if lowered in ("false", "0", "no", "off"):
        return False
    raise ValueError(f"not a boolean (true or false): {value!r}")


def parse_size(value: str) -> int:
    """A byte count, optionally with a unit (``8388608``, ``8MiB``, ``8M`` = 8 MiB, ``8MB`` = 8e6)."""
    match = _SIZE.fullmatch(value.strip())
    if match is None:
        raise ValueError(f"not a size in bytes (e.g. 8MiB): {value!r}")
    return int(match.group(1)) * _SIZE_UNITS[match.group(2).lower()]


def parse_int(value: str) -> int:
    """A non-negative integer."""
    number = int(value.strip())
    if number < 0:
        raise ValueError(f"must not be negative: {value!r}")
    return number


def parse_positive_int(value: str) -> int:
    """An integer of at least 1."""
    number = int(value.strip())
    if number < 1:
        raise ValueError(f"must be at least 1: {value!r}")
    return number


def parse_buffer_size(value: str) -> int:
    """A relay buffer size: a size (see :func:`parse_size`) of at least 64 KiB, so that per-chunk
    costs (one hash update and one socket write per buffer) stay small next to the bytes moved."""
    size = parse_size(value)
    if size < 64 << 10:
        raise ValueError(f"must be at least 64KiB: {value!r}")
    return size


def parse_reprovide_interval(value: str) -> float:
    """A duration (see :func:`parse_duration`) above zero and below :data:`RECORD_LIFETIME`, so
    that peers receive a node's records again before the previous copies expire."""
    seconds = parse_duration(value)
    if not 0 < seconds < RECORD_LIFETIME:
        raise ValueError(f"must be above 0 and below 19m (the record lifetime): {value!r}")
    return seconds


def parse_address(value: str) -> str:
    """``host:port``, ``:port`` (all interfaces) or ``[v6]:port``; returned unchanged when valid."""
    match = _ADDR.fullmatch(value.strip())
    if match is None or not 0 < int(match.group(3)) < 65536:
        raise ValueError(f"not an address of the form host:port or :port: {value!r}")
    return value.strip()


def split_address(value: str) -> tuple[str | None, int]:
    """``(host, port)`` of an address; host ``None`` means every interface."""
    match = _ADDR.fullmatch(value.strip())
    if match is None:
        raise ConfigurationError(f"invalid address {value!r}")
    host = match.group(1) or match.group(2) or None
    return host, int(match.group(3))


def choice(choices: Sequence[str], *, upper: bool = False) -> Callable[[str], str]:
    def parse(value: str) -> str:
        normalized = value.strip().upper() if upper else value.strip()
        if normalized == "WARNING" and upper:
            normalized = "WARN"
        if normalized not in choices:
            raise ValueError(f"must be one of {', '.join(c or '(empty)' for c in choices)}: {value!r}")
        return normalized

    return parse
