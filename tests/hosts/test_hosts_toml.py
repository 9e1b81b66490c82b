"""The TOML writer: whatever it writes parses back, with tomllib, to exactly the data given."""

from __future__ import annotations

import datetime
import tomllib
from typing import Any

import pytest

from spegel_py.hosts.toml import dumps, key, quote

NASTY = [
    "plain",
    "it's",
    'say "hi"',
    "back\\slash",
    "new\nline",
    "tab\there",
    "\x00\x1f\x7f",
    "'] \n[host.'http://evil'] capabilities = ['pull']",
    "ünïcödé ✓",
    "",
]


@pytest.mark.parametrize("text", NASTY)
def test_quoted_strings_round_trip(text: str) -> None:
    assert tomllib.loads(f"v = {quote(text)}\n") == {"v": text}


@pytest.mark.parametrize("name", ["bare_key-1", "http://10.0.0.5:30020", "a.b", "it's", 'q"q', "", "x\ny"])
def test_keys_round_trip(name: str) -> None:
    assert tomllib.loads(f"{key(name)} = 1\n") == {name: 1}


def test_plain_strings_use_containerd_style_literal_quotes() -> None:
    assert quote("https://registry-1.docker.io") == "'https://registry-1.docker.io'"
    assert key("http://10.0.0.5:30020") == "'http://10.0.0.5:30020'"


DOCUMENTS: list[dict[str, Any]] = [
    {},
    {"server": "https://registry-1.docker.io"},
    {"host": {"http://a:1": {"capabilities": ["pull", "resolve"], "dial_timeout": "200ms"}}},
    {
        "server": "https://r",
        "skip_verify": False,
        "host": {
            "https://m": {
                "ca": ["/a.pem", "b.pem"], "header": {"X-A": ["1", "2"], "Y": "z"}, "n": 3, "f": 1.5
            },
            "http://m2": {},
        },
    },
    {"arr": [{"a": 1}, {"b": [1, 2]}], "mixed": [1, "x", [True, False]], "inline": [{"k": "v"}, 2]},
    {"when": datetime.datetime(2026, 1, 2, 3, 4, 5, tzinfo=datetime.UTC), "day": datetime.date(2026, 1, 2)},
    {"a": {"b": {"c": {"d": "deep"}}}, "empty": {}},
    {"evil'key": {"x\n]": "'\"\\"}},
]


@pytest.mark.parametrize("document", DOCUMENTS)
def test_documents_round_trip(document: dict[str, Any]) -> None:
    assert tomllib.loads(dumps(document)) == document


def test_key_order_is_kept() -> None:
    hosts = {f"http://127.0.0.{i}:5000": {"capabilities": ["pull"]} for i in (9, 1, 5, 3)}
    assert list(tomllib.loads(dumps({"host": hosts}))["host"]) == list(hosts)


def test_unsupported_values_are_refused() -> None:
    with pytest.raises(TypeError):
        dumps({"x": object()})
