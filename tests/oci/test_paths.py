"""Distribution path parsing: the first and strictest gate for untrusted request paths."""

from __future__ import annotations

import pytest

from spegel_py.errors import InvalidDigestError, InvalidInputError, InvalidNameError, InvalidReferenceError
from spegel_py.oci.digest import Digest
from spegel_py.oci.paths import ROOT, DistributionPath, Kind, UnknownPathError, parse_ns, parse_path

HEX = "ab" * 32
D = Digest("sha256", HEX)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("/v2/", ROOT),
        ("/v2", ROOT),
        ("/v2/?x=1", ROOT),
        (
            f"/v2/library/busybox/blobs/sha256:{HEX}",
            DistributionPath(Kind.BLOBS, "library/busybox", digest=D),
        ),
        (f"/v2/a/manifests/sha256:{HEX}?ns=docker.io", DistributionPath(Kind.MANIFESTS, "a", digest=D)),
        ("/v2/a/b/c/manifests/v1.2_3-x", DistributionPath(Kind.MANIFESTS, "a/b/c", tag="v1.2_3-x")),
        ("/v2/a/manifests/latest", DistributionPath(Kind.MANIFESTS, "a", tag="latest")),
        (f"/v2/a/blobs/sha256%3A{HEX}", DistributionPath(Kind.BLOBS, "a", digest=D)),  # an escaped ":"
        ("/v2/%61/manifests/v1", DistributionPath(Kind.MANIFESTS, "a", tag="v1")),
        # repositories named like the endpoints are still names
        (
            f"/v2/blobs/manifests/blobs/sha256:{HEX}",
            DistributionPath(Kind.BLOBS, "blobs/manifests", digest=D),
        ),
    ],
)
def test_valid_paths(raw: str, expected: DistributionPath) -> None:
    assert parse_path(raw) == expected


@pytest.mark.parametrize(
    ("raw", "error"),
    [
        ("/", UnknownPathError),
        ("/v2/_catalog", UnknownPathError),
        ("/v2/a/tags/list", UnknownPathError),
        ("/v2/a/blobs/uploads/", UnknownPathError),
        ("/v3/a/blobs/sha256:" + HEX, UnknownPathError),
        ("/v2/blobs/sha256:" + HEX, UnknownPathError),  # no name
        ("/v2//blobs/sha256:" + HEX, InvalidNameError),
        ("/v2/A/blobs/sha256:" + HEX, InvalidNameError),
        ("/v2/../blobs/sha256:" + HEX, InvalidNameError),
        ("/v2/a/../b/blobs/sha256:" + HEX, InvalidNameError),
        ("/v2/" + "a" * 300 + "/blobs/sha256:" + HEX, InvalidNameError),
        ("/v2/a/blobs/latest", InvalidDigestError),
        ("/v2/a/blobs/sha256:" + HEX[:-1], InvalidDigestError),
        ("/v2/a/blobs/sha256:" + HEX.upper(), InvalidDigestError),
        ("/v2/a/blobs/sha1:" + "a" * 40, InvalidDigestError),
        ("/v2/a/blobs/sha256:" + HEX + "/..", UnknownPathError),
        ("/v2/a/manifests/sha256:zz", InvalidDigestError),
        ("/v2/a/manifests/.x", InvalidReferenceError),
        ("/v2/a/manifests/" + "t" * 129, InvalidReferenceError),
        ("/v2/a/manifests/", InvalidReferenceError),
        ("/v2/a%2fb/blobs/sha256:" + HEX, InvalidInputError),
        ("/v2/%2e%2e/blobs/sha256:" + HEX, InvalidNameError),  # "." may be escaped, ".." is no name
        ("/v2/a/blobs/sha256:" + HEX + "%00", InvalidInputError),
        ("/v2/a/blobs/%252e", InvalidInputError),
        ("/v2/a/blobs/%", InvalidInputError),
        ("/v2/a/blobs/%g0", InvalidInputError),
        ("/v2/a/blobs/sha256:\u0660" + HEX[1:], InvalidInputError),  # an Arabic-Indic digit
        ("/v2/a\\b/blobs/sha256:" + HEX, InvalidInputError),
        ("/v2/a/blobs/sha256:" + HEX + ";x", InvalidInputError),
        ("/v2/" + "a/" * 600 + "blobs/sha256:" + HEX, InvalidInputError),  # longer than MAX_PATH
    ],
)
def test_invalid_paths(raw: str, error: type[Exception]) -> None:
    with pytest.raises(error):
        parse_path(raw)


def test_every_parse_error_is_invalid_input() -> None:
    """The server maps InvalidInputError to 4xx; nothing else may escape the parser."""
    for error in (UnknownPathError, InvalidNameError, InvalidDigestError, InvalidReferenceError):
        assert issubclass(error, InvalidInputError)


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ([], None),
        (["docker.io"], "docker.io"),
        (["127.0.0.1:5000"], "127.0.0.1:5000"),
        (["ghcr.io"], "ghcr.io"),
    ],
)
def test_ns(values: list[str], expected: str | None) -> None:
    assert parse_ns(values) == expected


@pytest.mark.parametrize("values", [["a", "b"], ["bad/host"], [""], ["a" * 300], ["host:99999999"], ["\0"]])
def test_bad_ns(values: list[str]) -> None:
    with pytest.raises(InvalidInputError):
        parse_ns(values)
