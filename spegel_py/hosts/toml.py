"""A small TOML writer for the documents this package produces.

The standard library reads TOML (``tomllib``) but cannot write it. hosts.toml files are small and
their values plain (strings, booleans, numbers, arrays, nested tables), but they are also the place
where a value from a flag or an existing file could inject configuration if quoted carelessly, so
every string and key goes through :func:`quote` and every document written here is expected to
parse back to the same data with ``tomllib``.
"""

from __future__ import annotations

import datetime
import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")
# Characters that a literal ('...') string cannot hold: the quote itself and control characters
# other than tab (TOML forbids them raw in single-line strings).
_NOT_LITERAL = re.compile(r"['\x00-\x08\x0a-\x1f\x7f]")
_BASIC_ESCAPES = {'"': '\\"', "\\": "\\\\", "\b": "\\b", "\t": "\\t", "\n": "\\n", "\f": "\\f", "\r": "\\r"}


def quote(value: str) -> str:
    """A TOML string for ``value``: a literal string when it can be one (the familiar containerd
    style), else a basic string with every special character escaped."""
    if not _NOT_LITERAL.search(value):
        return f"'{value}'"
    out = []
    for ch in value:
        if ch in _BASIC_ESCAPES:
            out.append(_BASIC_ESCAPES[ch])
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def key(name: str) -> str:
    """A TOML key: bare when it may be, quoted otherwise (``host.'http://10.0.0.5:30020'``)."""
    return name if _BARE_KEY.fullmatch(name) else quote(name)


def value(item: Any) -> str:
    """An inline TOML value. Tables inside arrays become inline tables."""
    if isinstance(item, bool):  # before int: bool is an int subclass
        return "true" if item else "false"
    if isinstance(item, int):
        return str(item)
    if isinstance(item, float):
        if math.isnan(item):
            return "nan"
        if math.isinf(item):
            return "inf" if item > 0 else "-inf"
        return repr(item)
    if isinstance(item, str):
        return quote(item)
    if isinstance(item, datetime.datetime | datetime.date | datetime.time):
        return item.isoformat()
    if isinstance(item, Mapping):
        return "{" + ", ".join(f"{key(k)} = {value(v)}" for k, v in item.items()) + "}"
    if isinstance(item, Sequence):
        return "[" + ", ".join(value(v) for v in item) + "]"
    raise TypeError(f"cannot write {type(item).__name__} as TOML")


def _is_table_array(item: Any) -> bool:
    return (
        isinstance(item, Sequence)
        and not isinstance(item, str)
        and len(item) > 0
        and all(isinstance(v, Mapping) for v in item)
    )


def _table(path: tuple[str, ...], table: Mapping[str, Any], out: list[str], *, array: bool = False) -> None:
    plain = [(k, v) for k, v in table.items() if not isinstance(v, Mapping) and not _is_table_array(v)]
    nested = [(k, v) for k, v in table.items() if isinstance(v, Mapping) or _is_table_array(v)]
    header = ".".join(key(p) for p in path)
    # A header is needed for values, for an array element, and to keep an empty table in existence;
    # a table holding only subtables is implied by their headers.
    if path and (array or plain or not nested):
        if out:
            out.append("")
        out.append(f"[[{header}]]" if array else f"[{header}]")
    out.extend(f"{key(k)} = {value(v)}" for k, v in plain)
    for k, v in nested:
        if isinstance(v, Mapping):
            _table((*path, k), v, out)
        else:
            for element in v:
                _table((*path, k), element, out, array=True)


def dumps(document: Mapping[str, Any]) -> str:
    """Serialise ``document`` (as ``tomllib`` would return it) to TOML, keeping key order.

    Order matters to containerd: it tries ``[host.*]`` entries in the order they appear.
    """
    out: list[str] = []
    _table((), document, out)
    return "\n".join(out) + "\n"
