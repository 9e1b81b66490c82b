"""``--mirrored-registries`` and ``--registry-filters`` keep Spegel's meaning."""

from __future__ import annotations

import pytest

from spegel_py.errors import ConfigurationError
from spegel_py.oci.filters import RegistryFilter, parse_registry_hosts


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ([], None),
        ([""], None),
        (["_default"], None),
        (["https://docker.io", "*"], None),
        (["https://docker.io"], frozenset({"docker.io"})),
        (
            ["https://docker.io", "http://127.0.0.1:5000", "https://ghcr.io/"],
            frozenset({"docker.io", "127.0.0.1:5000", "ghcr.io"}),
        ),
    ],
)
def test_parse_registry_hosts(values: list[str], expected: frozenset[str] | None) -> None:
    assert parse_registry_hosts(values) == expected


@pytest.mark.parametrize(
    "values",
    [
        ["*", "_default"],  # two wildcards
        ["docker.io"],  # no scheme
        ["ftp://docker.io"],
        ["https://docker.io/v2/cache"],
        ["https://docker.io?x=1"],
        ["https://user@docker.io"],
        ["https://bad_host!"],
    ],
)
def test_parse_registry_hosts_rejects(values: list[str]) -> None:
    with pytest.raises(ConfigurationError):
        parse_registry_hosts(values)


@pytest.mark.parametrize(
    ("mirrored", "filters", "image", "allowed"),
    [
        # nothing configured: everything is shared
        ([], [], ("docker.io", "library/nginx", "1.25"), True),
        # the filter is a search, not a full match, over registry/repository[:tag]
        ([], ["^docker.io"], ("docker.io", "library/ubuntu", None), False),
        ([], ["^ghcr.io"], ("docker.io", "library/ubuntu", None), True),
        ([], [":latest$"], ("docker.io", "library/ubuntu", "latest"), False),
        ([], [":latest$"], ("docker.io", "library/ubuntu", "24.04"), True),
        ([], [":latest$"], ("docker.io", "library/ubuntu", None), True),  # digest-only image
        ([], ["ubuntu"], ("docker.io", "library/ubuntu", "24.04"), False),
        ([], ["^ghcr.io", "nginx"], ("docker.io", "library/nginx", "1"), False),  # any match excludes
        # mirrored registries are an allow list of hosts
        (["https://docker.io"], [], ("docker.io", "library/nginx", "1"), True),
        (["https://docker.io"], [], ("ghcr.io", "org/app", "1"), False),
        (["http://localhost:5000"], [], ("localhost:6000", "foo", "bar"), False),
        (["http://localhost:5000"], [], ("localhost:5000", "foo", "bar"), True),
        (["_default"], [], ("ghcr.io", "org/app", "1"), True),
        # both apply
        (["https://docker.io"], [":latest$"], ("docker.io", "library/nginx", "latest"), False),
    ],
)
def test_allows(
    mirrored: list[str], filters: list[str], image: tuple[str, str, str | None], allowed: bool
) -> None:
    rf = RegistryFilter.from_flags(mirrored_registries=mirrored, registry_filters=filters)
    assert rf.allows(*image) is allowed


def test_default_allows_everything() -> None:
    assert RegistryFilter().allows("example.com:443", "a/b", "c")
    assert RegistryFilter().mirrors("anything")


def test_bad_regex_is_a_configuration_error() -> None:
    with pytest.raises(ConfigurationError):
        RegistryFilter.from_flags(registry_filters=["(unclosed"])
